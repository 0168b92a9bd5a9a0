//! What the two pages need from the server beyond the contract: the pages and shared modules
//! served under a strict CSP, the join-token check, the links and QR code, and the customer's
//! `device.capabilities` and `capture.failed` messages.

use serde_json::{Value, json};

use crate::support::*;

async fn get(srv: &TestServer, path: &str, bearer: Option<&str>) -> reqwest::Response {
    let mut req = srv.http.get(srv.url(path));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    req.send().await.unwrap()
}

async fn problem_code(res: reqwest::Response, status: u16) -> String {
    assert_eq!(res.status(), status);
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "refusals are problem+json"
    );
    let v: Value = res.json().await.unwrap();
    v["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn pages_and_shared_modules_are_served_under_a_strict_csp() {
    let srv = TestServer::start().await;
    for path in [
        "/agent/",
        "/customer/",
        "/shared/session.js",
        "/shared/i18n.js",
    ] {
        let res = get(&srv, path, None).await;
        assert_eq!(res.status(), 200, "{path}");
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp} lacks {directive}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert!(
            h["permissions-policy"]
                .to_str()
                .unwrap()
                .contains("camera=(self)")
        );
        if path.ends_with(".js") {
            let ct = h["content-type"].to_str().unwrap();
            assert!(ct.contains("javascript"), "{path} is served as {ct}");
        }
    }
    // The shared directory's tests and notes are not part of the site.
    assert_eq!(get(&srv, "/shared/README.md", None).await.status(), 404);
    assert_eq!(get(&srv, "/shared/nope.js", None).await.status(), 404);
}

#[tokio::test]
async fn pages_load_nothing_from_another_origin() {
    let srv = TestServer::start().await;
    for path in ["/agent/", "/customer/"] {
        let html = get(&srv, path, None).await.text().await.unwrap();
        assert!(
            !html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"),
            "{path} references another origin"
        );
        assert!(
            !html.contains("<style") && !html.contains("style=\""),
            "{path} has inline style, which the CSP blocks"
        );
        for script in html.split("<script").skip(1) {
            let tag = script.split('>').next().unwrap();
            assert!(tag.contains("src="), "{path} has an inline script");
        }
    }
}

