//! What claims systems follow (issue 3): the SSE event stream with `Last-Event-ID` resume, the ZIP
//! export and signed webhooks from the durable outbox, checked from the outside: the stream is
//! parsed by hand, the archive read with the `zip` crate, and webhook signatures recomputed here
//! with `hmac`/`sha2` rather than with the service's own verifier.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Cursor, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::*;

/// How long a test waits for a webhook that retries or a restart stand between.
pub(crate) const WEBHOOK_WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Images, encoded here.

fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = if ((x + seed) / 16 + y / 16).is_multiple_of(2) {
            200
        } else {
            60
        };
        Rgb([v, (v as u32 + x * 50 / w) as u8, (seed * 37 % 255) as u8])
    })
}

fn jpeg(seed: u32) -> Vec<u8> {
    encode_jpeg(&picture(320, 240, seed), 90)
}

fn png(seed: u32) -> Vec<u8> {
    let img = picture(200, 150, seed);
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(img.as_raw(), 200, 150, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Uploads `bytes` with the API key; panics unless 201; returns the capture JSON.
async fn upload_as(
    srv: &TestServer,
    session_id: &str,
    bytes: Vec<u8>,
    mime: &str,
    area: &str,
) -> Value {
    let meta = json!({"area": area, "angle": "close_up", "source": "agent_frame"});
    let res = srv
        .upload(
            session_id,
            API_KEY,
            capture_form(Some((bytes, mime)), &meta),
            None,
        )
        .await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "upload: {body}");
    body
}

async fn close(srv: &TestServer, session_id: &str) {
    let res = srv
        .http
        .post(srv.url(&format!("/api/v1/sessions/{session_id}/close")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "close");
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events, parsed by hand.

#[derive(Debug)]
pub(crate) struct SseEvent {
    pub(crate) id: Option<i64>,
    pub(crate) data: Value,
}

enum Next {
    Event(SseEvent),
    End,
    Timeout,
}

pub(crate) struct Sse {
    res: reqwest::Response,
    buf: String,
}

fn events_url(srv: &TestServer, session_id: &str) -> String {
    srv.url(&format!("/api/v1/sessions/{session_id}/events"))
}

/// `GET .../events` with an optional bearer credential and `Last-Event-ID`.
async fn events_request(
    srv: &TestServer,
    url: &str,
    credential: Option<&str>,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut req = srv.http.get(url);
    if let Some(c) = credential {
        req = req.bearer_auth(c);
    }
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    req.send().await.unwrap()
}

impl Sse {
    /// Opens the stream; the response headers are in when this returns, so the subscription is
    /// registered and every later event belongs to it.
    pub(crate) async fn open(
        srv: &TestServer,
        session_id: &str,
        credential: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        Self::open_url(srv, &events_url(srv, session_id), credential, last_event_id).await
    }

    async fn open_url(
        srv: &TestServer,
        url: &str,
        credential: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        let res = events_request(srv, url, Some(credential), last_event_id).await;
        assert_eq!(res.status(), 200, "event stream opens");
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(ct.starts_with("text/event-stream"), "content type {ct}");
        Self {
            res,
            buf: String::new(),
        }
    }

    /// Takes one complete event (a block ended by a blank line) out of the buffer, skipping
    /// comment-only blocks (keep-alives).
    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buf.find("\n\n")?;
            let block: String = self.buf.drain(..end + 2).collect();
            let (mut id, mut data) = (None, Vec::new());
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = Some(value.parse::<i64>().expect("numeric id")),
                    "data" => data.push(value.to_owned()),
                    _ => {}
                }
            }
            if data.is_empty() {
                continue;
            }
            let data = serde_json::from_str(&data.join("\n")).expect("data is JSON");
            return Some(SseEvent { id, data });
        }
    }

    async fn poll(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(e) = self.take_event() {
                return Next::Event(e);
            }
            match tokio::time::timeout_at(deadline, self.res.chunk()).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(Some(chunk))) => {
                    let text = std::str::from_utf8(&chunk).expect("UTF-8 stream");
                    self.buf.push_str(&text.replace("\r\n", "\n"));
                }
                Ok(Ok(None)) => return Next::End,
                Ok(Err(e)) => panic!("event stream failed: {e}"),
            }
        }
    }

    /// The next event; panics if the stream ends or nothing comes within [`WAIT`].
    async fn next(&mut self) -> SseEvent {
        match self.poll(WAIT).await {
            Next::Event(e) => e,
            Next::End => panic!("event stream ended while an event was expected"),
            Next::Timeout => panic!("no event within the wait"),
        }
    }

    /// The next event, checked to be the same JSON the WebSocket carried, with `id:` = its seq.
    pub(crate) async fn expect_same(&mut self, ws: &Value) -> SseEvent {
        let e = self.next().await;
        assert_eq!(e.data, *ws, "SSE data equals the WebSocket message");
        assert_eq!(e.id, ws["seq"].as_i64(), "SSE id is the seq: {ws}");
        e
    }

    async fn expect_silence(&mut self, wait: Duration) {
        match self.poll(wait).await {
            Next::Timeout => {}
            Next::Event(e) => panic!("expected no event, got {e:?}"),
            Next::End => panic!("expected the stream to stay open, it ended"),
        }
    }

    /// The stream ends (without another event) within [`WAIT`].
    async fn expect_end(&mut self) {
        match self.poll(WAIT).await {
            Next::End => {}
            Next::Event(e) => panic!("expected the end of the stream, got {e:?}"),
            Next::Timeout => panic!("the event stream did not end"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SSE

#[tokio::test]
async fn sse_carries_the_agents_durable_events_with_seq_ids() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (mut customer, _) = srv.join(&s.customer_token).await;
    let joined = agent.expect("peer.joined").await;
    assert_eq!(joined["seq"], 1);

    // Without Last-Event-ID the stream starts with what comes next: not peer.joined (seq 1).
    let mut sse = Sse::open(&srv, &s.id, API_KEY, None).await;

    customer
        .send(json!({"type": "chat", "text": "the dent is here"}))
        .await;
    let chat = agent.expect("chat").await;
    let e = sse.expect_same(&chat).await;
    assert_eq!(e.id, Some(2));
    assert_eq!(e.data["from"], "customer");

    // A signal is live-only: on the WebSocket, never on the stream.
    customer
        .send(json!({"type": "signal", "data": {"sdp": "answer"}}))
        .await;
    let signal = agent.expect("signal").await;
    assert_eq!(signal["seq"], 3);

    let bytes = jpeg(1);
    let capture = upload_as(&srv, &s.id, bytes, "image/jpeg", "front_bumper").await;
    let created = agent.expect("capture.created").await;
    let e = sse.expect_same(&created).await;
    assert_eq!(e.data["type"], "capture.created");
    assert_eq!(e.data["capture"]["id"], capture["id"]);
    assert_eq!(e.id, Some(4), "after the signal's seq 3");

    customer.ws.close(None).await.unwrap();
    let left = agent.expect("peer.left").await;
    sse.expect_same(&left).await;
    assert_eq!(left["role"], "customer");

    sse.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn sse_resumes_after_last_event_id_then_goes_live() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (mut customer, _) = srv.join(&s.customer_token).await;
    let mut log = vec![agent.expect("peer.joined").await];
    for text in ["one", "two", "three"] {
        customer.send(json!({"type": "chat", "text": text})).await;
        log.push(agent.expect("chat").await);
    }
    let seqs: Vec<i64> = log.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);

    // Last-Event-ID 2: exactly 3 and 4, in order, then nothing until something happens.
    let mut sse = Sse::open(&srv, &s.id, API_KEY, Some("2")).await;
    sse.expect_same(&log[2]).await;
    sse.expect_same(&log[3]).await;
    sse.expect_silence(Duration::from_millis(200)).await;
    // ...then the live ones.
    customer.send(json!({"type": "chat", "text": "four"})).await;
    let four = agent.expect("chat").await;
    let e = sse.expect_same(&four).await;
    assert_eq!(e.id, Some(5));
    log.push(four);
    drop(sse);

    // The query parameter (for EventSource without headers) does the same; 0 replays everything.
    let url = format!("{}?last_event_id=0", events_url(&srv, &s.id));
    let mut sse = Sse::open_url(&srv, &url, API_KEY, None).await;
    for m in &log {
        sse.expect_same(m).await;
    }
    sse.expect_silence(Duration::from_millis(200)).await;
    drop(sse);

    // Resuming at the newest id replays nothing, and live events still come.
    let mut sse = Sse::open(&srv, &s.id, API_KEY, Some("5")).await;
    sse.expect_silence(Duration::from_millis(200)).await;
    let capture = upload_as(&srv, &s.id, jpeg(2), "image/jpeg", "hood").await;
    let created = agent.expect("capture.created").await;
    let e = sse.expect_same(&created).await;
    assert_eq!(e.id, Some(6));
    assert_eq!(e.data["capture"]["id"], capture["id"]);
    log.push(created);
    drop(sse);

    // A malformed Last-Event-ID is refused, not read as "from the start".
    let res = events_request(&srv, &events_url(&srv, &s.id), Some(API_KEY), Some("abc")).await;
    assert_eq!(res.status(), 400);

    // The log is durable: after a restart the stream resumes from the database.
    drop(agent);
    drop(customer);
    let srv = srv.restart().await;
    let mut sse = Sse::open(&srv, &s.id, API_KEY, Some("1")).await;
    for m in &log[1..] {
        sse.expect_same(m).await;
    }
}

#[tokio::test]
async fn sse_with_a_join_token_follows_that_roles_stream() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (mut customer, _) = srv.join(&s.customer_token).await;
    agent.expect("peer.joined").await;

    let mut customer_sse = Sse::open(&srv, &s.id, &s.customer_token, None).await;
    let mut agent_sse = Sse::open(&srv, &s.id, &s.agent_token, None).await;

    agent
        .send(json!({"type": "chat", "text": "please step back"}))
        .await;
    let chat = customer.expect("chat").await;
    assert_eq!(chat["from"], "agent");
    customer_sse.expect_same(&chat).await;

    let capture = upload_as(&srv, &s.id, jpeg(3), "image/jpeg", "door_front_left").await;
    let for_customer = customer.expect("capture.created").await;
    let for_agent = agent.expect("capture.created").await;
    customer_sse.expect_same(&for_customer).await;
    // The agent's own chat went to the customer only: the agent's stream goes straight to the
    // capture, numbered in the agent's sequence.
    let e = agent_sse.expect_same(&for_agent).await;
    assert_eq!(e.data["capture"]["id"], capture["id"]);
    assert_ne!(
        for_agent["seq"], for_customer["seq"],
        "each role has its own sequence"
    );

    customer_sse
        .expect_silence(Duration::from_millis(150))
        .await;
    agent_sse.expect_silence(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn sse_refuses_missing_unknown_and_foreign_credentials() {
    let srv = TestServer::start().await;
    let a = srv.session().await;
    let b = srv.session().await;
    let url = events_url(&srv, &a.id);

    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(events_request(&srv, &url, None, None).await), 401);
    assert_eq!(
        status(events_request(&srv, &url, Some("not-a-token"), None).await),
        401
    );
    // Another session's tokens do not reveal that this one exists.
    assert_eq!(
        status(events_request(&srv, &url, Some(&b.customer_token), None).await),
        404
    );
    assert_eq!(
        status(events_request(&srv, &url, Some(&b.agent_token), None).await),
        404
    );
    let unknown = events_url(&srv, "ses_doesnotexist");
    assert_eq!(
        status(events_request(&srv, &unknown, Some(API_KEY), None).await),
        404
    );
    // The right credentials do open it.
    Sse::open(&srv, &a.id, &a.customer_token, None).await;
    Sse::open(&srv, &a.id, API_KEY, None).await;
}

#[tokio::test]
async fn sse_delivers_session_closed_then_ends() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let mut sse = Sse::open(&srv, &s.id, API_KEY, None).await;
    let mut customer_sse = Sse::open(&srv, &s.id, &s.customer_token, None).await;

    close(&srv, &s.id).await;
    let closed = agent.expect("session.closed").await;
    let e = sse.expect_same(&closed).await;
    assert_eq!(e.data["type"], "session.closed");
    sse.expect_end().await;
    let e = customer_sse.next().await;
    assert_eq!(e.data["type"], "session.closed");
    assert_eq!(e.id, e.data["seq"].as_i64());
    customer_sse.expect_end().await;

    // After the close the stream is the log and then its end: resumed from 0 it replays up to
    // session.closed; without Last-Event-ID it ends at once.
    let mut sse = Sse::open(&srv, &s.id, API_KEY, Some("0")).await;
    let mut last = None;
    loop {
        match sse.poll(WAIT).await {
            Next::Event(e) => last = Some(e),
            Next::End => break,
            Next::Timeout => panic!("the stream of a closed session did not end"),
        }
    }
    let last = last.expect("the log replayed");
    assert_eq!(last.data, closed);
    let mut sse = Sse::open(&srv, &s.id, API_KEY, None).await;
    sse.expect_end().await;

    // The join tokens died with the session.
    let res = events_request(
        &srv,
        &events_url(&srv, &s.id),
        Some(&s.customer_token),
        None,
    )
    .await;
    assert_eq!(res.status(), 410);
}

