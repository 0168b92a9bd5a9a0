//! Faults (issue 6): the server killed mid-session, a client that stops reading, another process
//! holding the database's write lock, a full disk, a network that stops carrying packets, and a
//! webhook receiver that is down across a restart. The quick versions run here; the long ones
//! (compiled only with the `long-faults` feature) run from `scripts/faults` (docs/OPERATIONS.md,
//! "Fault tests").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::durability::{Proc, free_port, jpeg};
use crate::support::*;

/// The heavy tests of this file (a real binary killed, a disk filled, a flood measured) take turns,
/// so that the latency measured in one is not the load of another.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn seq(m: &Value) -> i64 {
    m["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {m}"))
}

/// The files under `media/` (originals, thumbnails and half-written ones in tmp/).
fn media_files(data_dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data_dir.join("media"), &mut out);
    out.sort();
    out
}

async fn upload_with_key(
    srv: &TestServer,
    session: &str,
    bytes: Vec<u8>,
    key: Option<&str>,
) -> reqwest::Response {
    let meta = json!({"area": "hood", "angle": "close_up", "source": "agent_frame"});
    srv.upload(
        session,
        API_KEY,
        capture_form(Some((bytes, "image/jpeg")), &meta),
        key,
    )
    .await
}

async fn capture_ids(srv: &TestServer, session: &str) -> Vec<String> {
    let list: Value = srv
        .http
        .get(srv.url(&format!("/api/v1/sessions/{session}/captures")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn p99(times: &mut [Duration]) -> Duration {
    assert!(!times.is_empty());
    times.sort();
    times[(times.len() * 99 / 100).min(times.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// kill -9 mid-session

/// What one WebSocket client saw before its connection broke.
#[derive(Default)]
struct Seen {
    events: Vec<Value>,
    acked: Vec<String>,
}

impl Seen {
    fn last_seq(&self) -> i64 {
        self.events.last().map(seq).unwrap_or(0)
    }
}

/// Reads (and, for the agent, sends an acknowledged chat every 20 ms) until the socket breaks.
async fn drive_until_broken(mut c: Client, chat: bool, mut seen: Seen) -> Seen {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut n = 0;
    loop {
        tokio::select! {
            _ = tick.tick(), if chat => {
                n += 1;
                let msg = json!({"type":"chat","id":format!("chat-{n}"),"text":format!("chat {n}")});
                if c.ws.send(Message::Text(msg.to_string().into())).await.is_err() {
                    return seen;
                }
            }
            frame = c.ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let m: Value = serde_json::from_str(t.as_str()).unwrap();
                    match m["type"].as_str() {
                        Some("ack") => seen.acked.push(m["id"].as_str().unwrap().to_owned()),
                        Some("error") => panic!("refused: {m}"),
                        _ => seen.events.push(m),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return seen,
            },
        }
    }
}

/// Reads what arrives until `wait` passes with nothing new.
async fn drain(c: &mut Client, wait: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(m) = c.try_recv(wait).await {
        out.push(m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_session_both_clients_resume_nothing_lost_nothing_twice() {
    let _turn = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut proc = Proc::start(dir.path(), port).await;
    let http = reqwest::Client::new();
    let s: Value = http
        .post(format!("{}/api/v1/sessions", proc.base))
        .bearer_auth(API_KEY)
        .json(&json!({"claim_ref": "CLM-KILL-2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = s["id"].as_str().unwrap().to_owned();
    let tokens = [
        s["agent_token"].as_str().unwrap().to_owned(),
        s["customer_token"].as_str().unwrap().to_owned(),
    ];
    let ws_url = |token: &str, last: Option<i64>| match last {
        Some(n) => format!("ws://127.0.0.1:{port}/ws?token={token}&last_seq={n}"),
        None => format!("ws://127.0.0.1:{port}/ws?token={token}"),
    };
    let mut clients = Vec::new();
    for token in &tokens {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url(token, None))
            .await
            .unwrap();
        let mut c = Client { ws };
        let w = c.expect("welcome").await;
        assert_eq!(w["resumed"], false);
        clients.push(c);
    }
    let customer = clients.pop().unwrap();
    let agent = clients.pop().unwrap();
    let agent_task = tokio::spawn(drive_until_broken(agent, true, Seen::default()));
    let customer_task = tokio::spawn(drive_until_broken(customer, false, Seen::default()));

    // Uploads with an Idempotency-Key each; the one in flight when the server dies is in doubt and
    // is retried after the restart with the same key and bytes, as a client would.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut uploaders = Vec::new();
    for worker in 0..3u32 {
        let (base, session, tx) = (proc.base.clone(), session.clone(), tx.clone());
        uploaders.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..60u32 {
                // Seeds within 256 of each other: `jpeg` repeats itself every 256.
                let bytes = jpeg(1000 + worker * 60 + i);
                let key = format!("k-{worker}-{i}");
                let meta = json!({"area": "hood", "angle": "close_up", "source": "agent_frame"});
                let form = capture_form(Some((bytes.clone(), "image/jpeg")), &meta);
                let sent = http
                    .post(format!("{base}/api/v1/sessions/{session}/captures"))
                    .bearer_auth(API_KEY)
                    .header("idempotency-key", &key)
                    .multipart(form)
                    .send()
                    .await;
                let body = match sent {
                    Ok(r) if r.status() == 201 => r.json::<Value>().await.ok(),
                    Ok(r) => panic!("upload answered {}", r.status()),
                    Err(_) => None,
                };
                match body {
                    Some(b) => {
                        let _ = tx.send(Ok((key, b["id"].as_str().unwrap().to_owned())));
                    }
                    None => {
                        let _ = tx.send(Err((key, bytes)));
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut in_doubt: Vec<(String, Vec<u8>)> = Vec::new();
    while acked.len() < 6 {
        match rx.recv().await.expect("uploads are acknowledged") {
            Ok(a) => acked.push(a),
            Err(d) => in_doubt.push(d),
        }
    }
    proc.kill9();
    for u in uploaders {
        u.await.unwrap();
    }
    while let Ok(r) = rx.try_recv() {
        match r {
            Ok(a) => acked.push(a),
            Err(d) => in_doubt.push(d),
        }
    }
    let agent_seen = agent_task.await.unwrap();
    let customer_seen = customer_task.await.unwrap();
    assert!(
        agent_seen.acked.len() >= 2,
        "chats acknowledged before the kill"
    );
    eprintln!(
        "kill -9 with {} uploads acknowledged, {} in flight; {} chats acknowledged; agent at seq {}, customer at seq {}",
        acked.len(),
        in_doubt.len(),
        agent_seen.acked.len(),
        agent_seen.last_seq(),
        customer_seen.last_seq()
    );

    let proc = Proc::start(dir.path(), port).await;
    let srv_url = |p: &str| format!("{}{p}", proc.base);

    // The uploads in doubt, retried with their key: each answers one capture, whether the first
    // attempt committed before the kill (replayed) or not (stored now).
    let mut replayed = 0;
    for (key, bytes) in &in_doubt {
        let meta = json!({"area": "hood", "angle": "close_up", "source": "agent_frame"});
        let r = http
            .post(srv_url(&format!("/api/v1/sessions/{session}/captures")))
            .bearer_auth(API_KEY)
            .header("idempotency-key", key)
            .multipart(capture_form(Some((bytes.clone(), "image/jpeg")), &meta))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "retry of {key}");
        if r.headers().get("idempotent-replayed").is_some() {
            replayed += 1;
        }
        let b: Value = r.json().await.unwrap();
        acked.push((key.clone(), b["id"].as_str().unwrap().to_owned()));
    }

    eprintln!(
        "after the restart: {} uploads in doubt retried, {replayed} of them had been stored before the kill",
        in_doubt.len()
    );
    // Both clients come back with their last seq.
    let mut resumed = Vec::new();
    for (token, seen) in tokens.iter().zip([&agent_seen, &customer_seen]) {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url(token, Some(seen.last_seq())))
            .await
            .unwrap();
        let mut c = Client { ws };
        let w = c.expect("welcome").await;
        assert_eq!(w["resumed"], true, "resumed from {}", seen.last_seq());
        assert!(w["last_seq"].as_i64().unwrap() >= seen.last_seq());
        resumed.push((c, Vec::new()));
    }
    // The replays, and what the reconnections cause (the agent sees the customer join again).
    for (c, more) in resumed.iter_mut() {
        *more = drain(c, Duration::from_millis(800)).await;
    }

    let list: Value = http
        .get(srv_url(&format!("/api/v1/sessions/{session}/captures")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    let shas: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(
        shas.iter().collect::<HashSet<_>>().len(),
        shas.len(),
        "no upload stored twice"
    );
    let stored_set: HashSet<&String> = stored.iter().collect();
    for (key, id) in &acked {
        assert!(stored_set.contains(id), "acknowledged capture {id} ({key})");
    }
    // Every upload that was answered (or retried) is stored, and nothing else.
    assert_eq!(stored.len(), acked.len(), "one capture per upload key");

    for ((_, more), (seen, role)) in resumed
        .iter()
        .zip([(&agent_seen, "agent"), (&customer_seen, "customer")])
    {
        let all: Vec<&Value> = seen.events.iter().chain(more.iter()).collect();
        // One stream per recipient: 1, 2, 3, … with no gap and nothing twice, across the kill.
        let seqs: Vec<i64> = all.iter().map(|m| seq(m)).collect();
        let expected: Vec<i64> = (seqs[0]..seqs[0] + seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "{role}'s seqs across the kill");
        // Each stored capture announced exactly once.
        let mut announced: HashMap<&str, usize> = HashMap::new();
        for m in all.iter().filter(|m| m["type"] == "capture.created") {
            *announced
                .entry(m["capture"]["id"].as_str().unwrap())
                .or_default() += 1;
        }
        for id in &stored {
            assert_eq!(
                announced.get(id.as_str()),
                Some(&1),
                "capture.created of {id} to the {role}"
            );
        }
        assert_eq!(announced.len(), stored.len(), "{role}: no unknown capture");
    }
    // Every acknowledged chat reached the customer exactly once.
    let customer_all: Vec<&Value> = customer_seen
        .events
        .iter()
        .chain(resumed[1].1.iter())
        .collect();
    for id in &agent_seen.acked {
        let text = format!("chat {}", id.trim_start_matches("chat-"));
        let n = customer_all
            .iter()
            .filter(|m| m["type"] == "chat" && m["text"] == text.as_str())
            .count();
        assert_eq!(n, 1, "acknowledged {id} delivered once");
    }

    // The session goes on: a live message takes the next seq.
    let last = seq(customer_all.last().unwrap());
    let (mut agent, _) = resumed.remove(0);
    let (mut customer, _) = resumed.remove(0);
    agent
        .send(json!({"type":"chat","id":"after","text":"after the restart"}))
        .await;
    agent.expect("ack").await;
    let m = customer.expect("chat").await;
    assert_eq!(m["text"], "after the restart");
    assert_eq!(seq(&m), last + 1);
}

// ---------------------------------------------------------------------------------------------
// A client that stops reading

/// Signal round trips (agent -> customer -> agent; relayed live, no disk) until `stop` or `max`.
async fn signal_round_trips(
    agent: &mut Client,
    customer: &mut Client,
    max: usize,
    stop: &AtomicBool,
) -> Vec<Duration> {
    let mut times = Vec::with_capacity(max);
    for i in 0..max {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let t0 = Instant::now();
        agent
            .send(json!({"type":"signal","data":{"candidate":i}}))
            .await;
        assert_eq!(customer.expect("signal").await["data"]["candidate"], i);
        customer
            .send(json!({"type":"signal","data":{"answer":i}}))
            .await;
        assert_eq!(agent.expect("signal").await["data"]["answer"], i);
        times.push(t0.elapsed());
    }
    times
}

/// A WebSocket client whose socket has a fixed receive buffer (no autotuning to megabytes), so
/// that it stops taking data soon after it stops reading.
async fn small_buffer_client(srv: &TestServer, token: &str) -> Client {
    let addr: SocketAddr = srv.base.trim_start_matches("http://").parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        srv.ws_url(token, None),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    Client { ws }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_other_sessions_p99_is_unchanged() {
    let _turn = HEAVY.lock().await;
    let srv = TestServer::start_with(|s| {
        s.ws_queue = 128;
        s.ws_rate = 1_000_000;
        s.ws_burst = 1_000_000;
    })
    .await;
    // Session A: an agent flooding signals at a steady pace to a customer that reads, then stops.
    let a = srv.session().await;
    let (mut agent_a, _) = srv.join(&a.agent_token).await;
    let mut customer_a = small_buffer_client(&srv, &a.customer_token).await;
    assert_eq!(customer_a.expect("welcome").await["type"], "welcome");
    agent_a.expect("peer.joined").await;
    // Session B: the one whose latency is measured.
    let b = srv.session().await;
    let (mut agent_b, _) = srv.join(&b.agent_token).await;
    let (mut customer_b, _) = srv.join(&b.customer_token).await;
    agent_b.expect("peer.joined").await;

    let (reading_tx, mut reading_rx) = watch::channel(true);
    let customer_task = tokio::spawn(async move {
        // Reads while told to; then holds the socket open and reads nothing more, until the
        // server closes it (seen once reading resumes at the end).
        let mut got = 0usize;
        loop {
            tokio::select! {
                changed = reading_rx.changed() => {
                    if changed.is_err() || !*reading_rx.borrow() { break; }
                }
                frame = customer_a.ws.next() => match frame {
                    Some(Ok(Message::Text(_))) => got += 1,
                    Some(Ok(_)) => {}
                    other => panic!("the customer was closed while it was still reading: {other:?}"),
                },
            }
        }
        (customer_a, got)
    });
    let stop_flood = Arc::new(AtomicBool::new(false));
    let flood_stop = stop_flood.clone();
    let flood = tokio::spawn(async move {
        // 4 KiB signals every 4 ms (~1 MB/s): steady load, the same with and without the stall,
        // and slow enough for a reading client on a loaded machine to keep up with.
        let blob = "s".repeat(4096);
        let mut tick = tokio::time::interval(Duration::from_millis(4));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut left = None;
        let mut sent = 0u64;
        while !flood_stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = tick.tick() => {
                    agent_a.send(json!({"type":"signal","data":{"blob":blob}})).await;
                    sent += 1;
                }
                Some(m) = agent_a.try_recv(Duration::from_secs(3600)) => {
                    match m["type"].as_str() {
                        Some("peer.left") => left = Some((m, Instant::now())),
                        // Once the customer is gone the signals are refused: peer_absent.
                        Some("error") if m["code"] == "peer_absent" => {}
                        _ => panic!("unexpected {m}"),
                    }
                }
            }
        }
        // The close may have been seen through the registry before the agent's message arrived.
        while left.is_none() {
            let m = agent_a.recv().await;
            match m["type"].as_str() {
                Some("peer.left") => left = Some((m, Instant::now())),
                Some("error") if m["code"] == "peer_absent" => {}
                _ => panic!("unexpected {m}"),
            }
        }
        (left, sent)
    });

    // Without a stalled client: 300 round trips in session B.
    let never = AtomicBool::new(false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut without = signal_round_trips(&mut agent_b, &mut customer_b, 300, &never).await;

    // The customer of A stops reading: measure B until the server has closed A's customer.
    let stalled_at = Instant::now();
    reading_tx.send(false).unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let watcher_closed = closed.clone();
    let registry_state = srv.state().clone();
    let a_id = a.id.clone();
    let watcher = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while registry_state
            .registry
            .presence(&a_id)
            .await
            .unwrap()
            .customer
        {
            assert!(
                Instant::now() < deadline,
                "the stalled customer was never closed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        watcher_closed.store(true, Ordering::Relaxed);
        Instant::now()
    });
    let mut with = Vec::new();
    while !closed.load(Ordering::Relaxed) {
        with.extend(signal_round_trips(&mut agent_b, &mut customer_b, 50, &closed).await);
    }
    let closed_at = watcher.await.unwrap();
    let (mut customer_a, read_before) = customer_task.await.unwrap();
    // What was buffered is read now (within the server's one-second grace for a close), then the
    // close: 1008, too slow.
    let mut code = None;
    while let Ok(Some(frame)) = tokio::time::timeout(WAIT, customer_a.ws.next()).await {
        match frame {
            Ok(Message::Close(Some(f))) => {
                code = Some(u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1008), "the stalled client is closed: too slow");
    // Without a stalled client again (the flood still running): a second baseline, so that a
    // burst of load from the tests running beside this one cannot pass for an effect.
    let mut after = signal_round_trips(&mut agent_b, &mut customer_b, 300, &never).await;
    stop_flood.store(true, Ordering::Relaxed);
    let (left, sent) = flood.await.unwrap();
    let (left, _) = left.expect("the agent was told its customer left");
    assert_eq!(left["role"], "customer");
    assert_eq!(left["reason"], "closed");

    let stall = closed_at - stalled_at;
    let (p_before, p_with, p_after) = (p99(&mut without), p99(&mut with), p99(&mut after));
    let p_without = p_before.max(p_after);
    eprintln!(
        "stalled client: {sent} signals flooded ({read_before} read before the stall); closed {stall:?} after it stopped reading; \
         other session p99 {p_before:?} before / {p_after:?} after ({} round trips each), {p_with:?} with the stalled client ({} round trips)",
        without.len(),
        with.len()
    );
    assert!(
        with.len() >= 20,
        "too few round trips ({}) while the client was stalled ({stall:?})",
        with.len()
    );
    // Generous: the machine runs other tests at the same time. The floor keeps a sub-millisecond
    // baseline from turning scheduler noise into a failure.
    let limit = p_without.max(Duration::from_millis(5)) * 4;
    assert!(
        p_with <= limit,
        "p99 with a stalled client {p_with:?} > 4 x baseline {p_without:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Another process holds the database's write lock

#[tokio::test]
async fn a_write_lock_held_elsewhere_answers_503_writes_nothing_and_recovers_at_once() {
    use sqlx::Connection;
    let srv = TestServer::start_with(|s| s.db_busy_timeout_ms = 200).await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let files_before = media_files(&srv.data_dir);

    // A second SQLite connection, as another process would open it, takes the write lock.
    let mut other = hold_write_lock(&srv.data_dir).await;

    let started = Instant::now();
    let r = upload_with_key(&srv, &s.id, jpeg(41), Some("busy-1")).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("1".into())
    );
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "unavailable");
    assert!(
        took < Duration::from_secs(3),
        "the 503 took {took:?} (busy timeout 200 ms)"
    );
    // Nothing half-written: no row, no file, no event.
    assert!(capture_ids(&srv, &s.id).await.is_empty());
    assert_eq!(media_files(&srv.data_dir), files_before, "no file left");
    agent.expect_silence(Duration::from_millis(300)).await;
    // A durable message over the WebSocket is refused the same way, and the socket stays up.
    agent
        .send(json!({"type":"chat","id":"c1","text":"while locked"}))
        .await;
    let e = agent.expect("error").await;
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("unavailable"), json!("c1"))
    );

    // The lock goes: the very next upload (the same key, so a client's retry) is stored.
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let released = Instant::now();
    let r = upload_with_key(&srv, &s.id, jpeg(41), Some("busy-1")).await;
    assert_eq!(r.status(), 201, "recovered as soon as the lock went");
    assert!(r.headers().get("idempotent-replayed").is_none());
    eprintln!(
        "write lock: 503 after {took:?}; first upload after release stored in {:?}",
        released.elapsed()
    );
    let id = r.json::<Value>().await.unwrap()["id"].clone();
    assert_eq!(agent.expect("capture.created").await["capture"]["id"], id);
    assert_eq!(capture_ids(&srv, &s.id).await.len(), 1);
    agent
        .send(json!({"type":"chat","id":"c2","text":"after"}))
        .await;
    agent.expect("ack").await;
    other.close().await.unwrap();
}

/// Messages sent back to back while the log cannot be written: the first fails, and those queued
/// behind it fail unwritten (or, if it failed before they were routed, go through): whatever the
/// timing, each is acked or refused once, the peer's seqs stay contiguous, and numbering goes on
/// without a gap once the lock goes.
#[tokio::test]
async fn messages_queued_behind_a_failed_commit_leave_no_gap_in_seq() {
    use sqlx::Connection;
    let srv = TestServer::start_with(|s| s.db_busy_timeout_ms = 200).await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (mut customer, cw) = srv.join(&s.customer_token).await;
    agent.expect("peer.joined").await;
    let mut next = cw["last_seq"].as_i64().unwrap() + 1;

    let mut other = hold_write_lock(&srv.data_dir).await;
    let burst = [
        json!({"type":"chat","id":"c1","text":"one"}),
        json!({"type":"guide","id":"g2","hint":"closer"}),
        json!({"type":"signal","id":"s3","data":{"candidate":"x"}}),
        json!({"type":"chat","id":"c4","text":"four"}),
    ];
    for m in &burst {
        agent.send(m.clone()).await;
    }
    let mut answers = BTreeMap::new();
    for _ in &burst {
        let m = agent.recv().await;
        let id = m["id"].as_str().or(m["ref"].as_str()).unwrap().to_owned();
        let code = m["code"].as_str().unwrap_or("ack").to_owned();
        assert!(answers.insert(id, code).is_none(), "answered twice: {m}");
    }
    assert_eq!(answers["c1"], "unavailable", "{answers:?}");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();

    // What was acked arrived, in order and numbered on from before the burst; nothing else did.
    for m in burst
        .iter()
        .filter(|m| answers[m["id"].as_str().unwrap()] == "ack")
    {
        let got = customer.recv().await;
        assert_eq!((&got["type"], seq(&got)), (&m["type"], next), "{got}");
        next += 1;
    }
    customer.expect_silence(Duration::from_millis(300)).await;
    agent
        .send(json!({"type":"chat","id":"c5","text":"after"}))
        .await;
    agent.expect("ack").await;
    let got = customer.expect("chat").await;
    assert_eq!((got["text"].as_str(), seq(&got)), (Some("after"), next));

    // A reconnect from before the burst replays exactly the durable messages that were acked.
    drop(customer);
    agent.expect("peer.left").await;
    let (mut back, w) = srv
        .join_at(&s.customer_token, cw["last_seq"].as_i64())
        .await;
    assert_eq!(w["resumed"], true);
    let mut texts = Vec::new();
    while texts.last() != Some(&json!("after")) {
        let m = back.recv().await;
        texts.push(m.get("text").cloned().unwrap_or(m["type"].clone()));
    }
    let expected: Vec<Value> = burst
        .iter()
        .filter(|m| m["type"] != "signal" && answers[m["id"].as_str().unwrap()] == "ack")
        .map(|m| m.get("text").cloned().unwrap_or(m["type"].clone()))
        .chain([json!("after")])
        .collect();
    assert_eq!(texts, expected);
    eprintln!("answers under the lock: {answers:?}");
}

// ---------------------------------------------------------------------------------------------
// Disk full

/// A tmpfs mounted on a fresh dir, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None when this process may not mount (not root).
    fn mount(size: &str) -> Option<Self> {
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "running as root, but `mount -t tmpfs` failed: this test needs the permission to mount"
        );
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system of `path` until a write fails with ENOSPC.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
        let buf = vec![0u8; chunk];
        loop {
            match f.write_all(&buf) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
    let _ = f.sync_all();
}

/// Free bytes on the file system of `path`.
fn free_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Shrinks the filler so that `free` bytes (rounded to pages) are free.
fn leave_free(filler: &Path, free: u64) {
    let now = free_bytes(filler);
    let len = std::fs::metadata(filler).unwrap().len();
    if free > now {
        let cut = (free - now).div_ceil(4096) * 4096;
        std::fs::OpenOptions::new()
            .write(true)
            .open(filler)
            .unwrap()
            .set_len(len.saturating_sub(cut))
            .unwrap();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_uploads_with_507_writes_nothing_and_recovers_without_restart() {
    let _turn = HEAVY.lock().await;
    let Some(fs) = Tmpfs::mount("24m") else {
        eprintln!(
            "\n*** SKIPPED a_full_disk_refuses_uploads_with_507…: it mounts a small tmpfs as the data \
             dir, which needs root. Run it as root, or run scripts/faults (which refuses to run \
             without root). ***\n"
        );
        return;
    };
    let srv = TestServer::start_at(fs.path(), |_| {}).await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let ok = upload_with_key(&srv, &s.id, jpeg(50), None).await;
    assert_eq!(ok.status(), 201, "stores while there is room");
    agent.expect("capture.created").await;
    let files_before = media_files(fs.path());
    let filler = fs.path().join("filler");

    // Full: the original cannot be written.
    fill(&filler);
    let image = jpeg(51);
    let r = upload_with_key(&srv, &s.id, image.clone(), Some("full-1")).await;
    assert_eq!(r.status(), 507);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "insufficient_storage"
    );
    assert_eq!(capture_ids(&srv, &s.id).await.len(), 1, "no row");
    assert_eq!(media_files(fs.path()), files_before, "no file left");

    // Nearly full, at every point along the way: room for part of the original, for the original
    // but not its thumbnail, for both files but maybe not the database's pages. Each upload is
    // stored whole (201) or refused with nothing left behind (507).
    let mut outcomes = BTreeMap::new();
    let mut stored = 1;
    let step = 8192u64;
    let mut free = 0u64;
    while free < image.len() as u64 + 128 * 1024 {
        free += step;
        let _ = std::fs::remove_file(&filler);
        fill(&filler);
        leave_free(&filler, free);
        let before = media_files(fs.path());
        let r = upload_with_key(&srv, &s.id, jpeg(60 + free as u32 / 4096), None).await;
        let status = r.status().as_u16();
        outcomes.insert(free, status);
        match status {
            201 => {
                stored += 1;
                assert_eq!(
                    agent.expect("capture.created").await["type"],
                    "capture.created"
                );
                assert_eq!(
                    media_files(fs.path()).len(),
                    before.len() + 2,
                    "original and thumbnail"
                );
            }
            507 => {
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["code"], "insufficient_storage");
                assert_eq!(
                    media_files(fs.path()),
                    before,
                    "nothing half-written with {free} B free"
                );
            }
            other => panic!(
                "upload with {free} bytes free answered {other}: {}",
                r.text().await.unwrap()
            ),
        }
        assert_eq!(
            capture_ids(&srv, &s.id).await.len(),
            stored,
            "captures listed after {status} with {free} B free ({outcomes:?})"
        );
    }
    eprintln!(
        "disk full: image {} B; outcome by free bytes: {outcomes:?}",
        image.len()
    );
    assert!(outcomes.values().any(|s| *s == 507));

    // Space comes back: the same upload is stored, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let r = upload_with_key(&srv, &s.id, image, Some("full-1")).await;
    assert_eq!(r.status(), 201, "recovered once space was freed");
    agent.expect("capture.created").await;
    assert_eq!(capture_ids(&srv, &s.id).await.len(), stored + 1);
    srv.shutdown().await;
    drop(fs);
}

// ---------------------------------------------------------------------------------------------
// Network loss

/// A TCP proxy whose connections can be frozen: nothing is forwarded either way and nothing is
/// closed, as when a phone's network drops (no FIN, no RST, no close frame).
struct Proxy {
    addr: SocketAddr,
    frozen: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The generation of connections that are frozen: every connection accepted before the
        // last `freeze` stops carrying data until `thaw`.
        let (frozen, _) = watch::channel(0u64);
        let gen_tx = frozen.clone();
        tokio::spawn(async move {
            let mut generation = 0u64;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                generation += 1;
                let server = TcpStream::connect(upstream).await.unwrap();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, gen_tx.subscribe(), generation));
                tokio::spawn(pump(sr, cw, gen_tx.subscribe(), generation));
            }
        });
        Self { addr, frozen }
    }

    /// Freezes every connection open now.
    fn freeze(&self, up_to_connection: u64) {
        self.frozen.send_replace(up_to_connection);
    }

    fn thaw(&self) {
        self.frozen.send_replace(0);
    }

    fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }
}

/// Copies `from` to `to`, holding (not dropping) data while this connection is frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<u64>,
    generation: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while *frozen.borrow_and_update() >= generation {
            if frozen.changed().await.is_err() {
                return;
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => { let _ = to.shutdown().await; return } Ok(n) => n },
            _ = frozen.changed() => continue,
        };
        while *frozen.borrow_and_update() >= generation {
            if frozen.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Reads `c` (answering pings) for `wait`, returning what arrived.
async fn read_for(c: &mut Client, wait: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return out;
        }
        match c.try_recv(left).await {
            Some(m) => out.push(m),
            None => return out,
        }
    }
}

/// The network-loss scenario: the customer's network stops for `loss`; the agent must be told
/// (`peer.left`, `timeout`) within two heartbeat intervals if the loss outlasts them; after the
/// loss the customer resumes from its last seq with nothing lost and nothing twice.
async fn network_loss(heartbeat: Duration, loss: Duration) {
    let srv = TestServer::start_with(|s| s.heartbeat_ms = heartbeat.as_millis() as u64).await;
    let proxy = Proxy::start(srv.base.trim_start_matches("http://").parse().unwrap()).await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (ws, _) = tokio_tungstenite::connect_async(proxy.ws_url(&s.customer_token))
        .await
        .unwrap();
    let mut customer = Client { ws };
    customer.expect("welcome").await;
    agent.expect("peer.joined").await;
    agent
        .send(json!({"type":"chat","id":"a1","text":"before"}))
        .await;
    agent.expect("ack").await;
    let before = customer.expect("chat").await;
    let customer_last = seq(&before);
    // A sign of life just before the loss, so the window is counted from here.
    customer.send(json!({"type":"ping","t":0})).await;
    customer.expect("pong").await;

    proxy.freeze(1);
    let lost_at = Instant::now();
    // Sent into the dead connection: durable, so it must come back on resume.
    agent
        .send(json!({"type":"chat","id":"a2","text":"during the loss"}))
        .await;
    agent.expect("ack").await;
    let window = heartbeat * 2;
    let told = if loss > window {
        // The agent reads (so its own connection stays alive) until told.
        let mut got = Vec::new();
        while !got.iter().any(|m: &Value| m["type"] == "peer.left") {
            let more = read_for(&mut agent, Duration::from_millis(50)).await;
            got.extend(more);
            assert!(
                lost_at.elapsed() < window + Duration::from_secs(5),
                "the agent was not told within {:?}: {got:?}",
                lost_at.elapsed()
            );
        }
        let told = lost_at.elapsed();
        let left = got.iter().find(|m| m["type"] == "peer.left").unwrap();
        assert_eq!(
            (left["role"].clone(), left["reason"].clone()),
            (json!("customer"), json!("timeout"))
        );
        // The window is two intervals; allow a second of scheduling on a loaded machine.
        assert!(
            told <= window + Duration::from_secs(1),
            "told after {told:?}, window {window:?}"
        );
        Some(told)
    } else {
        None
    };
    // The rest of the loss; the agent keeps talking to an absent (or silent) customer.
    let rest = loss.saturating_sub(lost_at.elapsed());
    let during = read_for(&mut agent, rest).await;
    agent
        .send(json!({"type":"chat","id":"a3","text":"still during the loss"}))
        .await;
    let mut acked = false;
    for m in during.iter().chain(
        read_for(&mut agent, Duration::from_millis(300))
            .await
            .iter(),
    ) {
        match m["type"].as_str() {
            Some("ack") => acked = true,
            Some("peer.left") if told.is_none() => {
                panic!("the peer was told of a loss shorter than the window: {m}")
            }
            _ => {}
        }
    }
    assert!(acked, "a3 acknowledged");

    let texts = |ms: &[Value]| -> Vec<String> {
        ms.iter()
            .filter(|m| m["type"] == "chat")
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    };
    if told.is_some() {
        // The network is back; the customer's client notices its dead socket (its own heartbeat)
        // and reconnects with its last seq.
        let (mut back, w) = srv.join_at(&s.customer_token, Some(customer_last)).await;
        assert_eq!(w["resumed"], true);
        let replay = drain(&mut back, Duration::from_millis(300)).await;
        let seqs: Vec<i64> = replay.iter().map(seq).collect();
        let expected: Vec<i64> =
            (customer_last + 1..customer_last + 1 + seqs.len() as i64).collect();
        assert_eq!(
            seqs, expected,
            "the replay continues the stream: {replay:?}"
        );
        assert_eq!(texts(&replay), ["during the loss", "still during the loss"]);
        let joined = agent.expect("peer.joined").await;
        assert_eq!(joined["role"], "customer");
        back.send(json!({"type":"chat","id":"c1","text":"back"}))
            .await;
        back.expect("ack").await;
        assert_eq!(agent.expect("chat").await["text"], "back");
        // The dead connection never gets anything again, even when its network comes back.
        proxy.thaw();
        let mut old = Vec::new();
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_millis(500), customer.ws.next()).await
        {
            if let Message::Text(t) = frame {
                old.push(serde_json::from_str::<Value>(t.as_str()).unwrap());
            }
        }
        assert!(
            old.iter()
                .all(|m| m["type"] != "chat" || m["text"] == "during the loss"),
            "the replaced connection got {old:?}"
        );
    } else {
        // Shorter than the window: when the network comes back the same connection carries on,
        // with what was sent meanwhile, in order.
        proxy.thaw();
        let got = read_for(&mut customer, Duration::from_secs(2)).await;
        assert_eq!(texts(&got), ["during the loss", "still during the loss"]);
        let seqs: Vec<i64> = got
            .iter()
            .filter(|m| m.get("seq").is_some())
            .map(seq)
            .collect();
        assert_eq!(seqs, [customer_last + 1, customer_last + 2]);
        customer
            .send(json!({"type":"chat","id":"c1","text":"still here"}))
            .await;
        assert_eq!(agent.expect("chat").await["text"], "still here");
    }
    eprintln!(
        "network loss of {loss:?} with heartbeat {heartbeat:?}: peer told after {told:?}; resumed"
    );
}

#[tokio::test]
async fn network_loss_tells_the_peer_within_the_heartbeat_window_then_resumes() {
    // Every client of the test must be read at least once per window (a second) to stay alive.
    network_loss(Duration::from_millis(500), Duration::from_millis(2500)).await;
}

/// 30 s without network on the customer's side, with a 10 s heartbeat (window 20 s): the agent is
/// told within the window, the customer resumes after. Real time: run by scripts/faults.
#[cfg(feature = "long-faults")]
#[tokio::test]
async fn long_network_loss_30s_is_reported_then_resumed() {
    let secs = |var: &str, default: u64| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let heartbeat = Duration::from_millis(secs("FAULT_HEARTBEAT_MS", 10_000));
    let loss = Duration::from_secs(secs("FAULT_LOSS_S", 30));
    network_loss(heartbeat, loss).await;
}

/// 30 s without network with the default 20 s heartbeat (window 40 s): nobody is dropped, and
/// the same connection carries on when the network returns.
#[cfg(feature = "long-faults")]
#[tokio::test]
async fn long_network_loss_30s_within_the_default_window_keeps_the_connection() {
    network_loss(Duration::from_secs(20), Duration::from_secs(30)).await;
}

// ---------------------------------------------------------------------------------------------
// Webhook receiver down across a restart

/// A receiver that answers 200 and records `(webhook-id, type)` of each request.
async fn receiver_on(port: u16) -> Arc<std::sync::Mutex<Vec<(String, String)>>> {
    let hits: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let state = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    state
                        .lock()
                        .unwrap()
                        .push((id, v["type"].as_str().unwrap_or("").to_owned()));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_survive_a_receiver_down_across_a_kill_9_delivered_once_each() {
    let _turn = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Nothing listens there yet: every attempt is refused (connection refused, not an HTTP error).
    let receiver_port = free_port();
    let hook = format!("http://127.0.0.1:{receiver_port}/hook");
    let args = ["--webhook-backoff-ms", "50"];
    let mut proc = Proc::start_with_args(dir.path(), port, &args).await;
    let http = reqwest::Client::new();
    let create = |base: String| {
        let http = http.clone();
        let hook = hook.clone();
        async move {
            let r = http
                .post(format!("{base}/api/v1/sessions"))
                .bearer_auth(API_KEY)
                .json(&json!({"claim_ref": "CLM-HOOK", "webhook_url": hook}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()
        }
    };
    let upload = |base: String, session: String, seed: u32| {
        let http = http.clone();
        async move {
            let meta = json!({"area": "roof", "angle": "top_down", "source": "agent_frame"});
            let r = http
                .post(format!("{base}/api/v1/sessions/{session}/captures"))
                .bearer_auth(API_KEY)
                .multipart(capture_form(Some((jpeg(seed), "image/jpeg")), &meta))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    };
    let join = |port: u16, token: String| async move {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?token={token}"))
                .await
                .unwrap();
        let mut c = Client { ws };
        c.expect("welcome").await;
        c
    };

    // Before the kill: two sessions started, three captures, one session closed.
    let s1 = create(proc.base.clone()).await;
    let s2 = create(proc.base.clone()).await;
    let a1 = join(port, s1["agent_token"].as_str().unwrap().to_owned()).await;
    let a2 = join(port, s2["agent_token"].as_str().unwrap().to_owned()).await;
    for seed in 0..2 {
        upload(
            proc.base.clone(),
            s1["id"].as_str().unwrap().to_owned(),
            300 + seed,
        )
        .await;
    }
    upload(
        proc.base.clone(),
        s2["id"].as_str().unwrap().to_owned(),
        310,
    )
    .await;
    let r = http
        .post(format!(
            "{}/api/v1/sessions/{}/close",
            proc.base,
            s2["id"].as_str().unwrap()
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // Let the dispatcher fail a few times, then kill it mid-retry.
    tokio::time::sleep(Duration::from_millis(700)).await;
    proc.kill9();
    drop((a1, a2));

    // After the restart, still down: more events.
    let proc = Proc::start_with_args(dir.path(), port, &args).await;
    upload(
        proc.base.clone(),
        s1["id"].as_str().unwrap().to_owned(),
        320,
    )
    .await;
    let s3 = create(proc.base.clone()).await;
    let _a3 = join(port, s3["agent_token"].as_str().unwrap().to_owned()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    // The receiver comes up.
    let hits = receiver_on(receiver_port).await;
    // What the outbox holds is what must arrive: read it from the database itself.
    let mut db = db_at(dir.path(), settings(dir.path()).database_url.as_deref()).await;
    let outbox: Vec<(String, String)> =
        sqlx::query_as("SELECT id, event_type FROM webhook_outbox ORDER BY created_at, id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let mut types: Vec<&str> = outbox.iter().map(|(_, t)| t.as_str()).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "capture.created",
            "capture.created",
            "capture.created",
            "capture.created",
            "session.closed",
            "session.started",
            "session.started",
            "session.started",
        ]
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: HashSet<String> = hits
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        if outbox.iter().all(|(id, _)| got.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every event was delivered: {} of {}",
            got.len(),
            outbox.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a duplicate the time to show up, then count.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let hits = hits.lock().unwrap().clone();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for (id, _) in &hits {
        *per_id.entry(id.as_str()).or_default() += 1;
    }
    for (id, ty) in &outbox {
        assert_eq!(
            per_id.get(id.as_str()),
            Some(&1),
            "{ty} {id} delivered once"
        );
    }
    assert_eq!(per_id.len(), outbox.len(), "nothing but the outbox arrived");
    let status: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT status FROM webhook_outbox")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(status, [("delivered".to_owned(),)]);
    eprintln!(
        "webhooks: {} events, each delivered once after the receiver came back",
        outbox.len()
    );
}
