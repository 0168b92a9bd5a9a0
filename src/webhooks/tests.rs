//! The dispatcher against a real SQLite store and a real HTTP receiver on 127.0.0.1.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::store::Store;
use crate::store::webhooks::OutboxState;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Receiver {
    /// Per path, the statuses to answer in turn; then 200 (or 410 for paths starting `gone`).
    scripts: Mutex<HashMap<String, VecDeque<u16>>>,
    got: Mutex<Vec<(String, HeaderMap, Bytes)>>,
}

impl Receiver {
    fn script(&self, path: &str, statuses: &[u16]) {
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_owned(), statuses.iter().copied().collect());
    }

    fn requests(&self, path: &str) -> Vec<(HeaderMap, Bytes)> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, h, b)| (h.clone(), b.clone()))
            .collect()
    }
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    rx.got.lock().unwrap().push((path.clone(), headers, body));
    let scripted = rx
        .scripts
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front);
    let code = scripted.unwrap_or(if path.starts_with("gone") { 410 } else { 200 });
    StatusCode::from_u16(code).unwrap()
}

/// Starts the receiver; returns it and its base URL.
async fn start_receiver() -> (Arc<Receiver>, String) {
    let rx = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/{path}", post(receive))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rx, format!("http://{addr}"))
}

/// Millisecond backoffs, and a poll interval so long that only wake-ups and due times move the
/// dispatcher: a test that passes shows neither needs the poll.
fn fast_settings() -> WebhookSettings {
    WebhookSettings {
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        horizon: Duration::from_secs(60),
        timeout: Duration::from_secs(5),
        poll_interval: Duration::from_secs(3600),
        ..WebhookSettings::new(SECRET)
    }
}

struct Running {
    wakeup: Wakeup,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("dispatcher stops")
            .unwrap();
    }
}

fn start(store: &Store, settings: WebhookSettings) -> Running {
    let d = Dispatcher::new(store.clone(), reqwest::Client::new(), settings).unwrap();
    let wakeup = d.notifier();
    let stop = CancellationToken::new();
    let task = tokio::spawn(d.run(stop.clone()));
    Running { wakeup, stop, task }
}

async fn enqueue(store: &Store, wakeup: Option<&Wakeup>, url: &str) -> OutboxRow {
    let body = payload(
        EventType::CaptureCreated,
        crate::store::now_ms(),
        serde_json::json!({"session_id": "ses_1", "capture_id": "cap_1"}),
    );
    let row = OutboxRow::new(
        "ses_1",
        url,
        "capture.created",
        body,
        crate::store::now_ms(),
    );
    store
        .enqueue_webhooks(std::slice::from_ref(&row))
        .await
        .unwrap();
    if let Some(w) = wakeup {
        w.notify();
    }
    row
}

