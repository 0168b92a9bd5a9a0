//! How a session is shown to claims systems (REST) and to the two pages (`welcome.session`).

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::captures::CaptureRow;
use crate::store::{SessionRow, SessionStatus, SlotRow};

/// Milliseconds since the epoch as an RFC 3339 timestamp.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Presence {
    pub agent: bool,
    pub customer: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: String,
    pub claim_ref: String,
    pub status: SessionStatus,
    pub locale: Option<String>,
    pub vehicle: Value,
    pub customer: Value,
    pub created_at: String,
    pub expires_at: String,
    pub started_at: Option<String>,
    pub closed_at: Option<String>,
    pub presence: Presence,
    pub checklist: Vec<SlotRow>,
    pub capture_count: u64,
}

fn json_or_null(s: &Option<String>) -> Value {
    s.as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null)
}

impl SessionView {
    pub fn new(row: &SessionRow, slots: Vec<SlotRow>, presence: Presence, now: i64) -> Self {
        Self {
            id: row.id.clone(),
            claim_ref: row.claim_ref.clone(),
            status: row.status_at(now),
            locale: row.locale.clone(),
            vehicle: json_or_null(&row.vehicle),
            customer: json_or_null(&row.customer),
            created_at: rfc3339(row.created_at),
            expires_at: rfc3339(row.expires_at),
            started_at: row.started_at.map(rfc3339),
            closed_at: row.closed_at.map(rfc3339),
            presence,
            checklist: slots,
            capture_count: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quality {
    pub sharpness: f64,
    pub brightness: f64,
    pub warnings: Vec<String>,
}

/// A capture as the contract shows it (REST, `capture.created`, `welcome.captures`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptureView {
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
    pub quality: Quality,
    pub created_at: String,
    pub image_url: String,
    pub thumbnail_url: String,
}

impl CaptureView {
    /// `public_url` is the service's base URL; the image URLs are absolute.
    pub fn new(c: &CaptureRow, public_url: &str) -> Self {
        Self {
            id: c.id.clone(),
            session_id: c.session_id.clone(),
            slot_id: c.slot_id.clone(),
            area: c.area.clone(),
            angle: c.angle.clone(),
            note: c.note.clone(),
            source: c.source.clone(),
            request_id: c.request_id.clone(),
            mime: c.mime.clone(),
            width: c.width,
            height: c.height,
            bytes: c.bytes,
            sha256: c.sha256.clone(),
            quality: Quality {
                // Rounded: the figures are for people and thresholds, not for bit-exact comparison.
                sharpness: (c.sharpness * 100.0).round() / 100.0,
                brightness: (c.brightness * 1000.0).round() / 1000.0,
                warnings: serde_json::from_str(&c.warnings).unwrap_or_default(),
            },
            created_at: rfc3339(c.created_at),
            image_url: format!("{public_url}/api/v1/captures/{}/image", c.id),
            thumbnail_url: format!("{public_url}/api/v1/captures/{}/thumbnail", c.id),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
