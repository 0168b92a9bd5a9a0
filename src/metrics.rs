//! The service's metrics, exposed at `/metrics` in the Prometheus (OpenMetrics) text format.
//!
//! One registry per running app (not a process-wide global), so servers started side by side in
//! one process, as the tests do, count separately. Counters get their `_total` suffix and
//! histograms their `_seconds` unit from the encoder.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::auth::Role;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Every metric the service keeps.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Open WebSocket connections, by role.
    pub connections: Family<RoleLabel, Gauge>,
    /// Sessions with at least one participant connected (set at scrape time).
    pub active_sessions: Gauge,
    /// Client messages routed to the peer, by type.
    pub messages_relayed: Family<TypeLabel, Counter>,
    /// Connections that resumed from a `last_seq`.
    pub resumes: Counter,
    /// Events sent again to resuming connections.
    pub replayed_events: Counter,
    /// WebSocket handshakes refused before the upgrade, by HTTP status.
    pub ws_refusals: Family<CodeLabel, Counter>,
    /// WebSocket connections closed by the server, by close code.
    pub ws_closes: Family<CodeLabel, Counter>,
    /// Captures stored, by source.
    pub captures_stored: Family<SourceLabel, Counter>,
    /// Uploads refused, by problem code.
    pub uploads_refused: Family<CodeLabel, Counter>,
    /// Image bytes received in accepted uploads.
    pub upload_bytes: Counter,
    /// Checking, decoding and measuring an upload on the blocking pool.
    pub decode_seconds: Histogram,
    /// Writing and syncing the file, then committing the capture's transaction.
    pub store_seconds: Histogram,
    /// From an upload's arrival to `capture.created` queued to the connected participants.
    pub push_seconds: Histogram,
    /// Webhook delivery attempts, by outcome (`delivered`, `failed`).
    pub webhook_deliveries: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms to ~8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            connections: Family::default(),
            active_sessions: Gauge::default(),
            messages_relayed: Family::default(),
            resumes: Counter::default(),
            replayed_events: Counter::default(),
            ws_refusals: Family::default(),
            ws_closes: Family::default(),
            captures_stored: Family::default(),
            uploads_refused: Family::default(),
            upload_bytes: Counter::default(),
            decode_seconds: seconds_histogram(),
            store_seconds: seconds_histogram(),
            push_seconds: seconds_histogram(),
            webhook_deliveries: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            let r = r.sub_registry_with_prefix("capturelink");
            r.register(
                "connections",
                "Open WebSocket connections, by role",
                m.connections.clone(),
            );
            r.register(
                "active_sessions",
                "Sessions with at least one participant connected",
                m.active_sessions.clone(),
            );
            r.register(
                "messages_relayed",
                "Client messages routed to the peer, by type",
                m.messages_relayed.clone(),
            );
            r.register(
                "resumes",
                "Connections that resumed from a last_seq",
                m.resumes.clone(),
            );
            r.register(
                "replayed_events",
                "Events sent again to resuming connections",
                m.replayed_events.clone(),
            );
            r.register(
                "ws_refusals",
                "WebSocket handshakes refused before the upgrade, by HTTP status",
                m.ws_refusals.clone(),
            );
            r.register(
                "ws_closes",
                "WebSocket connections closed by the server, by close code",
                m.ws_closes.clone(),
            );
            r.register(
                "captures_stored",
                "Captures stored, by source",
                m.captures_stored.clone(),
            );
            r.register(
                "uploads_refused",
                "Capture uploads refused, by problem code",
                m.uploads_refused.clone(),
            );
            r.register_with_unit(
                "upload",
                "Image bytes received in accepted uploads",
                Unit::Bytes,
                m.upload_bytes.clone(),
            );
            r.register_with_unit(
                "capture_decode",
                "Checking, decoding and measuring an upload",
                Unit::Seconds,
                m.decode_seconds.clone(),
            );
            r.register_with_unit(
                "capture_store",
                "After decoding: writing and syncing the thumbnail and committing the capture (the original is written during the decode)",
                Unit::Seconds,
                m.store_seconds.clone(),
            );
            r.register_with_unit(
                "capture_push",
                "From an upload's arrival to capture.created queued to the connected participants",
                Unit::Seconds,
                m.push_seconds.clone(),
            );
            r.register(
                "webhook_deliveries",
                "Webhook delivery attempts, by outcome",
                m.webhook_deliveries.clone(),
            );
        }
        m
    }

    pub fn connection_opened(&self, role: Role) -> ConnectionGauge<'_> {
        let g = self.connections.get_or_create(&RoleLabel {
            role: role.as_str(),
        });
        g.inc();
        ConnectionGauge {
            metrics: self,
            role,
        }
    }

    pub fn relayed(&self, kind: &'static str) {
        self.messages_relayed
            .get_or_create(&TypeLabel { r#type: kind })
            .inc();
    }

    pub fn ws_closed(&self, code: u16) {
        self.ws_closes
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    pub fn ws_refused(&self, status: u16) {
        self.ws_refusals
            .get_or_create(&CodeLabel {
                code: status.to_string(),
            })
            .inc();
    }

    pub fn webhook_attempt(&self, delivered: bool) {
        self.webhook_deliveries
            .get_or_create(&OutcomeLabel {
                outcome: if delivered { "delivered" } else { "failed" },
            })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// Decrements the role's connection gauge when the connection ends, however it ends.
pub struct ConnectionGauge<'a> {
    metrics: &'a Metrics,
    role: Role,
}

impl Drop for ConnectionGauge<'_> {
    fn drop(&mut self) {
        self.metrics
            .connections
            .get_or_create(&RoleLabel {
                role: self.role.as_str(),
            })
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_what_moved() {
        let m = Metrics::new();
        {
            let _c = m.connection_opened(Role::Agent);
            m.relayed("guide");
            m.relayed("guide");
            m.ws_closed(4009);
            m.upload_bytes.inc_by(1234);
            m.decode_seconds.observe(0.004);
            let text = m.render();
            assert!(
                text.contains("capturelink_connections{role=\"agent\"} 1"),
                "{text}"
            );
            assert!(
                text.contains("capturelink_messages_relayed_total{type=\"guide\"} 2"),
                "{text}"
            );
            assert!(text.contains("capturelink_ws_closes_total{code=\"4009\"} 1"));
            assert!(text.contains("capturelink_upload_bytes_total 1234"));
            assert!(text.contains("capturelink_capture_decode_seconds_count 1"));
        }
        assert!(
            m.render()
                .contains("capturelink_connections{role=\"agent\"} 0")
        );
    }
}
