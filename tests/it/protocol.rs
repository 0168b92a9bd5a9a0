//! The WebSocket protocol rules of the contract: refusals before the upgrade, the subprotocol,
//! sender rules, acks and errors, frame limits, violation and rate limits, and `seq` numbering.

use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::support::*;

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
/// The contract's largest text frame.
const MAX_FRAME: usize = 64 * 1024;

fn ws_base(srv: &TestServer) -> String {
    srv.base.replacen("http://", "ws://", 1)
}

/// A pair joined to one fresh session, with the agent's `peer.joined` already read.
/// Returns (agent, customer, agent's last seq, customer's last seq).
async fn pair(srv: &TestServer) -> (Client, Client, i64, i64) {
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (customer, cw) = srv.join(&s.customer_token).await;
    let joined = agent.expect("peer.joined").await;
    assert_eq!(joined["role"], "customer");
    (
        agent,
        customer,
        joined["seq"].as_i64().expect("peer.joined has a seq"),
        cw["last_seq"].as_i64().expect("welcome has last_seq"),
    )
}

/// Asserts that the connection is still usable: a ping is answered with its pong.
async fn assert_alive(c: &mut Client, t: i64) {
    c.send(json!({"type":"ping","t":t})).await;
    let pong = c.expect("pong").await;
    assert_eq!(pong, json!({"type":"pong","t":t}));
}

/// The next message, which must be an error (with a message and no seq).
async fn refused(c: &mut Client) -> Value {
    let e = c.expect("error").await;
    assert!(e.get("seq").is_none(), "an error carries no seq: {e}");
    assert!(e["message"].is_string(), "an error has a message: {e}");
    e
}

/// Reads until the server closes the connection: the JSON messages before the close, and the code.
async fn messages_until_close(c: &mut Client) -> (Vec<Value>, u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) => panic!("no close within the wait; got {out:?}"),
            Ok(None) => panic!("stream ended without a close frame; got {out:?}"),
            Ok(Some(Ok(Message::Text(t)))) => out.push(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Some(Ok(Message::Close(Some(f))))) => return (out, u16::from(f.code)),
            Ok(Some(Ok(Message::Close(None)))) => panic!("close without a code; got {out:?}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("socket error before a close frame: {e}; got {out:?}"),
        }
    }
}

// ---- refused before the upgrade, as plain HTTP ----

#[tokio::test]
async fn missing_or_unknown_token_is_refused_with_401() {
    let srv = TestServer::start().await;
    let base = ws_base(&srv);
    assert_eq!(srv.refused_status(&format!("{base}/ws"), None).await, 401);
    assert_eq!(
        srv.refused_status(&format!("{base}/ws?token="), None).await,
        401
    );
    let unknown = srv.ws_url("not-a-token-of-any-session", None);
    assert_eq!(srv.refused_status(&unknown, None).await, 401);
    // The token is checked first: an unknown token from a foreign origin is still a 401.
    assert_eq!(
        srv.refused_status(&unknown, Some("http://evil.example"))
            .await,
        401
    );
}

#[tokio::test]
async fn foreign_origin_is_refused_with_403_and_the_servers_own_origin_is_accepted() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    for token in [&s.agent_token, &s.customer_token] {
        let url = srv.ws_url(token, None);
        assert_eq!(
            srv.refused_status(&url, Some("http://evil.example")).await,
            403
        );
    }

    let mut req = srv
        .ws_url(&s.agent_token, None)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", HeaderValue::from_str(&srv.base).unwrap());
    let (ws, res) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the server's own origin may connect");
    assert_eq!(res.status(), 101);
    let mut agent = Client { ws };
    let w = agent.expect("welcome").await;
    assert_eq!(w["role"], "agent");
}

#[tokio::test]
async fn closed_session_is_refused_with_410() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let res = srv
        .http
        .post(srv.url(&format!("/api/v1/sessions/{}/close", s.id)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "close the session");
    for token in [&s.agent_token, &s.customer_token] {
        assert_eq!(
            srv.refused_status(&srv.ws_url(token, None), None).await,
            410
        );
    }
}

