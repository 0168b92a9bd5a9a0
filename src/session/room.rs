//! One session's room: who is connected, the next `seq` of each recipient, and the rule that a
//! durable event is in the event log before it is sent.
//!
//! Everything that changes a room runs under its one async lock. Events are numbered under it and
//! queued to the event log's writer under it, so queue order, commit order and `seq` order agree.
//! Messages relayed between the participants are pipelined: the lock is let go once a message is
//! queued, and the writer hands it on once its group has committed ([`Room::relay`]), so a
//! connection's next message does not wait for the previous one's fsync. Everything else (joins,
//! REST, captures, the end) first waits for the pipeline to drain and then holds the lock across
//! its commit: a joining connection reads the log and registers for live events atomically, so
//! nothing falls between replay and live. The lock is per room; rooms never wait on each other,
//! and the log's group commit lets many rooms share one fsync.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, mpsc};

use crate::auth::Role;
use crate::bus::{Bus, BusError};
use crate::signaling::protocol::{self, ClientMsg, Event, LeaveReason, ProtocolError};
use crate::store::events::{Chain, SeqMark};
use crate::store::{EventRow, SessionRow, SessionStatus, SlotRow, Store, StoreError, now_ms};

use super::CloseSignal;
use super::view::{Presence, rfc3339};
use crate::webhooks::{EventType, Outbox};

/// WebSocket close codes of the contract.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const AUTH: u16 = 4001;
    pub const FORBIDDEN: u16 = 4003;
    pub const REPLACED: u16 = 4008;
    pub const SESSION_CLOSED: u16 = 4009;
    pub const EXPIRED: u16 = 4010;
    pub const RATE_LIMITED: u16 = 4029;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseSpec {
    pub code: u16,
    pub reason: &'static str,
}

/// What a room holds of a connection: a bounded queue into its writer, and a way to close it.
#[derive(Clone)]
pub struct ConnHandle {
    pub id: u64,
    /// Frames travel as `Box<str>` (16 bytes) rather than `String` (24): the queue's first block
    /// of 32 slots is allocated with it, so this is 256 bytes less in every connection.
    tx: mpsc::Sender<Box<str>>,
    close: Arc<CloseSignal>,
}

impl ConnHandle {
    pub fn new(id: u64, tx: mpsc::Sender<Box<str>>, close: Arc<CloseSignal>) -> Self {
        Self { id, tx, close }
    }

