//! The per-session, per-recipient event log's rows.

/// One durable event for one recipient. `body` is the exact JSON text the recipient is sent.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub session_id: String,
    pub role: &'static str,
    pub seq: i64,
    pub kind: &'static str,
    pub body: String,
    pub created_at: i64,
}

/// An event row as written, borrowed (a seq mark is a row with an empty body).
pub struct RowRef<'a> {
    pub session_id: &'a str,
    pub role: &'static str,
    pub seq: i64,
    pub kind: &'static str,
    pub body: &'a str,
    pub created_at: i64,
}

impl<'a> From<&'a EventRow> for RowRef<'a> {
    fn from(row: &'a EventRow) -> Self {
        Self {
            session_id: &row.session_id,
            role: row.role,
            seq: row.seq,
            kind: row.kind,
            body: &row.body,
            created_at: row.created_at,
        }
    }
}

/// An event's text with another `seq`: the database numbers events when several nodes share it,
/// after the body was rendered. Bodies are rendered with `seq` as their first member.
pub fn with_seq(body: &str, seq: i64) -> String {
    const HEAD: &str = "{\"seq\":";
    let rest = body
        .strip_prefix(HEAD)
        .map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-'))
        .expect("event bodies begin with their seq");
    format!("{HEAD}{seq}{rest}")
}
