//! One WebSocket connection: a writer task that owns the sink (fed by a bounded queue, sending the
//! heartbeat pings) and a reader loop that checks, rate-limits and routes what the client sends.
//! When either ends the other is told, and the room learns the participant left.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::AppState;
use crate::auth::Role;
use crate::metrics::Metrics;
use crate::session::view::{Presence, SessionView};
use crate::session::{
    CloseSignal, CloseSpec, ConnHandle, Joined, Room, RoomError, Routed, close_code,
};
use crate::store::{SessionStatus, now_ms};

use super::protocol::{self, ClientMsg, LeaveReason, ProtocolError};
use super::ratelimit::{RateLimiter, Verdict};

/// Refused messages (malformed, unknown, forbidden) a connection may send in one minute before it
/// is closed with 4003.
const MAX_VIOLATIONS_PER_MINUTE: u32 = 30;
/// How long a close frame may take to go out before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Not an `async fn`: the socket is split here, before the connection's future exists. An async
/// fn keeps its arguments in its future for as long as the future lives, and the unsplit socket
/// alone is a few hundred bytes of every idle connection's task.
pub fn run(
    socket: WebSocket,
    state: AppState,
    session_id: String,
    role: Role,
    last_seq: Option<i64>,
) -> impl Future<Output = ()> + Send + 'static {
    let conn_id = state.next_conn_id();
    let span = tracing::info_span!("ws", session = %session_id, role = %role, conn = conn_id);
    let (sink, stream) = socket.split();
    serve(sink, stream, state, session_id, role, last_seq, conn_id).instrument(span)
}

/// A connection's task, which lives as long as the connection. Its future is as large as the
/// largest state it can be in, so what is large and brief (the join, each message's handling,
/// the leave) is boxed: it then costs its size only while it runs, not for the connection's life.
/// Not an `async fn`, for the reason given at [`write_loop`].
#[allow(clippy::manual_async_fn)]
fn serve(
    mut sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    state: AppState,
    session_id: String,
    role: Role,
    last_seq: Option<i64>,
    conn_id: u64,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let (tx, rx) = mpsc::channel(state.settings.ws_queue);
        let close = Arc::new(CloseSignal::default());
        let handle = ConnHandle::new(conn_id, tx, close.clone());

        let (room, initial) =
            match Box::pin(join(&state, &session_id, role, handle.clone(), last_seq)).await {
                Ok(j) => j,
                Err(spec) => {
                    state.metrics.ws_closed(spec.code);
                    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close_message(spec))).await;
                    return;
                }
            };

        let _connected = state.metrics.connection_opened(role);
        let heartbeat = state.settings.heartbeat();
        let writer = tokio::spawn(
            write_loop(
                sink,
                rx,
                close.clone(),
                initial,
                heartbeat,
                state.shutdown.clone(),
                state.metrics.clone(),
            )
            .in_current_span(),
        );

        let mut reader = Reader {
            state: &state,
            room: &room,
            handle: &handle,
            session_id: &session_id,
            role,
            limiter: RateLimiter::new(state.settings.ws_rate, state.settings.ws_burst),
            violations: 0,
            window_start: Instant::now(),
            in_flight: Arc::new(Semaphore::new(in_flight_window(state.settings.ws_queue))),
        };
        let left = reader.read_loop(stream, &close, heartbeat).await;
        if let Some(reason) = left {
            Box::pin(state.registry.leave(&room, role, conn_id, reason)).await;
            tracing::info!(reason = ?reason, "left");
        }
        // On shutdown (None) the writer may not have seen the cancellation yet: ask for 1001 here
        // too, or a plain 1000 could win the race.
        handle.close(match left {
            Some(_) => CloseSpec {
                code: close_code::NORMAL,
                reason: "",
            },
            None => CloseSpec {
                code: close_code::GOING_AWAY,
                reason: "server shutting down",
            },
        });
        let _ = writer.await;
    }
}