#[tokio::test]
async fn a_join_token_says_what_it_joins_until_the_session_ends() {
    let srv = TestServer::start().await;
    let s = srv.session().await;

    let res = get(&srv, "/api/v1/join", Some(&s.customer_token)).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v,
        json!({"session_id": s.id, "role": "customer", "status": "created"})
    );
    let v: Value = get(&srv, "/api/v1/join", Some(&s.agent_token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["role"], "agent");

    // As a query parameter too (what a page without fetch headers would use).
    let res = get(
        &srv,
        &format!("/api/v1/join?token={}", s.customer_token),
        None,
    )
    .await;
    assert_eq!(res.status(), 200);

    // An API key is not a join token; an unknown token is unknown.
    let res = get(&srv, "/api/v1/join", Some(API_KEY)).await;
    assert_eq!(problem_code(res, 401).await, "unauthorized");
    let res = get(&srv, "/api/v1/join", Some("not-a-token")).await;
    assert_eq!(problem_code(res, 401).await, "unauthorized");
    let res = get(&srv, "/api/v1/join", None).await;
    assert_eq!(problem_code(res, 401).await, "unauthorized");

    let res = srv
        .http
        .post(srv.url(&format!("/api/v1/sessions/{}/close", s.id)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = get(&srv, "/api/v1/join", Some(&s.customer_token)).await;
    assert_eq!(problem_code(res, 410).await, "session_closed");
}

#[tokio::test]
async fn links_and_the_qr_code_are_for_the_key_and_the_agent_only() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let links_path = format!("/api/v1/sessions/{}/links", s.id);
    let qr_path = format!("/api/v1/sessions/{}/customer-qr.svg", s.id);

    for who in [API_KEY, s.agent_token.as_str()] {
        let res = get(&srv, &links_path, Some(who)).await;
        assert_eq!(res.status(), 200);
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["agent_url"], s.body["agent_url"]);
        assert_eq!(v["customer_url"], s.body["customer_url"]);
    }

    let res = get(&srv, &qr_path, Some(&s.agent_token)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/svg+xml");
    assert!(
        res.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store")
    );
    let svg = res.text().await.unwrap();
    // The same QR code the qrcode crate makes of the customer's link: it encodes that link.
    let expected = capturelink::api::qr_svg(s.body["customer_url"].as_str().unwrap()).unwrap();
    assert_eq!(svg, expected);
    let other = capturelink::api::qr_svg(s.body["agent_url"].as_str().unwrap()).unwrap();
    assert_ne!(svg, other);

    // The customer has its link already, and may not mint the agent's.
    let res = get(&srv, &links_path, Some(&s.customer_token)).await;
    assert_eq!(problem_code(res, 403).await, "forbidden");
    let res = get(&srv, &qr_path, Some(&s.customer_token)).await;
    assert_eq!(problem_code(res, 403).await, "forbidden");
    // Another session's agent does not see this one.
    let t = srv.session().await;
    let res = get(&srv, &links_path, Some(&t.agent_token)).await;
    assert_eq!(problem_code(res, 404).await, "not_found");

    srv.http
        .post(srv.url(&format!("/api/v1/sessions/{}/close", s.id)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    let res = get(&srv, &links_path, Some(API_KEY)).await;
    assert_eq!(problem_code(res, 410).await, "session_closed");
    let res = get(&srv, &qr_path, Some(API_KEY)).await;
    assert_eq!(problem_code(res, 410).await, "session_closed");
}

/// Agent and customer joined, with the agent's `peer.joined` read.
async fn pair(srv: &TestServer) -> (Session, Client, Client) {
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (customer, _) = srv.join(&s.customer_token).await;
    agent.expect("peer.joined").await;
    (s, agent, customer)
}

#[tokio::test]
async fn device_capabilities_go_from_the_customer_to_the_agent_and_survive_a_reconnect() {
    let srv = TestServer::start().await;
    let (s, mut agent, mut customer) = pair(&srv).await;

    customer
        .send(json!({
            "type": "device.capabilities", "id": "c1", "torch": true,
            "zoom": {"min": 1, "max": 8, "step": 0.1}, "photo": {"width": 4032, "height": 3024}
        }))
        .await;
    assert_eq!(customer.expect("ack").await["id"], "c1");
    let caps = agent.expect("device.capabilities").await;
    assert_eq!(caps["from"], "customer");
    assert_eq!(caps["torch"], true);
    assert_eq!(caps["zoom"], json!({"min": 1.0, "max": 8.0, "step": 0.1}));
    assert_eq!(caps["photo"], json!({"width": 4032, "height": 3024}));
    let seq = caps["seq"].as_i64().unwrap();

    // Nothing supported is a valid report too.
    customer
        .send(json!({"type": "device.capabilities", "id": "c2"}))
        .await;
    assert_eq!(customer.expect("ack").await["id"], "c2");
    let none = agent.expect("device.capabilities").await;
    assert!(none.get("torch").is_none() && none.get("zoom").is_none());

    // Durable: a reconnect from before the first one gets both again, in order.
    drop(agent);
    let (mut agent, w) = srv.join_at(&s.agent_token, Some(seq - 1)).await;
    assert_eq!(w["resumed"], true);
    let again = agent.expect("device.capabilities").await;
    assert_eq!(
        (again["seq"].as_i64(), &again["torch"]),
        (Some(seq), &json!(true))
    );
    assert_eq!(agent.expect("device.capabilities").await["seq"], seq + 1);
}

#[tokio::test]
async fn device_capabilities_are_the_customers_and_are_checked() {
    let srv = TestServer::start().await;
    let (_s, mut agent, mut customer) = pair(&srv).await;

    agent
        .send(json!({"type": "device.capabilities", "id": 1, "torch": true}))
        .await;
    let e = agent.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), &e["ref"]),
        (Some("forbidden"), &json!(1))
    );

    for bad in [
        json!({"type": "device.capabilities", "id": 2, "zoom": {"min": 0, "max": 4}}),
        json!({"type": "device.capabilities", "id": 3, "zoom": {"min": 4, "max": 2}}),
        json!({"type": "device.capabilities", "id": 4, "photo": {"width": 0, "height": 10}}),
        json!({"type": "device.capabilities", "id": 5, "torch": "yes"}),
    ] {
        customer.send(bad.clone()).await;
        let e = customer.expect("error").await;
        assert_eq!(e["code"], "invalid_message", "{bad}");
        assert_eq!(e["ref"], bad["id"]);
    }
    agent
        .expect_silence(std::time::Duration::from_millis(200))
        .await;
}

#[tokio::test]
async fn the_customer_reports_a_still_it_could_not_deliver() {
    let srv = TestServer::start().await;
    let (_s, mut agent, mut customer) = pair(&srv).await;

    agent
        .send(json!({"type": "capture.request", "request_id": "r1", "area": "hood", "angle": "close_up"}))
        .await;
    customer.expect("capture.request").await;
    customer
        .send(json!({
            "type": "capture.failed", "id": 9, "request_id": "r1",
            "code": "still_failed", "message": "takePhoto failed: NotReadableError"
        }))
        .await;
    assert_eq!(customer.expect("ack").await["id"], 9);
    let f = agent.expect("capture.failed").await;
    assert_eq!(f["from"], "customer");
    assert_eq!(f["request_id"], "r1");
    assert_eq!(f["code"], "still_failed");
    assert_eq!(f["message"], "takePhoto failed: NotReadableError");
    assert!(f["seq"].is_i64());

    // Only the customer reports; and the report is checked.
    agent
        .send(json!({"type": "capture.failed", "id": 1, "request_id": "r1", "code": "x"}))
        .await;
    assert_eq!(agent.expect("error").await["code"], "forbidden");
    for bad in [
        json!({"type": "capture.failed", "id": 2, "request_id": "", "code": "x"}),
        json!({"type": "capture.failed", "id": 3, "request_id": "r1", "code": "Not Snake"}),
        json!({"type": "capture.failed", "id": 4, "request_id": "r1", "code": "x", "message": "m".repeat(501)}),
        json!({"type": "capture.failed", "id": 5, "request_id": "r1"}),
    ] {
        customer.send(bad.clone()).await;
        assert_eq!(
            customer.expect("error").await["code"],
            "invalid_message",
            "{bad}"
        );
    }
}
