//! The live rooms of this node, by session id. A room is created when first needed and dropped
//! when its last connection leaves or its session ends; its state then lives only in the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::auth::Role;
use crate::signaling::protocol::{Event, LeaveReason, NewSlot};
use crate::store::captures::{CaptureRow, NewCapture};
use crate::store::{SessionStatus, SlotRow, Store, now_ms};

use super::view::CaptureView;
use crate::webhooks::{Outbox, OutboxRow};

use super::room::{ConnHandle, Joined, Room, RoomError, Watch};
use super::view::Presence;
use crate::bus::Bus;

pub struct Registry {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    store: Store,
    outbox: Arc<Outbox>,
    /// Several nodes: the bus to the others (see `super::cluster`).
    cluster: Option<Arc<Bus>>,
}

impl Registry {
    pub fn new(store: Store, outbox: Arc<Outbox>, cluster: Option<Arc<Bus>>) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            store,
            outbox,
            cluster,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Room>>> {
        // A panic while holding this lock cannot leave the map half-changed: recover it.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn room(&self, id: &str) -> Arc<Room> {
        self.lock()
            .entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new_cyclic(|me| {
                    Room::new(
                        id.to_owned(),
                        self.store.clone(),
                        self.outbox.clone(),
                        self.cluster.clone(),
                        me.clone(),
                    )
                })
            })
            .clone()
    }

    /// Runs `f` on the session's room, looking it up again if it was retired meanwhile.
    async fn with_room<T, F, Fut>(&self, id: &str, f: F) -> Result<T, RoomError>
    where
        F: Fn(Arc<Room>) -> Fut,
        Fut: std::future::Future<Output = Result<T, RoomError>>,
    {
        loop {
            match f(self.room(id)).await {
                Err(RoomError::Retired) => continue,
                Err(RoomError::NotFound) => {
                    self.unlist(id, None);
                    return Err(RoomError::NotFound);
                }
                other => return other,
            }
        }
    }

    fn unlist(&self, id: &str, only: Option<&Arc<Room>>) {
        let mut rooms = self.lock();
        if only.is_none_or(|r| rooms.get(id).is_some_and(|cur| Arc::ptr_eq(cur, r))) {
            rooms.remove(id);
        }
    }

    pub async fn join(
        &self,
        id: &str,
        role: Role,
        conn: ConnHandle,
        last_seq: Option<i64>,
    ) -> Result<(Arc<Room>, Joined), RoomError> {
        self.with_room(id, |room| {
            let conn = conn.clone();
            async move {
                let joined = room.join(role, conn, last_seq).await?;
                Ok((room, joined))
            }
        })
        .await
    }

    pub async fn leave(&self, room: &Arc<Room>, role: Role, conn_id: u64, reason: LeaveReason) {
        if room.leave(role, conn_id, reason).await {
            self.retire(room).await;
        }
    }

    /// An event stream of the session has ended: its room goes if nobody else is in it (a closed
    /// stream is otherwise only noticed by the room's next event or departure).
    pub async fn watch_ended(&self, id: &str) {
        let room = self.lock().get(id).cloned();
        if let Some(room) = room {
            self.retire(&room).await;
        }
    }

    async fn retire(&self, room: &Arc<Room>) {
        room.retire_if_empty(|| self.unlist(&room.id, Some(room)))
            .await;
    }

    /// Closes or expires a session; false if it had already ended.
    pub async fn end(&self, id: &str, status: SessionStatus, by: &str) -> Result<bool, RoomError> {
        let ended = self
            .with_room(id, |room| async move {
                let ended = room.end(status, by).await?;
                Ok((room, ended))
            })
            .await?;
        self.retire(&ended.0).await;
        Ok(ended.1)
    }

    /// Publishes a durable event into a session's log and to whoever of `to` is connected.
    pub async fn publish(
        &self,
        id: &str,
        to: &[Role],
        event: &crate::signaling::protocol::Event,
    ) -> Result<(), RoomError> {
        let room = self
            .with_room(id, |room| async move {
                room.publish_event(to, event).await?;
                Ok(room)
            })
            .await?;
        self.retire(&room).await;
        Ok(())
    }

    /// Stores a capture with its events: `capture.created` to both roles and, when it fills a
    /// checklist slot, `checklist.updated`. The capture row, the slot, the request it fulfils and
    /// the events commit in one transaction, then both screens are sent the events.
    pub async fn store_capture(
        &self,
        capture: &CaptureRow,
        outbox: &[OutboxRow],
    ) -> Result<(), RoomError> {
        let public_url = self.outbox.public_url();
        let room = self
            .with_room(&capture.session_id, |room| async move {
                room.publish_with(
                    || async {
                        let view = CaptureView::new(capture, public_url);
                        let mut events = vec![(
                            Role::BOTH.to_vec(),
                            Event::CaptureCreated {
                                capture: Box::new(view),
                            },
                        )];
                        if let Some(slot_id) = &capture.slot_id {
                            let mut slots = self.store.slots(&capture.session_id).await?;
                            for s in slots.iter_mut().filter(|s| &s.id == slot_id) {
                                s.status = "done".into();
                                s.capture_id = Some(capture.id.clone());
                            }
                            events.push((
                                Role::BOTH.to_vec(),
                                Event::ChecklistUpdated { checklist: slots },
                            ));
                        }
                        Ok((events, ()))
                    },
                    |mut rows, ()| async move {
                        self.store
                            .insert_capture(NewCapture {
                                capture,
                                fulfils: capture.request_id.as_deref(),
                                events: &mut rows,
                                outbox,
                            })
                            .await?;
                        Ok(rows)
                    },
                )
                .await?;
                Ok(room)
            })
            .await?;
        self.outbox.notify();
        self.retire(&room).await;
        Ok(())
    }

    /// Adds a checklist slot (the agent's `checklist.add`) and sends both roles the new list.
    pub async fn add_slot(&self, id: &str, slot: &NewSlot) -> Result<(), RoomError> {
        let room = self
            .with_room(id, |room| async move {
                room.publish_with(
                    || async {
                        let mut checklist = self.store.slots(id).await?;
                        let position = checklist.iter().map(|s| s.position).max().unwrap_or(0) + 1;
                        let row = SlotRow {
                            id: format!("slot_{position}"),
                            position,
                            area: slot.area.clone(),
                            angle: slot.angle.clone(),
                            label: slot.label.clone(),
                            status: "pending".into(),
                            capture_id: None,
                        };
                        checklist.push(row.clone());
                        Ok((
                            vec![(Role::BOTH.to_vec(), Event::ChecklistUpdated { checklist })],
                            row,
                        ))
                    },
                    |mut rows, row| async move {
                        self.store
                            .insert_slot_with_events(id, &row, &mut rows)
                            .await?;
                        Ok(rows)
                    },
                )
                .await?;
                Ok(room)
            })
            .await?;
        self.retire(&room).await;
        Ok(())
    }

    /// Subscribes to a role's durable events; see [`Room::watch`].
    pub async fn watch(
        &self,
        id: &str,
        role: Role,
        after: Option<i64>,
    ) -> Result<Watch, RoomError> {
        self.with_room(id, |room| async move { room.watch(role, after).await })
            .await
    }

    /// Who is connected to a session: on one node, to this node; with several, to any node
    /// alive (read from the participants rows).
    pub async fn presence(&self, id: &str) -> Result<Presence, crate::store::StoreError> {
        if self.cluster.is_some() {
            let roles = self
                .store
                .connected_roles(id, now_ms() - super::cluster::NODE_STALE_MS)
                .await?;
            let has = |role: Role| roles.iter().any(|r| r == role.as_str());
            return Ok(Presence {
                agent: has(Role::Agent),
                customer: has(Role::Customer),
            });
        }
        Ok(self
            .lock()
            .get(id)
            .map(|r| r.presence())
            .unwrap_or_default())
    }

    /// How many sessions have at least one participant connected.
    pub fn active_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|r| {
                let p = r.presence();
                p.agent || p.customer
            })
            .count()
    }

    /// Expires every open session whose time is up. Returns how many it expired.
    pub async fn expire_due(&self) -> Result<usize, RoomError> {
        let due = self.store.due_expiries(now_ms(), 256).await?;
        let mut n = 0;
        for id in due {
            match self.end(&id, SessionStatus::Expired, "expiry").await {
                Ok(true) => n += 1,
                Ok(false) | Err(RoomError::NotFound) => {}
                Err(e) => tracing::warn!(session = %id, error = %e, "could not expire session"),
            }
        }
        Ok(n)
    }

    /// The bus to the other nodes, when there are several.
    /// Several nodes, after the bus was down: every live room reads what it may have missed
    /// (see [`Room::resync`]).
    pub async fn resync(&self) {
        // A round trip first: the client makes its subscriptions again before anything queued
        // after the reconnection, so once the server has answered, whatever is published after
        // the log is read below reaches the rooms.
        if let Some(bus) = self.bus() {
            bus.flush().await;
        }
        let rooms: Vec<Arc<Room>> = self.lock().values().cloned().collect();
        for room in rooms {
            room.resync().await;
        }
    }

    pub fn bus(&self) -> Option<&Arc<Bus>> {
        self.cluster.as_ref()
    }

    pub fn live_rooms(&self) -> usize {
        self.lock().len()
    }
}
