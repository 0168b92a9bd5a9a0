//! The life of a session over the WebSocket: replacement, leaving, resume (also across a restart),
//! heartbeat, slow consumers, closing and expiry, and the real binary's start-up and shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers

fn seq(m: &Value) -> i64 {
    m["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {m}"))
}

/// Sends `msg` with `id` and reads until its ack; returns what arrived before the ack.
async fn send_acked(c: &mut Client, mut msg: Value, id: &str) -> Vec<Value> {
    msg["id"] = json!(id);
    c.send(msg).await;
    let mut before = Vec::new();
    loop {
        let m = c.recv().await;
        assert_ne!(m["type"], "error", "refused: {m}");
        if m["type"] == "ack" && m["id"] == id {
            return before;
        }
        before.push(m);
    }
}

/// Everything the server sends the client before the answer to a ping sent now: after a welcome,
/// the replayed events (the writer sends those before anything queued).
async fn drain(c: &mut Client) -> Vec<Value> {
    c.send(json!({"type":"ping","t":"drain"})).await;
    let mut got = c.collect_until("pong").await;
    let pong = got.pop().unwrap();
    assert_eq!(pong["t"], "drain");
    got
}

/// A message of the burst: guides and chats, both durable, each with its index in `text`.
fn burst_msg(i: usize) -> Value {
    if i.is_multiple_of(2) {
        json!({"type":"guide","hint":"closer","text":format!("m{i}")})
    } else {
        json!({"type":"chat","text":format!("m{i}")})
    }
}

/// Asserts that `events` are exactly burst messages `indices`, numbered from `first_seq` on.
fn assert_burst(events: &[Value], indices: std::ops::Range<usize>, first_seq: i64) {
    let want: Vec<(String, String, i64)> = indices
        .clone()
        .enumerate()
        .map(|(k, i)| {
            let kind = burst_msg(i)["type"].as_str().unwrap().to_owned();
            (kind, format!("m{i}"), first_seq + k as i64)
        })
        .collect();
    let got: Vec<(String, String, i64)> = events
        .iter()
        .map(|m| {
            (
                m["type"].as_str().unwrap_or("?").to_owned(),
                m["text"].as_str().unwrap_or("?").to_owned(),
                seq(m),
            )
        })
        .collect();
    assert_eq!(got, want, "replayed events (type, text, seq)");
    for m in events {
        assert_eq!(m["from"], "agent", "{m}");
    }
}

/// Closes the client's side normally and waits for the server's answer.
async fn close_normally(c: &mut Client) {
    use futures_util::SinkExt;
    c.ws.send(Message::Close(None)).await.unwrap();
    // The server answers the close; then the stream ends.
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, c.ws.next()).await {}
}

