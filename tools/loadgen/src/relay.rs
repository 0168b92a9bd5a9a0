//! Relay throughput and latency: N pairs, each an agent and a customer of one session. The agent
//! keeps `in_flight` messages on their way; each one the customer receives is timed (its payload
//! carries the send time) and answered by the agent's next one.

use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Latency, Pair, Target, now_us, parse_ts};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Live-only (no database write): an ICE candidate's shape, about 200 bytes.
    Signal,
    /// Durable (group-committed to SQLite before it is sent): a target box, a hint and a text.
    Guide,
    /// Durable: a chat line.
    Chat,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Signal => "signal",
            Kind::Guide => "guide",
            Kind::Chat => "chat",
        }
    }

    /// The agent's message, timestamped. The bare relay forwards the same bytes.
    pub fn message(self, ts: u64, pad: &str) -> String {
        match self {
            Kind::Signal => format!(
                r#"{{"type":"signal","data":{{"candidate":"candidate:842163049 1 udp 1677729535 192.0.2.17 50234 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag ts:{ts}; network-cost 999{pad}","sdpMid":"0","sdpMLineIndex":0}}}}"#
            ),
            Kind::Guide => format!(
                r#"{{"type":"guide","box":{{"x":0.21,"y":0.34,"w":0.4,"h":0.28}},"hint":"closer","text":"ts:{ts}; the dent on the front left door{pad}"}}"#
            ),
            Kind::Chat => format!(
                r#"{{"type":"chat","text":"ts:{ts}; Please step back a little so the whole bumper is in the frame.{pad}"}}"#
            ),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub pairs: usize,
    pub in_flight: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub kind: Kind,
    /// Extra payload characters per message.
    pub pad: usize,
    /// Sessions set up at once.
    pub connect_concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub target: &'static str,
    pub message: Kind,
    pub pairs: usize,
    pub in_flight: usize,
    pub duration_s: f64,
    /// Messages received by customers inside the measured window.
    pub messages: u64,
    pub throughput_per_s: f64,
    pub latency: Latency,
    /// `error` frames the agents received (rate limits, refusals): must be 0 for a valid run.
    pub errors: u64,
    /// Pairs whose connection broke during the run: must be 0 for a valid run.
    pub broken_pairs: usize,
    /// CPU the server used in the window, in % of one core (when its pid was given).
    pub server_cpu_pct: Option<f64>,
    pub setup_s: f64,
}

struct PairResult {
    hist: Histogram<u64>,
    messages: u64,
    errors: u64,
    broken: bool,
}

pub async fn run(target: &Target, opts: &Opts, server_pid: Option<u32>) -> Result<Outcome> {
    if opts.in_flight == 0 || opts.pairs == 0 {
        bail!("--pairs and --in-flight must be positive");
    }
    let http = common::http_client()?;
    let setup = Instant::now();
    let pairs: Vec<Result<Pair>> = stream::iter(0..opts.pairs)
        .map(|n| {
            let (http, target) = (&http, target);
            async move { common::open_pair(http, target, n, None).await }
        })
        .buffer_unordered(opts.connect_concurrency.max(1))
        .collect()
        .await;
    let pairs: Vec<Pair> = pairs.into_iter().collect::<Result<_>>()?;
    let setup_s = setup.elapsed().as_secs_f64();

    let start = Instant::now();
    let measure_from = start + opts.warmup;
    let measure_to = measure_from + opts.duration;
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|p| tokio::spawn(drive(p, opts.clone(), measure_from, measure_to)))
        .collect();

    let cpu = server_pid.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from).await;
            let before = common::cpu_ticks(pid)?;
            tokio::time::sleep_until(measure_to).await;
            let after = common::cpu_ticks(pid)?;
            Some(after.saturating_sub(before))
        })
    });

    let mut hist = common::histogram();
    let (mut messages, mut errors, mut broken) = (0, 0, 0);
    for t in tasks {
        let r = t.await?;
        hist.add(&r.hist)?;
        messages += r.messages;
        errors += r.errors;
        broken += usize::from(r.broken);
    }
    let server_cpu_pct = match cpu {
        Some(c) => c
            .await?
            .map(|ticks| ticks as f64 / opts.duration.as_secs_f64()),
        None => None,
    };
    let duration_s = opts.duration.as_secs_f64();
    Ok(Outcome {
        target: target.name(),
        message: opts.kind,
        pairs: opts.pairs,
        in_flight: opts.in_flight,
        duration_s,
        messages,
        throughput_per_s: messages as f64 / duration_s,
        latency: Latency::of(&hist),
        errors,
        broken_pairs: broken,
        server_cpu_pct,
        setup_s,
    })
}

/// One pair's loop: refill the window on every receipt until the end, then let the last messages
/// land and close both sockets.
async fn drive(pair: Pair, opts: Opts, measure_from: Instant, measure_to: Instant) -> PairResult {
    let pad = "x".repeat(opts.pad);
    let mut r = PairResult {
        hist: common::histogram(),
        messages: 0,
        errors: 0,
        broken: false,
    };
    let (mut agent_tx, mut agent_rx) = pair.agent.split();
    let (mut customer_tx, mut customer_rx) = pair.customer.split();

    for _ in 0..opts.in_flight {
        if agent_tx
            .feed(Message::Text(opts.kind.message(now_us(), &pad).into()))
            .await
            .is_err()
        {
            r.broken = true;
            return r;
        }
    }
    if agent_tx.flush().await.is_err() {
        r.broken = true;
        return r;
    }
    let mut outstanding = opts.in_flight;
    let give_up = measure_to + Duration::from_secs(5);
    loop {
        tokio::select! {
            frame = customer_rx.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let Some(sent) = parse_ts(&text) else { continue };
                    let at = Instant::now();
                    if at >= measure_from && at < measure_to {
                        let _ = r.hist.record(now_us().saturating_sub(sent).max(1));
                        r.messages += 1;
                    }
                    if at < measure_to {
                        let next = opts.kind.message(now_us(), &pad);
                        if agent_tx.send(Message::Text(next.into())).await.is_err() {
                            r.broken = true;
                            break;
                        }
                    } else {
                        outstanding -= 1;
                        if outstanding == 0 {
                            break;
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => { r.broken = true; break; }
            },
            frame = agent_rx.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if text.contains(r#""type":"error""#) {
                        // Refused, so it will not arrive: replace it, or stop waiting for it.
                        r.errors += 1;
                        if Instant::now() < measure_to {
                            let next = opts.kind.message(now_us(), &pad);
                            if agent_tx.send(Message::Text(next.into())).await.is_err() {
                                r.broken = true;
                                break;
                            }
                        } else {
                            outstanding -= 1;
                            if outstanding == 0 {
                                break;
                            }
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => { r.broken = true; break; }
            },
            _ = tokio::time::sleep_until(give_up) => { r.broken = true; break; }
        }
    }
    let _ = agent_tx.close().await;
    let _ = customer_tx.close().await;
    r
}
