//! Captures and capture requests.

use crate::events::EventRow;
use crate::webhooks::OutboxRow;

#[derive(Debug, Clone, PartialEq)]
pub struct CaptureRow {
    pub id: String,
    pub session_id: String,
    pub slot_id: Option<String>,
    pub area: String,
    pub angle: String,
    pub note: Option<String>,
    pub source: String,
    pub request_id: Option<String>,
    pub mime: String,
    pub width: i64,
    pub height: i64,
    pub bytes: i64,
    pub sha256: String,
    pub sharpness: f64,
    pub brightness: f64,
    /// JSON array of warning codes.
    pub warnings: String,
    pub uploaded_by: String,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<Vec<u8>>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestRow {
    pub request_id: String,
    pub area: String,
    pub angle: String,
    pub slot_id: Option<String>,
    pub status: String,
    pub capture_id: Option<String>,
}

/// What one stored capture changes, written in one transaction with its events.
pub struct NewCapture<'a> {
    pub capture: &'a CaptureRow,
    /// Marks this capture request fulfilled.
    pub fulfils: Option<&'a str>,
    pub events: &'a mut [EventRow],
    pub outbox: &'a [OutboxRow],
}