#[tokio::test]
async fn expired_session_is_refused_with_410() {
    let srv = TestServer::start().await;
    let v = srv
        .create_session(json!({"claim_ref": "CLM-EXP", "expires_in_s": 1}))
        .await;
    let id = v["id"].as_str().unwrap();
    // Wait (with a deadline) until the API reports the session expired.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got: Value = srv
            .http
            .get(srv.url(&format!("/api/v1/sessions/{id}")))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if got["status"] == "expired" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session never expired: {got}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for key in ["agent_token", "customer_token"] {
        let url = srv.ws_url(v[key].as_str().unwrap(), None);
        assert_eq!(srv.refused_status(&url, None).await, 410, "{key}");
    }
}

#[tokio::test]
async fn malformed_last_seq_is_refused_with_400() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let url = srv.ws_url(&s.agent_token, None);
    assert_eq!(
        srv.refused_status(&format!("{url}&last_seq=abc"), None)
            .await,
        400
    );
    assert_eq!(
        srv.refused_status(&format!("{url}&last_seq=-1"), None)
            .await,
        400
    );
    // A well-formed one is accepted.
    let (_agent, w) = srv.join_at(&s.agent_token, Some(0)).await;
    assert_eq!(w["role"], "agent");
}

// ---- the subprotocol ----

#[tokio::test]
async fn subprotocol_is_echoed_when_offered() {
    let srv = TestServer::start().await;
    let s = srv.session().await;

    let mut req = srv
        .ws_url(&s.agent_token, None)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("capturelink.v1"),
    );
    let (ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        res.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("capturelink.v1")
    );
    let mut agent = Client { ws };
    agent.expect("welcome").await;

    // Offered among others, it is the one chosen.
    let mut req = srv
        .ws_url(&s.customer_token, None)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("chat.v9, capturelink.v1"),
    );
    let (ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        res.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("capturelink.v1")
    );
    let mut customer = Client { ws };
    customer.expect("welcome").await;

    // Not offered: none is imposed.
    let (ws, res) = tokio_tungstenite::connect_async(srv.ws_url(&s.agent_token, None))
        .await
        .unwrap();
    assert!(res.headers().get("sec-websocket-protocol").is_none());
    drop(ws);
}

// ---- sender rules ----

#[tokio::test]
async fn customer_may_not_send_agent_only_messages() {
    let srv = TestServer::start().await;
    let (mut agent, mut customer, agent_seq, _) = pair(&srv).await;

    let agent_only = [
        json!({"type":"guide","id":"g1","hint":"closer"}),
        json!({"type":"capture.request","id":"c1","request_id":"r1","area":"hood","angle":"front"}),
        json!({"type":"camera","id":"k1","torch":true}),
    ];
    for msg in agent_only {
        customer.send(msg.clone()).await;
        let e = refused(&mut customer).await;
        assert_eq!(e["code"], "forbidden", "{msg} -> {e}");
        assert_eq!(e["ref"], msg["id"], "{msg} -> {e}");
        assert_alive(&mut customer, 1).await;
    }
    agent.expect_silence(QUIET).await;

    // Nothing refused took a seq: the next relayed message is the agent's next one.
    customer
        .send(json!({"type":"chat","text":"still here"}))
        .await;
    let chat = agent.expect("chat").await;
    assert_eq!(chat["from"], "customer");
    assert_eq!(chat["seq"], agent_seq + 1);
}

#[tokio::test]
async fn agent_may_send_everything_and_the_customer_receives_it_from_the_agent() {
    let srv = TestServer::start().await;
    let (mut agent, mut customer, _, customer_seq) = pair(&srv).await;

    let sent = [
        json!({"type":"guide","id":"g1","hint":"hold_steady","box":{"x":0.2,"y":0.2,"w":0.5,"h":0.4},
               "text":"hold it there","target":{"area":"hood","angle":"close_up"}}),
        json!({"type":"guide","id":"g2"}),
        json!({"type":"capture.request","id":"c1","request_id":"req-1","area":"front_bumper",
               "angle":"front","slot_id":"slot_1"}),
        json!({"type":"camera","id":"k1","torch":true,"zoom":2.0,"facing":"environment"}),
        json!({"type":"signal","id":"s1","data":{"candidate":"a=1"}}),
        json!({"type":"chat","id":"t1","text":"hello"}),
    ];
    for (i, msg) in sent.iter().enumerate() {
        agent.send(msg.clone()).await;
        assert_eq!(agent.expect("ack").await["id"], msg["id"]);
        let got = customer.recv().await;
        // What arrives is what was sent, without the id, plus `from` and `seq`.
        let mut want = msg.clone();
        let want_obj = want.as_object_mut().unwrap();
        want_obj.remove("id");
        want_obj.insert("from".into(), json!("agent"));
        want_obj.insert("seq".into(), json!(customer_seq + 1 + i as i64));
        assert_eq!(got, want);
    }
}