/// Joins the session's room as `role`: the room and the connection's first frames (the welcome,
/// then the missed events), or the close to send when it may not join. What the join read (the
/// session, checklist and captures for the welcome) is dropped here, not kept by the connection.
async fn join(
    state: &AppState,
    session_id: &str,
    role: Role,
    handle: ConnHandle,
    last_seq: Option<i64>,
) -> Result<(Arc<Room>, Vec<String>), CloseSpec> {
    let (room, joined) = match state
        .registry
        .join(session_id, role, handle, last_seq)
        .await
    {
        Ok(j) => j,
        Err(e) => {
            return Err(match e {
                RoomError::Ended(SessionStatus::Expired) => CloseSpec {
                    code: close_code::EXPIRED,
                    reason: "session expired",
                },
                RoomError::Ended(_) => CloseSpec {
                    code: close_code::SESSION_CLOSED,
                    reason: "session closed",
                },
                RoomError::NotFound => CloseSpec {
                    code: close_code::AUTH,
                    reason: "unknown session",
                },
                other => {
                    tracing::error!(error = %other, "join failed");
                    CloseSpec {
                        code: close_code::INTERNAL,
                        reason: "internal error",
                    }
                }
            });
        }
    };
    tracing::info!(
        resumed = joined.resumed,
        last_seq = joined.last_seq,
        replayed = joined.replay.len(),
        "joined"
    );
    if joined.resumed {
        state.metrics.resumes.inc();
        state
            .metrics
            .replayed_events
            .inc_by(joined.replay.len() as u64);
    }
    let mut initial = Vec::with_capacity(joined.replay.len() + 1);
    initial.push(welcome(state, role, &joined, room.presence()));
    initial.extend(joined.replay);
    Ok((room, initial))
}

/// The first message of every connection: who and where the client is, and the full state.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename = "welcome")]
struct Welcome<'a> {
    session: SessionView,
    role: Role,
    peer_present: bool,
    ice_servers: Vec<super::ice::IceServer>,
    last_seq: i64,
    resumed: bool,
    captures: Vec<crate::session::view::CaptureView>,
    checklist: &'a [crate::store::SlotRow],
}

fn welcome(state: &AppState, role: Role, j: &Joined, presence: Presence) -> String {
    let now = now_ms();
    let w = Welcome {
        session: SessionView::new(&j.session, j.slots.clone(), presence, now),
        role,
        peer_present: j.peer_present,
        ice_servers: state
            .ice
            .servers(&j.session.id, u64::try_from(now / 1000).unwrap_or(0)),
        last_seq: j.last_seq,
        resumed: j.resumed,
        captures: j
            .captures
            .iter()
            .map(|c| crate::session::view::CaptureView::new(c, &state.public_url))
            .collect(),
        checklist: &j.slots,
    };
    serde_json::to_string(&w).expect("welcome serializes")
}

fn close_message(spec: CloseSpec) -> Message {
    Message::Close(Some(CloseFrame {
        code: spec.code,
        reason: spec.reason.into(),
    }))
}

struct Reader<'a> {
    state: &'a AppState,
    room: &'a Arc<Room>,
    handle: &'a ConnHandle,
    session_id: &'a str,
    role: Role,
    limiter: RateLimiter,
    violations: u32,
    window_start: Instant,
    /// One permit per message routed and not yet handed on (see [`in_flight_window`]).
    in_flight: Arc<Semaphore>,
}

/// Messages of one connection that may be on their way through the event log at once. Each is
/// answered with an `ack` when it is handed on, so the window is kept well under the outbound
/// queue (`--ws-queue`): a client that sends a burst is slowed down, never closed as too slow.
fn in_flight_window(ws_queue: usize) -> usize {
    (ws_queue / 4).clamp(1, 64)
}

