//! Sessions, their checklist slots and what creating one writes.

/// `created` → `active` (first join) → `closed`; `expired` when `expires_at` passes unclosed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Created,
    Active,
    Closed,
    Expired,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Active => "active",
            Self::Closed => "closed",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => Self::Created,
            "active" => Self::Active,
            "closed" => Self::Closed,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// Closed and expired sessions take no more joins or events.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Created | Self::Active)
    }
}

/// Read from its column as text on either backend (`status AS "status: _"` in a query macro).
impl<DB: sqlx::Database> sqlx::Type<DB> for SessionStatus
where
    str: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <str as sqlx::Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <str as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for SessionStatus
where
    &'r str: sqlx::Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let s = <&str as sqlx::Decode<'r, DB>>::decode(value)?;
        Ok(Self::parse(s).ok_or_else(|| format!("unknown session status {s:?}"))?)
    }
}

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub claim_ref: String,
    pub status: SessionStatus,
    pub locale: Option<String>,
    pub vehicle: Option<String>,
    pub customer: Option<String>,
    pub webhook_url: Option<String>,
    pub token_salt: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub started_at: Option<i64>,
    pub closed_at: Option<i64>,
    pub closed_by: Option<String>,
}

impl SessionRow {
    /// The status as seen at `now`: an open session past its expiry is expired even before the
    /// sweeper has written so.
    pub fn status_at(&self, now: i64) -> SessionStatus {
        if self.status.is_open() && now >= self.expires_at {
            SessionStatus::Expired
        } else {
            self.status
        }
    }
}

/// One picture the checklist asks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotRow {
    /// `slot_1`, `slot_2`, … in checklist order.
    pub id: String,
    #[serde(skip)]
    pub position: i64,
    pub area: String,
    pub angle: String,
    /// The label given at creation, or null.
    pub label: Option<String>,
    pub status: String,
    /// The capture that filled the slot, once `done`.
    pub capture_id: Option<String>,
}

pub struct NewSession {
    pub row: SessionRow,
    pub slots: Vec<SlotRow>,
    /// (SHA-256 of the token, role)
    pub tokens: Vec<(Vec<u8>, &'static str)>,
    /// (scope, key, request hash)
    pub idempotency: Option<(String, String, Vec<u8>)>,
}

pub enum Created {
    New,
    /// The idempotency key was used before: the session it created and that request's hash.
    Existing {
        session_id: String,
        request_hash: Vec<u8>,
    },
}

/// Filters and the page of a session listing; sessions come newest first.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub status: Option<SessionStatus>,
    pub claim_ref: Option<String>,
    /// Only sessions with an id below this one (ids grow with time).
    pub before_id: Option<String>,
    pub limit: u32,
}
