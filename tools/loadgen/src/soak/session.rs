//! One session of the soak: an agent and a customer driven at a call's pace, and every frame they
//! receive checked against what the other sent.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use futures_util::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Rng, Session, Target, Ws, now_us, parse_tagged};
use crate::relay::Kind;

/// What all sessions add to.
pub struct Counters {
    pub(super) sent: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) uploads: AtomicU64,
    pub(super) captures: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) pong_max_us: AtomicU64,
    pub(super) by_kind: Mutex<BTreeMap<String, u64>>,
    pub(super) first: Mutex<Vec<String>>,
    pub(super) guide_latency: Mutex<Histogram<u64>>,
    pub(super) capture_latency: Mutex<Histogram<u64>>,
    pub(super) upload_latency: Mutex<Histogram<u64>>,
}

/// Errors printed as they happen; all are counted.
const ERRORS_SHOWN: usize = 50;

impl Counters {
    pub fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            captures: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pong_max_us: AtomicU64::new(0),
            by_kind: Mutex::default(),
            first: Mutex::default(),
            guide_latency: Mutex::new(common::histogram()),
            capture_latency: Mutex::new(common::histogram()),
            upload_latency: Mutex::new(common::histogram()),
        }
    }

    pub(super) fn error(&self, kind: &str, detail: String) {
        self.errors.fetch_add(1, Relaxed);
        *lock(&self.by_kind).entry(kind.to_owned()).or_default() += 1;
        let mut first = lock(&self.first);
        if first.len() < ERRORS_SHOWN {
            eprintln!("error: {kind}: {detail}");
            first.push(format!("{kind}: {detail}"));
        }
    }

    pub(super) fn record(h: &Mutex<Histogram<u64>>, d: Duration) {
        let _ = lock(h).record((d.as_micros() as u64).max(1));
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A JPEG made unique by a comment segment right after the start-of-image marker: the same
/// pixels, other bytes, so the server stores and fsyncs a file for it like for any new photo.
pub fn tagged_jpeg(jpeg: &[u8], tag: &str) -> Vec<u8> {
    let tag = &tag.as_bytes()[..tag.len().min(60_000)];
    let mut out = Vec::with_capacity(jpeg.len() + tag.len() + 4);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&(tag.len() as u16 + 2).to_be_bytes());
    out.extend_from_slice(tag);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Adds an `id` to a client message's JSON text.
fn with_id(msg: &str, id: u64) -> String {
    format!("{{\"id\":{id},{}", &msg[1..])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Agent,
    Customer,
}

impl Side {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Side::Agent => "agent",
            Side::Customer => "customer",
        }
    }
}

/// Relayed messages, each numbered in its own flow and checked at the receiver.
#[derive(Clone, Copy, Debug)]
pub(super) enum Flow {
    Guide,
    Camera,
    Request,
    ChatToCustomer,
    ChatToAgent,
    SignalToCustomer,
    SignalToAgent,
}

pub(super) const FLOW_NAMES: [&str; 7] = [
    "guide",
    "camera",
    "capture.request",
    "chat to the customer",
    "chat to the agent",
    "signal to the customer",
    "signal to the agent",
];

/// Timed actions of a session.
#[derive(Clone, Copy, Debug)]
enum Act {
    Guide,
    Camera,
    Capture,
    ChatAgent,
    ChatCustomer,
    SignalAgent,
    SignalCustomer,
    PingAgent,
    PingCustomer,
}

const ACTS: [Act; 9] = [
    Act::Guide,
    Act::Camera,
    Act::Capture,
    Act::ChatAgent,
    Act::ChatCustomer,
    Act::SignalAgent,
    Act::SignalCustomer,
    Act::PingAgent,
    Act::PingCustomer,
];

/// Some of the protocol's hints, used in turn.
const HINTS: [&str; 4] = ["closer", "left", "hold_steady", "more_light"];

/// What every session's task shares.
pub struct Shared {
    pub(super) counters: Arc<Counters>,
    pub(super) http: reqwest::Client,
    pub(super) target: Target,
    pub(super) stills: Vec<&'static [u8]>,
    /// Mean interval of each act, in `ACTS` order.
    pub(super) every: [Duration; ACTS.len()],
    pub(super) capture_timeout: Duration,
    pub(super) pong_timeout: Duration,
}

pub(super) struct Conn {
    pub(super) side: Side,
    pub(super) tx: SplitSink<Ws, Message>,
    pub(super) last_seq: u64,
    /// Messages sent with an `id` and not yet acknowledged (or refused).
    pub(super) acks_due: u64,
    pub(super) next_id: u64,
    /// When the outstanding ping was sent, and whether it was already reported late.
    pub(super) ping: Option<(Instant, bool)>,
}