    /// Queues a frame without waiting. A full queue means the client stopped reading: it is closed
    /// (it will resume from the log when it comes back) rather than slowing its sender.
    pub fn send(&self, text: String) -> bool {
        match self.tx.try_send(text.into_boxed_str()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(CloseSpec {
                    code: close_code::POLICY,
                    reason: "too slow: outbound queue full",
                });
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the connection to close; the first request wins.
    pub fn close(&self, spec: CloseSpec) {
        self.close.request(spec);
    }
}

/// Who sent a pipelined message: answered with an `ack` (if it gave an `id`) or an `error` once
/// the message is handed on or has failed, and holding its place in the connection's in-flight
/// window until then.
pub(super) struct Sender {
    conn: ConnHandle,
    id: Option<serde_json::Value>,
    ticket: OwnedSemaphorePermit,
}

impl Sender {
    pub(super) fn new(
        conn: ConnHandle,
        id: Option<serde_json::Value>,
        ticket: OwnedSemaphorePermit,
    ) -> Self {
        Self { conn, id, ticket }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// The room was taken out of the registry while this caller held it: look it up again.
    #[error("room retired")]
    Retired,
    #[error("session not found")]
    NotFound,
    #[error("session {}", .0.as_str())]
    Ended(SessionStatus),
    /// The sending connection has been replaced or has left.
    #[error("connection is no longer the session's participant")]
    NotCurrent,
    #[error("the peer is not connected")]
    PeerAbsent,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl RoomError {
    /// The `error` a participant is sent when its message could not be routed.
    pub fn refusal(&self, id: Option<serde_json::Value>) -> ProtocolError {
        let (code, message) = match self {
            RoomError::PeerAbsent => (
                "peer_absent",
                "the peer is not connected; nothing was relayed".to_owned(),
            ),
            RoomError::Ended(SessionStatus::Expired) => {
                ("session_expired", "the session has expired".to_owned())
            }
            RoomError::Ended(_) => ("session_closed", "the session is closed".to_owned()),
            RoomError::NotCurrent => (
                "replaced",
                "this connection was replaced by a newer one".to_owned(),
            ),
            RoomError::Store(StoreError::Busy(_) | StoreError::Full(_)) | RoomError::Bus(_) => {
                ("unavailable", "the service is busy; send again".to_owned())
            }
            other => {
                tracing::error!(error = %other, "routing failed");
                ("internal", "the message could not be routed".to_owned())
            }
        };
        ProtocolError { code, message, id }
    }
}

/// How a relayed message went on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Handed to the peer (or dropped as intended): the sender may be acknowledged now.
    Now,
    /// Queued behind the event log's commit: the sender is sent its `ack` (or `error`) then.
    Pending,
}

/// What a joining connection is told first: its welcome and the events it missed.
pub struct Joined {
    pub session: SessionRow,
    pub slots: Vec<SlotRow>,
    pub peer_present: bool,
    pub last_seq: i64,
    pub resumed: bool,
    /// Bodies of the missed durable events, in seq order, sent right after the welcome.
    pub replay: Vec<String>,
    pub captures: Vec<crate::store::captures::CaptureRow>,
}

/// Events an event-stream watcher may fall behind by before it is dropped (it resumes by
/// `Last-Event-ID`).
const WATCH_QUEUE: usize = 256;

/// An event-stream watcher's start: the events it missed, and a channel of the ones that follow.
pub type Watch = (Vec<(i64, String)>, mpsc::Receiver<(i64, String)>);

pub(super) struct Watcher {
    pub(super) role: Role,
    tx: mpsc::Sender<(i64, String)>,
}

#[derive(Default)]
pub(super) struct RoomState {
    pub(super) loaded: bool,
    pub(super) retired: bool,
    pub(super) ended: Option<SessionStatus>,
    pub(super) expires_at: i64,
    /// The last seq issued to each role (indexed by `Role::index`); with several nodes, the
    /// last seq this node has handed on to it.
    pub(super) seq: [i64; 2],
    pub(super) conns: [Option<ConnHandle>; 2],
    /// With several nodes: the epoch each local connection claimed, and the task handing on what
    /// the bus brings.
    pub(super) epoch: [i64; 2],
    /// The newest epoch of each role this node has heard of (a departure of an older one does
    /// not make the role absent).
    pub(super) newest_epoch: [i64; 2],
    pub(super) listener: Option<tokio::task::AbortHandle>,
}

pub struct Room {
    pub id: String,
    pub(super) store: Store,
    outbox: Arc<Outbox>,
    pub(super) state: Mutex<RoomState>,
    /// Who is connected: on one node, to this room; with several, anywhere (the participants
    /// rows, kept current by the bus).
    pub(super) present: [AtomicBool; 2],
    /// The seq marks of relayed signals, per recipient (indexed by `Role::index`).
    marks: [Arc<SeqMark>; 2],
    /// Event-stream watchers; written under the state lock, read by the writer's continuations too.
    watchers: std::sync::Mutex<Vec<Watcher>>,
    /// The relayed messages queued to the event log and not yet handed on.
    pipeline: Pipeline,
    /// Several nodes: the bus to the others (see `super::cluster`). None on one node.
    pub(super) cluster: Option<Arc<Bus>>,
    pub(super) me: Weak<Room>,
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Some(listener) = self.state.get_mut().listener.take() {
            listener.abort();
        }
    }
}

/// A room's relayed messages between being numbered and being handed on (see [`Room::relay`]).
#[derive(Default)]
struct Pipeline {
    chain: Arc<Chain>,
    /// Messages queued and not yet handed on (or failed).
    pending: AtomicUsize,
    drained: Notify,
    /// After a failure: per recipient, the seq to number on from (the lowest failed seq less one).
    rewind_to: [AtomicI64; 2],
}

const NO_REWIND: i64 = i64::MAX;

impl Room {
    pub(super) fn new(
        id: String,
        store: Store,
        outbox: Arc<Outbox>,
        cluster: Option<Arc<Bus>>,
        me: Weak<Room>,
    ) -> Self {
        // In `Role::index` order, like `seq` and `conns`.
        let marks = Role::BOTH.map(|r| SeqMark::new(id.clone(), r.as_str()));
        let pipeline = Pipeline {
            rewind_to: [AtomicI64::new(NO_REWIND), AtomicI64::new(NO_REWIND)],
            ..Pipeline::default()
        };
        Self {
            marks,
            id,
            store,
            outbox,
            state: Mutex::new(RoomState::default()),
            present: [AtomicBool::new(false), AtomicBool::new(false)],
            watchers: std::sync::Mutex::new(Vec::new()),
            pipeline,
            cluster,
            me,
        }
    }

    pub(super) fn watchers(&self) -> std::sync::MutexGuard<'_, Vec<Watcher>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Did a pipelined message fail (the ones queued after it fail too, until [`Room::settle`])?
    pub(super) fn pipeline_broken(&self) -> bool {
        self.pipeline.chain.is_broken()
    }

    /// Waits until every pipelined message has been handed on or has failed, then, if one failed,
    /// numbers on from the first that failed (it and those after it were never sent: no gap).
    /// Called under the state lock, so nothing is pipelined meanwhile.
    pub(super) async fn settle(&self, st: &mut RoomState) {
        let p = &self.pipeline;
        loop {
            let drained = p.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if p.pending.load(Ordering::SeqCst) == 0 {
                break;
            }
            drained.await;
        }
        if p.chain.is_broken() {
            for (i, rewind) in p.rewind_to.iter().enumerate() {
                let to = rewind.swap(NO_REWIND, Ordering::SeqCst);
                if to != NO_REWIND {
                    st.seq[i] = st.seq[i].min(to);
                }
            }
            p.chain.mend();
        }
    }

    /// Queues a relayed message (its rows, if durable) on the room's chain; once they are
    /// committed, `send` hands it on and the sender is acknowledged, or, if they failed, the
    /// sender is sent the error and the room will number on from the failed seq. Either way the
    /// sender's place in its connection's in-flight window is given back then.
    pub(super) async fn enqueue(
        self: &Arc<Self>,
        rows: Vec<EventRow>,
        failed_seq: (Role, i64),
        sender: Sender,
        send: impl FnOnce(&Room, Vec<EventRow>) + Send + Sync + 'static,
    ) {
        self.pipeline.pending.fetch_add(1, Ordering::SeqCst);
        let room = Arc::clone(self);
        let then = Box::new(
            move |outcome: Result<(), StoreError>, rows: Vec<EventRow>| {
                // Taken apart here, so the closure owns the ticket too: a closure captures only
                // the fields it uses, and would give the window's place back at once.
                let Sender { conn, id, ticket } = sender;
                match outcome {
                    Ok(()) => {
                        send(&room, rows);
                        if let Some(id) = &id {
                            conn.send(protocol::ack(id));
                        }
                    }
                    Err(e) => {
                        let (role, seq) = failed_seq;
                        room.pipeline.rewind_to[role.index()].fetch_min(seq - 1, Ordering::SeqCst);
                        conn.send(protocol::error(&RoomError::Store(e).refusal(id)));
                    }
                }
                // The place in the sender's in-flight window is given back only now.
                drop(ticket);
                if room.pipeline.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                    room.pipeline.drained.notify_waiters();
                }
            },
        );
        self.store
            .appender()
            .append_then(rows, &self.pipeline.chain, then)
            .await;
    }

    /// Hands a committed event to its recipient's connection (if any) and event-stream watchers.
    pub(super) fn hand_on(&self, role: Role, seq: i64, body: String, conn: Option<&ConnHandle>) {
        self.watchers()
            .retain(|w| w.role != role || w.tx.try_send((seq, body.clone())).is_ok());
        if let Some(conn) = conn {
            conn.send(body);
        }
    }

    pub fn presence(&self) -> Presence {
        Presence {
            agent: self.present[Role::Agent.index()].load(Ordering::Relaxed),
            customer: self.present[Role::Customer.index()].load(Ordering::Relaxed),
        }
    }

    /// Reads what the room needs from the database the first time it is used (also after a restart:
    /// the seq counters continue from the log).
    async fn ensure_loaded(&self, st: &mut RoomState) -> Result<(), RoomError> {
        if let Some(bus) = &self.cluster {
            return self.load_clustered(bus, st).await;
        }
        if st.retired {
            return Err(RoomError::Retired);
        }
        if !st.loaded {
            self.read_state(st).await?;
            st.loaded = true;
        }
        Ok(())
    }

    /// Reads the session's state and where each recipient's log stands.
    pub(super) async fn read_state(&self, st: &mut RoomState) -> Result<(), RoomError> {
        let session = self
            .store
            .get_session(&self.id)
            .await?
            .ok_or(RoomError::NotFound)?;
        let (agent, customer) = self.store.last_seqs(&self.id).await?;
        st.seq = [agent, customer];
        st.expires_at = session.expires_at;
        if !session.status.is_open() {
            st.ended = Some(session.status);
        }
        Ok(())
    }

    pub(super) fn check_open(&self, st: &RoomState) -> Result<(), RoomError> {
        match st.ended {
            Some(s) => Err(RoomError::Ended(s)),
            None if now_ms() >= st.expires_at => Err(RoomError::Ended(SessionStatus::Expired)),
            None => Ok(()),
        }
    }

    /// Logs a durable event for each recipient, then queues it to those connected.
    /// Numbers events for their recipients without committing the numbers yet.
    pub(super) fn stage(
        &self,
        st: &RoomState,
        events: &[(&[Role], &Event)],
    ) -> Vec<(Role, EventRow)> {
        let now = now_ms();
        let mut next = st.seq;
        let mut rows = Vec::new();
        for (to, event) in events {
            debug_assert!(event.is_durable());
            for role in to.iter() {
                next[role.index()] += 1;
                let seq = next[role.index()];
                rows.push((
                    *role,
                    EventRow {
                        session_id: self.id.clone(),
                        role: role.as_str(),
                        seq,
                        kind: event.kind(),
                        body: event.to_text(seq),
                        created_at: now,
                    },
                ));
            }
        }
        rows
    }

    /// After the rows are committed: advances the counters and queues each row to its recipient's
    /// connection and event-stream watchers.
    fn deliver(&self, st: &mut RoomState, rows: Vec<(Role, EventRow)>) {
        for (role, row) in rows {
            st.seq[role.index()] = row.seq;
            self.hand_on(role, row.seq, row.body, st.conns[role.index()].as_ref());
        }
    }

    /// Logs a durable event for each recipient, then queues it to those connected.
    async fn publish(
        &self,
        st: &mut RoomState,
        to: &[Role],
        event: &Event,
    ) -> Result<(), RoomError> {
        if let Some(bus) = &self.cluster {
            return self.publish_clustered(bus, st, to, event).await;
        }
        self.settle(st).await;
        let staged = self.stage(st, &[(to, event)]);
        let rows = staged.iter().map(|(_, r)| r.clone()).collect();
        self.store.appender().append(rows).await?;
        self.deliver(st, staged);
        Ok(())
    }

    /// Publishes a durable event from outside the WebSocket (REST, captures, expiry).
    pub async fn publish_event(&self, to: &[Role], event: &Event) -> Result<(), RoomError> {
        let mut st = self.state.lock().await;
        self.ensure_loaded(&mut st).await?;
        self.publish(&mut st, to, event).await
    }

    /// Publishes events whose rows `write` commits in one transaction with the change they report
    /// (a capture row, a new checklist slot), so the change and its events are durable together.
    /// Refused once the session has ended.
    /// `prepare` runs under the lock, so what it reads (the checklist, say) is current; it returns
    /// the events and whatever `write` needs besides their rows; `write` gives the rows back as
    /// committed (numbered by the database when several nodes share it).
    pub async fn publish_with<T, P, PFut, W, WFut>(
        &self,
        prepare: P,
        write: W,
    ) -> Result<(), RoomError>
    where
        P: FnOnce() -> PFut,
        PFut: std::future::Future<Output = Result<(Vec<(Vec<Role>, Event)>, T), RoomError>>,
        W: FnOnce(Vec<EventRow>, T) -> WFut,
        WFut: std::future::Future<Output = Result<Vec<EventRow>, StoreError>>,
    {
        let mut st = self.state.lock().await;
        self.ensure_loaded(&mut st).await?;
        self.check_open(&st)?;
        self.settle(&mut st).await;
        let (events, extra) = prepare().await?;
        let refs: Vec<(&[Role], &Event)> =
            events.iter().map(|(to, e)| (to.as_slice(), e)).collect();
        let staged = self.stage(&st, &refs);
        let rows = write(staged.iter().map(|(_, r)| r.clone()).collect(), extra).await?;
        match &self.cluster {
            Some(bus) => self.announce(bus, rows),
            None => self.deliver(&mut st, staged),
        }
        Ok(())
    }

    /// Subscribes to a role's durable events (the SSE stream): the events after `after`, read under
    /// the lock, and a channel of the ones that follow, so none falls between.
    pub async fn watch(&self, role: Role, after: Option<i64>) -> Result<Watch, RoomError> {
        if let Some(bus) = &self.cluster {
            return self.watch_clustered(bus, role, after).await;
        }
        let mut st = self.state.lock().await;
        self.ensure_loaded(&mut st).await?;
        self.settle(&mut st).await;
        let current = st.seq[role.index()];
        self.add_watcher(&st, role, after, current).await
    }

    /// A new watcher of `role`: the events after `after` up to `current`, then the live ones.
    pub(super) async fn add_watcher(
        &self,
        st: &RoomState,
        role: Role,
        after: Option<i64>,
        current: i64,
    ) -> Result<Watch, RoomError> {
        let replay = match after {
            Some(n) if n < current => {
                self.store
                    .events_between(&self.id, role.as_str(), n.max(0), current)
                    .await?
            }
            _ => Vec::new(),
        };
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        // An ended session has no live part: dropping `tx` ends the stream after the replay (the
        // caller may have seen it open just before the close).
        if st.ended.is_none() {
            self.watchers().push(Watcher { role, tx });
        }
        Ok((replay, rx))
    }

    /// Makes `conn` the session's `role`, replacing an older connection of that role (4008).
    pub async fn join(
        &self,
        role: Role,
        conn: ConnHandle,
        last_seq: Option<i64>,
    ) -> Result<Joined, RoomError> {
        if let Some(bus) = &self.cluster {
            return self.join_clustered(bus, role, conn, last_seq).await;
        }
        let mut st = self.state.lock().await;
        self.ensure_loaded(&mut st).await?;
        self.check_open(&st)?;
        self.settle(&mut st).await;
        let session = self.activate(role).await?;

        let peer = role.peer();
        let replaced = st.conns[role.index()].replace(conn);
        self.present[role.index()].store(true, Ordering::Relaxed);
        if let Some(old) = &replaced {
            old.close(CloseSpec {
                code: close_code::REPLACED,
                reason: "replaced by a newer connection",
            });
        }
        let announced = async {
            if replaced.is_some() {
                let left = Event::PeerLeft {
                    role,
                    reason: LeaveReason::Replaced,
                };
                self.publish(&mut st, &[peer], &left).await?;
            }
            self.publish(&mut st, &[peer], &Event::PeerJoined { role })
                .await
        }
        .await;
        if let Err(e) = announced {
            st.conns[role.index()] = None;
            self.present[role.index()].store(false, Ordering::Relaxed);
            return Err(e);
        }

        let peer_present = st.conns[peer.index()].is_some();
        self.joined(role, session, last_seq, st.seq[role.index()], peer_present)
            .await
    }

    /// What a joining connection is sent: the session's state, and the events after its
    /// `last_seq` up to `current` when it resumes.
    pub(super) async fn joined(
        &self,
        role: Role,
        session: SessionRow,
        last_seq: Option<i64>,
        current: i64,
        peer_present: bool,
    ) -> Result<Joined, RoomError> {
        let (resumed, replay) = match last_seq {
            Some(n) if (0..=current).contains(&n) => {
                let rows = self
                    .store
                    .events_between(&self.id, role.as_str(), n, current)
                    .await?;
                (true, rows.into_iter().map(|(_, body)| body).collect())
            }
            _ => (false, Vec::new()),
        };
        let slots = self.store.slots(&self.id).await?;
        let captures = self.store.list_captures(&self.id).await?;
        Ok(Joined {
            captures,
            session,
            slots,
            peer_present,
            last_seq: current,
            resumed,
            replay,
        })
    }

    /// The session's row, made `active` by its first join (with its `session.started` webhook).
    pub(super) async fn activate(&self, role: Role) -> Result<SessionRow, RoomError> {
        let mut session = self
            .store
            .get_session(&self.id)
            .await?
            .ok_or(RoomError::NotFound)?;
        if session.status == SessionStatus::Created {
            let now = now_ms();
            let data = serde_json::json!({"started_at": rfc3339(now), "first_role": role});
            let outbox = self
                .outbox
                .rows(&session, EventType::SessionStarted, data, now);
            if self.store.mark_active(&self.id, now, &outbox).await? {
                session.status = SessionStatus::Active;
                session.started_at = Some(now);
                self.outbox.notify();
            }
        }
        Ok(session)
    }

    /// The connection `conn_id` of `role` is gone. Returns true when the room is now empty.
    pub async fn leave(&self, role: Role, conn_id: u64, reason: LeaveReason) -> bool {
        if let Some(bus) = &self.cluster {
            return self.leave_clustered(bus, role, conn_id, reason).await;
        }
        let mut st = self.state.lock().await;
        if st.conns[role.index()].as_ref().map(|c| c.id) == Some(conn_id) {
            st.conns[role.index()] = None;
            self.present[role.index()].store(false, Ordering::Relaxed);
            if st.ended.is_none() {
                let left = Event::PeerLeft { role, reason };
                if let Err(e) = self.publish(&mut st, &[role.peer()], &left).await {
                    tracing::warn!(error = %e, "could not log peer.left");
                }
            }
        }
        st.conns.iter().all(Option::is_none)
    }

    /// Routes a message from the participant `conn_id` (`id` is the client's, for its `ack`).
    ///
    /// Durable messages are numbered and queued to the event log under the lock, which is then let
    /// go: the writer hands each one on once its group has committed, and acknowledges it to the
    /// sender (or sends the sender the error), in queue order ([`Routed::Pending`]). A `signal` is
    /// live only: it takes a seq only if the peer is there to receive it, and goes out at once
    /// unless durable messages are still on their way, in which case it waits its turn behind them.
    pub async fn relay(
        self: &Arc<Self>,
        from: Role,
        conn_id: u64,
        msg: ClientMsg,
        id: Option<serde_json::Value>,
        ticket: OwnedSemaphorePermit,
    ) -> Result<Routed, RoomError> {
        let Some(event) = Event::relayed(from, msg) else {
            return Ok(Routed::Now);
        };
        if let Some(bus) = &self.cluster {
            return self
                .relay_clustered(bus, from, conn_id, event, (id, ticket))
                .await;
        }
        let mut st = self.state.lock().await;
        let Some(sender) = st.conns[from.index()].clone().filter(|c| c.id == conn_id) else {
            return Err(RoomError::NotCurrent);
        };
        let sender = Sender {
            conn: sender,
            id,
            ticket,
        };
        self.check_open(&st)?;
        if self.pipeline_broken() {
            self.settle(&mut st).await;
        }
        let to = from.peer();
        let conn = st.conns[to.index()].clone();
        if event.is_durable() {
            let staged = self.stage(&st, &[(&[to], &event)]);
            let rows: Vec<EventRow> = staged.into_iter().map(|(_, row)| row).collect();
            let first = rows.first().map_or(0, |r| r.seq);
            if let Some(last) = rows.last() {
                st.seq[to.index()] = last.seq;
            }
            let send = move |room: &Room, rows: Vec<EventRow>| {
                for row in rows {
                    room.hand_on(to, row.seq, row.body, conn.as_ref());
                }
            };
            self.enqueue(rows, (to, first), sender, send).await;
            return Ok(Routed::Pending);
        }
        let Some(conn) = conn else {
            return Err(RoomError::PeerAbsent);
        };
        st.seq[to.index()] += 1;
        let seq = st.seq[to.index()];
        let text = event.to_text(seq);
        if self.pipeline.pending.load(Ordering::SeqCst) == 0 {
            conn.send(text);
            // The seq, not the signal, goes into the log (not awaited: signal stays live-only), so
            // a room loaded again after a restart continues after it instead of issuing it twice.
            self.store
                .appender()
                .record_mark(&self.marks[to.index()], seq);
            return Ok(Routed::Now);
        }
        let send = move |room: &Room, _: Vec<EventRow>| {
            conn.send(text);
            room.store
                .appender()
                .record_mark(&room.marks[to.index()], seq);
        };
        self.enqueue(Vec::new(), (to, seq), sender, send).await;
        Ok(Routed::Pending)
    }

    /// Ends the session (`closed` or `expired`): both roles are sent `session.closed`, then their
    /// connections are closed with 4009 or 4010. Returns false if it had already ended.
    pub async fn end(&self, status: SessionStatus, by: &str) -> Result<bool, RoomError> {
        let mut st = self.state.lock().await;
        self.ensure_loaded(&mut st).await?;
        if st.ended.is_some() {
            return Ok(false);
        }
        self.settle(&mut st).await;
        let Some(rows) = self.end_rows(&st, status, by).await? else {
            // Ended elsewhere (another node, or the sweeper racing a REST call): take the
            // stored state.
            let stored = self
                .store
                .get_session(&self.id)
                .await?
                .ok_or(RoomError::NotFound)?;
            st.ended = Some(stored.status);
            return Ok(false);
        };
        st.ended = Some(status);
        if let Some(bus) = &self.cluster {
            // Every node (this one too) closes its connections when the end reaches it, after
            // handing on `session.closed`.
            self.announce(bus, rows);
            bus.end(&self.id, status);
            return Ok(true);
        }
        for row in rows {
            let role = Role::parse(row.role).expect("rows are for a role");
            st.seq[role.index()] = row.seq;
            self.hand_on(role, row.seq, row.body, st.conns[role.index()].as_ref());
        }
        // Event streams end with the session: their last event is `session.closed`.
        self.close_all(&mut st, status);
        Ok(true)
    }

    /// Commits the end of the session: the status, `session.closed` to both roles and its
    /// webhook, together. The rows as committed, or None if the session had ended already.
    pub(super) async fn end_rows(
        &self,
        st: &RoomState,
        status: SessionStatus,
        by: &str,
    ) -> Result<Option<Vec<EventRow>>, RoomError> {
        let session = self
            .store
            .get_session(&self.id)
            .await?
            .ok_or(RoomError::NotFound)?;
        let reason = if status == SessionStatus::Expired {
            "expired"
        } else {
            "closed"
        };
        let event = Event::SessionClosed {
            reason,
            by: by.to_owned(),
        };
        let mut rows: Vec<EventRow> = self
            .stage(st, &[(&Role::BOTH, &event)])
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        let now = now_ms();
        let data = serde_json::json!({
            "status": status.as_str(),
            "closed_by": by,
            "closed_at": rfc3339(now),
            "export_url": format!("{}/api/v1/sessions/{}/export", self.outbox.public_url(), self.id),
        });
        let outbox = self
            .outbox
            .rows(&session, EventType::SessionClosed, data, now);
        let ended_now = self
            .store
            .end_session(&self.id, status, now, by, &mut rows, &outbox)
            .await?;
        if !ended_now {
            return Ok(None);
        }
        self.outbox.notify();
        Ok(Some(rows))
    }

    /// Marks the room retired if nobody is connected, running `unlist` (its removal from the
    /// registry) under the room's lock, so no caller can find it retired and still listed.
    pub(super) async fn retire_if_empty(&self, unlist: impl FnOnce()) {
        let mut st = self.state.lock().await;
        let watched = {
            let mut watchers = self.watchers();
            watchers.retain(|w| !w.tx.is_closed());
            !watchers.is_empty()
        };
        if st.conns.iter().all(Option::is_none) && !watched && !st.retired {
            st.retired = true;
            if let Some(listener) = st.listener.take() {
                listener.abort();
            }
            unlist();
        }
    }
}
