//! `mxidp events …`: the operator's view of the IdP event pipeline (docs/events.md). The commands
//! work on the store directly, so they run beside a live `mxidp serve` (whose worker picks up
//! re-queued events within a second) or while it is stopped.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use mxidp_core::audit::{self, AuditEntry};
use mxidp_core::config::Config;
use mxidp_core::events::{EventState, IdpEvent, StoredEvent};
use mxidp_core::ids::now_unix;
use mxidp_core::store::{SqliteStore, Store};

#[derive(Subcommand)]
pub enum EventsCommand {
    /// List received IdP events, newest first.
    List {
        #[arg(long, short, env = "MXIDP_CONFIG")]
        config: Option<PathBuf>,
        /// Only events in this state: pending, failed, dead, applied or ignored.
        #[arg(long, value_parser = parse_state)]
        state: Option<EventState>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Re-queue a dead, failed or ignored event (or every dead one) for an attempt now, with a
    /// full retry window again.
    Retry {
        #[arg(long, short, env = "MXIDP_CONFIG")]
        config: Option<PathBuf>,
        /// The event's id (from `mxidp events list`).
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<i64>,
        /// Every dead event.
        #[arg(long)]
        all_dead: bool,
    },
    /// Re-apply every event received since a time, e.g. after restoring the homeserver from a
    /// backup. Idempotent: an action that already holds changes nothing, and an older status
    /// event never undoes a newer one.
    Replay {
        #[arg(long, short, env = "MXIDP_CONFIG")]
        config: Option<PathBuf>,
        /// RFC 3339 (`2025-01-31T12:00:00Z`) or Unix seconds.
        #[arg(long, value_parser = parse_time)]
        since: i64,
    },
}

pub async fn run(command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::List {
            config,
            state,
            limit,
        } => {
            let store = open(config).await?;
            let events = store.list_events(state, limit).await?;
            print!("{}", table(&events));
        }
        EventsCommand::Retry {
            config,
            id,
            all_dead,
        } => {
            let store = open(config).await?;
            let now = now_unix();
            let (count, target) = if all_dead {
                (
                    store.retry_dead_events(now).await?,
                    "dead events".to_owned(),
                )
            } else {
                let id = id.context("an event id or --all-dead")?;
                if !store.retry_event(id, now).await? {
                    anyhow::bail!("no event {id} that could be retried (unknown, or applied: use `mxidp events replay`)");
                }
                (1, format!("event {id}"))
            };
            record(store.as_ref(), "event.retry", &target, count).await;
            println!("{count} event(s) queued for a new attempt");
        }
        EventsCommand::Replay { config, since } => {
            let store = open(config).await?;
            let count = store.replay_events_since(since, now_unix()).await?;
            record(
                store.as_ref(),
                "event.replay",
                &format!("since {}", format_time(since)),
                count,
            )
            .await;
            println!(
                "{count} applied event(s) received since {} queued again",
                format_time(since)
            );
        }
    }
    Ok(())
}

pub async fn open(path: Option<PathBuf>) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let config = Config::load(path.as_deref())?;
    let store = SqliteStore::open(&config.database.url)
        .await
        .with_context(|| "database.url: cannot open the store")?;
    Ok(std::sync::Arc::new(store))
}

async fn record(store: &dyn Store, action: &str, target: &str, count: u64) {
    audit::record(
        store,
        AuditEntry {
            actor: "admin:cli".into(),
            action: action.into(),
            target: target.into(),
            source: "cli".into(),
            outcome: format!("ok: {count} event(s) queued"),
            correlation_id: String::new(),
            details: Default::default(),
        },
    )
    .await;
}

fn parse_state(s: &str) -> Result<EventState, String> {
    EventState::parse(s)
        .ok_or_else(|| format!("{s:?}: expected pending, failed, dead, applied or ignored"))
}

/// One event per line, columns aligned.
fn table(events: &[StoredEvent]) -> String {
    let header = [
        "ID",
        "STATE",
        "SOURCE",
        "KIND",
        "SUBJECT",
        "OCCURRED",
        "RECEIVED",
        "ATTEMPTS",
        "LAST ERROR",
    ]
    .map(str::to_owned);
    let rows: Vec<[String; 9]> = events
        .iter()
        .map(|e| {
            [
                e.id.to_string(),
                e.state.as_str().to_owned(),
                e.source.clone(),
                e.event.kind().to_owned(),
                match &e.event {
                    IdpEvent::SessionEnded { sid } => format!("sid:{sid}"),
                    other => other.subject().unwrap_or("-").to_owned(),
                },
                format_time(e.occurred_at),
                format_time(e.received_at),
                e.attempts.to_string(),
                e.last_error
                    .as_deref()
                    .unwrap_or("-")
                    .replace(['\n', '\r'], " "),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no events)\n");
    }
    out
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2025-01-31T12:00:00Z`.
pub fn format_time(unix: i64) -> String {
    let (y, m, d) = civil_from_days(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Unix seconds, or an RFC 3339 date-time (`2025-01-31T12:00:00Z`, `…+02:00`, fractions
/// ignored).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?}: expected RFC 3339 (2025-01-31T12:00:00Z) or Unix seconds");
    if let Ok(unix) = s.parse::<i64>() {
        return Ok(unix);
    }
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(range).ok_or_else(bad)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    if second > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let hours: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let minutes: i64 = rest[4..6].parse().map_err(|_| bad())?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hours * 3600 + minutes * 60)
        }
        _ => return Err(bad()),
    };
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_offsets_apply() {
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20.123Z"), Ok(1_700_000_000));
        assert_eq!(parse_time("2023-11-15T00:13:20+02:00"), Ok(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T20:13:20-02:00"), Ok(1_700_000_000));
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Ok(1_709_164_800));
        for unix in [0, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_time(&format_time(unix)), Ok(unix));
        }
        for bad in [
            "",
            "yesterday",
            "2023-11-14",
            "2023-13-01T00:00:00Z",
            "2023-11-14T22:13:20",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