impl Reader<'_> {
    /// Reads until the connection ends. Returns why the participant left, or None when the server
    /// is shutting down (the participant did not leave; it will reconnect).
    async fn read_loop(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        close: &CloseSignal,
        heartbeat: Duration,
    ) -> Option<LeaveReason> {
        // The waits live across messages: made afresh for every message, they registered with
        // the timer wheel and two waiter lists, and left them again, each time. The timer is set
        // for the last frame's deadline and, when it fires early, moved to the current one.
        let mut deadline = Instant::now() + heartbeat * 2;
        let timer = tokio::time::sleep_until(deadline);
        let closing = close.requested();
        let state = self.state;
        let shutdown = state.shutdown.cancelled();
        tokio::pin!(timer, closing, shutdown);
        loop {
            tokio::select! {
                biased;
                spec = &mut closing => {
                    tracing::debug!(?spec, "closing");
                    return Some(LeaveReason::Closed);
                }
                _ = &mut shutdown => return None,
                _ = &mut timer => {
                    if Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    tracing::info!("heartbeat timeout");
                    self.handle.close(CloseSpec { code: close_code::GOING_AWAY, reason: "heartbeat timeout" });
                    return Some(LeaveReason::Timeout);
                }
                frame = stream.next() => {
                    let msg = match frame {
                        None => return Some(LeaveReason::Closed),
                        Some(Err(e)) => {
                            if is_too_big(e) {
                                self.handle.close(CloseSpec { code: close_code::TOO_BIG, reason: "message larger than 64 KiB" });
                            }
                            return Some(LeaveReason::Closed);
                        }
                        Some(Ok(m)) => m,
                    };
                    deadline = Instant::now() + heartbeat * 2;
                    match msg {
                        Message::Text(text) => {
                            // Boxed: see `serve`.
                            if let Some(spec) = Box::pin(self.on_text(text.as_str())).await {
                                self.handle.close(spec);
                                return Some(LeaveReason::Closed);
                            }
                        }
                        Message::Binary(_) => {
                            self.handle.close(CloseSpec { code: close_code::UNSUPPORTED_DATA, reason: "binary frames are not accepted" });
                            return Some(LeaveReason::Closed);
                        }
                        Message::Ping(_) | Message::Pong(_) => {}
                        Message::Close(_) => return Some(LeaveReason::Closed),
                    }
                }
            }
        }
    }

    /// A place in the connection's in-flight window, waiting for one if the window is full.
    async fn ticket(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .expect("the in-flight window is never closed")
    }

    fn reply(&self, text: String) {
        self.handle.send(text);
    }

    fn refuse(&self, e: &ProtocolError) {
        self.reply(protocol::error(e));
    }

    /// Counts a refused message; Some(close) when there have been too many.
    fn violation(&mut self) -> Option<CloseSpec> {
        let now = Instant::now();
        if now.duration_since(self.window_start) > Duration::from_secs(60) {
            self.window_start = now;
            self.violations = 0;
        }
        self.violations += 1;
        (self.violations > MAX_VIOLATIONS_PER_MINUTE).then_some(CloseSpec {
            code: close_code::FORBIDDEN,
            reason: "too many refused messages",
        })
    }

    /// Handles one text frame. Returns Some(close) when the connection must end.
    async fn on_text(&mut self, text: &str) -> Option<CloseSpec> {
        match self.limiter.check(std::time::Instant::now()) {
            Verdict::Allow => {}
            Verdict::Refuse => {
                let id = protocol::parse(text).ok().and_then(|i| i.id);
                self.refuse(&ProtocolError {
                    code: "rate_limited",
                    message: "too many messages; slow down".into(),
                    id,
                });
                return None;
            }
            Verdict::Close => {
                return Some(CloseSpec {
                    code: close_code::RATE_LIMITED,
                    reason: "rate limit exceeded",
                });
            }
        }
        let incoming = match protocol::parse(text) {
            Ok(i) => i,
            Err(e) => {
                self.refuse(&e);
                return self.violation();
            }
        };
        let id = incoming.id;
        let kind = incoming.msg.kind();
        if !incoming.msg.allowed_from(self.role) {
            self.refuse(&ProtocolError {
                code: "forbidden",
                message: format!("a {} may not send `{}`", self.role, incoming.msg.kind()),
                id,
            });
            return self.violation();
        }
        let outcome = match incoming.msg {
            ClientMsg::Ping { t } => {
                if let Some(id) = &id {
                    self.reply(protocol::ack(id));
                }
                self.reply(protocol::pong(&t));
                return None;
            }
            ClientMsg::SessionClose => self
                .state
                .registry
                .end(self.session_id, SessionStatus::Closed, "agent")
                .await
                .map(|_| Routed::Now),
            ClientMsg::ChecklistAdd(slot) => self
                .state
                .registry
                .add_slot(self.session_id, &slot)
                .await
                .map(|()| Routed::Now),
            ClientMsg::CaptureRequest(request) => {
                // Recorded first: the customer's upload is accepted only against a known request.
                let row = crate::store::captures::RequestRow {
                    request_id: request.request_id.clone(),
                    area: request.area.clone(),
                    angle: request.angle.clone(),
                    slot_id: request.slot_id.clone(),
                    status: "pending".into(),
                    capture_id: None,
                };
                match self
                    .state
                    .store
                    .record_capture_request(self.session_id, &row, now_ms())
                    .await
                {
                    Ok(()) => {
                        self.room
                            .relay(
                                self.role,
                                self.handle.id,
                                ClientMsg::CaptureRequest(request),
                                id.clone(),
                                self.ticket().await,
                            )
                            .await
                    }
                    Err(e) => Err(RoomError::Store(e)),
                }
            }
            msg => {
                self.room
                    .relay(
                        self.role,
                        self.handle.id,
                        msg,
                        id.clone(),
                        self.ticket().await,
                    )
                    .await
            }
        };
        match outcome {
            Ok(routed) => {
                self.state.metrics.relayed(kind);
                if let (Routed::Now, Some(id)) = (routed, &id) {
                    self.reply(protocol::ack(id));
                }
            }
            Err(e) => self.refuse(&e.refusal(id)),
        }
        None
    }
}