/// Reads (discarding) until the connection ends: Some(code) if it ended with a close frame, None if
/// the stream ended or failed without one. Panics if it is still open after `wait`.
async fn read_to_end(c: &mut Client, wait: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) => panic!("connection still open after {wait:?}"),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Close(f)))) => return Some(f.map_or(1005, |f| u16::from(f.code))),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn get_session(srv: &TestServer, id: &str) -> Value {
    let res = srv
        .http
        .get(srv.url(&format!("/api/v1/sessions/{id}")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Agent and customer of a fresh session, both joined; the customer's latest seq.
async fn pair(srv: &TestServer) -> (Session, Client, Client, i64) {
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (customer, w) = srv.join(&s.customer_token).await;
    let joined = agent.expect("peer.joined").await;
    assert_eq!(joined["role"], "customer");
    let last = w["last_seq"].as_i64().unwrap();
    (s, agent, customer, last)
}

// ---------------------------------------------------------------------------------------------
// Replacement and leaving

#[tokio::test]
async fn a_second_agent_connection_replaces_the_first() {
    let srv = TestServer::start().await;
    let (s, mut agent1, mut customer, last) = pair(&srv).await;

    let (mut agent2, w) = srv.join(&s.agent_token).await;
    assert_eq!(w["role"], "agent");
    assert_eq!(w["peer_present"], true);
    let (code, _) = agent1.expect_close().await;
    assert_eq!(code, 4008, "the replaced connection is closed with 4008");

    let left = customer.expect("peer.left").await;
    assert_eq!(left["role"], "agent");
    assert_eq!(left["reason"], "replaced");
    assert_eq!(seq(&left), last + 1);
    let joined = customer.expect("peer.joined").await;
    assert_eq!(joined["role"], "agent");
    assert_eq!(seq(&joined), last + 2);

    // The new connection relays; the old one's teardown announced nothing more (the next thing
    // the customer sees is the guide).
    agent2
        .send(json!({"type":"guide","id":"g1","hint":"closer"}))
        .await;
    assert_eq!(agent2.expect("ack").await["id"], "g1");
    let g = customer.expect("guide").await;
    assert_eq!(
        (g["from"].clone(), g["hint"].clone()),
        (json!("agent"), json!("closer"))
    );
    assert_eq!(seq(&g), last + 3);
    agent2
        .send(json!({"type":"signal","data":{"sdp":"offer-2"}}))
        .await;
    let sig = customer.expect("signal").await;
    assert_eq!(sig["data"]["sdp"], "offer-2");
    assert_eq!(seq(&sig), last + 4);

    // And the customer's messages reach the new agent.
    customer
        .send(json!({"type":"chat","text":"hello again"}))
        .await;
    assert_eq!(agent2.expect("chat").await["text"], "hello again");
    assert_eq!(
        get_session(&srv, &s.id).await["presence"],
        json!({"agent": true, "customer": true})
    );
}

#[tokio::test]
async fn a_normal_close_tells_the_peer_closed() {
    let srv = TestServer::start().await;
    let (s, mut agent, mut customer, last) = pair(&srv).await;
    let agent_last = 1;

    close_normally(&mut customer).await;
    let left = agent.expect("peer.left").await;
    assert_eq!(left["role"], "customer");
    assert_eq!(left["reason"], "closed");
    assert_eq!(seq(&left), agent_last + 1);
    assert_eq!(
        get_session(&srv, &s.id).await["presence"],
        json!({"agent": true, "customer": false})
    );

    // The other way round, the customer learns it on its next connection, from the log.
    let (mut customer, w) = srv.join_at(&s.customer_token, Some(last)).await;
    assert_eq!(w["resumed"], true);
    assert!(drain(&mut customer).await.is_empty());
    assert_eq!(agent.expect("peer.joined").await["role"], "customer");
    close_normally(&mut agent).await;
    let left = customer.expect("peer.left").await;
    assert_eq!(
        (left["role"].clone(), left["reason"].clone()),
        (json!("agent"), json!("closed"))
    );
    assert_eq!(seq(&left), last + 1);
}

// ---------------------------------------------------------------------------------------------
// Resume

const BURST: usize = 25;

#[tokio::test]
async fn resume_replays_exactly_the_missed_burst_then_live_events() {
    let srv = TestServer::start().await;
    let (s, mut agent, mut customer, _) = pair(&srv).await;
    send_acked(&mut agent, json!({"type":"chat","text":"before"}), "b").await;
    let before = customer.expect("chat").await;
    let last = seq(&before);
    assert_eq!(last, 2, "peer.joined, then the chat");

    close_normally(&mut customer).await;
    assert_eq!(agent.expect("peer.left").await["reason"], "closed");
    for i in 0..BURST {
        let other = send_acked(&mut agent, burst_msg(i), &format!("m{i}")).await;
        assert!(other.is_empty(), "{other:?}");
    }

    let (mut customer, w) = srv.join_at(&s.customer_token, Some(last)).await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["last_seq"], last + BURST as i64);
    let replay = drain(&mut customer).await;
    assert_burst(&replay, 0..BURST, last + 1);
    assert_eq!(agent.expect("peer.joined").await["role"], "customer");

    // A live event after the reconnect comes after the replay, with the next seq.
    send_acked(&mut agent, json!({"type":"chat","text":"live"}), "live").await;
    let live = customer.expect("chat").await;
    assert_eq!(live["text"], "live");
    let newest = last + BURST as i64 + 1;
    assert_eq!(seq(&live), newest);

    // From the middle of the burst: the rest of it and the live one.
    close_normally(&mut customer).await;
    agent.expect("peer.left").await;
    let mid = last + 10;
    let (mut customer, w) = srv.join_at(&s.customer_token, Some(mid)).await;
    assert_eq!(
        (w["resumed"].clone(), w["last_seq"].clone()),
        (json!(true), json!(newest))
    );
    let mut replay = drain(&mut customer).await;
    let live_again = replay.pop().unwrap();
    assert_burst(&replay, 10..BURST, mid + 1);
    assert_eq!(
        (live_again["text"].clone(), seq(&live_again)),
        (json!("live"), newest)
    );
    agent.expect("peer.joined").await;

    // last_seq=0: the whole log, from the agent's arrival on.
    close_normally(&mut customer).await;
    agent.expect("peer.left").await;
    let (mut customer, w) = srv.join_at(&s.customer_token, Some(0)).await;
    assert_eq!(w["resumed"], true);
    let all = drain(&mut customer).await;
    assert_eq!(all.len() as i64, newest);
    let seqs: Vec<i64> = all.iter().map(seq).collect();
    assert_eq!(seqs, (1..=newest).collect::<Vec<_>>());
    assert_eq!(
        (all[0]["type"].clone(), all[0]["role"].clone()),
        (json!("peer.joined"), json!("agent"))
    );
    assert_eq!(all[1]["text"], "before");
    assert_burst(&all[2..all.len() - 1], 0..BURST, 3);
    assert_eq!(all[all.len() - 1]["text"], "live");
    agent.expect("peer.joined").await;

    // A last_seq the server never issued: no resume, the full state instead, nothing replayed.
    close_normally(&mut customer).await;
    agent.expect("peer.left").await;
    let (mut customer, w) = srv.join_at(&s.customer_token, Some(newest + 100)).await;
    assert_eq!(w["resumed"], false);
    assert_eq!(w["last_seq"], newest);
    assert_eq!(w["checklist"].as_array().unwrap().len(), 8, "{w}");
    assert!(w["captures"].is_array(), "{w}");
    assert!(drain(&mut customer).await.is_empty());
    agent.expect("peer.joined").await;
    send_acked(&mut agent, json!({"type":"chat","text":"next"}), "n").await;
    assert_eq!(seq(&customer.expect("chat").await), newest + 1);
}

/// The agent keeps sending while the customer reconnects: what the customer receives (replay,
/// then live) is every message once, in order, with contiguous seqs.
#[tokio::test]
async fn resume_while_the_peer_keeps_sending_leaves_no_gap_and_no_duplicate() {
    const N: usize = 60;
    let srv = TestServer::start().await;
    let (s, mut agent, mut customer, last) = pair(&srv).await;
    close_normally(&mut customer).await;
    agent.expect("peer.left").await;

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let sender = async {
        let mut started_tx = Some(started_tx);
        for i in 0..N {
            // peer.joined may arrive between the acks: send_acked keeps it aside.
            send_acked(
                &mut agent,
                json!({"type":"chat","text":format!("m{i}")}),
                &format!("m{i}"),
            )
            .await;
            if i == N / 3 {
                let _ = started_tx.take().unwrap().send(());
            }
        }
    };
    let receiver = async {
        started_rx.await.unwrap();
        let (mut customer, w) = srv.join_at(&s.customer_token, Some(last)).await;
        assert_eq!(w["resumed"], true);
        let mut got = Vec::new();
        while got.len() < N {
            got.push(customer.recv().await);
        }
        customer.expect_silence(Duration::from_millis(200)).await;
        got
    };
    let ((), got) = tokio::join!(sender, receiver);
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, want);
    let seqs: Vec<i64> = got.iter().map(seq).collect();
    assert_eq!(seqs, (last + 1..=last + N as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_event_log_and_its_numbering_survive_a_restart() {
    let srv = TestServer::start().await;
    let (s, mut agent, mut customer, mut cust_seq) = pair(&srv).await;
    let agent_seq = 1;
    for i in 0..5 {
        send_acked(&mut agent, burst_msg(i), &format!("m{i}")).await;
        let m = customer.recv().await;
        assert_eq!(seq(&m), cust_seq + 1, "{m}");
        cust_seq += 1;
    }
    // A signal takes the next seq too; it is live only, never replayed.
    agent
        .send(json!({"type":"signal","data":{"candidate":"c1"}}))
        .await;
    let sig = customer.expect("signal").await;
    assert_eq!(seq(&sig), cust_seq + 1);
    cust_seq += 1;

    let srv = srv.restart().await;
    assert_eq!(agent.expect_close().await.0, 1001, "server going away");
    assert_eq!(customer.expect_close().await.0, 1001, "server going away");

    // From before the restart: the log is replayed, the signal skipped.
    let from = 3;
    let (mut customer, w) = srv.join_at(&s.customer_token, Some(from)).await;
    assert_eq!(w["resumed"], true);
    assert_eq!(
        w["last_seq"], cust_seq,
        "the latest seq issued, the signal's"
    );
    let replay = drain(&mut customer).await;
    assert_burst(&replay, 2..5, from + 1);

    let (mut agent, w) = srv.join_at(&s.agent_token, Some(agent_seq)).await;
    assert_eq!(w["resumed"], true);
    let replay = drain(&mut agent).await;
    let kinds: Vec<(Value, i64)> = replay.iter().map(|m| (m["type"].clone(), seq(m))).collect();
    assert_eq!(kinds, vec![(json!("peer.joined"), agent_seq + 1)]);

    // New events continue the numbering: no seq is issued twice.
    let joined = customer.expect("peer.joined").await;
    assert_eq!(seq(&joined), cust_seq + 1, "{joined}");
    send_acked(&mut agent, json!({"type":"chat","text":"after"}), "after").await;
    let after = customer.expect("chat").await;
    assert_eq!(seq(&after), cust_seq + 2);

    // A client that resumes from the signal's seq (its real last one) misses nothing.
    close_normally(&mut customer).await;
    agent.expect("peer.left").await;
    let (mut customer, w) = srv.join_at(&s.customer_token, Some(cust_seq)).await;
    assert_eq!(w["resumed"], true);
    let replay = drain(&mut customer).await;
    let got: Vec<(Value, i64)> = replay.iter().map(|m| (m["type"].clone(), seq(m))).collect();
    assert_eq!(
        got,
        vec![
            (json!("peer.joined"), cust_seq + 1),
            (json!("chat"), cust_seq + 2)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Heartbeat

/// Keeps tokio from auto-advancing a paused clock while it lives. A paused current-thread runtime
/// otherwise jumps to the next timer whenever it is idle, which it also is while it waits on
/// SQLite's worker threads or on the kernel; with this, time moves only by `advance`.
struct FrozenClock(Option<std::sync::mpsc::Sender<()>>);

impl FrozenClock {
    fn hold() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // A running blocking task inhibits auto-advance (tokio test-util).
        tokio::task::spawn_blocking(move || {
            let _ = rx.recv();
        });
        Self(Some(tx))
    }
}

impl Drop for FrozenClock {
    fn drop(&mut self) {
        self.0.take();
    }
}

/// Awaits `f`, panicking after `limit` of real time (the tokio clock is frozen).
async fn within_real<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let _ = tx.send(());
    });
    tokio::select! {
        v = f => v,
        _ = rx => panic!("nothing within {limit:?} of real time"),
    }
}

/// Moves the clock by `step`, then has the customer send a ping and read up to its pong.
async fn heartbeat_step(customer: &mut Client, step: Duration, elapsed: Duration) -> Vec<Value> {
    tokio::time::advance(step).await;
    customer
        .send(json!({"type":"ping","t":elapsed.as_millis() as u64}))
        .await;
    within_real(WAIT, customer.collect_until("pong")).await
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped_with_reason_timeout() {
    let srv = TestServer::start().await;
    let heartbeat = srv.state().settings.heartbeat();
    assert_eq!(heartbeat, Duration::from_secs(20), "the default interval");
    let (s, mut agent, mut customer, last) = pair(&srv).await;

    tokio::time::pause();
    let frozen = FrozenClock::hold();
    // The agent neither reads (so its client answers no ping) nor writes. The customer sends a
    // message every quarter interval and reads the answers (its client answering the pings).
    let step = heartbeat / 4;
    let mut elapsed = Duration::ZERO;
    // Just short of two intervals: nobody is dropped.
    while elapsed + step < heartbeat * 2 {
        elapsed += step;
        let got = heartbeat_step(&mut customer, step, elapsed).await;
        assert_eq!(
            got.len(),
            1,
            "only the pong before two silent intervals: {got:?}"
        );
    }
    assert!(srv.state().registry.presence(&s.id).await.unwrap().agent);
    // Past them: the agent is dropped, the customer told why.
    let mut got = Vec::new();
    for _ in 0..2 {
        elapsed += step;
        got.extend(heartbeat_step(&mut customer, step, elapsed).await);
    }
    if !got.iter().any(|m| m["type"] == "peer.left") {
        got.push(within_real(WAIT, customer.expect("peer.left")).await);
    }
    let left: Vec<&Value> = got.iter().filter(|m| m["type"] == "peer.left").collect();
    assert_eq!(left.len(), 1, "{got:?}");
    assert_eq!(left[0]["role"], "agent");
    assert_eq!(left[0]["reason"], "timeout");
    assert_eq!(seq(left[0]), last + 1);
    assert!(!srv.state().registry.presence(&s.id).await.unwrap().agent);

    // The silent agent's connection was ended by the server; the customer's is still up.
    let end = within_real(WAIT, read_to_end(&mut agent, Duration::from_secs(3600))).await;
    assert_eq!(end, Some(1001), "going away");
    customer.send(json!({"type":"ping","t":"still"})).await;
    assert_eq!(
        within_real(WAIT, customer.expect("pong")).await["t"],
        "still"
    );
    drop(frozen);
}

// ---------------------------------------------------------------------------------------------
// Slow consumers

/// Round trips (agent chat -> customer -> customer chat -> agent) until `stop`, returning each one's
/// duration.
async fn round_trips(
    mut agent: Client,
    mut customer: Client,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Duration> {
    let mut times = Vec::new();
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let t0 = Instant::now();
        agent
            .send(json!({"type":"chat","text":format!("q{i}")}))
            .await;
        assert_eq!(customer.expect("chat").await["text"], format!("q{i}"));
        customer
            .send(json!({"type":"chat","text":format!("a{i}")}))
            .await;
        assert_eq!(agent.expect("chat").await["text"], format!("a{i}"));
        times.push(t0.elapsed());
        i += 1;
    }
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_that_stops_reading_is_closed_and_other_sessions_keep_relaying() {
    let srv = TestServer::start_with(|s| {
        s.ws_queue = 16;
        s.ws_rate = 1_000_000;
        s.ws_burst = 1_000_000;
    })
    .await;
    let (slow, mut agent, mut stuck, stuck_last) = pair(&srv).await;
    let (_, agent2, customer2, _) = pair(&srv).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = tokio::spawn(round_trips(agent2, customer2, stop.clone()));

    // The agent floods the customer, who reads nothing, until the server gives up on it: guides,
    // and long chats, so that the socket buffers (megabytes on loopback) fill sooner.
    let flood_msg = |i: usize| {
        if i.is_multiple_of(8) {
            json!({"type":"guide","id":i,"hint":"hold_steady","text":"x".repeat(500)})
        } else {
            json!({"type":"chat","id":i,"text":"y".repeat(2000)})
        }
    };
    let started = Instant::now();
    let mut sent = 0usize;
    let mut acked = 0usize;
    let mut left = None;
    while left.is_none() {
        assert!(sent < 50_000, "the stuck customer was never closed");
        for _ in 0..32 {
            agent.send(flood_msg(sent)).await;
            sent += 1;
        }
        while acked < sent {
            let m = agent.recv().await;
            match m["type"].as_str() {
                Some("ack") => acked += 1,
                Some("peer.left") => left = Some(m),
                _ => panic!("unexpected {m}"),
            }
        }
    }
    let flood_time = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let times = other.await.unwrap();

    let left = left.unwrap();
    assert_eq!(
        (left["role"].clone(), left["reason"].clone()),
        (json!("customer"), json!("closed"))
    );
    assert!(
        !srv.state()
            .registry
            .presence(&slow.id)
            .await
            .unwrap()
            .customer
    );
    let code = read_to_end(&mut stuck, WAIT).await;
    eprintln!(
        "flood: {sent} messages in {flood_time:?}; stuck customer ended with {code:?}; {} round trips, slowest {:?}",
        times.len(),
        times.iter().max()
    );
    assert_eq!(code, Some(1008), "policy: too slow");

    // The other session relayed all along, promptly.
    assert!(
        times.len() >= 3,
        "only {} round trips during the flood ({flood_time:?})",
        times.len()
    );
    let slowest = times.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(1),
        "a round trip took {slowest:?}"
    );

    // Nothing is lost for the slow customer: it resumes from the log.
    let (mut back, w) = srv.join_at(&slow.customer_token, Some(stuck_last)).await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["last_seq"], stuck_last + sent as i64);
    let replay = drain(&mut back).await;
    assert_eq!(replay.len(), sent);
    for (i, m) in replay.iter().enumerate() {
        assert_eq!(seq(m), stuck_last + 1 + i as i64);
        assert_eq!(m["type"], flood_msg(i)["type"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Closing and expiry

/// Reads until `session.closed` (returning it), then asserts the close code.
async fn expect_session_closed(c: &mut Client, code: u16) -> Value {
    let got = c.collect_until("session.closed").await;
    let closed = got.last().unwrap().clone();
    let (actual, _) = c.expect_close().await;
    assert_eq!(actual, code, "after {closed}");
    closed
}

#[tokio::test]
async fn closing_through_rest_ends_both_connections_with_4009() {
    let srv = TestServer::start().await;
    let (s, mut agent, mut customer, last) = pair(&srv).await;
    let res = srv
        .http
        .post(srv.url(&format!("/api/v1/sessions/{}/close", s.id)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let c = expect_session_closed(&mut customer, 4009).await;
    assert_eq!(
        (c["reason"].clone(), c["by"].clone()),
        (json!("closed"), json!("claims_system"))
    );
    assert_eq!(seq(&c), last + 1);
    let a = expect_session_closed(&mut agent, 4009).await;
    assert_eq!(a["reason"], "closed");
    assert_eq!(seq(&a), 2);

    let v = get_session(&srv, &s.id).await;
    assert_eq!(v["status"], "closed");
    assert_eq!(v["presence"], json!({"agent": false, "customer": false}));
    let url = srv.ws_url(&s.customer_token, None);
    assert_eq!(srv.refused_status(&url, None).await, 410);
}

#[tokio::test]
async fn the_agent_can_close_the_session_over_the_websocket() {
    let srv = TestServer::start().await;
    let (s, mut agent, mut customer, _) = pair(&srv).await;
    agent.send(json!({"type":"session.close","id":"bye"})).await;
    let a = expect_session_closed(&mut agent, 4009).await;
    assert_eq!(
        (a["reason"].clone(), a["by"].clone()),
        (json!("closed"), json!("agent"))
    );
    let c = expect_session_closed(&mut customer, 4009).await;
    assert_eq!(c["by"], "agent");
    assert_eq!(get_session(&srv, &s.id).await["status"], "closed");
    let url = srv.ws_url(&s.agent_token, None);
    assert_eq!(srv.refused_status(&url, None).await, 410);
}

#[tokio::test]
async fn the_customer_cannot_close_the_session() {
    let srv = TestServer::start().await;
    let (s, _agent, mut customer, _) = pair(&srv).await;
    customer
        .send(json!({"type":"session.close","id":"no"}))
        .await;
    let e = customer.expect("error").await;
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("forbidden"), json!("no"))
    );
    assert_eq!(get_session(&srv, &s.id).await["status"], "active");
}

#[tokio::test]
async fn an_expired_session_ends_both_connections_with_4010() {
    let srv = TestServer::start().await;
    let v = srv
        .create_session(json!({"claim_ref":"CLM-EXP","expires_in_s":2}))
        .await;
    let created = Instant::now();
    let id = v["id"].as_str().unwrap();
    let (mut agent, _) = srv.join(v["agent_token"].as_str().unwrap()).await;
    let (mut customer, _) = srv.join(v["customer_token"].as_str().unwrap()).await;
    agent.expect("peer.joined").await;

    let deadline = Duration::from_millis(3500);
    let m = customer
        .try_recv(deadline.saturating_sub(created.elapsed()))
        .await
        .expect("session.closed within 3.5 s of creation");
    assert_eq!(
        (m["type"].clone(), m["reason"].clone()),
        (json!("session.closed"), json!("expired"))
    );
    let waited = created.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "closed early, after {waited:?}"
    );
    assert_eq!(customer.expect_close().await.0, 4010);
    let a = expect_session_closed(&mut agent, 4010).await;
    assert_eq!(a["reason"], "expired");

    let got = get_session(&srv, id).await;
    assert_eq!(got["status"], "expired");
    let url = srv.ws_url(v["customer_token"].as_str().unwrap(), None);
    assert_eq!(srv.refused_status(&url, None).await, 410);
}

// ---------------------------------------------------------------------------------------------
// The binary

/// The real `capturelink` binary, its stdout collected line by line.
struct Binary {
    child: std::process::Child,
    base: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    /// Starts `capturelink serve` on a free port and waits until `/healthz` answers.
    async fn start(data_dir: &std::path::Path, api_key: Option<&str>) -> Self {
        let addr = format!("127.0.0.1:{}", crate::durability::free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capturelink"));
        cmd.args(["serve", "--listen", &addr, "--data-dir"])
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for var in [
            "CAPTURELINK_API_KEYS",
            "CAPTURELINK_PUBLIC_URL",
            "CAPTURELINK_LISTEN",
        ] {
            cmd.env_remove(var);
        }
        if let Some(k) = api_key {
            cmd.args(["--api-key", k]);
        }
        let mut child = cmd.spawn().expect("the binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut b = Self {
            child,
            base: format!("http://{addr}"),
            lines,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let http = reqwest::Client::new();
        loop {
            if let Some(status) = b.child.try_wait().unwrap() {
                panic!(
                    "the binary exited at start: {status}; stdout: {:?}",
                    b.stdout()
                );
            }
            if let Ok(r) = http.get(format!("{}/healthz", b.base)).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no /healthz; stdout: {:?}",
                b.stdout()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The banner is printed once the server is up, just before the signal handlers are set.
        b.wait_for_line("listening on http://").await;
        b
    }

    fn stdout(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.stdout().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no `{needle}` in stdout: {:?}",
                self.stdout()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    }

    /// Waits for the process to exit, at most `limit`.
    async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "still running {limit:?} after SIGTERM; stdout: {:?}",
                    self.stdout()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn create_session(&self, key: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/api/v1/sessions", self.base))
            .bearer_auth(key)
            .json(&json!({"claim_ref":"CLM-BIN"}))
            .send()
            .await
            .unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn ws_join(base: &str, token: &str) -> Client {
    let url = format!("{}/ws?token={token}", base.replacen("http://", "ws://", 1));
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    let mut c = Client { ws };
    assert_eq!(c.recv().await["type"], "welcome");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut bin = Binary::start(dir.path(), Some("k")).await;
    let listening = format!("listening on {}", bin.base);
    bin.wait_for_line(&listening).await;
    // The console's URL is printed on a line of its own after the banner.
    bin.wait_for_line("/agent/").await;

    let res = bin.create_session("k").await;
    assert_eq!(res.status(), 201);
    let s: Value = res.json().await.unwrap();
    let mut agent = ws_join(&bin.base, s["agent_token"].as_str().unwrap()).await;
    let mut customer = ws_join(&bin.base, s["customer_token"].as_str().unwrap()).await;
    agent.expect("peer.joined").await;

    let t0 = Instant::now();
    bin.sigterm();
    assert_eq!(agent.expect_close().await.0, 1001, "going away");
    assert_eq!(customer.expect_close().await.0, 1001, "going away");
    let status = bin.exit_within(Duration::from_secs(5)).await;
    assert!(
        status.success(),
        "exit status {status}; stdout: {:?}",
        bin.stdout()
    );
    eprintln!("shut down in {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_api_key_the_first_start_generates_and_prints_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut bin = Binary::start(dir.path(), None).await;
    let line = bin.wait_for_line("API key").await;
    let key = line.rsplit(' ').next().unwrap().trim().to_owned();
    assert!(key.len() >= 20, "a key in {line:?}");
    assert_eq!(
        bin.create_session(&key).await.status(),
        201,
        "the printed key works"
    );
    assert_eq!(bin.create_session("wrong").await.status(), 401);
    bin.sigterm();
    assert!(bin.exit_within(Duration::from_secs(5)).await.success());

    // Kept in the data dir: the next start accepts it and does not print it again.
    let mut bin = Binary::start(dir.path(), None).await;
    bin.wait_for_line("API key").await;
    assert!(
        !bin.stdout().iter().any(|l| l.contains(&key)),
        "{:?}",
        bin.stdout()
    );
    assert_eq!(
        bin.create_session(&key).await.status(),
        201,
        "the same key after a restart"
    );
    bin.sigterm();
    assert!(bin.exit_within(Duration::from_secs(5)).await.success());
}
