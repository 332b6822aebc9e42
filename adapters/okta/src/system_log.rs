//! The System Log (`GET /api/v1/logs`) as a log stream: Event Hooks are retried once and
//! never carry some events, so mxidp also reads the log, filtered on the event types that
//! matter, in `published` order, from a cursor core keeps in its store.
//!
//! The cursor is the query of the next read: at first `filter`, `limit`, `sortOrder` and
//! `since` = the moment mxidp first read the log (what happened before is not replayed), then
//! the query of the `Link: <…>; rel="next"` header of each answer, which Okta always sends for
//! such a polling query and which carries its opaque `after` position. Only the query of a link
//! to the org's own `/api/v1/logs` is taken, and only the parameters of that endpoint; the
//! request is always rebuilt from the org URL, so an answer can never send the API token
//! elsewhere.

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

/// The parameters of `/api/v1/logs` a cursor may carry.
const PARAMETERS: &[&str] = &[
    "since",
    "until",
    "after",
    "filter",
    "q",
    "limit",
    "sortOrder",
];

/// The query of the first read: from `now` on.
fn first_query(now: i64) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("filter", &filter())
        .append_pair("limit", &PAGE_SIZE.to_string())
        .append_pair("sortOrder", "ASCENDING")
        .append_pair("since", &mxidp_core::audit::rfc3339(now))
        .finish()
}

/// `query` with only the endpoint's parameters, when it says where to start.
fn checked_query(query: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| PARAMETERS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if !pairs.iter().any(|(k, _)| k == "since" || k == "after") {
        return None;
    }
    Some(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish(),
    )
}

/// Reads one page from `cursor`; `interval` is the wait once caught up.
pub async fn read(
    api: &ManagementApi,
    cursor: Option<&str>,
    interval: Duration,
    now: i64,
) -> Result<EventLogPage, UpstreamError> {
    let cursor = match cursor {
        Some(c) => checked_query(c)
            .ok_or_else(|| UpstreamError::Protocol("an unreadable System Log cursor".into()))?,
        None => first_query(now),
    };
    let mut url = logs_url(api.org())?;
    url.set_query(Some(&cursor));
    let answer = api.get(url).await?;
    let wait = rate_limit_wait(answer.status, &answer.headers, now);
    if answer.status == 429 {
        let wait = wait.unwrap_or(interval);
        tracing::info!(wait_s = wait.as_secs(), "System Log: rate limited by Okta");
        return Ok(EventLogPage {
            events: Vec::new(),
            cursor,
            next_poll: wait,
        });
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
    // Without a next link (a bounded query would end), the same page is read again later.
    let next_cursor = next_query(&answer.headers, api.org())?.unwrap_or(cursor);
    let next_poll = match wait {
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

fn logs_url(org: &Url) -> Result<Url, UpstreamError> {
    let mut url = org.clone();
    url.path_segments_mut()
        .map_err(|()| UpstreamError::Protocol("the org URL cannot take a path".into()))?
        .pop_if_empty()
        .extend(["api", "v1", "logs"]);
    Ok(url)
}

/// The checked query of the `rel="next"` link, when that link is the org's `/api/v1/logs`.
fn next_query(
    headers: &reqwest::header::HeaderMap,
    org: &Url,
) -> Result<Option<String>, UpstreamError> {
    let logs = logs_url(org)?;
    Ok(headers
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
            if url.origin() != logs.origin() || url.path() != logs.path() {
                return None;
            }
            checked_query(url.query()?)
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn the_next_cursor_is_the_query_of_the_orgs_next_link() {
        let org: Url = "https://acme.okta.com/".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "link",
            HeaderValue::from_static("<https://acme.okta.com/api/v1/logs?limit=100>; rel=\"self\""),
        );
        h.append(
            "link",
            HeaderValue::from_static(
                "<https://acme.okta.com/api/v1/logs?limit=100&after=1581718731843_1&x=y>; rel=\"next\"",
            ),
        );
        assert_eq!(
            next_query(&h, &org).unwrap().as_deref(),
            Some("limit=100&after=1581718731843_1")
        );
        for elsewhere in [
            "<https://evil.example/api/v1/logs?after=x>; rel=\"next\"",
            "<https://acme.okta.com/api/v1/users?after=x>; rel=\"next\"",
            "<https://acme.okta.com/api/v1/logs?limit=5>; rel=\"next\"",
        ] {
            let mut other = HeaderMap::new();
            other.insert("link", HeaderValue::from_static(elsewhere));
            assert_eq!(next_query(&other, &org).unwrap(), None, "{elsewhere}");
        }
    }

    #[test]
    fn the_first_read_starts_now_and_a_stored_cursor_is_checked() {
        let first = first_query(1_581_718_731);
        assert!(first.ends_with("&sortOrder=ASCENDING&since=2020-02-14T22%3A18%3A51Z"));
        assert_eq!(checked_query(&first).as_deref(), Some(first.as_str()));
        assert_eq!(checked_query("limit=5"), None);
    }

    #[test]
    fn the_filter_names_every_type_that_matters() {
        let f = filter();
        assert!(f.starts_with("eventType eq \"user.session.end\" or "));
        assert!(f.contains("eventType eq \"user.lifecycle.suspend\""));
    }
}
