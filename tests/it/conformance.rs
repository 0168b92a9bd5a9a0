//! The test-only echo route that scripts/autobahn runs the Autobahn TestSuite against: absent
//! unless `--test-echo-route` is set, and bound by the same 64 KiB limit as `/ws`.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

async fn echo(srv: &TestServer) -> Client {
    let url = format!("{}/__echo", srv.base.replacen("http://", "ws://", 1));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    Client { ws }
}

async fn next(c: &mut Client) -> Message {
    tokio::time::timeout(WAIT, c.ws.next())
        .await
        .expect("an answer")
        .expect("the stream goes on")
        .expect("a frame")
}

#[tokio::test]
async fn the_echo_route_exists_only_behind_its_flag() {
    let srv = TestServer::start().await;
    let res = srv.http.get(srv.url("/__echo")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let url = format!("{}/__echo", srv.base.replacen("http://", "ws://", 1));
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}

#[tokio::test]
async fn the_echo_route_echoes_with_the_production_limits() {
    let srv = TestServer::start_with(|s| s.test_echo_route = true).await;
    let mut c = echo(&srv).await;
    c.send_raw(Message::Text("héllo".into())).await;
    assert_eq!(next(&mut c).await, Message::Text("héllo".into()));
    c.send_raw(Message::Binary(vec![1u8, 2, 3].into())).await;
    assert_eq!(next(&mut c).await, Message::Binary(vec![1u8, 2, 3].into()));
    // Exactly 64 KiB is allowed; one byte more closes with 1009, as on /ws.
    let max = "x".repeat(64 * 1024);
    c.send_raw(Message::Text(max.clone().into())).await;
    assert_eq!(next(&mut c).await, Message::Text(max.into()));
    c.ws.send(Message::Text("x".repeat(64 * 1024 + 1).into()))
        .await
        .unwrap();
    let (code, _) = c.expect_close().await;
    assert_eq!(code, 1009);
}
