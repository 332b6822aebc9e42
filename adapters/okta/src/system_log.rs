//! The System Log (`GET /api/v1/logs`) as a log stream: Event Hooks are retried once and
//! never carry some events, so mxidp also reads the log, filtered on the event types that
//! matter, in `published` order, from a cursor core keeps in its store.
//!
//! The cursor is `since=<RFC 3339>` for the first read (the moment mxidp first read the log:
//! what happened before is not replayed) and then `after=<token>`: Okta's opaque position, taken
//! from the `Link: <…>; rel="next"` header of each answer. Only the token is kept, and only
//! from a link to the org itself; the request is always rebuilt from the org URL, so an answer
//! can never send the API token elsewhere.

use std::time::Duration;

use mxidp_core::provider::EventLogPage;
use mxidp_core::upstream::UpstreamError;
use serde_json::Value;
use url::Url;

use crate::log_event::{self, EVENT_TYPES};
use crate::management::{rate_limit_wait, ManagementApi};

/// Events per page (Okta's default is 100, its maximum 1000).
pub const PAGE_SIZE: usize = 100;

/// The `filter` expression: one `eventType eq "…"` per type that matters.
pub fn filter() -> String {
    EVENT_TYPES
        .iter()
        .map(|t| format!("eventType eq \"{t}\""))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Reads one page from `cursor`; `interval` is the wait once caught up.
pub async fn read(
    api: &ManagementApi,
    cursor: Option<&str>,
    interval: Duration,
    now: i64,
) -> Result<EventLogPage, UpstreamError> {
    let cursor = match cursor {
        Some(c) => c.to_owned(),
        None => format!("since={}", mxidp_core::audit::rfc3339(now)),
    };
    let (name, value) = cursor
        .split_once('=')
        .filter(|(name, _)| matches!(*name, "since" | "after"))
        .ok_or_else(|| UpstreamError::Protocol("an unreadable System Log cursor".into()))?;
    let mut url = api.org().clone();
    url.path_segments_mut()
        .map_err(|()| UpstreamError::Protocol("the org URL cannot take a path".into()))?
        .pop_if_empty()
        .extend(["api", "v1", "logs"]);
    url.query_pairs_mut()
        .append_pair("filter", &filter())
        .append_pair("limit", &PAGE_SIZE.to_string())
        .append_pair("sortOrder", "ASCENDING")
        .append_pair(name, value);
    let answer = api.get(url).await?;
    if let Some(wait) = rate_limit_wait(answer.status, &answer.headers, now) {
        if answer.status == 429 {
            tracing::info!(wait_s = wait.as_secs(), "System Log: rate limited by Okta");
            return Ok(EventLogPage {
                events: Vec::new(),
                cursor,
                next_poll: wait,
            });
        }
    }
    if answer.status != 200 {
        return Err(UpstreamError::Protocol(format!(
            "the System Log answered {}",
            answer.status
        )));
    }
    let items: Vec<Value> = serde_json::from_slice(&answer.body)
        .map_err(|e| UpstreamError::Protocol(format!("a malformed System Log page: {e}")))?;
    let mut events = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match log_event::normalise(item) {
            Ok(Some(received)) => events.push(received),
            Ok(None) => {}
            Err(log_event::Malformed(why)) => {
                tracing::warn!(index, %why, "System Log: a malformed event");
                events.push(crate::event_hook::unreadable(item, index, why, now));
            }
        }
    }
    let next_cursor = next_after(&answer.headers, api.org())
        .map(|after| format!("after={after}"))
        // Without a next link (a bounded query would end), the same page is read again later.
        .unwrap_or(cursor);
    let next_poll = match rate_limit_wait(answer.status, &answer.headers, now) {
        Some(wait) => wait,
        None if items.len() >= PAGE_SIZE => Duration::ZERO,
        None => interval,
    };
    Ok(EventLogPage {
        events,
        cursor: next_cursor,
        next_poll,
    })
}

/// The `after` token of the `rel="next"` link, when that link points at the org.
fn next_after(headers: &reqwest::header::HeaderMap, org: &Url) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let is_next = params
                .split(';')
                .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
            if !is_next {
                return None;
            }
            let url = Url::parse(target.trim().strip_prefix('<')?.strip_suffix('>')?).ok()?;
            if url.origin() != org.origin() {
                return None;
            }
            url.query_pairs()
                .find(|(k, _)| k == "after")
                .map(|(_, v)| v.into_owned())
                .filter(|v| !v.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn the_next_cursor_is_the_after_token_of_the_orgs_next_link() {
        let org: Url = "https://acme.okta.com/".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "link",
            HeaderValue::from_static("<https://acme.okta.com/api/v1/logs?limit=100>; rel=\"self\""),
        );
        h.append(
            "link",
            HeaderValue::from_static(
                "<https://acme.okta.com/api/v1/logs?limit=100&after=1581718731843_1>; rel=\"next\"",
            ),
        );
        assert_eq!(next_after(&h, &org).as_deref(), Some("1581718731843_1"));
        let mut elsewhere = HeaderMap::new();
        elsewhere.insert(
            "link",
            HeaderValue::from_static("<https://evil.example/api/v1/logs?after=x>; rel=\"next\""),
        );
        assert_eq!(next_after(&elsewhere, &org), None);
    }

    #[test]
    fn the_filter_names_every_type_that_matters() {
        let f = filter();
        assert!(f.starts_with("eventType eq \"user.session.end\" or "));
        assert!(f.contains("eventType eq \"user.lifecycle.suspend\""));
    }
}