// ---- acks and errors ----

#[tokio::test]
async fn ids_are_acked_for_relayed_messages() {
    let srv = TestServer::start().await;
    let (mut agent, mut customer, _, _) = pair(&srv).await;

    customer
        .send(json!({"type":"signal","id":"sig-1","data":"x"}))
        .await;
    assert_eq!(customer.recv().await, json!({"type":"ack","id":"sig-1"}));
    agent.expect("signal").await;

    customer
        .send(json!({"type":"chat","id":17,"text":"hi"}))
        .await;
    assert_eq!(customer.recv().await, json!({"type":"ack","id":17}));
    agent.expect("chat").await;

    agent
        .send(json!({"type":"guide","id":2.5,"hint":"closer"}))
        .await;
    assert_eq!(agent.recv().await, json!({"type":"ack","id":2.5}));
    customer.expect("guide").await;

    // Without an id there is no ack.
    customer.send(json!({"type":"signal","data":"y"})).await;
    agent.expect("signal").await;
    customer.expect_silence(QUIET).await;
}

#[tokio::test]
async fn malformed_unknown_and_invalid_messages_get_errors_and_the_connection_stays_open() {
    let srv = TestServer::start().await;
    let (mut agent, mut customer, _, customer_seq) = pair(&srv).await;

    agent.send_raw(Message::Text("{not json".into())).await;
    let e = refused(&mut agent).await;
    assert_eq!(e["code"], "malformed", "{e}");
    assert!(e.get("ref").is_none(), "no id could be read: {e}");
    assert_alive(&mut agent, 1).await;

    agent.send(json!({"id":"no-type"})).await;
    let e = refused(&mut agent).await;
    assert_eq!(e["code"], "malformed", "{e}");
    assert_alive(&mut agent, 2).await;

    agent.send(json!({"type":"teleport","id":"u1"})).await;
    let e = refused(&mut agent).await;
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("unknown_type"), json!("u1"))
    );
    assert_alive(&mut agent, 3).await;

    let invalid = [
        json!({"type":"guide","id":"v1","hint":"sideways"}),
        json!({"type":"guide","id":"v2","box":{"x":0.8,"y":0.0,"w":0.5,"h":0.1}}),
        json!({"type":"guide","id":"v3","text":"x".repeat(501)}),
        json!({"type":"chat","id":"v4","text":"x".repeat(2001)}),
        json!({"type":"chat","id":"v5","text":""}),
        json!({"type":"capture.request","id":"v6","request_id":"r","area":"wing","angle":"front"}),
        json!({"type":"camera","id":"v7","facing":"sky"}),
        json!({"type":"signal","id":"v8"}),
    ];
    for msg in invalid {
        agent.send(msg.clone()).await;
        let e = refused(&mut agent).await;
        assert_eq!(e["code"], "invalid_message", "{msg} -> {e}");
        assert_eq!(e["ref"], msg["id"], "{msg} -> {e}");
        assert_alive(&mut agent, 4).await;
    }
    customer.expect_silence(QUIET).await;

    // The limits themselves are allowed.
    agent
        .send(json!({"type":"chat","id":"ok","text":"字".repeat(2000)}))
        .await;
    assert_eq!(agent.expect("ack").await["id"], "ok");
    let chat = customer.expect("chat").await;
    assert_eq!(chat["text"].as_str().unwrap().chars().count(), 2000);
    assert_eq!(chat["seq"], customer_seq + 1);
}

#[tokio::test]
async fn signal_to_an_absent_peer_is_refused_with_peer_absent() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, w) = srv.join(&s.agent_token).await;
    assert_eq!(w["peer_present"], false);
    agent
        .send(json!({"type":"signal","id":"s1","data":{"sdp":"offer"}}))
        .await;
    let e = agent.expect("error").await;
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("peer_absent"), json!("s1"))
    );
    assert_alive(&mut agent, 1).await;

    // When the customer arrives, the next signal goes through; the refused one took no seq.
    let (mut customer, cw) = srv.join(&s.customer_token).await;
    agent.expect("peer.joined").await;
    agent
        .send(json!({"type":"signal","id":"s2","data":{"sdp":"offer"}}))
        .await;
    assert_eq!(agent.expect("ack").await["id"], "s2");
    let sig = customer.expect("signal").await;
    assert_eq!(sig["seq"], cw["last_seq"].as_i64().unwrap() + 1);
}

