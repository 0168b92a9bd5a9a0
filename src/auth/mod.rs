//! Who is calling: claims systems by API key, agents and customers by their session's join token.

mod keys;
mod tokens;

pub use keys::{
    API_KEY_FILE, ApiKeys, KEY_PREFIX, KeyId, SECRET_FILE, fingerprint, generate_api_key,
    load_or_create as keys_file, random_secret,
};
pub use tokens::{Role, TokenMinter, hash_token};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::SessionRow;

/// The authenticated caller of a REST request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A claims system.
    ApiKey(KeyId),
    /// A participant of one session, by its join token.
    Participant {
        session: Box<SessionRow>,
        role: Role,
    },
}

impl Caller {
    /// May this caller act on `session_id` as one of `roles` (or as a claims system)?
    pub fn may_access(&self, session_id: &str, roles: &[Role]) -> bool {
        match self {
            Caller::ApiKey(_) => true,
            Caller::Participant { session, role } => {
                session.id == session_id && roles.contains(role)
            }
        }
    }

    pub fn api_key(&self) -> Option<&KeyId> {
        match self {
            Caller::ApiKey(k) => Some(k),
            Caller::Participant { .. } => None,
        }
    }
}

/// The bearer credential of a request: `Authorization: Bearer …`, or a `token` query parameter
/// (for `<img src>` and `EventSource`, which cannot set headers).
fn bearer(parts: &Parts) -> Option<String> {
    credential(&parts.headers, &parts.uri)
}

/// The bearer credential in a request's headers or its `token` query parameter.
pub fn credential(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_owned());
    }
    url_query_value(uri.query()?, "token")
}

/// The first value of `name` in a query string, percent-decoded.
pub fn url_query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let credential = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        if let Some(key) = state.api_keys.check(&credential).await? {
            return Ok(Caller::ApiKey(key));
        }
        match state
            .store
            .session_by_token(&hash_token(&credential))
            .await?
        {
            Some((session, role)) => {
                let role = Role::parse(&role).ok_or_else(ApiError::unauthorized)?;
                // A join token dies with its session.
                match session.status_at(crate::store::now_ms()) {
                    crate::store::SessionStatus::Closed => {
                        return Err(ApiError::gone("session_closed", "the session is closed"));
                    }
                    crate::store::SessionStatus::Expired => {
                        return Err(ApiError::gone("session_expired", "the session has expired"));
                    }
                    _ => {}
                }
                Ok(Caller::Participant {
                    session: Box::new(session),
                    role,
                })
            }
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// Only claims systems (API keys).
pub struct ApiKeyCaller(pub KeyId);

impl FromRequestParts<AppState> for ApiKeyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let credential = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        state
            .api_keys
            .check(&credential)
            .await?
            .map(ApiKeyCaller)
            .ok_or_else(ApiError::unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            url_query_value("a=1&token=x%2By", "token").as_deref(),
            Some("x+y")
        );
        assert_eq!(
            url_query_value("token=a+b", "token").as_deref(),
            Some("a b")
        );
        assert_eq!(url_query_value("tokens=1", "token"), None);
        assert_eq!(
            url_query_value("token=%zz", "token").as_deref(),
            Some("%zz")
        );
        assert_eq!(url_query_value("token=%4", "token").as_deref(), Some("%4"));
    }
}
