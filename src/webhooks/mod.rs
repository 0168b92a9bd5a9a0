//! Webhooks to claims systems: `session.started`, `capture.created` and `session.closed`, signed
//! per Standard Webhooks and delivered at least once.
//!
//! The flow: whoever changes a session writes one outbox row per target URL
//! ([`crate::store::webhooks::enqueue_webhook`]) in the same transaction as the change, then pokes
//! the [`Wakeup`]. The [`Dispatcher`] sends due rows, marks them delivered, reschedules them with
//! jittered exponential backoff, gives up after the horizon, or disables an endpoint that answers
//! 410 Gone. Rows live in SQLite, so what was not delivered before a restart is sent after it, with
//! the same `webhook-id`: receivers deduplicate on it.

pub mod address;
pub mod backoff;
pub mod dispatcher;
mod outbox;
pub mod signing;

#[cfg(test)]
mod tests;

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use crate::store::webhooks::{OutboxRow, enqueue_webhook};
pub use dispatcher::{Dispatcher, Wakeup};
pub use outbox::Outbox;
pub use signing::{Secret, SecretError, VerifyError, sign, verify, verify_at};

/// How the dispatcher works; the lead maps these from CLI flags. Start from
/// [`WebhookSettings::new`] for the defaults.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `whsec_<base64>`, or a raw string used as the key bytes.
    pub secret: String,
    /// A server-wide endpoint every event also goes to.
    pub server_url: Option<String>,
    /// `--webhook-public-only`: deliveries to a non-public IP literal fail at once (names are
    /// checked by the client's resolver, [`address::PublicOnly`]).
    pub public_only: bool,
    /// How long after an event was created its delivery is retried before it is `failed`.
    pub horizon: Duration,
    /// The backoff ceiling of the first retry; it doubles with each further one...
    pub base_backoff: Duration,
    /// ...up to this.
    pub max_backoff: Duration,
    /// Per request, connection included.
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// The longest the dispatcher sleeps between looks at the outbox when nothing wakes it.
    pub poll_interval: Duration,
}

impl WebhookSettings {
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            server_url: None,
            public_only: false,
            horizon: Duration::from_secs(24 * 3600),
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            concurrency: 4,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// The event types of contract v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    SessionStarted,
    CaptureCreated,
    SessionClosed,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionStarted => "session.started",
            Self::CaptureCreated => "capture.created",
            Self::SessionClosed => "session.closed",
        }
    }
}

/// The URLs an event goes to: the session's own `webhook_url` and the server-wide one, each once.
pub fn targets(session_webhook_url: Option<&str>, settings: &WebhookSettings) -> Vec<String> {
    let mut urls: Vec<String> = Vec::with_capacity(2);
    for url in [session_webhook_url, settings.server_url.as_deref()]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        if !urls.iter().any(|u| u == url) {
            urls.push(url.to_owned());
        }
    }
    urls
}

/// The JSON body of an event, in the Standard Webhooks shape
/// `{"type", "timestamp" (RFC 3339), "data"}`. `data` carries ids and URLs, never image bytes.
/// `at_ms` is the event's time in milliseconds since the epoch.
pub fn payload(event: EventType, at_ms: i64, data: serde_json::Value) -> String {
    let timestamp = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    serde_json::json!({
        "type": event.as_str(),
        "timestamp": timestamp,
        "data": data,
    })
    .to_string()
}

/// One outbox row per target of an event, all with the same body, ready for
/// [`enqueue_webhook`].
pub fn outbox_rows(
    session_id: &str,
    session_webhook_url: Option<&str>,
    settings: &WebhookSettings,
    event: EventType,
    body: &str,
    now_ms: i64,
) -> Vec<OutboxRow> {
    targets(session_webhook_url, settings)
        .into_iter()
        .map(|url| OutboxRow::new(session_id, url, event.as_str(), body, now_ms))
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn targets_are_deduplicated() {
        let mut s = WebhookSettings::new("k");
        assert!(targets(None, &s).is_empty());
        assert_eq!(targets(Some("https://a/h"), &s), ["https://a/h"]);
        s.server_url = Some("https://srv/h".into());
        assert_eq!(targets(None, &s), ["https://srv/h"]);
        assert_eq!(
            targets(Some("https://a/h"), &s),
            ["https://a/h", "https://srv/h"]
        );
        assert_eq!(targets(Some("https://srv/h"), &s), ["https://srv/h"]);
        assert_eq!(targets(Some(" "), &s), ["https://srv/h"]);
    }

    #[test]
    fn payload_shape() {
        let body = payload(
            EventType::CaptureCreated,
            1_700_000_000_123,
            serde_json::json!({"capture_id": "cap_1"}),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "capture.created");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["data"]["capture_id"], "cap_1");
    }

    #[test]
    fn rows_per_target_have_distinct_stable_ids() {
        let mut s = WebhookSettings::new("k");
        s.server_url = Some("https://srv/h".into());
        let rows = outbox_rows(
            "ses_1",
            Some("https://a/h"),
            &s,
            EventType::SessionClosed,
            "{}",
            5,
        );
        assert_eq!(rows.len(), 2);
        assert_ne!(rows[0].id, rows[1].id);
        assert!(
            rows.iter()
                .all(|r| r.id.starts_with("msg_") && r.id.len() == 36)
        );
        assert!(rows.iter().all(|r| r.event_type == "session.closed"));
    }
}