// ---- frame limits ----

/// A signal whose JSON text is exactly `len` bytes.
fn signal_of_len(id: &str, len: usize) -> String {
    let head = format!(r#"{{"type":"signal","id":"{id}","data":""#);
    let tail = r#""}"#;
    let text = format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()));
    assert_eq!(text.len(), len);
    text
}

#[tokio::test]
async fn text_frames_up_to_64_kib_are_relayed_and_larger_ones_close_with_1009() {
    let srv = TestServer::start().await;
    let (mut agent, mut customer, _, customer_seq) = pair(&srv).await;

    for (i, len) in [MAX_FRAME - 1, MAX_FRAME].into_iter().enumerate() {
        let id = format!("big{i}");
        let text = signal_of_len(&id, len);
        agent.send_raw(Message::Text(text.clone().into())).await;
        assert_eq!(agent.expect("ack").await["id"], id.as_str());
        let sig = customer.expect("signal").await;
        let sent: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(sig["data"], sent["data"]);
        assert_eq!(sig["seq"], customer_seq + 1 + i as i64);
    }

    agent
        .send_raw(Message::Text(signal_of_len("huge", MAX_FRAME + 1).into()))
        .await;
    let (code, _) = agent.expect_close().await;
    assert_eq!(code, 1009);
    // Nothing of the refused frame reached the customer: only that the agent left.
    let left = customer.expect("peer.left").await;
    assert_eq!(left["role"], "agent");
    assert_alive(&mut customer, 1).await;
}

/// Sends `text` as one message split into `parts` fragments (a text frame and continuations).
async fn send_fragmented(c: &mut Client, text: &str, parts: usize) {
    let bytes = text.as_bytes();
    let chunk = bytes.len().div_ceil(parts);
    for (i, piece) in bytes.chunks(chunk).enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let last = (i + 1) * chunk >= bytes.len();
        c.send_raw(Message::Frame(Frame::message(piece.to_vec(), opcode, last)))
            .await;
    }
}

#[tokio::test]
async fn a_fragmented_message_is_held_to_the_limit_as_a_whole() {
    let srv = TestServer::start().await;
    let (mut agent, mut customer, _, customer_seq) = pair(&srv).await;

    // Fragments of one message under the limit are reassembled and relayed.
    let text = signal_of_len("frag", 48 * 1024);
    send_fragmented(&mut agent, &text, 3).await;
    assert_eq!(agent.expect("ack").await["id"], "frag");
    let sig = customer.expect("signal").await;
    let sent: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(sig["data"], sent["data"]);
    assert_eq!(sig["seq"], customer_seq + 1);

    // Each fragment is small, but together they exceed 64 KiB: 1009.
    send_fragmented(&mut agent, &signal_of_len("frag2", MAX_FRAME + 1024), 4).await;
    let (code, _) = agent.expect_close().await;
    assert_eq!(code, 1009);
    let left = customer.expect("peer.left").await;
    assert_eq!(left["role"], "agent");
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let srv = TestServer::start().await;
    let (mut agent, mut customer, _, _) = pair(&srv).await;
    customer
        .send_raw(Message::Binary(vec![0xff, 0xd8, 0xff].into()))
        .await;
    let (code, _) = customer.expect_close().await;
    assert_eq!(code, 1003);
    // The agent is told the customer left, and is itself unaffected.
    let left = agent.expect("peer.left").await;
    assert_eq!(left["role"], "customer");
    assert_alive(&mut agent, 1).await;
}

// ---- repeated violations and flood control ----

#[tokio::test]
async fn more_than_30_refused_messages_in_a_minute_close_with_4003() {
    let srv = TestServer::start().await;
    let (mut agent, mut customer, _, _) = pair(&srv).await;

    for i in 0..30 {
        customer
            .send(json!({"type":"guide","id":i,"hint":"closer"}))
            .await;
        let e = customer.expect("error").await;
        assert_eq!(
            (e["code"].clone(), e["ref"].clone()),
            (json!("forbidden"), json!(i))
        );
    }
    // Thirty are tolerated: the connection is still usable.
    assert_alive(&mut customer, 1).await;

    customer
        .send(json!({"type":"guide","id":30,"hint":"closer"}))
        .await;
    let (msgs, code) = messages_until_close(&mut customer).await;
    assert_eq!(code, 4003, "messages before the close: {msgs:?}");
    assert!(
        msgs.iter()
            .all(|m| m["type"] == "error" && m["code"] == "forbidden"),
        "{msgs:?}"
    );

    // The agent never saw any of it, only that the customer left.
    let left = agent.expect("peer.left").await;
    assert_eq!(left["role"], "customer");
    assert_alive(&mut agent, 2).await;
}