// ---------------------------------------------------------------------------------------------
// Export

#[tokio::test]
async fn export_zip_holds_the_manifest_and_the_original_bytes() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let jpg_bytes = jpeg(7);
    let png_bytes = png(8);
    let c_jpg = upload_as(&srv, &s.id, jpg_bytes.clone(), "image/jpeg", "hood").await;
    let c_png = upload_as(&srv, &s.id, png_bytes.clone(), "image/png", "rear_bumper").await;

    let res = srv
        .http
        .get(srv.url(&format!("/api/v1/sessions/{}/export", s.id)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/zip")
    );
    let body = res.bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(Cursor::new(body.to_vec())).expect("a ZIP archive");

    let mut names: Vec<String> = zip
        .file_names()
        .map(|n| n.expect("entry name").into_owned())
        .collect();
    names.sort();
    let id_jpg = c_jpg["id"].as_str().unwrap();
    let id_png = c_png["id"].as_str().unwrap();
    let mut expected = vec![
        "manifest.json".to_owned(),
        format!("images/{id_jpg}.jpg"),
        format!("images/{id_png}.png"),
    ];
    expected.sort();
    assert_eq!(names, expected);

    let manifest: Value = {
        let mut text = String::new();
        zip.by_name("manifest.json")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        serde_json::from_str(&text).expect("manifest is JSON")
    };
    assert!(manifest["format"].is_string(), "{manifest}");
    assert!(manifest["exported_at"].is_string(), "{manifest}");
    assert_eq!(manifest["session"]["id"], s.id.as_str());
    assert_eq!(manifest["session"]["claim_ref"], "CLM-1");
    let captures = manifest["captures"].as_array().expect("captures");
    assert_eq!(captures.len(), 2);

    for (uploaded, bytes, ext) in [(&c_jpg, &jpg_bytes, "jpg"), (&c_png, &png_bytes, "png")] {
        let id = uploaded["id"].as_str().unwrap();
        let entry = captures
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("{id} in the manifest"));
        let file = format!("images/{id}.{ext}");
        assert_eq!(entry["file"], file.as_str());
        for field in [
            "session_id",
            "area",
            "angle",
            "mime",
            "sha256",
            "width",
            "height",
        ] {
            assert_eq!(entry[field], uploaded[field], "manifest {field} of {id}");
        }
        assert_eq!(entry["sha256"], sha_hex(bytes).as_str());
        let mut stored = Vec::new();
        zip.by_name(&file)
            .unwrap()
            .read_to_end(&mut stored)
            .unwrap();
        assert_eq!(
            sha_hex(&stored),
            sha_hex(bytes),
            "{file} holds the uploaded bytes"
        );
        assert_eq!(stored.len(), bytes.len());
    }
}

