//! What the rest of the service uses to report an event to claims systems: the rows to write in
//! the same transaction as the change, and the nudge to the dispatcher after the commit.

use serde_json::{Value, json};

use super::{EventType, OutboxRow, Wakeup, WebhookSettings, outbox_rows, payload};
use crate::store::SessionRow;

pub struct Outbox {
    pub settings: WebhookSettings,
    wakeup: Wakeup,
    public_url: String,
}

impl Outbox {
    pub fn new(settings: WebhookSettings, wakeup: Wakeup, public_url: String) -> Self {
        Self {
            settings,
            wakeup,
            public_url,
        }
    }

    /// The outbox rows of one event about `session` (none when no endpoint is configured).
    pub fn rows(
        &self,
        session: &SessionRow,
        event: EventType,
        mut data: Value,
        now_ms: i64,
    ) -> Vec<OutboxRow> {
        if let Value::Object(map) = &mut data {
            map.insert("session_id".into(), json!(session.id));
            map.insert("claim_ref".into(), json!(session.claim_ref));
            map.insert(
                "session_url".into(),
                json!(format!(
                    "{}/api/v1/sessions/{}",
                    self.public_url, session.id
                )),
            );
        }
        let body = payload(event, now_ms, data);
        outbox_rows(
            &session.id,
            session.webhook_url.as_deref(),
            &self.settings,
            event,
            &body,
            now_ms,
        )
    }

    /// Wakes the dispatcher; call after the transaction holding the rows has committed.
    pub fn notify(&self) {
        self.wakeup.notify();
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }
}