/// Waits until the row reaches `status`.
async fn wait_for(store: &Store, id: &str, status: &str) -> OutboxState {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = store.webhook_state(id).await.unwrap().unwrap();
        if state.status == status {
            return state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "row {id} never became {status}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn retries_until_delivered_once_with_a_stable_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let (rx, base) = start_receiver().await;
    rx.script("flaky", &[500, 500]);
    let d = start(&store, fast_settings());

    let row = enqueue(&store, Some(&d.wakeup), &format!("{base}/flaky")).await;
    let state = wait_for(&store, &row.id, "delivered").await;
    assert_eq!(state.attempts, 3);
    assert_eq!(state.last_status, Some(200));
    assert_eq!(state.last_error, None);

    // Nothing more arrives after the 200.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = rx.requests("flaky");
    assert_eq!(got.len(), 3, "two 500s and one 200");
    let secret = Secret::parse(SECRET).unwrap();
    for (headers, body) in &got {
        assert_eq!(headers["webhook-id"], row.id.as_str());
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body.as_ref(), row.payload.as_bytes());
        verify(&secret, headers, body, Duration::from_secs(300)).unwrap();
    }
    let v: serde_json::Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(v["type"], "capture.created");
    assert_eq!(v["data"]["capture_id"], "cap_1");
    d.stop().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let (rx, base) = start_receiver().await;
    let d = start(&store, fast_settings());
    let gone = format!("{base}/gone");
    let ok = format!("{base}/ok");

    let first = enqueue(&store, Some(&d.wakeup), &gone).await;
    let state = wait_for(&store, &first.id, "disabled").await;
    assert_eq!(state.last_status, Some(410));
    assert!(store.is_disabled(&gone).await.unwrap());
    assert_eq!(rx.requests("gone").len(), 1);

    // Later events for that endpoint are never sent; other endpoints are unaffected.
    let later = enqueue(&store, Some(&d.wakeup), &gone).await;
    let other = enqueue(&store, Some(&d.wakeup), &ok).await;
    wait_for(&store, &other.id, "delivered").await;
    assert_eq!(
        store
            .webhook_state(&later.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "disabled"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.requests("gone").len(), 1);
    assert!(!store.is_disabled(&ok).await.unwrap());
    d.stop().await;
}

#[tokio::test]
async fn disabling_drops_pending_rows_of_that_url() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let a = enqueue(&store, None, "http://127.0.0.1:9/a").await;
    let b = enqueue(&store, None, "http://127.0.0.1:9/b").await;
    assert_eq!(
        store
            .disable_endpoint("http://127.0.0.1:9/a", 1)
            .await
            .unwrap(),
        1
    );
    let due = store.due_webhooks(i64::MAX, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, b.id);
    let state = store.webhook_state(&a.id).await.unwrap().unwrap();
    assert_eq!(state.status, "disabled");
    // Idempotent.
    assert_eq!(
        store
            .disable_endpoint("http://127.0.0.1:9/a", 2)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn gives_up_after_the_horizon() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let (rx, base) = start_receiver().await;
    rx.script("down", &[503; 1000]);
    let settings = WebhookSettings {
        horizon: Duration::from_millis(300),
        ..fast_settings()
    };
    let d = start(&store, settings);
    let row = enqueue(&store, Some(&d.wakeup), &format!("{base}/down")).await;
    let state = wait_for(&store, &row.id, "failed").await;
    assert!(state.attempts >= 2, "{state:?}");
    assert_eq!(state.last_status, Some(503));
    assert_eq!(rx.requests("down").len() as i64, state.attempts);
    d.stop().await;
}

#[tokio::test]
async fn network_errors_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    // A port that was just free: connection refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let d = start(&store, fast_settings());
    let row = enqueue(&store, Some(&d.wakeup), &format!("http://{closed}/x")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let state = loop {
        let s = store.webhook_state(&row.id).await.unwrap().unwrap();
        if s.attempts >= 2 {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(state.status, "pending");
    assert_eq!(state.last_status, None);
    assert!(state.last_error.is_some());
    d.stop().await;
}

#[tokio::test]
async fn undelivered_rows_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (rx, base) = start_receiver().await;
    let url = format!("{base}/later");

    // A dispatcher ran and stopped; the event is written while none runs.
    let store = Store::open(dir.path()).await.unwrap();
    start(&store, fast_settings()).stop().await;
    let row = enqueue(&store, None, &url).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(rx.requests("later").is_empty());
    store.close().await;
    drop(store);

    // The service starts again on the same data dir.
    let store = Store::open(dir.path()).await.unwrap();
    assert_eq!(
        store.webhook_state(&row.id).await.unwrap().unwrap().status,
        "pending"
    );
    let d = start(&store, fast_settings());
    wait_for(&store, &row.id, "delivered").await;
    let got = rx.requests("later");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0["webhook-id"], row.id.as_str());
    d.stop().await;
}

#[tokio::test]
async fn many_rows_are_all_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let (rx, base) = start_receiver().await;
    let d = start(&store, fast_settings());
    let mut rows = Vec::new();
    for i in 0..20 {
        rows.push(enqueue(&store, Some(&d.wakeup), &format!("{base}/n{}", i % 3)).await);
    }
    for row in &rows {
        wait_for(&store, &row.id, "delivered").await;
    }
    let total: usize = (0..3).map(|i| rx.requests(&format!("n{i}")).len()).sum();
    assert_eq!(total, 20);
    d.stop().await;
}
