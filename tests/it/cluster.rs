//! Several nodes (`--nats-url`): two nodes sharing one PostgreSQL database, one NATS server and one
//! S3 bucket (moto), with the agent on one node and the customer on the other. The NATS server is
//! Debian's `nats-server`, started per test on a free port (`CAPTURELINK_TEST_NATS` names the
//! binary; scripts/test installs it). Without it these tests fail, unless `CAPTURELINK_SKIP_NATS=1`
//! skips them; they also need the PostgreSQL server and moto of the other store tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::claims::{Receiver, Sse, WEBHOOK_WAIT};
use crate::durability::{Proc, free_port};
use crate::media_s3::{BUCKET, Moto, moto_server};
use crate::support::*;

const SECRET: &str = "cluster-test-secret-shared-by-every-node";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn nats_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CAPTURELINK_TEST_NATS") {
        return Some(PathBuf::from(path));
    }
    if std::env::var("CAPTURELINK_SKIP_NATS").as_deref() == Ok("1") {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"\n*** SKIPPED: a several-nodes test (CAPTURELINK_SKIP_NATS=1) ***\n",
        );
        return None;
    }
    for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if std::path::Path::new(candidate).exists() {
            return Some(PathBuf::from(candidate));
        }
    }
    panic!(
        "the several-nodes tests need nats-server: run ./scripts/test (it installs Debian's \
         nats-server), or set CAPTURELINK_TEST_NATS to its path; CAPTURELINK_SKIP_NATS=1 skips them"
    );
}

/// A NATS server on 127.0.0.1, killed when dropped.
struct Nats {
    child: Child,
    url: String,
}

impl Nats {
    async fn start(bin: &std::path::Path) -> Self {
        for _ in 0..5 {
            if let Some(nats) = Self::start_on(bin, free_port()).await {
                return nats;
            }
        }
        panic!("nats-server did not start on any of 5 ports");
    }

