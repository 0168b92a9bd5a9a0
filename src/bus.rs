//! The bus between the nodes of a cluster (`--nats-url`): NATS core publish/subscribe.
//!
//! On one node there is no bus: a room hands its events to its connections itself. With several
//! nodes, a node that commits an event publishes it on the session's subject, and every node with
//! a connection (or event-stream watcher) of that session subscribes to it and delivers what is
//! new to it ([`crate::session::Room`]). NATS core keeps no copy: durability is the database's,
//! and a receiver that sees a gap in the seqs reads the missing events from the log.
//!
//! Subjects, per session `S` (session ids are `ses_` and hex, valid subject tokens):
//! - `capturelink.s.S.e.ROLE`: an event for ROLE, the payload its exact text (`seq` first);
//! - `capturelink.s.S.claim.ROLE`: a connection of ROLE took epoch N (the payload): a node
//!   holding an older one closes it with 4008;
//! - `capturelink.s.S.gone.ROLE`: the connection of ROLE that had epoch N (the payload) left;
//! - `capturelink.s.S.end`: the session ended (`closed` or `expired`): close its connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::Role;
use crate::store::SessionStatus;

const PREFIX: &str = "capturelink.s";

#[derive(Debug, thiserror::Error)]
#[error("bus: {0}")]
pub struct BusError(String);

