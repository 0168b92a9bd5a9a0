//! A room when several nodes serve the same sessions (`--nats-url`): the database numbers the
//! events, the bus carries them to the node holding the recipient, and who is connected is a row
//! with an epoch rather than this node's memory.
//!
//! What a room holds here is only what is local: its connections (with the epoch each claimed),
//! event-stream watchers, and per recipient the last seq it has handed on (`RoomState::seq`).
//! Every committed event, this node's own included, arrives through the session's subscription
//! and is handed on by [`Room::on_bus`] in seq order: what is already handed on is dropped, and a
//! gap is filled from the log before the event that revealed it. A joining connection reads the
//! log up to what the room has handed on, under the room's lock, so nothing falls between.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::OwnedSemaphorePermit;

use futures_util::StreamExt;

use crate::auth::Role;
use crate::bus::{Bus, BusMsg};
use crate::signaling::protocol::{self, Event, LeaveReason};
use crate::store::{EventRow, SessionStatus, now_ms};

use super::room::{
    CloseSpec, ConnHandle, Joined, Room, RoomError, RoomState, Routed, Sender, close_code,
};

/// How often a node records that it is alive, and how long after its last record its
/// participants count as gone (it died or was cut off).
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(3);
pub const NODE_STALE_MS: i64 = 10_000;