pub(super) struct Pending {
    pub(super) requested: Instant,
    pub(super) uploaded: bool,
    pub(super) agent: bool,
    pub(super) customer: bool,
}

pub(super) type Upload = (String, Duration, Result<(reqwest::StatusCode, String)>);

pub struct Soaker {
    pub(super) n: usize,
    pub(super) session: Session,
    pub(super) agent: Conn,
    pub(super) customer: Conn,
    /// The read halves, until `drive` takes them.
    pub(super) rx: Option<(SplitStream<Ws>, SplitStream<Ws>)>,
    /// (sent, received) per flow.
    pub(super) flows: [(u64, u64); FLOW_NAMES.len()],
    pub(super) pending: HashMap<String, Pending>,
    pub(super) rng: Rng,
    pub(super) shared: Arc<Shared>,
    pub(super) broken: bool,
}

impl Soaker {
    pub fn new(n: usize, session: Session, pair: common::Pair, shared: Arc<Shared>) -> Self {
        let (agent_tx, agent_rx) = pair.agent.split();
        let (customer_tx, customer_rx) = pair.customer.split();
        let conn = |side, tx, last_seq| Conn {
            side,
            tx,
            last_seq,
            acks_due: 0,
            next_id: 0,
            ping: None,
        };
        Soaker {
            n,
            session,
            agent: conn(Side::Agent, agent_tx, pair.agent_seq),
            customer: conn(Side::Customer, customer_tx, pair.customer_seq),
            rx: Some((agent_rx, customer_rx)),
            flows: [(0, 0); FLOW_NAMES.len()],
            pending: HashMap::new(),
            rng: Rng::new(n as u64 + 1),
            shared,
            broken: false,
        }
    }

    pub(super) fn conn(&mut self, side: Side) -> &mut Conn {
        match side {
            Side::Agent => &mut self.agent,
            Side::Customer => &mut self.customer,
        }
    }

    pub(super) fn error(&self, kind: &str, detail: impl std::fmt::Display) {
        self.shared.counters.error(
            kind,
            format!("session {} ({}): {detail}", self.n, self.session.id),
        );
    }

    /// Sends a client message with an `id` that is to be acknowledged.
    async fn send(&mut self, side: Side, msg: &str) {
        let conn = self.conn(side);
        conn.next_id += 1;
        let text = with_id(msg, conn.next_id);
        conn.acks_due += 1;
        self.send_raw(side, text).await;
    }

    async fn send_raw(&mut self, side: Side, text: String) {
        if self.broken {
            return;
        }
        self.shared.counters.sent.fetch_add(1, Relaxed);
        if let Err(e) = self.conn(side).tx.send(Message::Text(text.into())).await {
            self.broken = true;
            self.error("unexpected_close", format!("{} send: {e}", side.as_str()));
        }
    }

    fn next_tag(&mut self, flow: Flow) -> u64 {
        self.flows[flow as usize].0 += 1;
        self.flows[flow as usize].0
    }

