//! The operator's view: liveness, readiness (a database that takes writes, a data dir with room)
//! and the metrics moving as the service works.

use image::RgbImage;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::support::*;

fn small_jpeg() -> Vec<u8> {
    let img = RgbImage::from_fn(160, 120, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 13 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    encode_jpeg(&img, 90)
}

async fn readyz(srv: &TestServer) -> (u16, Option<String>, Value) {
    let res = srv.http.get(srv.url("/readyz")).send().await.unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, res.json().await.unwrap())
}

#[tokio::test]
async fn healthz_answers_and_readyz_reports_a_database_that_takes_writes() {
    let srv = TestServer::start().await;
    let res = srv.http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok");

    let (status, retry, body) = readyz(&srv).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(retry, None);
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"]["ok"], true);
    assert!(body["checks"]["disk"]["free_bytes"].as_u64().unwrap() > 0);

    // Another process takes the database's write lock and keeps it.
    let mut other = hold_write_lock(&srv.data_dir).await;
    let (status, retry, body) = readyz(&srv).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("5"));
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["database"]["ok"], false);
    assert_eq!(body["checks"]["disk"]["ok"], true);
    // Liveness does not depend on the database.
    let res = srv.http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // Ready again as soon as the lock goes.
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    let (status, _, body) = readyz(&srv).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn readyz_fails_when_the_data_dir_is_short_of_space() {
    // More free space asked for than any disk has.
    let srv = TestServer::start_with(|s| s.min_free_mb = u64::MAX / (1024 * 1024)).await;
    let (status, retry, body) = readyz(&srv).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("5"));
    assert_eq!(body["checks"]["disk"]["ok"], false);
    assert_eq!(body["checks"]["database"]["ok"], true);
}

/// The value of one sample line (`name{labels} value`) in the exposition, or 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

async fn metrics(srv: &TestServer) -> String {
    let res = srv.http.get(srv.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = res.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    text
}

#[tokio::test]
async fn metrics_move_when_messages_and_captures_flow() {
    let srv = TestServer::start().await;
    let before = metrics(&srv).await;
    assert_eq!(sample(&before, "capturelink_active_sessions"), 0.0);

    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (mut customer, _) = srv.join(&s.customer_token).await;
    agent.expect("peer.joined").await;
    let m = metrics(&srv).await;
    assert_eq!(sample(&m, "capturelink_connections{role=\"agent\"}"), 1.0);
    assert_eq!(
        sample(&m, "capturelink_connections{role=\"customer\"}"),
        1.0
    );
    assert_eq!(sample(&m, "capturelink_active_sessions"), 1.0);

    for i in 0..3 {
        agent
            .send(json!({"type": "guide", "id": i, "hint": "closer"}))
            .await;
        agent.expect("ack").await;
        customer.expect("guide").await;
    }
    customer.send(json!({"type": "chat", "text": "hi"})).await;
    agent.expect("chat").await;

    let jpeg = small_jpeg();
    let res = srv
        .upload(
            &s.id,
            &s.agent_token,
            capture_form(
                Some((jpeg.clone(), "image/jpeg")),
                &json!({"area": "hood", "angle": "close_up", "source": "agent_frame"}),
            ),
            None,
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = srv
        .upload(
            &s.id,
            &s.agent_token,
            capture_form(
                Some((b"not an image".to_vec(), "image/jpeg")),
                &json!({"area": "hood", "angle": "close_up", "source": "agent_frame"}),
            ),
            None,
        )
        .await;
    assert_eq!(res.status(), 415);

    // A refused handshake, and a resume.
    assert_eq!(
        srv.refused_status(&srv.ws_url("nope", None), None).await,
        401
    );
    let seq = customer.expect("capture.created").await["seq"]
        .as_i64()
        .unwrap();
    agent.expect("capture.created").await;
    drop(customer);
    agent.expect("peer.left").await;
    let (_customer, w) = srv.join_at(&s.customer_token, Some(seq - 1)).await;
    assert_eq!(w["resumed"], true);

    let m = metrics(&srv).await;
    assert_eq!(
        sample(&m, "capturelink_messages_relayed_total{type=\"guide\"}"),
        3.0
    );
    assert_eq!(
        sample(&m, "capturelink_messages_relayed_total{type=\"chat\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "capturelink_captures_stored_total{source=\"agent_frame\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "capturelink_upload_bytes_total"),
        jpeg.len() as f64
    );
    assert_eq!(
        sample(
            &m,
            "capturelink_uploads_refused_total{code=\"unsupported_media_type\"}"
        ),
        1.0
    );
    assert_eq!(sample(&m, "capturelink_capture_decode_seconds_count"), 1.0);
    assert_eq!(sample(&m, "capturelink_capture_store_seconds_count"), 1.0);
    assert_eq!(sample(&m, "capturelink_capture_push_seconds_count"), 1.0);
    assert_eq!(
        sample(&m, "capturelink_ws_refusals_total{code=\"401\"}"),
        1.0
    );
    assert_eq!(sample(&m, "capturelink_resumes_total"), 1.0);
    assert!(sample(&m, "capturelink_replayed_events_total") >= 1.0);

    // Closing the session closes both connections with 4009.
    let res = srv
        .http
        .post(srv.url(&format!("/api/v1/sessions/{}/close", s.id)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    agent.expect_close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = metrics(&srv).await;
        let closed = sample(&m, "capturelink_ws_closes_total{code=\"4009\"}");
        let open = sample(&m, "capturelink_connections{role=\"agent\"}")
            + sample(&m, "capturelink_connections{role=\"customer\"}");
        if closed == 2.0 && open == 0.0 {
            assert_eq!(sample(&m, "capturelink_active_sessions"), 0.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "closes {closed}, open {open}:\n{m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let srv = TestServer::start().await;
    let res = srv.http.get(srv.url("/healthz")).send().await.unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let res = srv.http.get(srv.url("/healthz")).send().await.unwrap();
    assert_ne!(res.headers()["x-request-id"].to_str().unwrap(), id);
    // A caller's own id is kept, so its logs and ours line up.
    let res = srv
        .http
        .get(srv.url("/api/v1/sessions"))
        .header("x-request-id", "claims-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["x-request-id"], "claims-42");
}

#[tokio::test]
async fn the_probe_command_exits_zero_only_when_the_service_answers() {
    let srv = TestServer::start().await;
    let probe = |url: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_capturelink"))
            .args(["probe", "--url", &url])
            .env("RUST_BACKTRACE", "0")
            .output()
            .await
            .unwrap()
            .status
    };
    assert!(probe(srv.url("/healthz")).await.success());
    // Not 200, and nothing listening: both fail.
    assert_eq!(probe(srv.url("/nope")).await.code(), Some(1));
    assert_eq!(
        probe("http://127.0.0.1:1/healthz".into()).await.code(),
        Some(1)
    );
}
