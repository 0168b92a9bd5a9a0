//! What a session receives, checked: every relayed message the next of its flow, every `seq` the
//! previous plus one, every message acknowledged, every capture stored and announced at both ends.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::Value;

use super::session::{Counters, FLOW_NAMES, Flow, Side, Soaker, Upload};
use crate::common::{now_us, parse_tagged, parse_ts};

impl Soaker {
    /// A relayed message arrived: it must be the next of its flow.
    fn received(&mut self, flow: Flow, tag: Option<u64>) {
        self.shared.counters.delivered.fetch_add(1, Relaxed);
        let (sent, got) = self.flows[flow as usize];
        let expected = got + 1;
        let k = tag.unwrap_or(expected);
        if k != expected || k > sent {
            let what = if k > expected { "missing" } else { "repeated" };
            self.error(
                &format!("{what} {}", FLOW_NAMES[flow as usize]),
                format!("got number {k}, expected {expected} ({sent} sent)"),
            );
        }
        self.flows[flow as usize].1 = k.max(got);
    }

    /// Handles one frame; returns the request id of a `capture.request` for the customer to
    /// answer.
    pub(super) fn on_text(&mut self, side: Side, text: &str) -> Option<String> {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            self.error("malformed_frame", text);
            return None;
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
            let last = self.conn(side).last_seq;
            if seq != last + 1 {
                self.error(
                    if seq <= last {
                        "seq_backwards"
                    } else {
                        "seq_gap"
                    },
                    format!("{}: {kind} seq {seq} after {last}", side.as_str()),
                );
            }
            self.conn(side).last_seq = seq;
        }
        let towards = |to_customer: Flow, to_agent: Flow| match side {
            Side::Customer => to_customer,
            Side::Agent => to_agent,
        };
        match kind {
            "ack" => {
                let due = &mut self.conn(side).acks_due;
                if *due == 0 {
                    self.error("unexpected_ack", text);
                } else {
                    *due -= 1;
                }
            }
            "pong" => {
                let ping = self.conn(side).ping.take();
                match ping {
                    Some((at, reported)) => {
                        let rtt = at.elapsed();
                        let c = &self.shared.counters;
                        c.pong_max_us.fetch_max(rtt.as_micros() as u64, Relaxed);
                        if rtt > self.shared.pong_timeout && !reported {
                            self.error("pong_late", format!("{}: {rtt:?}", side.as_str()));
                        }
                    }
                    None => self.error("unexpected_pong", text),
                }
            }
            "error" => {
                // A refused message is not acknowledged.
                if !v.get("ref").is_none_or(Value::is_null) {
                    let conn = self.conn(side);
                    conn.acks_due = conn.acks_due.saturating_sub(1);
                }
                self.error("error_frame", format!("{}: {text}", side.as_str()));
            }
            "guide" if side == Side::Customer => {
                if let Some(sent) = parse_ts(text) {
                    Counters::record(
                        &self.shared.counters.guide_latency,
                        Duration::from_micros(now_us().saturating_sub(sent)),
                    );
                }
                self.received(Flow::Guide, parse_tagged(text, "msg:"));
            }
            "camera" if side == Side::Customer => self.received(Flow::Camera, None),
            "chat" => self.received(
                towards(Flow::ChatToCustomer, Flow::ChatToAgent),
                parse_tagged(text, "msg:"),
            ),
            "signal" => self.received(
                towards(Flow::SignalToCustomer, Flow::SignalToAgent),
                parse_tagged(text, "msg:"),
            ),
            "capture.request" if side == Side::Customer => {
                let request_id = v.get("request_id").and_then(Value::as_str)?.to_owned();
                self.received(Flow::Request, parse_tagged(&request_id, "msg:"));
                return Some(request_id);
            }
            "capture.created" => {
                let rid = v
                    .pointer("/capture/request_id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let seen_before = self.pending.get_mut(rid).map(|p| match side {
                    Side::Agent => std::mem::replace(&mut p.agent, true),
                    Side::Customer => std::mem::replace(&mut p.customer, true),
                });
                match seen_before {
                    Some(false) => self.complete(rid.to_owned()),
                    Some(true) => self.error("repeated capture.created", rid),
                    None => self.error("unexpected capture.created", text),
                }
            }
            // The customer page's own messages and the checklist are not part of this load.
            "checklist.updated" | "device.capabilities" => {}
            // Anything else (capture.failed, peer.left, peer.joined, session.closed, welcome,
            // a message for the wrong side) means the call did not go as it should.
            _ => self.error(kind, format!("{}: {text}", side.as_str())),
        }
        None
    }

    fn complete(&mut self, rid: String) {
        let Some(p) = self.pending.get(&rid) else {
            return;
        };
        if p.uploaded && p.agent && p.customer {
            let took = p.requested.elapsed();
            self.pending.remove(&rid);
            let c = &self.shared.counters;
            c.captures.fetch_add(1, Relaxed);
            Counters::record(&c.capture_latency, took);
        }
    }

    pub(super) fn on_upload(&mut self, done: Result<Upload, tokio::task::JoinError>) {
        let (rid, took, r) = match done {
            Ok(u) => u,
            Err(e) => return self.error("upload_task", e),
        };
        let c = &self.shared.counters;
        c.uploads.fetch_add(1, Relaxed);
        match r {
            Ok((status, _)) if status.as_u16() == 201 => {
                Counters::record(&c.upload_latency, took);
                if let Some(p) = self.pending.get_mut(&rid) {
                    p.uploaded = true;
                }
                self.complete(rid);
            }
            Ok((status, body)) => {
                self.pending.remove(&rid);
                self.error("upload_status", format!("{rid}: {status}: {body}"));
            }
            Err(e) => {
                self.pending.remove(&rid);
                self.error("upload_failed", format!("{rid}: {e:#}"));
            }
        }
    }

    /// Captures and pongs past their time.
    pub(super) fn check_timeouts(&mut self) {
        let late: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.requested.elapsed() > self.shared.capture_timeout)
            .map(|(rid, _)| rid.clone())
            .collect();
        for rid in late {
            if let Some(p) = self.pending.remove(&rid) {
                self.error(
                    "capture_timeout",
                    format!(
                        "{rid}: after {:?}: 201 {}, capture.created at the agent {}, at the customer {}",
                        p.requested.elapsed(),
                        p.uploaded,
                        p.agent,
                        p.customer
                    ),
                );
            }
        }
        let timeout = self.shared.pong_timeout;
        for side in [Side::Agent, Side::Customer] {
            if let Some((at, false)) = self.conn(side).ping
                && at.elapsed() > timeout
            {
                self.conn(side).ping = Some((at, true));
                self.error(
                    "pong_late",
                    format!("{}: none after {timeout:?}", side.as_str()),
                );
            }
        }
    }

    /// Nothing is in flight any more.
    pub(super) fn settled(&self) -> bool {
        self.flows.iter().all(|(s, r)| s == r)
            && self.pending.is_empty()
            && [&self.agent, &self.customer]
                .iter()
                .all(|c| c.acks_due == 0 && c.ping.is_none())
    }

    /// After the drain: whatever is still missing is an error.
    pub(super) fn finish(&mut self) {
        if self.broken {
            return;
        }
        for (i, (sent, got)) in self.flows.iter().enumerate() {
            if sent != got {
                self.error(
                    &format!("missing {}", FLOW_NAMES[i]),
                    format!("{} of {sent} never arrived", sent - got),
                );
            }
        }
        for c in [&self.agent, &self.customer] {
            if c.acks_due > 0 {
                self.error(
                    "missing_ack",
                    format!(
                        "{}: {} messages never acknowledged",
                        c.side.as_str(),
                        c.acks_due
                    ),
                );
            }
        }
        for (rid, p) in &self.pending {
            self.error(
                "capture_incomplete",
                format!(
                    "{rid}: 201 {}, capture.created at the agent {}, at the customer {}",
                    p.uploaded, p.agent, p.customer
                ),
            );
        }
    }
}