impl BusError {
    fn of(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// What one node tells the others about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMsg {
    Event { role: Role, body: String },
    Claim { role: Role, epoch: i64 },
    Gone { role: Role, epoch: i64 },
    End { status: SessionStatus },
}

/// This node's connection to NATS, and its name among the nodes.
pub struct Bus {
    client: async_nats::Client,
    node: String,
    /// What this node publishes goes out through one queue, in the order it was queued: a
    /// recipient's events leave this node in the order they were committed here.
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// Counts the connections to NATS made again after it was lost.
    reconnected: watch::Receiver<u64>,
}

enum Outgoing {
    Publish(String, Bytes),
    /// Answered once everything queued before it has been handed to the client.
    Flushed(oneshot::Sender<()>),
}

impl Bus {
    /// Connects to the NATS server (`nats://host:port`); fails at once when it cannot be reached,
    /// and reconnects on its own afterwards.
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let node = format!("node_{}", uuid::Uuid::now_v7().simple());
        let (reconnects, reconnected) = watch::channel(0u64);
        let reconnects = Arc::new(reconnects);
        let lost = Arc::new(AtomicBool::new(false));
        let client = async_nats::ConnectOptions::new()
            .name(format!("capturelink {node}"))
            .event_callback(move |event| {
                let (reconnects, lost) = (reconnects.clone(), lost.clone());
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            tracing::warn!("lost the connection to NATS");
                            lost.store(true, Ordering::SeqCst);
                        }
                        async_nats::Event::Connected if lost.swap(false, Ordering::SeqCst) => {
                            tracing::info!("connected to NATS again");
                            reconnects.send_modify(|n| *n += 1);
                        }
                        _ => {}
                    }
                }
            })
            .retry_on_initial_connect()
            .connection_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(BusError::of)?;
        // `retry_on_initial_connect` returns before the first connection: wait for it, bounded,
        // so that a wrong URL is an error at start rather than a node that never delivers.
        tokio::time::timeout(std::time::Duration::from_secs(10), client.flush())
            .await
            .map_err(|_| BusError(format!("no NATS server answered at {url}")))?
            .map_err(BusError::of)?;
        let (outgoing, mut queue) = mpsc::unbounded_channel();
        let publisher = client.clone();
        tokio::spawn(async move {
            while let Some(next) = queue.recv().await {
                match next {
                    Outgoing::Publish(subject, payload) => {
                        // Lost only if the client gives up on it (NATS down past its buffer):
                        // receivers then read the events from the log.
                        if let Err(e) = publisher.publish(subject, payload).await {
                            tracing::warn!(error = %e, "could not publish on the bus");
                        }
                    }
                    Outgoing::Flushed(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Ok(Self {
            client,
            node,
            outgoing,
            reconnected,
        })
    }

    /// Changes each time the connection to NATS is made again after it was lost. What was
    /// published meanwhile may not have arrived: the subscriptions are made again by the client,
    /// and the rooms read what they missed from the database
    /// ([`crate::session::Registry::resync`]).
    pub fn reconnected(&self) -> watch::Receiver<u64> {
        self.reconnected.clone()
    }

    /// This node's id (in the participants rows and node heartbeats).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Is the connection to NATS up (it reconnects by itself when not)?
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Subscribes to everything about one session. Returns once the server has the subscription,
    /// so whatever is published after this returns reaches it.
    pub async fn subscribe(&self, session: &str) -> Result<async_nats::Subscriber, BusError> {
        let sub = self
            .client
            .subscribe(format!("{PREFIX}.{session}.>"))
            .await
            .map_err(BusError::of)?;
        self.client.flush().await.map_err(BusError::of)?;
        Ok(sub)
    }

    fn publish(&self, subject: String, payload: Bytes) {
        // Fails only once the publishing task is gone, at the end of the process.
        let _ = self.outgoing.send(Outgoing::Publish(subject, payload));
    }

    /// Publishes a committed event for `role`.
    pub fn event(&self, session: &str, role: Role, body: String) {
        let subject = format!("{PREFIX}.{session}.e.{}", role.as_str());
        self.publish(subject, Bytes::from(body));
    }

    /// A connection of `role` took `epoch`.
    pub fn claim(&self, session: &str, role: Role, epoch: i64) {
        let subject = format!("{PREFIX}.{session}.claim.{}", role.as_str());
        self.publish(subject, Bytes::from(epoch.to_string()));
    }

    /// The connection of `role` that had `epoch` left.
    pub fn gone(&self, session: &str, role: Role, epoch: i64) {
        let subject = format!("{PREFIX}.{session}.gone.{}", role.as_str());
        self.publish(subject, Bytes::from(epoch.to_string()));
    }

    /// The session ended.
    pub fn end(&self, session: &str, status: SessionStatus) {
        let subject = format!("{PREFIX}.{session}.end");
        self.publish(subject, Bytes::from(status.as_str()));
    }

    /// Sends everything queued so far; at shutdown, so the last events are not lost with the
    /// process.
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.outgoing.send(Outgoing::Flushed(done)).is_ok() {
            let _ = flushed.await;
        }
        let _ = self.client.flush().await;
    }
}

/// Reads a message of a session's subscription; `None` for one this version does not know.
pub fn parse(subject: &str, payload: &[u8]) -> Option<BusMsg> {
    let rest = subject.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let mut parts = rest.splitn(3, '.');
    let _session = parts.next()?;
    let what = parts.next()?;
    let arg = parts.next();
    let role = || arg.and_then(Role::parse);
    let text = std::str::from_utf8(payload).ok()?;
    Some(match what {
        "e" => BusMsg::Event {
            role: role()?,
            body: text.to_owned(),
        },
        "claim" => BusMsg::Claim {
            role: role()?,
            epoch: text.parse().ok()?,
        },
        "gone" => BusMsg::Gone {
            role: role()?,
            epoch: text.parse().ok()?,
        },
        "end" => BusMsg::End {
            status: SessionStatus::parse(text)?,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_read_back() {
        assert_eq!(
            parse("capturelink.s.ses_1.e.customer", br#"{"seq":3}"#),
            Some(BusMsg::Event {
                role: Role::Customer,
                body: r#"{"seq":3}"#.into()
            })
        );
        assert_eq!(
            parse("capturelink.s.ses_1.claim.agent", b"12"),
            Some(BusMsg::Claim {
                role: Role::Agent,
                epoch: 12
            })
        );
        assert_eq!(
            parse("capturelink.s.ses_1.gone.agent", b"4"),
            Some(BusMsg::Gone {
                role: Role::Agent,
                epoch: 4
            })
        );
        assert_eq!(
            parse("capturelink.s.ses_1.end", b"expired"),
            Some(BusMsg::End {
                status: SessionStatus::Expired
            })
        );
        assert_eq!(parse("capturelink.s.ses_1.e.nobody", b"{}"), None);
        assert_eq!(parse("capturelink.s.ses_1.claim.agent", b"x"), None);
        assert_eq!(parse("other.s.ses_1.end", b"closed"), None);
    }
}
