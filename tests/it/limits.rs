//! Limits against clients that ask too much: REST per credential and per IP (429 with
//! Retry-After), WebSockets per IP, and CORS only for configured origins.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

async fn list(srv: &TestServer, key: &str) -> reqwest::Response {
    srv.http
        .get(srv.url("/api/v1/sessions"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn assert_limited(res: reqwest::Response) {
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
}

#[tokio::test]
async fn each_api_key_has_its_own_rate_limit() {
    let srv = TestServer::start_with(|s| {
        s.api_keys.push("second-key".into());
        s.key_rate = 1;
        s.key_burst = 3;
        s.ip_rate = 0;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(list(&srv, API_KEY).await.status(), 200);
    }
    assert_limited(list(&srv, API_KEY).await).await;
    // The other key is not held back by the first one's burst.
    assert_eq!(list(&srv, "second-key").await.status(), 200);
    // The bucket refills at the sustained rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(list(&srv, API_KEY).await.status(), 200);
}

#[tokio::test]
async fn each_client_ip_has_its_own_rate_limit() {
    let srv = TestServer::start_with(|s| {
        s.ip_rate = 1;
        s.ip_burst = 2;
        s.key_rate = 0;
    })
    .await;
    for _ in 0..2 {
        assert_eq!(list(&srv, API_KEY).await.status(), 200);
    }
    assert_limited(list(&srv, API_KEY).await).await;
    // WebSocket handshakes count against the address too.
    let status = srv.refused_status(&srv.ws_url("x", None), None).await;
    assert_eq!(status, 429);
    // The pages are not limited.
    let res = srv.http.get(srv.url("/agent/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn websockets_per_ip_are_capped() {
    let srv = TestServer::start_with(|s| s.max_ws_per_ip = 2).await;
    let s = srv.session().await;
    let (agent, _) = srv.join(&s.agent_token).await;
    let (_customer, _) = srv.join(&s.customer_token).await;
    let status = srv
        .refused_status(&srv.ws_url(&s.agent_token, None), None)
        .await;
    assert_eq!(status, 429);
    // A connection that ends gives its slot back.
    drop(agent);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio_tungstenite::connect_async(srv.ws_url(&s.agent_token, None)).await {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the slot never came back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn cors_answers_only_for_configured_origins() {
    let preflight = |srv: &TestServer, origin: &str| {
        srv.http
            .request(reqwest::Method::OPTIONS, srv.url("/api/v1/sessions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, idempotency-key",
            )
            .send()
    };

    let srv = TestServer::start().await;
    let res = preflight(&srv, "https://claims.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());

    let srv =
        TestServer::start_with(|s| s.cors_origins = vec!["https://claims.example".into()]).await;
    let res = preflight(&srv, "https://claims.example").await.unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://claims.example"
    );
    let allowed = res.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("idempotency-key") && allowed.contains("authorization"));
    let res = preflight(&srv, "https://evil.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    // A simple request from the allowed origin carries the header too.
    let res = srv
        .http
        .get(srv.url("/api/v1/sessions"))
        .bearer_auth(API_KEY)
        .header("origin", "https://claims.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://claims.example"
    );
}
