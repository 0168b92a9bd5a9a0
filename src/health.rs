//! Probes and metrics for whoever runs the service: `/healthz` (the process answers), `/readyz`
//! (it can take work: the database takes a write, the data dir has room) and `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;

/// `GET /healthz`: alive. Nothing else is checked, so a busy database never gets the process
/// restarted.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Free bytes for an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// `GET /readyz`: 200 when the database takes a write, the data dir has room and (several nodes)
/// the bus is connected, else 503 with what failed.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let database = match state.store.check_writable().await {
        Ok(()) => json!({"ok": true}),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: the database does not take writes");
            json!({"ok": false, "error": "the database does not take writes"})
        }
    };
    let min_free = state.settings.min_free_bytes();
    let disk = match free_bytes(&state.settings.data_dir) {
        Ok(free) => json!({"ok": free >= min_free, "free_bytes": free, "min_free_bytes": min_free}),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: cannot read the data dir's free space");
            json!({"ok": false, "error": "cannot read the data dir's free space"})
        }
    };
    let mut checks = json!({"database": database, "disk": disk});
    // Several nodes: a node cut off from NATS cannot reach the peers of its connections.
    if let Some(bus) = state.registry.bus() {
        checks["bus"] = if bus.is_connected() {
            json!({"ok": true})
        } else {
            tracing::warn!("readiness: not connected to NATS");
            json!({"ok": false, "error": "not connected to NATS"})
        };
    }
    let ready = checks
        .as_object()
        .is_some_and(|c| c.values().all(|check| check["ok"] == true));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks,
    });
    let mut res = (status, Json(body)).into_response();
    if !ready {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    res
}

/// `GET /metrics`: the Prometheus (OpenMetrics) text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    m.active_sessions
        .set(i64::try_from(state.registry.active_count()).unwrap_or(i64::MAX));
    let mut res = m.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    res
}