#[tokio::test]
async fn export_needs_the_api_key_and_a_known_session() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let url = srv.url(&format!("/api/v1/sessions/{}/export", s.id));

    let res = srv.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    // A join token is not a claims system.
    let res = srv
        .http
        .get(&url)
        .bearer_auth(&s.agent_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = srv
        .http
        .get(srv.url("/api/v1/sessions/ses_doesnotexist/export"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // An empty session exports a manifest alone.
    let res = srv
        .http
        .get(&url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let zip = zip::ZipArchive::new(Cursor::new(res.bytes().await.unwrap().to_vec())).unwrap();
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.expect("entry name").into_owned())
        .collect();
    assert_eq!(names, ["manifest.json"]);
}

// ---------------------------------------------------------------------------------------------
// Webhooks: a receiver in the test, signatures checked independently.

#[derive(Debug, Clone)]
pub(crate) struct Hit {
    path: String,
    pub(crate) id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    answered: u16,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    pub(crate) fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or("").to_owned()
    }
}

/// What a path answers: these statuses first, then `then` for ever.
struct Script {
    first: VecDeque<u16>,
    then: u16,
}

#[derive(Clone, Default)]
struct Shared {
    hits: Arc<Mutex<Vec<Hit>>>,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    /// How long each request takes to be answered, in ms (0: at once).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// A webhook endpoint on 127.0.0.1:0 that records every request; paths answer 200 unless
/// scripted otherwise.
pub(crate) struct Receiver {
    addr: SocketAddr,
    shared: Shared,
}

async fn record(
    State(shared): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let delay = shared.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let answered = {
        let mut scripts = shared.scripts.lock().unwrap();
        match scripts.get_mut(&path) {
            Some(s) => s.first.pop_front().unwrap_or(s.then),
            None => 200,
        }
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    shared.hits.lock().unwrap().push(Hit {
        path,
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: body.to_vec(),
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

impl Receiver {
    pub(crate) async fn start() -> Self {
        let shared = Shared::default();
        let app = axum::Router::new()
            .route("/{path}", axum::routing::post(record))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, shared }
    }

    /// Every request is answered only after `delay` from now on.
    pub(crate) fn answer_after(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap();
        self.shared
            .delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn script(&self, path: &str, first: &[u16], then: u16) {
        self.shared.scripts.lock().unwrap().insert(
            path.to_owned(),
            Script {
                first: first.iter().copied().collect(),
                then,
            },
        );
    }

    pub(crate) fn hits(&self, path: &str) -> Vec<Hit> {
        self.shared
            .hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `done` holds for the hits of `path`; panics after `wait`.
    pub(crate) async fn wait_for(
        &self,
        path: &str,
        wait: Duration,
        done: impl Fn(&[Hit]) -> bool,
    ) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let hits = self.hits(path);
            if done(&hits) {
                return hits;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "webhooks to /{path} not as expected within {wait:?}: {:#?}",
                hits.iter()
                    .map(|h| (h.id.clone(), h.event_type(), h.answered))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The key of a `whsec_<base64>` secret.
fn key_of(secret: &str) -> Vec<u8> {
    B64.decode(secret.trim().strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 key")
}

/// Standard Webhooks verification, written out here: HMAC-SHA256 of `id.timestamp.body` with the
/// key, base64, compared with each `v1,` signature of the header.
fn signature_valid(key: &[u8], id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    header.split(' ').any(|sig| sig == expected)
}

fn assert_signed(key: &[u8], hit: &Hit) {
    assert!(hit.id.starts_with("msg_"), "webhook-id {:?}", hit.id);
    assert!(
        signature_valid(key, &hit.id, &hit.timestamp, &hit.body, &hit.signature),
        "signature of {} ({}) does not verify",
        hit.id,
        hit.event_type()
    );
    let ts: i64 = hit.timestamp.parse().expect("webhook-timestamp in seconds");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now - ts).abs() < 300, "timestamp {ts} is not now ({now})");
}

/// A known secret: `whsec_` and the base64 of the bytes 0..32.
fn known_secret() -> (String, Vec<u8>) {
    let key: Vec<u8> = (0u8..32).collect();
    (format!("whsec_{}", B64.encode(&key)), key)
}

/// Payloads carry ids and URLs: small, no string long enough to be an image, no image magic in
/// base64.
fn assert_no_image_bytes(hit: &Hit) {
    assert!(hit.body.len() < 2048, "{} bytes of payload", hit.body.len());
    let text = String::from_utf8(hit.body.clone()).unwrap();
    for magic in ["/9j/", "iVBORw0KGgo", "UklGR"] {
        assert!(!text.contains(magic), "image bytes in {text}");
    }
    fn longest(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(longest).max().unwrap_or(0),
            Value::Object(o) => o.values().map(longest).max().unwrap_or(0),
            _ => 0,
        }
    }
    assert!(longest(&hit.json()) < 200, "a long string in {text}");
}

#[tokio::test]
async fn webhooks_report_the_session_signed_to_both_endpoints() {
    let rx = Receiver::start().await;
    let (secret, key) = known_secret();
    let server_wide = rx.url("all");
    let srv = TestServer::start_with(|s| {
        s.webhook_secret = Some(secret.clone());
        s.webhook_url = Some(server_wide.clone());
    })
    .await;
    let body = srv
        .create_session(json!({"claim_ref": "CLM-HOOK", "webhook_url": rx.url("hook")}))
        .await;
    let id = body["id"].as_str().unwrap().to_owned();

    let (mut agent, _) = srv.join(body["agent_token"].as_str().unwrap()).await;
    let (_customer, _) = srv.join(body["customer_token"].as_str().unwrap()).await;
    agent.expect("peer.joined").await;
    let bytes = jpeg(11);
    let capture = upload_as(&srv, &id, bytes.clone(), "image/jpeg", "fender_front_left").await;
    let capture_id = capture["id"].as_str().unwrap();
    close(&srv, &id).await;

    let three = |h: &[Hit]| {
        let types: HashSet<String> = h.iter().map(Hit::event_type).collect();
        ["session.started", "capture.created", "session.closed"]
            .iter()
            .all(|t| types.contains(*t))
    };
    rx.wait_for("hook", WEBHOOK_WAIT, three).await;
    rx.wait_for("all", WEBHOOK_WAIT, three).await;
    // Anything else would have been enqueued before session.closed was: give it a moment anyway.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut ids_by_path = Vec::new();
    for path in ["hook", "all"] {
        let hits = rx.hits(path);
        let mut types: Vec<String> = hits.iter().map(Hit::event_type).collect();
        types.sort();
        assert_eq!(
            types,
            ["capture.created", "session.closed", "session.started"],
            "one delivery of each event to /{path} (two joins, one session.started)"
        );
        for hit in &hits {
            assert_eq!(hit.answered, 200);
            assert_signed(&key, hit);
            assert_no_image_bytes(hit);
            let v = hit.json();
            assert!(v["timestamp"].is_string(), "{v}");
            let data = &v["data"];
            assert_eq!(data["session_id"], id.as_str(), "{v}");
            assert_eq!(data["claim_ref"], "CLM-HOOK", "{v}");
            if v["type"] == "session.closed" {
                assert_eq!(data["status"], "closed", "{v}");
                let export_url = data["export_url"].as_str().expect("export_url");
                assert!(
                    export_url.ends_with(&format!("/api/v1/sessions/{id}/export")),
                    "{export_url}"
                );
            }
            if v["type"] == "capture.created" {
                assert_eq!(data["capture_id"], capture_id, "{v}");
                assert_eq!(data["sha256"], sha_hex(&bytes).as_str());
                let image_url = data["image_url"].as_str().expect("image_url");
                assert!(
                    image_url.ends_with(&format!("/api/v1/captures/{capture_id}/image")),
                    "{image_url}"
                );
                // The URL works for a claims system.
                let fetched = srv
                    .http
                    .get(image_url)
                    .bearer_auth(API_KEY)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(fetched.status(), 200);
                assert_eq!(fetched.bytes().await.unwrap().as_ref(), bytes.as_slice());
            }
        }
        ids_by_path.push(hits.iter().map(|h| h.id.clone()).collect::<HashSet<_>>());
    }
    assert!(
        ids_by_path[0].is_disjoint(&ids_by_path[1]),
        "each endpoint's deliveries have their own webhook-id"
    );

    // The check above is not vacuous: a changed body, id or key fails it.
    let hit = &rx.hits("hook")[0];
    let mut tampered = hit.body.clone();
    tampered[1] ^= 1;
    assert!(!signature_valid(
        &key,
        &hit.id,
        &hit.timestamp,
        &tampered,
        &hit.signature
    ));
    assert!(!signature_valid(
        &key,
        "msg_other",
        &hit.timestamp,
        &hit.body,
        &hit.signature
    ));
    assert!(!signature_valid(
        &[7u8; 32],
        &hit.id,
        &hit.timestamp,
        &hit.body,
        &hit.signature
    ));
}

#[tokio::test]
async fn webhook_is_retried_until_the_receiver_recovers_with_a_stable_id() {
    let rx = Receiver::start().await;
    rx.script("hook", &[503, 503, 503], 200);
    let (secret, key) = known_secret();
    let srv = TestServer::start_with(|s| {
        s.webhook_secret = Some(secret.clone());
        s.webhook_backoff_ms = 50;
    })
    .await;
    let body = srv
        .create_session(json!({"claim_ref": "CLM-RETRY", "webhook_url": rx.url("hook")}))
        .await;
    let id = body["id"].as_str().unwrap();
    // No join: the capture is the only event.
    let capture = upload_as(&srv, id, jpeg(12), "image/jpeg", "roof").await;

    let hits = rx
        .wait_for("hook", WEBHOOK_WAIT, |h| {
            h.iter().any(|h| h.answered == 200)
        })
        .await;
    let answered: Vec<u16> = hits.iter().map(|h| h.answered).collect();
    assert_eq!(answered, [503, 503, 503, 200]);
    let webhook_id = &hits[0].id;
    for hit in &hits {
        assert_eq!(
            &hit.id, webhook_id,
            "every attempt carries the same webhook-id"
        );
        assert_eq!(
            hit.body, hits[0].body,
            "every attempt carries the same body"
        );
        assert_signed(&key, hit);
    }
    assert_eq!(hits[0].json()["type"], "capture.created");
    assert_eq!(hits[0].json()["data"]["capture_id"], capture["id"]);

    // Delivered means done: no further attempt.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.hits("hook").len(), 4);
    let state = srv
        .state()
        .store
        .webhook_state(webhook_id)
        .await
        .unwrap()
        .expect("outbox row");
    assert_eq!(state.status, "delivered");
    assert_eq!(state.attempts, 4);
}

#[tokio::test]
async fn undelivered_webhooks_survive_a_restart() {
    let rx = Receiver::start().await;
    rx.script("hook", &[], 500);
    // No secret configured: the one generated into the data dir signs, before and after.
    let srv = TestServer::start_with(|s| s.webhook_backoff_ms = 50).await;
    let secret = std::fs::read_to_string(srv.data_dir.join("webhook-secret")).unwrap();
    let key = key_of(&secret);
    let body = srv
        .create_session(json!({"claim_ref": "CLM-RESTART", "webhook_url": rx.url("hook")}))
        .await;
    let id = body["id"].as_str().unwrap().to_owned();
    let (agent, _) = srv.join(body["agent_token"].as_str().unwrap()).await;
    let capture = upload_as(&srv, &id, jpeg(13), "image/jpeg", "trunk_lid_tailgate").await;

    // Both events tried and refused at least once before the restart.
    let before = rx
        .wait_for("hook", WEBHOOK_WAIT, |h| {
            h.iter().map(|h| h.id.clone()).collect::<HashSet<_>>().len() == 2
        })
        .await;
    assert!(before.iter().all(|h| h.answered == 500));
    let ids: HashSet<String> = before.iter().map(|h| h.id.clone()).collect();
    drop(agent);

    let srv = srv.restart_with(|s| s.webhook_backoff_ms = 50).await;
    // The receiver comes back after the restart.
    rx.script("hook", &[], 200);
    let hits = rx
        .wait_for("hook", WEBHOOK_WAIT, |h| {
            ids.iter()
                .all(|id| h.iter().any(|h| &h.id == id && h.answered == 200))
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits_after = rx.hits("hook");
    assert_eq!(hits.len(), hits_after.len(), "nothing after the deliveries");

    let delivered: Vec<&Hit> = hits_after.iter().filter(|h| h.answered == 200).collect();
    assert_eq!(delivered.len(), 2, "delivered once per webhook-id");
    let delivered_ids: HashSet<String> = delivered.iter().map(|h| h.id.clone()).collect();
    assert_eq!(
        delivered_ids, ids,
        "the same webhook-ids as before the restart"
    );
    let mut types: Vec<String> = delivered.iter().map(|h| h.event_type()).collect();
    types.sort();
    assert_eq!(types, ["capture.created", "session.started"]);
    for hit in &delivered {
        assert_signed(&key, hit);
        if hit.event_type() == "capture.created" {
            assert_eq!(hit.json()["data"]["capture_id"], capture["id"]);
        }
    }
    for id in &ids {
        let state = srv.state().store.webhook_state(id).await.unwrap().unwrap();
        assert_eq!(state.status, "delivered");
    }
}

#[tokio::test]
async fn an_endpoint_answering_410_gets_nothing_more() {
    let rx = Receiver::start().await;
    rx.script("gone", &[], 410);
    let server_wide = rx.url("ok");
    let srv = TestServer::start_with(|s| {
        s.webhook_backoff_ms = 50;
        s.webhook_url = Some(server_wide.clone());
    })
    .await;
    let body = srv
        .create_session(json!({"claim_ref": "CLM-GONE", "webhook_url": rx.url("gone")}))
        .await;
    let id = body["id"].as_str().unwrap().to_owned();

    upload_as(&srv, &id, jpeg(14), "image/jpeg", "hood").await;
    let gone = rx.wait_for("gone", WEBHOOK_WAIT, |h| !h.is_empty()).await;
    assert_eq!(gone[0].answered, 410);
    rx.wait_for("ok", WEBHOOK_WAIT, |h| h.len() == 1).await;

    // Later events: the server-wide endpoint gets them, the gone one never again.
    let (_agent, _) = srv.join(body["agent_token"].as_str().unwrap()).await;
    upload_as(&srv, &id, jpeg(15), "image/jpeg", "roof").await;
    close(&srv, &id).await;
    rx.wait_for("ok", WEBHOOK_WAIT, |h| {
        h.iter().any(|h| h.event_type() == "session.closed") && h.len() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rx.hits("gone").len(),
        1,
        "the endpoint that answered 410 was called again"
    );

    // Disabled for good: a new session naming the same URL does not reach it either.
    let other = srv
        .create_session(json!({"claim_ref": "CLM-GONE-2", "webhook_url": rx.url("gone")}))
        .await;
    upload_as(
        &srv,
        other["id"].as_str().unwrap(),
        jpeg(16),
        "image/jpeg",
        "hood",
    )
    .await;
    rx.wait_for("ok", WEBHOOK_WAIT, |h| h.len() == 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.hits("gone").len(), 1);
}

#[tokio::test]
async fn sse_opened_while_the_session_closes_still_ends() {
    // Hundreds of streams under one key: the per-key rate limit is not what this test is about.
    let srv = TestServer::start_with(|s| s.key_rate = 0).await;
    // Many opens race one close: some read the session open, then subscribe after the close.
    for round in 0..10 {
        let s = srv.session().await;
        let url = events_url(&srv, &s.id);
        let mut opens = Vec::new();
        for _ in 0..30 {
            let http = srv.http.clone();
            let url = url.clone();
            opens.push(tokio::spawn(async move {
                let res = http.get(&url).bearer_auth(API_KEY).send().await.unwrap();
                assert_eq!(res.status(), 200);
                let mut res = res;
                // Reads to the end; the test fails if a stream stays open.
                tokio::time::timeout(WAIT, async {
                    while res.chunk().await.unwrap().is_some() {}
                })
                .await
                .is_ok()
            }));
        }
        tokio::time::sleep(Duration::from_micros(500 * (round % 4))).await;
        close(&srv, &s.id).await;
        for o in opens {
            assert!(o.await.unwrap(), "round {round}: a stream never ended");
        }
    }
}

#[tokio::test]
async fn expiry_ends_the_stream_and_reports_session_closed() {
    let rx = Receiver::start().await;
    let srv = TestServer::start().await;
    let body = srv
        .create_session(json!({
            "claim_ref": "CLM-EXP",
            "expires_in_s": 2,
            "webhook_url": rx.url("hook"),
        }))
        .await;
    let id = body["id"].as_str().unwrap().to_owned();
    let (mut agent, _) = srv.join(body["agent_token"].as_str().unwrap()).await;
    let mut sse = Sse::open(&srv, &id, API_KEY, None).await;

    // The sweeper runs once a second.
    let closed = agent
        .try_recv(WEBHOOK_WAIT)
        .await
        .expect("session.closed at expiry");
    assert_eq!(closed["type"], "session.closed");
    assert_eq!(closed["reason"], "expired");
    sse.expect_same(&closed).await;
    sse.expect_end().await;

    let hits = rx
        .wait_for("hook", WEBHOOK_WAIT, |h| {
            h.iter().any(|h| h.event_type() == "session.closed")
        })
        .await;
    let closed = hits
        .iter()
        .find(|h| h.event_type() == "session.closed")
        .unwrap()
        .json();
    assert_eq!(closed["data"]["status"], "expired", "{closed}");
    assert_eq!(closed["data"]["session_id"], id.as_str());
}

#[tokio::test]
async fn an_idempotent_upload_retry_sends_no_second_webhook() {
    let rx = Receiver::start().await;
    let srv = TestServer::start().await;
    let body = srv
        .create_session(json!({"claim_ref": "CLM-IDEM", "webhook_url": rx.url("hook")}))
        .await;
    let id = body["id"].as_str().unwrap();
    let meta = json!({"area": "hood", "angle": "close_up", "source": "agent_frame"});
    let bytes = jpeg(21);
    let mut ids = HashSet::new();
    for _ in 0..2 {
        let form = capture_form(Some((bytes.clone(), "image/jpeg")), &meta);
        let res = srv.upload(id, API_KEY, form, Some("retry-1")).await;
        assert!(res.status().is_success(), "{}", res.status());
        let c: Value = res.json().await.unwrap();
        ids.insert(c["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "a retry returns the same capture");
    rx.wait_for("hook", WEBHOOK_WAIT, |h| !h.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = rx.hits("hook");
    assert_eq!(hits.len(), 1, "one capture.created webhook");
    assert_eq!(hits[0].event_type(), "capture.created");
}

#[tokio::test]
async fn webhook_delivery_gives_up_at_the_horizon() {
    let rx = Receiver::start().await;
    rx.script("hook", &[], 500);
    let srv = TestServer::start_with(|s| {
        s.webhook_backoff_ms = 50;
        s.webhook_horizon = 1;
    })
    .await;
    let body = srv
        .create_session(json!({"claim_ref": "CLM-HORIZON", "webhook_url": rx.url("hook")}))
        .await;
    upload_as(
        &srv,
        body["id"].as_str().unwrap(),
        jpeg(22),
        "image/jpeg",
        "roof",
    )
    .await;
    let first = rx.wait_for("hook", WEBHOOK_WAIT, |h| !h.is_empty()).await;
    let webhook_id = first[0].id.clone();
    // Tried until the horizon, then marked failed and left alone.
    let deadline = tokio::time::Instant::now() + WEBHOOK_WAIT;
    loop {
        let state = srv
            .state()
            .store
            .webhook_state(&webhook_id)
            .await
            .unwrap()
            .unwrap();
        if state.status == "failed" {
            assert!(state.attempts >= 2, "retried before giving up: {state:?}");
            break;
        }
        assert_eq!(state.status, "pending");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never gave up: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = rx.hits("hook").len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.hits("hook").len(), n, "no attempt after giving up");
}

/// A stream whose client leaves lets its session's room go, even when nothing else happens in the
/// session (a room otherwise notices a closed stream only at its next event).
#[tokio::test]
async fn an_event_stream_that_ends_lets_a_quiet_sessions_room_go() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let registry = &srv.state().registry;
    assert_eq!(registry.live_rooms(), 0);
    let res = events_request(&srv, &events_url(&srv, &s.id), Some(API_KEY), None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        registry.live_rooms(),
        1,
        "the stream holds the session's room"
    );
    drop(res);
    let deadline = tokio::time::Instant::now() + WAIT;
    while registry.live_rooms() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the room outlived its only stream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The outbox keeps finished deliveries for `--webhook-keep-days` (30 by default), then deletes
/// them; a pending delivery stays however old it is.
#[tokio::test]
async fn finished_webhook_deliveries_are_pruned_after_the_keep_days() {
    use capturelink::store::webhooks::OutboxRow;
    const DAY: i64 = 86_400_000;
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let store = &srv.state().store;
    let now = capturelink::store::now_ms();
    let rows: Vec<OutboxRow> = (0..3)
        .map(|_| {
            OutboxRow::new(
                &s.id,
                "http://127.0.0.1:9/hook",
                "session.started",
                "{}",
                now,
            )
        })
        .collect();
    store.enqueue_webhooks(&rows).await.unwrap();
    store
        .mark_delivered(&rows[0].id, now, 1, 200)
        .await
        .unwrap();
    store
        .mark_failed(&rows[1].id, 3, Some(500), Some("gave up"))
        .await
        .unwrap();

    let prune = |at: i64| capturelink::retention::prune_webhooks(store, 30, at);
    assert_eq!(prune(now + 29 * DAY).await.unwrap(), 0, "kept for 30 days");
    assert_eq!(prune(now + 31 * DAY).await.unwrap(), 2);
    assert_eq!(store.webhook_state(&rows[0].id).await.unwrap(), None);
    assert_eq!(store.webhook_state(&rows[1].id).await.unwrap(), None);
    let pending = store.webhook_state(&rows[2].id).await.unwrap().unwrap();
    assert_eq!(pending.status, "pending", "never deleted while pending");
}

/// `--webhook-public-only`: a non-public IP literal is refused at creation; a name that resolves
/// only to non-public addresses is refused at delivery, at once and without a connection.
#[tokio::test]
async fn with_webhook_public_only_no_delivery_reaches_a_private_address() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    let srv = TestServer::start_with(|s| s.webhook_public_only = true).await;

    for literal in [
        format!("http://127.0.0.1:{port}/hook"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        format!("http://[::1]:{port}/hook"),
    ] {
        let res = srv
            .http
            .post(srv.url("/api/v1/sessions"))
            .bearer_auth(API_KEY)
            .json(&json!({"claim_ref": "CLM-SSRF", "webhook_url": literal}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{literal}");
        let p: Value = res.json().await.unwrap();
        assert_eq!(p["code"], "invalid_webhook_url", "{literal}: {p}");
    }

    // `localhost` is a name: taken at creation, refused when the client resolves it.
    let v = srv
        .create_session(json!({"claim_ref": "CLM-SSRF", "webhook_url": format!("http://localhost:{port}/hook")}))
        .await;
    let id = v["id"].as_str().unwrap();
    let (_agent, _) = srv.join(v["agent_token"].as_str().unwrap()).await;
    let mut conn = srv.db().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let (status, error) = loop {
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, last_error FROM webhook_outbox WHERE session_id = $1 \
             AND event_type = 'session.started'",
        )
        .bind(id)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if let Some((status, error)) = &row
            && status != "pending"
        {
            break (status.clone(), error.clone().unwrap_or_default());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, "failed", "given up at once, not retried");
    assert!(error.contains("not a public internet address"), "{error}");
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing connected to the private address"
    );
}