    async fn act(&mut self, act: Act) {
        let pad = |k: u64| format!(" msg:{k};");
        match act {
            Act::Guide => {
                let k = self.next_tag(Flow::Guide);
                let (x, y) = (self.rng.unit() * 0.5, self.rng.unit() * 0.5);
                let hint = HINTS[(self.rng.next_u64() % HINTS.len() as u64) as usize];
                let msg = format!(
                    r#"{{"type":"guide","box":{{"x":{x:.3},"y":{y:.3},"w":0.4,"h":0.3}},"hint":"{hint}","text":"ts:{}; msg:{k}; the dent on the front left door"}}"#,
                    now_us()
                );
                self.send(Side::Agent, &msg).await;
            }
            Act::Camera => {
                let k = self.next_tag(Flow::Camera);
                let msg = if k % 2 == 1 {
                    format!(r#"{{"type":"camera","torch":{}}}"#, k % 4 == 1)
                } else {
                    format!(r#"{{"type":"camera","zoom":{}}}"#, 1 + k % 3)
                };
                self.send(Side::Agent, &msg).await;
            }
            Act::Capture => {
                let k = self.next_tag(Flow::Request);
                let request_id = format!("soak-{}-msg:{k}", self.n);
                self.pending.insert(
                    request_id.clone(),
                    Pending {
                        requested: Instant::now(),
                        uploaded: false,
                        agent: false,
                        customer: false,
                    },
                );
                self.send(Side::Agent, &common::capture_request(&request_id))
                    .await;
            }
            Act::ChatAgent | Act::ChatCustomer | Act::SignalAgent | Act::SignalCustomer => {
                let (side, flow, kind) = match act {
                    Act::ChatAgent => (Side::Agent, Flow::ChatToCustomer, Kind::Chat),
                    Act::ChatCustomer => (Side::Customer, Flow::ChatToAgent, Kind::Chat),
                    Act::SignalAgent => (Side::Agent, Flow::SignalToCustomer, Kind::Signal),
                    _ => (Side::Customer, Flow::SignalToAgent, Kind::Signal),
                };
                let k = self.next_tag(flow);
                self.send(side, &kind.message(now_us(), &pad(k))).await;
            }
            Act::PingAgent | Act::PingCustomer => {
                let side = if matches!(act, Act::PingAgent) {
                    Side::Agent
                } else {
                    Side::Customer
                };
                // Like the pages: one ping at a time, answered or given up on.
                if self.conn(side).ping.is_none() {
                    self.conn(side).ping = Some((Instant::now(), false));
                    let msg = format!(r#"{{"type":"ping","t":{}}}"#, now_us());
                    self.send_raw(side, msg).await;
                }
            }
        }
    }

    fn upload(&self, request_id: String) -> JoinHandle<Upload> {
        let shared = self.shared.clone();
        let session = self.session.clone();
        let k = parse_tagged(&request_id, "msg:").unwrap_or(0) as usize;
        let still = shared.stills[(self.n + k) % shared.stills.len()];
        tokio::spawn(async move {
            let jpeg = tagged_jpeg(still, &request_id);
            let started = Instant::now();
            let r = common::upload_still(&shared.http, &shared.target, &session, &request_id, jpeg)
                .await;
            (request_id, started.elapsed(), r)
        })
    }
}

/// One frame from a connection; false once the connection is gone.
fn frame_ok(
    s: &mut Soaker,
    side: Side,
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    uploads: &mut FuturesUnordered<JoinHandle<Upload>>,
) -> bool {
    match frame {
        Some(Ok(Message::Text(t))) => {
            if let Some(rid) = s.on_text(side, &t) {
                uploads.push(s.upload(rid));
            }
            true
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => true,
        other => {
            s.broken = true;
            s.error("unexpected_close", format!("{}: {other:?}", side.as_str()));
            false
        }
    }
}

pub async fn drive(mut s: Soaker, start: Instant, end: Instant, drain_until: Instant) {
    let Some((mut agent_rx, mut customer_rx)) = s.rx.take() else {
        return;
    };
    let every = s.shared.every;
    let mut timers: Vec<Instant> = every
        .iter()
        .map(|e| start + e.mul_f64(s.rng.unit()))
        .collect();
    let mut uploads = FuturesUnordered::new();
    loop {
        let loading = Instant::now() < end;
        if !loading && uploads.is_empty() && s.settled() {
            break;
        }
        let wake = if loading {
            timers.iter().copied().min().unwrap_or(end).min(end)
        } else {
            drain_until
        };
        tokio::select! {
            f = agent_rx.next() => if !frame_ok(&mut s, Side::Agent, f, &mut uploads) { break },
            f = customer_rx.next() => if !frame_ok(&mut s, Side::Customer, f, &mut uploads) { break },
            Some(done) = uploads.next(), if !uploads.is_empty() => s.on_upload(done),
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= drain_until {
                    break;
                }
                if now < end {
                    for (i, act) in ACTS.iter().enumerate() {
                        if timers[i] <= now {
                            s.act(*act).await;
                            timers[i] = now + every[i].mul_f64(0.5 + s.rng.unit());
                        }
                    }
                }
                s.check_timeouts();
            }
        }
    }
    s.finish();
    // Close both ends cleanly and read until the server's close arrives.
    let _ = s.agent.tx.send(Message::Close(None)).await;
    let _ = s.customer.tx.send(Message::Close(None)).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = agent_rx.next().await {}
        while let Some(Ok(_)) = customer_rx.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_jpeg_has_other_bytes_and_the_same_picture() {
        let jpeg = crate::capture::camera_like(64, 48, 1, 90).unwrap();
        let a = tagged_jpeg(&jpeg, "soak-1-msg:1");
        let b = tagged_jpeg(&jpeg, "soak-1-msg:2");
        assert_ne!(a, b);
        let decode = |bytes: &[u8]| image::load_from_memory(bytes).unwrap().to_rgb8();
        assert_eq!(decode(&a), decode(&jpeg));
        assert_eq!(decode(&b), decode(&jpeg));
    }

    #[test]
    fn ids_go_first() {
        assert_eq!(
            with_id(r#"{"type":"chat"}"#, 7),
            r#"{"id":7,"type":"chat"}"#
        );
    }
}
