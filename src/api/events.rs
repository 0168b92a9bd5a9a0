//! `GET /sessions/{id}/events`: the session's durable events as Server-Sent Events.
//!
//! The stream is one recipient's event log: the agent's for an API key or the agent token (it holds
//! everything a claims system follows: `peer.*`, `capture.created`, `capture.failed`,
//! `checklist.updated`, `session.closed`), the customer's for the customer token. Each event's
//! `id:` is its `seq` and its `data:` the same JSON the WebSocket carries. `Last-Event-ID` (or
//! `?last_event_id=`) resumes after that seq; without it the stream starts with what comes next.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};

use crate::app::AppState;
use crate::auth::{Caller, Role, url_query_value};
use crate::error::ApiError;
use crate::session::RoomError;

use super::sessions::session_for;

fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<Option<i64>, ApiError> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.and_then(|q| url_query_value(q, "last_event_id")));
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_last_event_id",
                    "Last-Event-ID must be a non-negative integer",
                )
            }),
    }
}

/// Tells the registry when an event stream ends (its client left, or the session ended).
struct WatchEnded {
    state: AppState,
    session: String,
}

impl Drop for WatchEnded {
    fn drop(&mut self) {
        let state = self.state.clone();
        let session = std::mem::take(&mut self.session);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { state.registry.watch_ended(&session).await });
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/events",
    tag = "events",
    summary = "Follow a session's events (SSE)",
    description = "`text/event-stream`: the session's durable events, the same JSON objects the \
WebSocket carries (`peer.joined`, `peer.left`, `capture.created`, `capture.failed`, \
`checklist.updated`, `session.closed`, …), one per `data:` line, with `id:` = the event's `seq`. \
An API key or the agent's token follows the agent's log; the customer's token the customer's. \
`Last-Event-ID` (or `?last_event_id=`) resumes after that seq; without it the stream starts with \
what comes next. A closed or expired session's stream is its log, then it ends. A comment line \
keeps the connection alive every 15 s.",
    params(
        ("id" = String, Path, description = "The session id (`ses_…`)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this `seq`"),
        ("last_event_id" = Option<i64>, Query, description = "The same, for `EventSource`, which cannot set the header"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_last_event_id`: not a non-negative integer"),
        (status = 401, description = "`unauthorized`: no or unknown credential"),
        (status = 404, description = "`not_found`: no such session (or not this token's session)"),
        (status = 410, description = "`session_closed`, `session_expired`: the join token died with its session"),
    ),
    security(("api_key" = []), ("join_token" = []), ("token_query" = [])),
)]
pub async fn session_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let session = session_for(&state, &caller, &id, &Role::BOTH).await?;
    let role = match &caller {
        Caller::Participant { role, .. } => *role,
        Caller::ApiKey(_) => Role::Agent,
    };
    let after = last_event_id(&headers, query.as_deref())?;
    let (replay, rx) = match state.registry.watch(&session.id, role, after).await {
        Ok(w) => w,
        Err(RoomError::NotFound) => return Err(ApiError::not_found("session")),
        Err(RoomError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let ended = !session.status_at(crate::store::now_ms()).is_open();
    let to_sse =
        |(seq, body): (i64, String)| Ok(SseEvent::default().id(seq.to_string()).data(body));
    // The guard goes with the stream's state, after the receiver: when the client leaves, the
    // room sees a closed watcher and may go.
    let guard = WatchEnded {
        state: state.clone(),
        session: session.id.clone(),
    };
    let live = stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|e| (e, (rx, guard)))
    });
    // An ended session has no live part: the stream is its log, then it ends.
    let live = if ended {
        live.take(0).boxed()
    } else {
        live.boxed()
    };
    // Ends on shutdown (the client reconnects with Last-Event-ID): an endless response would keep
    // the graceful shutdown waiting for this connection forever.
    let events = stream::iter(replay)
        .chain(live)
        .map(to_sse)
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