impl Room {
    /// Subscribes to the session and reads where its log stands, the first time the room is used.
    pub(super) async fn load_clustered(
        &self,
        bus: &Arc<Bus>,
        st: &mut RoomState,
    ) -> Result<(), RoomError> {
        if st.retired {
            return Err(RoomError::Retired);
        }
        if st.loaded {
            return Ok(());
        }
        // Subscribed first: whatever is committed after the log is read below arrives here.
        let mut sub = bus.subscribe(&self.id).await?;
        self.read_state(st).await?;
        let present = self
            .store
            .connected_roles(&self.id, now_ms() - NODE_STALE_MS)
            .await?;
        for role in Role::BOTH {
            self.present[role.index()].store(
                present.iter().any(|r| r == role.as_str()),
                Ordering::Relaxed,
            );
        }
        let me = self.me.clone();
        let listener = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(room) = me.upgrade() else { break };
                match crate::bus::parse(msg.subject.as_str(), &msg.payload) {
                    Some(msg) => room.on_bus(msg).await,
                    None => tracing::warn!(subject = %msg.subject, "unknown bus message"),
                }
            }
        });
        st.listener = Some(listener.abort_handle());
        st.loaded = true;
        Ok(())
    }

    /// A message of the session's subscription.
    async fn on_bus(&self, msg: BusMsg) {
        let mut st = self.state.lock().await;
        if st.retired || !st.loaded {
            return;
        }
        match msg {
            BusMsg::Event { role, body } => {
                let Some(seq) = protocol::seq_of(&body) else {
                    tracing::warn!("bus event without a seq");
                    return;
                };
                let i = role.index();
                if seq <= st.seq[i] {
                    return;
                }
                if seq > st.seq[i] + 1 {
                    self.catch_up(&mut st, role, seq - 1).await;
                }
                st.seq[i] = seq;
                self.hand_on(role, seq, body, st.conns[i].as_ref());
            }
            BusMsg::Claim { role, epoch } => {
                self.present[role.index()].store(true, Ordering::Relaxed);
                self.replace_older(&mut st, role, epoch);
            }
            BusMsg::Gone { role, epoch } => {
                // A newer connection may have claimed the role already (its claim can come
                // first, from another node): then the role is still present.
                if epoch >= st.newest_epoch[role.index()] {
                    self.present[role.index()].store(false, Ordering::Relaxed);
                }
            }
            BusMsg::End { status } => {
                st.ended = Some(status);
                self.close_all(&mut st, status);
            }
        }
    }

    /// After the bus was down, when what other nodes published meanwhile may be lost: the events
    /// of each local listener, the end of the session, the newest connection of each role and
    /// who is connected are read from the database instead. The events come first: an ended
    /// session's last events (its `session.closed`) are in the log before its connections close.
    pub async fn resync(&self) {
        let mut st = self.state.lock().await;
        if st.retired || !st.loaded || st.ended.is_some() {
            return;
        }
        for role in Role::BOTH {
            if let Err(e) = self.catch_up_to_log(&mut st, role).await {
                tracing::warn!(session = %self.id, error = %e, "could not read missed events");
            }
        }
        match self.store.get_session(&self.id).await {
            Ok(Some(row)) => {
                let status = row.status_at(now_ms());
                if !status.is_open() {
                    st.ended = Some(status);
                    self.close_all(&mut st, status);
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(session = %self.id, error = %e, "could not re-read the session")
            }
        }
        // A newer connection claimed a role on another node: the one here was replaced.
        match self.store.participant_epochs(&self.id).await {
            Ok(epochs) => {
                for (role, epoch) in epochs {
                    if let Some(role) = Role::parse(&role) {
                        self.replace_older(&mut st, role, epoch);
                    }
                }
            }
            Err(e) => tracing::warn!(session = %self.id, error = %e, "could not re-read epochs"),
        }
        match self
            .store
            .connected_roles(&self.id, now_ms() - NODE_STALE_MS)
            .await
        {
            Ok(present) => {
                for role in Role::BOTH {
                    self.present[role.index()].store(
                        present.iter().any(|r| r == role.as_str()),
                        Ordering::Relaxed,
                    );
                }
            }
            Err(e) => tracing::warn!(session = %self.id, error = %e, "could not re-read presence"),
        }
    }

    /// `epoch` of `role` was claimed: a local connection of an older epoch is closed (4008).
    fn replace_older(&self, st: &mut RoomState, role: Role, epoch: i64) {
        let i = role.index();
        st.newest_epoch[i] = st.newest_epoch[i].max(epoch);
        if st.epoch[i] < epoch
            && let Some(old) = st.conns[i].take()
        {
            old.close(CloseSpec {
                code: close_code::REPLACED,
                reason: "replaced by a newer connection",
            });
        }
    }

    /// Hands on the logged events of `role` after what was handed on, up to `upto` (the seqs in
    /// between that the log lacks were live-only signals that did not arrive: they are skipped).
    async fn catch_up(&self, st: &mut RoomState, role: Role, upto: i64) {
        let i = role.index();
        let listening = st.conns[i].is_some() || self.watchers().iter().any(|w| w.role == role);
        if listening && upto > st.seq[i] {
            match self
                .store
                .events_between(&self.id, role.as_str(), st.seq[i], upto)
                .await
            {
                Ok(rows) => {
                    for (seq, body) in rows {
                        self.hand_on(role, seq, body, st.conns[i].as_ref());
                    }
                }
                Err(e) => {
                    // They cannot be handed on in order now: the listeners go, and resume from
                    // the log when they come back.
                    tracing::warn!(error = %e, "could not read missed events");
                    self.watchers().retain(|w| w.role != role);
                    if let Some(conn) = &st.conns[i] {
                        conn.close(CloseSpec {
                            code: close_code::INTERNAL,
                            reason: "missed events: reconnect to resume",
                        });
                    }
                }
            }
        }
        st.seq[i] = st.seq[i].max(upto);
    }

    /// Brings `role` up to what the log holds now (before a new listener is served from it).
    async fn catch_up_to_log(&self, st: &mut RoomState, role: Role) -> Result<i64, RoomError> {
        let (agent, customer) = self.store.last_seqs(&self.id).await?;
        let logged = [agent, customer][role.index()];
        self.catch_up(st, role, logged).await;
        Ok(st.seq[role.index()])
    }

    pub(super) fn close_all(&self, st: &mut RoomState, status: SessionStatus) {
        let spec = if status == SessionStatus::Expired {
            CloseSpec {
                code: close_code::EXPIRED,
                reason: "session expired",
            }
        } else {
            CloseSpec {
                code: close_code::SESSION_CLOSED,
                reason: "session closed",
            }
        };
        self.watchers().clear();
        for (i, slot) in st.conns.iter_mut().enumerate() {
            if let Some(conn) = slot.take() {
                conn.close(spec);
            }
            self.present[i].store(false, Ordering::Relaxed);
        }
    }

    /// Sends committed rows on the bus (to every node, this one included).
    pub(super) fn announce(&self, bus: &Bus, rows: Vec<EventRow>) {
        for row in rows {
            let role = Role::parse(row.role).expect("rows are for a role");
            bus.event(&self.id, role, row.body);
        }
    }

    /// Numbers, logs and announces a durable event for each of `to`.
    pub(super) async fn publish_clustered(
        &self,
        bus: &Bus,
        st: &RoomState,
        to: &[Role],
        event: &Event,
    ) -> Result<(), RoomError> {
        let rows: Vec<EventRow> = self
            .stage(st, &[(to, event)])
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        // The appender's group commit numbers them (several rooms' events share a commit).
        let rows = self.store.appender().append(rows).await?;
        self.announce(bus, rows);
        Ok(())
    }

    pub(super) async fn join_clustered(
        &self,
        bus: &Arc<Bus>,
        role: Role,
        conn: ConnHandle,
        last_seq: Option<i64>,
    ) -> Result<Joined, RoomError> {
        let mut st = self.state.lock().await;
        self.load_clustered(bus, &mut st).await?;
        self.check_open(&st)?;
        let session = self.activate(role).await?;
        // Whoever listens for this role here now is brought up to the log before the newcomer is
        // served from it.
        let current = self.catch_up_to_log(&mut st, role).await?;
        let i = role.index();
        let claim = self
            .store
            .claim_participant(&self.id, role.as_str(), bus.node(), now_ms())
            .await?;
        if let Some(old) = st.conns[i].replace(conn) {
            old.close(CloseSpec {
                code: close_code::REPLACED,
                reason: "replaced by a newer connection",
            });
        }
        st.epoch[i] = claim.epoch;
        st.newest_epoch[i] = st.newest_epoch[i].max(claim.epoch);
        self.present[i].store(true, Ordering::Relaxed);
        let peer = role.peer();
        let announced = async {
            bus.claim(&self.id, role, claim.epoch);
            if claim.replaced {
                let left = Event::PeerLeft {
                    role,
                    reason: LeaveReason::Replaced,
                };
                self.publish_clustered(bus, &st, &[peer], &left).await?;
            }
            self.publish_clustered(bus, &st, &[peer], &Event::PeerJoined { role })
                .await
        }
        .await;
        if let Err(e) = announced {
            st.conns[i] = None;
            let _ = self
                .store
                .release_participant(&self.id, role.as_str(), claim.epoch)
                .await;
            self.present[i].store(false, Ordering::Relaxed);
            return Err(e);
        }
        let peer_present = self.present[peer.index()].load(Ordering::Relaxed);
        self.joined(role, session, last_seq, current, peer_present)
            .await
    }

    pub(super) async fn leave_clustered(
        &self,
        bus: &Bus,
        role: Role,
        conn_id: u64,
        reason: LeaveReason,
    ) -> bool {
        let mut st = self.state.lock().await;
        let i = role.index();
        if st.conns[i].as_ref().map(|c| c.id) == Some(conn_id) {
            st.conns[i] = None;
            let released = self
                .store
                .release_participant(&self.id, role.as_str(), st.epoch[i])
                .await;
            match released {
                Ok(true) => {
                    self.present[i].store(false, Ordering::Relaxed);
                    let told = async {
                        bus.gone(&self.id, role, st.epoch[i]);
                        if st.ended.is_none() {
                            let left = Event::PeerLeft { role, reason };
                            self.publish_clustered(bus, &st, &[role.peer()], &left)
                                .await?;
                        }
                        Ok::<_, RoomError>(())
                    }
                    .await;
                    if let Err(e) = told {
                        tracing::warn!(error = %e, "could not log peer.left");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not record the departure"),
            }
        }
        st.conns.iter().all(Option::is_none)
    }

    /// A relayed message, pipelined as on one node: numbered and logged (a signal: numbered
    /// only) by the appender's group commit, then announced on the bus and acknowledged by the
    /// writer's continuation, in queue order, while the connection goes on with its next message.
    pub(super) async fn relay_clustered(
        self: &Arc<Self>,
        bus: &Arc<Bus>,
        from: Role,
        conn_id: u64,
        event: Event,
        reply: (Option<serde_json::Value>, OwnedSemaphorePermit),
    ) -> Result<Routed, RoomError> {
        let mut st = self.state.lock().await;
        let Some(conn) = st.conns[from.index()].clone().filter(|c| c.id == conn_id) else {
            return Err(RoomError::NotCurrent);
        };
        self.check_open(&st)?;
        // After a failed commit the chain takes batches again once those queued have failed:
        // their numbers went back with their transaction, so there is nothing to renumber.
        if self.pipeline_broken() {
            self.settle(&mut st).await;
        }
        let to = from.peer();
        let row = if event.is_durable() {
            let (_, row) = self.stage(&st, &[(&[to], &event)]).remove(0);
            row
        } else {
            if !self.present[to.index()].load(Ordering::Relaxed) {
                return Err(RoomError::PeerAbsent);
            }
            // Numbered with the group, not stored.
            EventRow {
                session_id: self.id.clone(),
                role: to.as_str(),
                seq: 0,
                kind: event.kind(),
                body: event.to_text(0),
                created_at: now_ms(),
            }
        };
        let bus = Arc::clone(bus);
        let send = move |room: &Room, rows: Vec<EventRow>| room.announce(&bus, rows);
        let (id, ticket) = reply;
        // No seq to rewind to: the database numbers at commit.
        let nothing_to_rewind = (to, i64::MAX);
        self.enqueue(
            vec![row],
            nothing_to_rewind,
            Sender::new(conn, id, ticket),
            send,
        )
        .await;
        Ok(Routed::Pending)
    }

    pub(super) async fn watch_clustered(
        &self,
        bus: &Arc<Bus>,
        role: Role,
        after: Option<i64>,
    ) -> Result<super::room::Watch, RoomError> {
        let mut st = self.state.lock().await;
        self.load_clustered(bus, &mut st).await?;
        let current = self.catch_up_to_log(&mut st, role).await?;
        self.add_watcher(&st, role, after, current).await
    }
}