#[tokio::test]
async fn a_burst_of_signals_passes_and_a_sustained_flood_is_refused_then_closed_with_4029() {
    let srv = TestServer::start_with(|s| {
        s.ws_rate = 20;
        s.ws_burst = 50;
    })
    .await;
    let (mut agent, mut customer, mut agent_seq, _) = pair(&srv).await;

    // ICE candidates come in bursts: fifty at once all reach the peer, in order.
    for i in 0..50 {
        customer
            .send(json!({"type":"signal","data":{"candidate":i}}))
            .await;
    }
    for i in 0..50 {
        let sig = agent.expect("signal").await;
        agent_seq += 1;
        assert_eq!(sig["data"]["candidate"], i);
        assert_eq!(sig["seq"], agent_seq);
    }
    customer.expect_silence(Duration::from_millis(50)).await;

    // A sustained flood: refused with `rate_limited`, then closed with 4029.
    let flood = json!({"type":"signal","data":{"candidate":"flood"}}).to_string();
    let mut before_close = Vec::new();
    let mut close_code = None;
    'flood: for _ in 0..2000 {
        if customer
            .ws
            .send(Message::Text(flood.clone().into()))
            .await
            .is_err()
        {
            break;
        }
        while let Some(Some(frame)) = customer.ws.next().now_or_never() {
            match frame {
                Ok(Message::Text(t)) => {
                    before_close.push(serde_json::from_str::<Value>(&t).unwrap())
                }
                Ok(Message::Close(f)) => {
                    close_code = f.map(|f| u16::from(f.code));
                    break 'flood;
                }
                Ok(_) => {}
                Err(e) => panic!("socket error during the flood: {e}"),
            }
        }
    }
    let code = match close_code {
        Some(c) => c,
        None => {
            let (rest, code) = messages_until_close(&mut customer).await;
            before_close.extend(rest);
            code
        }
    };
    assert_eq!(code, 4029, "messages before the close: {before_close:?}");
    assert!(
        !before_close.is_empty(),
        "the flood was refused before it was closed"
    );
    for m in &before_close {
        assert_eq!(
            (m["type"].clone(), m["code"].clone()),
            (json!("error"), json!("rate_limited")),
            "{m}"
        );
    }

    // The peer got what passed, still in contiguous seq, then the customer left; it is unaffected.
    let rest = agent.collect_until("peer.left").await;
    let (left, relayed) = rest.split_last().unwrap();
    for sig in relayed {
        agent_seq += 1;
        assert_eq!(sig["type"], "signal", "{sig}");
        assert_eq!(sig["seq"], agent_seq);
    }
    assert!(
        relayed.len() < 50,
        "a flood is not relayed wholesale: {} passed",
        relayed.len()
    );
    assert_eq!(left["role"], "customer");
    assert_eq!(left["seq"], agent_seq + 1);
    assert_alive(&mut agent, 1).await;
}

// ---- sequencing ----