    /// None when the port was taken before the server bound it.
    async fn start_on(bin: &std::path::Path, port: u16) -> Option<Self> {
        let mut child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return None;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(Self {
                    child,
                    url: format!("nats://127.0.0.1:{port}"),
                });
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the nodes share: the database, the bus and the bucket.
struct Shared {
    nats: Nats,
    moto: Moto,
    database_url: String,
    prefix: String,
    _dir: tempfile::TempDir,
}

impl Shared {
    /// None when the several-nodes tests are skipped.
    async fn start() -> Option<Self> {
        let nats = Nats::start(&nats_server()?).await;
        let moto = Moto::start(&moto_server()?).await;
        let dir = tempfile::tempdir().unwrap();
        let database_url = postgres_url(dir.path())?;
        ensure_database(&database_url).await;
        Some(Self {
            nats,
            moto,
            database_url,
            prefix: "cluster".into(),
            _dir: dir,
        })
    }

    /// The settings every node shares.
    fn tune(&self) -> impl Fn(&mut capturelink::config::Settings) + use<> {
        let (db, nats, s3) = (
            self.database_url.clone(),
            self.nats.url.clone(),
            self.moto.endpoint.clone(),
        );
        let media = format!("s3://{BUCKET}/{}", self.prefix);
        move |s| {
            s.database_url = Some(db.clone());
            s.nats_url = Some(nats.clone());
            s.secret = Some(SECRET.into());
            s.webhook_secret = Some(WEBHOOK_SECRET.into());
            s.media_url = Some(media.clone());
            s.s3_endpoint = Some(s3.clone());
            s.s3_access_key_id = Some("test".into());
            s.s3_secret_access_key = Some("test".into());
        }
    }

    async fn node(&self) -> TestServer {
        TestServer::start_with(self.tune()).await
    }

    /// A node as a process of its own (to be killed with -9).
    async fn node_process(&self, dir: &std::path::Path) -> Proc {
        let media = format!("s3://{BUCKET}/{}", self.prefix);
        let args = [
            "--database-url",
            &self.database_url,
            "--nats-url",
            &self.nats.url,
            "--secret",
            SECRET,
            "--webhook-secret",
            WEBHOOK_SECRET,
            "--media-url",
            &media,
            "--s3-endpoint",
            &self.moto.endpoint,
            "--s3-access-key-id",
            "test",
            "--s3-secret-access-key",
            "test",
        ];
        Proc::start_with_args(dir, free_port(), &args).await
    }
}

/// Reads the next event, checking that its seq follows the last one this client saw.
async fn next_in_order(c: &mut Client, last: &mut i64) -> Value {
    let m = c.recv().await;
    if let Some(seq) = m["seq"].as_i64() {
        assert_eq!(seq, *last + 1, "seqs are contiguous: {m}");
        *last = seq;
    }
    m
}

/// Reads in order until an event of `kind`, acks (and nothing else) allowed before it.
async fn expect_in_order(c: &mut Client, last: &mut i64, kind: &str) -> Value {
    loop {
        let m = next_in_order(c, last).await;
        if m["type"] == kind {
            return m;
        }
        assert_eq!(m["type"], "ack", "expected `{kind}`, got {m}");
    }
}

/// The node at `base` serves the capture's image, byte for byte `photo`.
async fn assert_serves_image(base: &str, capture_id: &str, photo: &[u8]) {
    let res = reqwest::Client::new()
        .get(format!("{base}/api/v1/captures/{capture_id}/image"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        Sha256::digest(res.bytes().await.unwrap()),
        Sha256::digest(photo),
        "the image from {base}"
    );
}

/// The session's presence as the node at `base` reports it.
async fn presence(base: &str, id: &str) -> Value {
    http_json(
        reqwest::Method::GET,
        format!("{base}/api/v1/sessions/{id}"),
        None,
    )
    .await["presence"]
        .clone()
}

#[tokio::test]
async fn agent_and_customer_on_two_nodes_pair_relay_and_capture() {
    let Some(shared) = Shared::start().await else {
        return;
    };
    let a = shared.node().await;
    let b = shared.node().await;
    let s = a.session().await;

    let (mut agent, welcome) = a.join(&s.agent_token).await;
    assert_eq!(welcome["peer_present"], false);
    let mut agent_seq = welcome["last_seq"].as_i64().unwrap();
    let (mut customer, welcome) = b.join(&s.customer_token).await;
    assert_eq!(
        welcome["peer_present"], true,
        "the agent is on the other node"
    );
    let mut customer_seq = welcome["last_seq"].as_i64().unwrap();
    let joined = expect_in_order(&mut agent, &mut agent_seq, "peer.joined").await;
    assert_eq!(joined["role"], "customer");
    for node in [&a, &b] {
        assert_eq!(
            presence(&node.url(""), &s.id).await,
            json!({"agent": true, "customer": true})
        );
    }

    // Relay both ways: durable guidance and chat, live-only signals.
    agent
        .send(json!({"type": "guide", "hint": "closer", "box": {"x": 0.1, "y": 0.2, "w": 0.3, "h": 0.4}, "id": "g1"}))
        .await;
    assert_eq!(agent.expect("ack").await["id"], "g1");
    let guide = expect_in_order(&mut customer, &mut customer_seq, "guide").await;
    assert_eq!(guide["hint"], "closer");
    assert_eq!(guide["from"], "agent");
    agent
        .send(json!({"type": "signal", "data": {"sdp": "v=0 offer"}, "id": "s1"}))
        .await;
    let signal = expect_in_order(&mut customer, &mut customer_seq, "signal").await;
    assert_eq!(signal["data"]["sdp"], "v=0 offer");
    customer
        .send(json!({"type": "signal", "data": {"sdp": "v=0 answer"}}))
        .await;
    let signal = expect_in_order(&mut agent, &mut agent_seq, "signal").await;
    assert_eq!(signal["data"]["sdp"], "v=0 answer");
    // The agent's event stream, read through node B, carries what the agent gets on node A.
    let mut sse = Sse::open(&b, &s.id, API_KEY, None).await;
    for i in 0..20 {
        customer
            .send(json!({"type": "chat", "text": format!("message {i}"), "id": i}))
            .await;
    }
    for i in 0..20 {
        let chat = expect_in_order(&mut agent, &mut agent_seq, "chat").await;
        assert_eq!(chat["text"], format!("message {i}"), "in the order sent");
        assert_eq!(chat["from"], "customer");
        let e = sse.expect_same(&chat).await;
        assert_eq!(e.id, chat["seq"].as_i64());
    }

    // A capture uploaded through node B reaches the agent on node A; the image is served by
    // either node.
    let photo = crate::durability::jpeg(7);
    let meta = json!({"area": "front_bumper", "angle": "close_up", "source": "agent_frame"});
    let res = b
        .upload(
            &s.id,
            API_KEY,
            capture_form(Some((photo.clone(), "image/jpeg")), &meta),
            None,
        )
        .await;
    assert_eq!(res.status(), 201);
    let stored: Value = res.json().await.unwrap();
    let created = expect_in_order(&mut agent, &mut agent_seq, "capture.created").await;
    assert_eq!(created["capture"]["id"], stored["id"]);
    let created = expect_in_order(&mut customer, &mut customer_seq, "capture.created").await;
    assert_eq!(created["capture"]["id"], stored["id"]);
    for node in [&a, &b] {
        assert_serves_image(&node.url(""), stored["id"].as_str().unwrap(), &photo).await;
    }

    // Closed through node B: both are told and closed with 4009, whichever node holds them.
    let res = b
        .http
        .post(b.url(&format!("/api/v1/sessions/{}/close", s.id)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "close: {}", res.status());
    expect_in_order(&mut agent, &mut agent_seq, "session.closed").await;
    assert_eq!(agent.expect_close().await.0, 4009);
    expect_in_order(&mut customer, &mut customer_seq, "session.closed").await;
    assert_eq!(customer.expect_close().await.0, 4009);
    for node in [&a, &b] {
        assert_eq!(
            presence(&node.url(""), &s.id).await,
            json!({"agent": false, "customer": false})
        );
    }
}

#[tokio::test]
async fn a_newer_connection_on_another_node_replaces_the_older_with_4008() {
    let Some(shared) = Shared::start().await else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = shared.node_process(dir_a.path()).await;
    let b = shared.node_process(dir_b.path()).await;
    let s = http_json(
        reqwest::Method::POST,
        format!("{}/api/v1/sessions", a.base),
        Some(json!({"claim_ref": "CLM-4008"})),
    )
    .await;
    let (id, agent_token, customer_token) = (
        s["id"].as_str().unwrap(),
        s["agent_token"].as_str().unwrap(),
        s["customer_token"].as_str().unwrap(),
    );
    let (mut old, _) = join_base(&a.base, agent_token, None).await;
    let (mut customer, welcome) = join_base(&b.base, customer_token, None).await;
    let mut customer_seq = welcome["last_seq"].as_i64().unwrap();

    let (mut newer, welcome) = join_base(&b.base, agent_token, None).await;
    assert_eq!(welcome["peer_present"], true);
    let (code, _) = old.expect_close().await;
    assert_eq!(code, 4008, "the older connection, on node A, is replaced");
    let left = expect_in_order(&mut customer, &mut customer_seq, "peer.left").await;
    assert_eq!(left["reason"], "replaced");
    let joined = expect_in_order(&mut customer, &mut customer_seq, "peer.joined").await;
    assert_eq!(joined["role"], "agent");

    // The newer one is the agent now: its messages go through, and the customer sees one agent.
    newer
        .send(json!({"type": "chat", "text": "still here", "id": 1}))
        .await;
    newer.expect("ack").await;
    let chat = expect_in_order(&mut customer, &mut customer_seq, "chat").await;
    assert_eq!(chat["text"], "still here");

    // It leaves: the customer on the other node is told, and presence says so on both nodes.
    newer.ws.close(None).await.unwrap();
    let left = expect_in_order(&mut customer, &mut customer_seq, "peer.left").await;
    assert_eq!(left["reason"], "closed");
    for base in [&a.base, &b.base] {
        assert_eq!(
            presence(base, id).await,
            json!({"agent": false, "customer": true})
        );
    }
}

async fn http_json(method: reqwest::Method, url: String, body: Option<Value>) -> Value {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(API_KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    res.json().await.unwrap()
}

#[tokio::test]
async fn two_node_processes_relay_and_capture_and_one_killed_with_9_loses_nothing() {
    let Some(shared) = Shared::start().await else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = shared.node_process(dir_a.path()).await;
    let b = shared.node_process(dir_b.path()).await;
    let s = http_json(
        reqwest::Method::POST,
        format!("{}/api/v1/sessions", a.base),
        Some(json!({"claim_ref": "CLM-9"})),
    )
    .await;
    let (agent_token, customer_token) = (
        s["agent_token"].as_str().unwrap(),
        s["customer_token"].as_str().unwrap(),
    );

    let (mut agent, w) = join_base(&a.base, agent_token, None).await;
    let mut agent_seq = w["last_seq"].as_i64().unwrap();
    let (mut customer, w) = join_base(&b.base, customer_token, None).await;
    let mut customer_seq = w["last_seq"].as_i64().unwrap();
    expect_in_order(&mut agent, &mut agent_seq, "peer.joined").await;
    for i in 0..5 {
        customer
            .send(json!({"type": "chat", "text": format!("before {i}"), "id": i}))
            .await;
        expect_in_order(&mut customer, &mut customer_seq, "ack").await;
        let chat = expect_in_order(&mut agent, &mut agent_seq, "chat").await;
        assert_eq!(chat["text"], format!("before {i}"));
    }
    // Two processes, nothing shared but the database, the bus and the bucket: guidance from
    // node A to node B, and a capture uploaded through node B pushed to the agent on node A and
    // served by either node.
    agent
        .send(json!({"type": "guide", "hint": "closer", "id": "g1"}))
        .await;
    let guide = expect_in_order(&mut customer, &mut customer_seq, "guide").await;
    assert_eq!(guide["hint"], "closer");
    let photo = crate::durability::jpeg(3);
    let meta = json!({"area": "front_bumper", "angle": "close_up", "source": "agent_frame"});
    let http = reqwest::Client::new();
    let res = http
        .post(format!(
            "{}/api/v1/sessions/{}/captures",
            b.base,
            s["id"].as_str().unwrap()
        ))
        .bearer_auth(API_KEY)
        .multipart(capture_form(Some((photo.clone(), "image/jpeg")), &meta))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let stored: Value = res.json().await.unwrap();
    let created = expect_in_order(&mut agent, &mut agent_seq, "capture.created").await;
    assert_eq!(created["capture"]["id"], stored["id"]);
    let created = expect_in_order(&mut customer, &mut customer_seq, "capture.created").await;
    assert_eq!(created["capture"]["id"], stored["id"]);
    for base in [&a.base, &b.base] {
        assert_serves_image(base, stored["id"].as_str().unwrap(), &photo).await;
    }

    a.kill9();
    // The customer, on node B, is told once node A's heartbeat has gone stale.
    let left = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let m = customer
                .try_recv(Duration::from_secs(30))
                .await
                .expect("peer.left");
            if m["type"] == "peer.left" {
                return m;
            }
        }
    })
    .await
    .expect("peer.left within the heartbeat window");
    assert_eq!(left["role"], "agent");
    assert_eq!(left["reason"], "timeout");
    customer_seq = left["seq"].as_i64().unwrap();
    for i in 0..5 {
        customer
            .send(json!({"type": "chat", "text": format!("while away {i}"), "id": 100 + i}))
            .await;
        expect_in_order(&mut customer, &mut customer_seq, "ack").await;
    }

    // The agent reconnects to node B with what it saw last: the missed chats, in order, once.
    let (mut agent, w) = join_base(&b.base, agent_token, Some(agent_seq)).await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["peer_present"], true);
    for i in 0..5 {
        let chat = next_in_order(&mut agent, &mut agent_seq).await;
        assert_eq!(chat["type"], "chat", "{chat}");
        assert_eq!(chat["text"], format!("while away {i}"));
    }
    let joined = expect_in_order(&mut customer, &mut customer_seq, "peer.joined").await;
    assert_eq!(joined["role"], "agent");
    // Nothing more: no chat twice.
    customer
        .send(json!({"type": "chat", "text": "after", "id": 200}))
        .await;
    let chat = next_in_order(&mut agent, &mut agent_seq).await;
    assert_eq!(chat["text"], "after");
    agent.expect_silence(Duration::from_millis(300)).await;
    drop(b);
}

/// What a node commits while NATS is down may never reach the others over the bus (here its
/// node dies with the messages in its client's buffer): the other node reads it from the
/// database once it is connected to NATS again, without waiting for the session's next event.
#[tokio::test]
async fn what_was_committed_while_nats_was_down_arrives_once_it_is_back() {
    let Some(mut shared) = Shared::start().await else {
        return;
    };
    let dir_a = tempfile::tempdir().unwrap();
    let mut a = shared.node_process(dir_a.path()).await;
    let b = shared.node().await;
    let s = http_json(
        reqwest::Method::POST,
        format!("{}/api/v1/sessions", a.base),
        Some(json!({"claim_ref": "CLM-NATS"})),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_owned();
    let (mut agent, w) = join_base(&a.base, s["agent_token"].as_str().unwrap(), None).await;
    let mut agent_seq = w["last_seq"].as_i64().unwrap();
    let (mut customer, w) = b.join(s["customer_token"].as_str().unwrap()).await;
    let mut customer_seq = w["last_seq"].as_i64().unwrap();
    expect_in_order(&mut agent, &mut agent_seq, "peer.joined").await;

    let port: u16 = shared.nats.url.rsplit(':').next().unwrap().parse().unwrap();
    shared.nats.stop();
    // Node B has seen the bus go (its readiness says so), so it knows to look when it is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.http.get(b.url("/readyz")).send().await.unwrap().status() != 503 {
        assert!(Instant::now() < deadline, "node B still ready without NATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Node A commits a guide and then the session's end, and dies before it can publish either.
    agent
        .send(json!({"type": "guide", "hint": "closer", "id": 1}))
        .await;
    expect_in_order(&mut agent, &mut agent_seq, "ack").await;
    http_json(
        reqwest::Method::POST,
        format!("{}/api/v1/sessions/{id}/close", a.base),
        None,
    )
    .await;
    a.kill9();
    let killed = Instant::now();

    shared.nats = Nats::start_on(&nats_server().unwrap(), port)
        .await
        .expect("the port is free again");
    // Node B reconnects (within the client's 4 s backoff) and reads the log: the guide and the
    // end arrive long before node A's heartbeat goes stale (10 s), which would otherwise be the
    // session's next event.
    let guide = tokio::time::timeout(
        Duration::from_secs(9),
        expect_in_order(&mut customer, &mut customer_seq, "guide"),
    )
    .await
    .expect("the guide within 9 s of NATS coming back");
    assert_eq!(guide["hint"], "closer");
    let ended = expect_in_order(&mut customer, &mut customer_seq, "session.closed").await;
    assert_eq!(ended["reason"], "closed");
    let (code, _) = customer.expect_close().await;
    assert_eq!(code, 4009);
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "before node A's heartbeat went stale: {:?}",
        killed.elapsed()
    );
}

/// A connection that replaced the agent's on another node while NATS was down (its node then
/// died with the claim unsent): the older connection is closed with 4008 once NATS is back.
#[tokio::test]
async fn a_replacement_made_while_nats_was_down_closes_the_older_connection_once_it_is_back() {
    let Some(mut shared) = Shared::start().await else {
        return;
    };
    let a = shared.node().await;
    let dir_b = tempfile::tempdir().unwrap();
    let mut b = shared.node_process(dir_b.path()).await;
    let s = a.session().await;
    let (mut agent, _) = a.join(&s.agent_token).await;
    // The customer on node B, so that the session's room there is subscribed before NATS goes.
    let (_customer, _) = join_base(&b.base, &s.customer_token, None).await;
    agent.expect("peer.joined").await;

    let port: u16 = shared.nats.url.rsplit(':').next().unwrap().parse().unwrap();
    shared.nats.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.http.get(a.url("/readyz")).send().await.unwrap().status() != 503 {
        assert!(Instant::now() < deadline, "node A still ready without NATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_newer, welcome) = join_base(&b.base, &s.agent_token, None).await;
    assert_eq!(welcome["type"], "welcome");
    b.kill9();

    shared.nats = Nats::start_on(&nats_server().unwrap(), port)
        .await
        .expect("the port is free again");
    // Within the client's reconnect backoff (4 s at most) and well before node B's heartbeat
    // goes stale (10 s), which would only mark the agent gone.
    let (code, _) = agent.expect_close_within(Duration::from_secs(9)).await;
    assert_eq!(code, 4008);
}

#[tokio::test]
async fn webhooks_go_out_once_though_every_node_works_the_outbox() {
    let Some(shared) = Shared::start().await else {
        return;
    };
    let rx = Receiver::start().await;
    // Slower than the other node's poll of the outbox (1 s): a row in delivery is still pending
    // when that node looks.
    rx.answer_after(Duration::from_millis(1500));
    let a = shared.node().await;
    let b = shared.node().await;
    let body = a
        .create_session(json!({"claim_ref": "CLM-HOOKS", "webhook_url": rx.url("hook")}))
        .await;
    let id = body["id"].as_str().unwrap().to_owned();
    let (_agent, _) = a.join(body["agent_token"].as_str().unwrap()).await;
    let meta = json!({"area": "hood", "angle": "close_up", "source": "agent_frame"});
    for node in [&a, &b] {
        let photo = crate::durability::jpeg(node.base.len() as u32);
        let form = capture_form(Some((photo, "image/jpeg")), &meta);
        assert_eq!(node.upload(&id, API_KEY, form, None).await.status(), 201);
    }
    let res = b
        .http
        .post(b.url(&format!("/api/v1/sessions/{id}/close")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());

    let hits = rx.wait_for("hook", WEBHOOK_WAIT, |h| h.len() >= 4).await;
    // Both nodes poll the outbox: give a second delivery of a row time to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hits_after = rx.hits("hook");
    assert_eq!(hits.len(), hits_after.len(), "nothing delivered twice");
    let mut types: Vec<String> = hits_after.iter().map(|h| h.event_type()).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "capture.created",
            "capture.created",
            "session.closed",
            "session.started"
        ]
    );
    let ids: std::collections::HashSet<&str> = hits_after.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids.len(), 4, "one webhook-id per event");
}

#[tokio::test]
async fn a_node_cut_off_from_nats_is_not_ready_until_it_is_back() {
    let Some(mut shared) = Shared::start().await else {
        return;
    };
    let node = shared.node().await;
    let ready = |node: &TestServer| {
        let url = node.url("/readyz");
        let http = node.http.clone();
        async move {
            let res = http.get(url).send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = ready(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["bus"]["ok"], true);

    let port: u16 = shared.nats.url.rsplit(':').next().unwrap().parse().unwrap();
    shared.nats.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = ready(&node).await;
        if status == 503 {
            assert_eq!(body["checks"]["bus"]["ok"], false, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready without NATS: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // NATS back on the same port: the node reconnects by itself.
    shared.nats = Nats::start_on(&nats_server().unwrap(), port)
        .await
        .expect("the port is free again");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = ready(&node).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready again: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_database_served_by_one_node_is_taken_over_by_several_with_its_numbering() {
    let Some(shared) = Shared::start().await else {
        return;
    };
    // One node on the database first (no bus): it numbers in memory, signals included.
    let tune = shared.tune();
    let single = TestServer::start_with(move |s| {
        tune(s);
        s.nats_url = None;
    })
    .await;
    let s = single.session().await;
    let (mut agent, _) = single.join(&s.agent_token).await;
    let (mut customer, _) = single.join(&s.customer_token).await;
    agent.expect("peer.joined").await;
    agent
        .send(json!({"type": "chat", "text": "one", "id": 1}))
        .await;
    customer.expect("chat").await;
    agent
        .send(json!({"type": "signal", "data": {"sdp": "offer"}}))
        .await;
    let signal = customer.expect("signal").await;
    let customer_seq = signal["seq"].as_i64().unwrap();
    drop((agent, customer));
    single.shutdown().await;

    // Two nodes take over: the customer resumes after what it saw, and the numbers go on.
    let a = shared.node().await;
    let b = shared.node().await;
    let (mut agent, _) = a.join(&s.agent_token).await;
    let (mut customer, welcome) = b.join_at(&s.customer_token, Some(customer_seq)).await;
    assert_eq!(welcome["resumed"], true, "{welcome}");
    let mut last = customer_seq;
    // The agent's return comes right after the signal's seq (a departure, if the old node saw
    // one before it stopped, before it).
    loop {
        let m = next_in_order(&mut customer, &mut last).await;
        if m["type"] == "peer.joined" {
            assert_eq!(m["role"], "agent");
            break;
        }
        assert_eq!(m["type"], "peer.left", "{m}");
    }
    agent
        .send(json!({"type": "chat", "text": "two", "id": 2}))
        .await;
    let chat = expect_in_order(&mut customer, &mut last, "chat").await;
    assert_eq!(chat["text"], "two");
}
