use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn agent_and_customer_pair_and_relay_both_ways() {
    let srv = TestServer::start().await;
    let s = srv.session().await;

    let (mut agent, w) = srv.join(&s.agent_token).await;
    assert_eq!(w["role"], "agent");
    assert_eq!(w["peer_present"], false);
    assert_eq!(w["resumed"], false);
    assert_eq!(w["session"]["id"], s.id.as_str());
    assert_eq!(w["checklist"].as_array().unwrap().len(), 8);

    let (mut customer, w) = srv.join(&s.customer_token).await;
    assert_eq!(w["role"], "customer");
    assert_eq!(w["peer_present"], true);
    // The agent's arrival was logged for the customer before it connected.
    let customer_seq = w["last_seq"].as_i64().unwrap();
    assert_eq!(customer_seq, 1);
    let joined = agent.expect("peer.joined").await;
    assert_eq!(joined["role"], "customer");
    assert_eq!(joined["seq"], 1);

    agent
        .send(json!({"type":"signal","id":"a1","data":{"sdp":"offer"}}))
        .await;
    assert_eq!(agent.expect("ack").await["id"], "a1");
    let sig = customer.expect("signal").await;
    assert_eq!(sig["from"], "agent");
    assert_eq!(sig["data"]["sdp"], "offer");
    assert_eq!(sig["seq"], customer_seq + 1);

    customer
        .send(json!({"type":"signal","data":{"sdp":"answer"}}))
        .await;
    let sig = agent.expect("signal").await;
    assert_eq!(
        (sig["from"].clone(), sig["seq"].clone()),
        (json!("customer"), json!(2))
    );

    agent
        .send(
            json!({"type":"guide","id":2,"hint":"closer","box":{"x":0.1,"y":0.1,"w":0.3,"h":0.3}}),
        )
        .await;
    assert_eq!(agent.expect("ack").await["id"], 2);
    let g = customer.expect("guide").await;
    assert_eq!(g["hint"], "closer");
    assert_eq!(g["box"]["w"], 0.3);
    assert_eq!(g["seq"], customer_seq + 2);

    customer.send(json!({"type":"chat","text":"ok"})).await;
    assert_eq!(agent.expect("chat").await["text"], "ok");

    customer.send(json!({"type":"ping","t":42})).await;
    assert_eq!(customer.expect("pong").await["t"], 42);
}
