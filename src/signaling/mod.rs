//! The WebSocket endpoint `/ws`: who may connect (checked before the upgrade, so a refused client
//! gets a plain HTTP status), the socket's limits, and the connection loop in [`connection`].

pub mod connection;
pub mod echo;
pub mod ice;
pub mod protocol;
pub mod ratelimit;

use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use crate::app::AppState;
use crate::auth::{Role, hash_token, url_query_value};
use crate::error::ApiError;
use crate::store::{SessionStatus, now_ms};

pub const SUBPROTOCOL: &str = "capturelink.v1";

/// WebSocket buffer sizes: small, so an idle connection costs a few KiB (defaults are ~130 KiB).
/// The read buffer is allocated and zero-filled at the first read, so it is resident in every
/// connection, idle or not: 2 KiB holds a signaling message whole (an ICE candidate, a guide box;
/// an SDP takes a few reads). Larger frames still arrive whole, up to the 64 KiB limit: the buffer
/// grows to the frame's length once its header is read.
const READ_BUFFER: usize = 2 * 1024;
/// Not an allocation: how much tungstenite gathers before it writes to the socket.
const WRITE_BUFFER: usize = 8 * 1024;
/// Frames waiting in the socket's own write buffer at the most (one largest message and change).
const MAX_WRITE_BUFFER: usize = protocol::MAX_MESSAGE_BYTES + 16 * 1024;

/// The production socket limits, applied to every WebSocket the server accepts (`/ws`, and the
/// test-only `/__echo` that the Autobahn run checks them with).
pub fn limits(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(protocol::MAX_MESSAGE_BYTES)
        .max_frame_size(protocol::MAX_MESSAGE_BYTES)
}

/// `GET /ws?token=…[&last_seq=N]`
pub async fn ws_handler(
    State(state): State<AppState>,
    client: Option<axum::Extension<crate::throttle::ClientIp>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match admit(&state, &headers, query.as_deref()).await {
        Ok((session_id, role, last_seq)) => {
            let ws = match upgrade {
                Ok(ws) => ws,
                Err(rejection) => return rejection.into_response(),
            };
            let ip = client.and_then(|c| c.0.0);
            let Some(slot) = state.throttle.open_ws(ip) else {
                state.metrics.ws_refused(429);
                let mut e = ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "too_many_connections",
                    "this address holds as many WebSocket connections as it may",
                );
                e.retry_after = Some(5);
                return e.into_response();
            };
            let tracker = state.tracker.clone();
            limits(ws.protocols([SUBPROTOCOL]))
                .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
                .on_upgrade(move |socket| {
                    // The address's slot is held for as long as the connection lives. (Not an
                    // async block: that would hold the connection's future twice, as what it
                    // captured and as what it awaits.)
                    let conn = connection::run(socket, state, session_id, role, last_seq);
                    tracker.track_future(conn.map(move |()| drop(slot)))
                })
        }
        Err(e) => {
            state.metrics.ws_refused(e.status.as_u16());
            e.into_response()
        }
    }
}

/// The checks made before the upgrade: token (401), Origin (403), session still open (410).
async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(String, Role, Option<i64>), ApiError> {
    let token = query
        .and_then(|q| url_query_value(q, "token"))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "missing_token",
                "a join token is required",
            )
        })?;
    let (session, role) = state
        .store
        .session_by_token(&hash_token(&token))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "invalid_token",
                "unknown join token",
            )
        })?;
    let role = Role::parse(&role).ok_or_else(ApiError::unauthorized)?;
    if !origin_allowed(state, headers) {
        return Err(ApiError::forbidden(
            "origin_not_allowed",
            "this Origin may not open the WebSocket",
        ));
    }
    match session.status_at(now_ms()) {
        SessionStatus::Closed => {
            return Err(ApiError::gone("session_closed", "the session is closed"));
        }
        SessionStatus::Expired => {
            return Err(ApiError::gone("session_expired", "the session has expired"));
        }
        SessionStatus::Created | SessionStatus::Active => {}
    }
    let last_seq = match query.and_then(|q| url_query_value(q, "last_seq")) {
        None => None,
        Some(s) => Some(s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_last_seq",
                "last_seq must be a non-negative integer",
            )
        })?),
    };
    Ok((session.id, role, last_seq))
}

/// Browsers always send Origin on a WebSocket; it must be an allowed origin or the page's own
/// host. Clients that send none are not browsers (no cross-site risk) and are let through.
fn origin_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if state
        .allowed_origins
        .iter()
        .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
}

/// The origin (`scheme://host[:port]`) of a URL.
pub fn origin_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            format!(
                "{}://{}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase()
            )
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn origins() {
        assert_eq!(
            super::origin_of("https://Claims.Example.com:8443/x/y?z"),
            "https://claims.example.com:8443"
        );
        assert_eq!(
            super::origin_of("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080"
        );
    }
}
