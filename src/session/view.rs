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

/// Who is connected to the session now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Presence {
    /// The agent's console has a live connection.
    pub agent: bool,
    /// The customer's page has a live connection.
    pub customer: bool,
}

/// A capture session: its state, who is connected, its checklist and how many captures it holds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    /// `ses_` and a UUIDv7 in hex: ids sort by creation time.
    #[schema(example = "ses_0193a1b2c3d4e5f6a7b8c9d0e1f2a3b4")]
    pub id: String,
    /// The claims system's reference, as given at creation.
    #[schema(example = "CLM-2024-0042")]
    pub claim_ref: String,
    pub status: SessionStatus,
    #[schema(value_type = Option<crate::api::openapi::Locale>)]
    pub locale: Option<String>,
    /// The vehicle as given at creation (`plate`, `vin`, `make`, `model`, `color`), or null.
    #[schema(value_type = Option<Object>)]
    pub vehicle: Value,
    /// The customer as given at creation (`name`, `phone`), or null.
    #[schema(value_type = Option<Object>)]
    pub customer: Value,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the session expires unless closed before.
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// When a participant first joined (the session became `active`).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub closed_at: Option<String>,
    pub presence: Presence,
    /// The pictures asked for, in order, each with its status.
    #[schema(value_type = Vec<crate::api::openapi::Slot>)]
    pub checklist: Vec<SlotRow>,
    /// How many captures the session holds.
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

/// Quality figures measured on the image when it was stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Quality {
    /// Variance of the Laplacian on a greyscale copy (long edge 1024 px), over the sharpest tenth
    /// of the frame: higher is sharper; under 30 is `blurry`.
    pub sharpness: f64,
    /// Mean luma, 0 (black) to 1 (white): under 0.15 is `too_dark`, over 0.88 `too_bright`.
    pub brightness: f64,
    /// `blurry`, `too_dark`, `too_bright`: advice to retake, never a refusal.
    pub warnings: Vec<String>,
}

/// A capture as the contract shows it (REST, `capture.created`, `welcome.captures`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CaptureView {
    /// `cap_` and a UUIDv7 in hex.
    #[schema(example = "cap_0193a1b2c3d4e5f6a7b8c9d0e1f2a3b4")]
    pub id: String,
    pub session_id: String,
    /// The checklist slot this capture fills, if any.
    pub slot_id: Option<String>,
    #[schema(value_type = crate::api::openapi::Area)]
    pub area: String,
    #[schema(value_type = crate::api::openapi::Angle)]
    pub angle: String,
    pub note: Option<String>,
    #[schema(value_type = crate::api::openapi::CaptureSource)]
    pub source: String,
    /// The agent's `capture.request` this capture answers, if any.
    pub request_id: Option<String>,
    /// `image/jpeg`, `image/png` or `image/webp`: the type of the bytes as received.
    #[schema(example = "image/jpeg")]
    pub mime: String,
    /// Pixels.
    pub width: i64,
    pub height: i64,
    /// Size of the original in bytes.
    pub bytes: i64,
    /// SHA-256 of the original bytes, hex; also the image's `ETag`.
    pub sha256: String,
    pub quality: Quality,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The original bytes (`GET /api/v1/captures/{id}/image`), absolute.
    #[schema(format = "uri")]
    pub image_url: String,
    /// A JPEG, long edge at most 320 px (`GET /api/v1/captures/{id}/thumbnail`), absolute.
    #[schema(format = "uri")]
    pub thumbnail_url: String,
}

/// A session's captures, oldest first.
#[derive(utoipa::ToSchema)]
pub struct CaptureList {
    pub items: Vec<CaptureView>,
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
