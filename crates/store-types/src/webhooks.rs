//! The webhook outbox's rows.

/// A delivery to write into the outbox. `id` is the `webhook-id` the receiver sees on every
/// attempt; [`OutboxRow::new`] gives it a fresh `msg_<uuid v7>`.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: String,
    pub session_id: String,
    pub url: String,
    pub event_type: String,
    /// The exact JSON body that is sent (and signed).
    pub payload: String,
    /// Milliseconds since the epoch; the retry horizon counts from here.
    pub created_at: i64,
}

impl OutboxRow {
    pub fn new(
        session_id: impl Into<String>,
        url: impl Into<String>,
        event_type: impl Into<String>,
        payload: impl Into<String>,
        created_at: i64,
    ) -> Self {
        Self {
            id: new_message_id(),
            session_id: session_id.into(),
            url: url.into(),
            event_type: event_type.into(),
            payload: payload.into(),
            created_at,
        }
    }
}

/// A fresh `webhook-id`: `msg_` and a UUID v7 without hyphens (so ids sort by creation time).
pub fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// A pending delivery whose next attempt is due.
#[derive(Debug, Clone)]
pub struct DueWebhook {
    pub id: String,
    pub session_id: String,
    pub url: String,
    pub event_type: String,
    pub payload: String,
    pub created_at: i64,
    /// Attempts made so far.
    pub attempts: i64,
}

/// The recorded state of one outbox row (for tests and operators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxState {
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// How long a claimed outbox row is this node's (several nodes): well past a delivery's timeout.
pub const WEBHOOK_LEASE_MS: i64 = 60_000;