#[tokio::test]
async fn each_recipient_gets_contiguous_seqs_and_replies_carry_none() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, aw) = srv.join(&s.agent_token).await;
    assert!(aw.get("seq").is_none(), "welcome carries no seq: {aw}");
    let (mut customer, cw) = srv.join(&s.customer_token).await;
    assert!(cw.get("seq").is_none(), "welcome carries no seq: {cw}");
    let mut next_agent = aw["last_seq"].as_i64().unwrap() + 1;
    let mut next_customer = cw["last_seq"].as_i64().unwrap() + 1;

    let joined = agent.expect("peer.joined").await;
    assert_eq!(joined["seq"], next_agent);
    next_agent += 1;

    let from_agent = [
        json!({"type":"signal","id":1,"data":{"sdp":"offer"}}),
        json!({"type":"guide","id":2,"hint":"closer"}),
        json!({"type":"chat","id":3,"text":"hello"}),
        json!({"type":"camera","id":4,"zoom":1.5}),
        json!({"type":"capture.request","id":5,"request_id":"r1","area":"hood","angle":"front"}),
    ];
    let from_customer = [
        json!({"type":"signal","id":"a","data":{"sdp":"answer"}}),
        json!({"type":"chat","id":"b","text":"ok"}),
        json!({"type":"signal","id":"c","data":{"candidate":"x"}}),
    ];
    // Interleave both directions, with refused messages and pings in between: only relayed
    // messages take a seq, and each recipient's seqs have no gap.
    for (i, msg) in from_agent.iter().enumerate() {
        agent.send(msg.clone()).await;
        let ack = agent.expect("ack").await;
        assert!(ack.get("seq").is_none(), "ack carries no seq: {ack}");
        let got = customer.recv().await;
        assert_eq!(got["type"], msg["type"]);
        assert_eq!(got["seq"], next_customer, "{got}");
        next_customer += 1;

        if let Some(msg) = from_customer.get(i) {
            customer.send(msg.clone()).await;
            customer.expect("ack").await;
            let got = agent.recv().await;
            assert_eq!(got["type"], msg["type"]);
            assert_eq!(got["seq"], next_agent, "{got}");
            next_agent += 1;
        }

        customer.send(json!({"type":"ping","t":i})).await;
        let pong = customer.expect("pong").await;
        assert!(pong.get("seq").is_none(), "pong carries no seq: {pong}");
        customer.send(json!({"type":"guide","id":"no"})).await;
        let err = customer.expect("error").await;
        assert!(err.get("seq").is_none(), "error carries no seq: {err}");
    }

    // The customer leaves: the agent's peer.left continues the same sequence.
    drop(customer);
    let left = agent.expect("peer.left").await;
    assert_eq!(left["seq"], next_agent);
}

/// Messages sent back to back, without waiting for acks: durable ones are committed together and
/// a `signal` sent behind them waits its turn, so the peer gets them all in the order sent with
/// contiguous seqs, each acked once; a later reconnect replays the durable ones in that order.
#[tokio::test]
async fn messages_sent_without_waiting_arrive_in_order_with_contiguous_seqs() {
    let srv = TestServer::start_with(|s| {
        s.ws_rate = 1_000;
        s.ws_burst = 1_000;
    })
    .await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (mut customer, cw) = srv.join(&s.customer_token).await;
    agent.expect("peer.joined").await;
    let first = cw["last_seq"].as_i64().unwrap() + 1;

    let sent: Vec<Value> = (0..60)
        .map(|i| match i % 4 {
            0 => json!({"type":"guide","id":i,"text":format!("g{i}")}),
            1 => json!({"type":"signal","id":i,"data":{"candidate":format!("s{i}")}}),
            2 => json!({"type":"chat","id":i,"text":format!("c{i}")}),
            _ => json!({"type":"signal","id":i,"data":{"candidate":format!("t{i}")}}),
        })
        .collect();
    for m in &sent {
        agent.send(m.clone()).await;
    }
    let mut acked = std::collections::BTreeSet::new();
    for _ in &sent {
        let ack = agent.expect("ack").await;
        assert!(
            acked.insert(ack["id"].as_i64().unwrap()),
            "acked twice: {ack}"
        );
    }
    assert_eq!(acked.len(), sent.len());
    agent.expect_silence(QUIET).await;

    let mut durable = Vec::new();
    for (i, m) in sent.iter().enumerate() {
        let got = customer.recv().await;
        assert_eq!(got["type"], m["type"], "message {i}: {got}");
        assert_eq!(got["seq"], first + i as i64, "{got}");
        let body = if m["type"] == "signal" {
            &got["data"]["candidate"]
        } else {
            &got["text"]
        };
        assert_eq!(
            *body,
            m.get("text").unwrap_or(&m["data"]["candidate"]).clone()
        );
        if m["type"] != "signal" {
            durable.push(got);
        }
    }
    customer.expect_silence(QUIET).await;

    // Reconnecting from before them replays the durable ones, in order, with the same seqs.
    drop(customer);
    agent.expect("peer.left").await;
    let (mut back, w) = srv.join_at(&s.customer_token, Some(first - 1)).await;
    assert_eq!(w["resumed"], true);
    for d in &durable {
        let got = back.recv().await;
        assert_eq!((&got["seq"], &got["type"]), (&d["seq"], &d["type"]));
    }
}