/// Is this read error the 64 KiB limit?
pub(super) fn is_too_big(e: axum::Error) -> bool {
    let inner = e.into_inner();
    matches!(
        inner.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// The writer task. Not an `async fn`, whose future would keep every argument twice (as passed,
/// and moved into the body: rust-lang/rust#62958), a hundred-odd bytes more in every connection.
#[allow(clippy::manual_async_fn)]
fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Box<str>>,
    close: Arc<CloseSignal>,
    initial: Vec<String>,
    heartbeat: Duration,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        enum Next {
            /// A frame, and whether the frames queued behind it may go in the same write (not
            /// while the welcome and the replay, which come first, are still going out).
            Frame(Message, bool),
            Close(CloseSpec),
        }
        let going_away = CloseSpec {
            code: close_code::GOING_AWAY,
            reason: "server shutting down",
        };
        let mut initial = initial.into_iter();
        let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        // Made once, not per frame (see `read_loop`). Neither is polled again once it has
        // resolved: the loop ends after either.
        let closing = close.requested();
        let cancelled = shutdown.cancelled();
        tokio::pin!(closing, cancelled);
        loop {
            if let Some(spec) = close.get() {
                metrics.ws_closed(spec.code);
                flush_and_close(&mut sink, &mut initial, &mut rx, spec).await;
                break;
            }
            let next = match initial.next() {
                Some(text) => Next::Frame(Message::Text(text.into()), false),
                None => tokio::select! {
                    biased;
                    _ = &mut closing => continue,
                    _ = &mut cancelled => Next::Close(going_away),
                    m = rx.recv() => match m {
                        Some(text) => Next::Frame(Message::Text(String::from(text).into()), true),
                        None => break,
                    },
                    _ = ping.tick() => Next::Frame(Message::Ping(Default::default()), true),
                },
            };
            match next {
                Next::Frame(m, drain) => {
                    // A client that stops reading blocks this send; a close request must still win.
                    tokio::select! {
                        sent = send_batch(&mut sink, m, drain.then_some(&mut rx)) => if sent.is_err() { break },
                        _ = &mut closing => continue,
                        _ = &mut cancelled => {
                            metrics.ws_closed(going_away.code);
                            let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close_message(going_away))).await;
                            break;
                        }
                    }
                }
                Next::Close(spec) => {
                    metrics.ws_closed(spec.code);
                    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close_message(spec))).await;
                    break;
                }
            }
        }
    }
}

/// Most frames one write may carry: enough to save most of the writes under load, few enough
/// that a heartbeat ping or a close is never far behind.
const MAX_BATCH: usize = 32;

/// Sends `first` and the frames queued behind it (up to [`MAX_BATCH`]) with one flush: under load
/// a relay queues frames faster than one write each can carry them, and a write per frame was a
/// system call per message.
async fn send_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    first: Message,
    rx: Option<&mut mpsc::Receiver<Box<str>>>,
) -> Result<(), axum::Error> {
    sink.feed(first).await?;
    let Some(rx) = rx else {
        return sink.flush().await;
    };
    for _ in 1..MAX_BATCH {
        match rx.try_recv() {
            Ok(text) => sink.feed(Message::Text(String::from(text).into())).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

/// Sends what was queued before the close was asked for, then the close frame, all within
/// [`CLOSE_GRACE`]: the room queues `session.closed` just before it asks for the 4009, and the
/// peer must see the message before the close.
async fn flush_and_close(
    sink: &mut SplitSink<WebSocket, Message>,
    initial: &mut std::vec::IntoIter<String>,
    rx: &mut mpsc::Receiver<Box<str>>,
    spec: CloseSpec,
) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        for text in initial.by_ref() {
            sink.feed(Message::Text(text.into())).await?;
        }
        while let Ok(text) = rx.try_recv() {
            sink.feed(Message::Text(String::from(text).into())).await?;
        }
        sink.send(close_message(spec)).await
    })
    .await;
}
