//! The OpenAPI document (`/api/v1/openapi.json`) and the API reference page (`/api/docs`).

use std::collections::BTreeSet;

use reqwest::{Method, header};
use serde_json::Value;

use crate::support::*;

/// Every route of src/api/mod.rs, by hand: (method, path as documented).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/sessions"),
    ("get", "/api/v1/sessions"),
    ("get", "/api/v1/sessions/{id}"),
    ("post", "/api/v1/sessions/{id}/close"),
    ("get", "/api/v1/sessions/{id}/links"),
    ("get", "/api/v1/sessions/{id}/customer-qr.svg"),
    ("get", "/api/v1/join"),
    ("post", "/api/v1/sessions/{id}/captures"),
    ("get", "/api/v1/sessions/{id}/captures"),
    ("get", "/api/v1/sessions/{id}/events"),
    ("get", "/api/v1/sessions/{id}/export"),
    ("get", "/api/v1/captures/{id}"),
    ("get", "/api/v1/captures/{id}/image"),
    ("get", "/api/v1/captures/{id}/thumbnail"),
    ("get", "/api/v1/openapi.json"),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// The paths `src/api/mod.rs` routes, read from its source: the list above must keep up with it.
fn routed_paths() -> BTreeSet<String> {
    let src = include_str!("../../src/api/mod.rs");
    src.split(".route(")
        .skip(1)
        .filter_map(|rest| rest.split('"').nth(1))
        .map(|p| format!("/api/v1{p}"))
        .collect()
}

/// Resolves a local `$ref` (`#/components/schemas/X`) in the document.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// Every `$ref` anywhere under `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_document_is_served_and_covers_every_route() {
    let srv = TestServer::start().await;
    // No credential needed.
    let res = srv
        .http
        .get(srv.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(ct.starts_with("application/json"), "{ct}");
    let text = res.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");

    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "CaptureLink");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["servers"][0]["url"], srv.base.as_str());
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["type"], "http");
    assert_eq!(schemes["api_key"]["scheme"], "bearer");
    assert_eq!(schemes["join_token"]["scheme"], "bearer");

    // The hand-written list is the router's, and the document has exactly its operations.
    let listed: BTreeSet<String> = ROUTES.iter().map(|(_, p)| p.to_string()).collect();
    assert_eq!(
        listed,
        routed_paths(),
        "ROUTES is out of date with src/api/mod.rs"
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                documented.insert((m.to_owned(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);

    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method];
        let what = format!("{method} {path}");
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{what}: summary"
        );
        assert!(op["tags"][0].is_string(), "{what}: tag");
        // Path parameters are declared.
        if path.contains("{id}") {
            let params = op["parameters"].as_array().expect(&what);
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == "id" && p["in"] == "path"),
                "{what}: the id parameter"
            );
        }
        let responses = op["responses"].as_object().expect(&what);
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{what}: a success response"
        );
        // Every error is a problem+json body; everything but this document needs a credential.
        for (status, r) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    r["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{what}: {status}"
                );
            }
        }
        if *path != "/api/v1/openapi.json" {
            assert!(responses.contains_key("401"), "{what}: 401");
            let security = op["security"].as_array().expect(&what);
            assert!(!security.is_empty(), "{what}: security");
            for req in security {
                for name in req.as_object().unwrap().keys() {
                    assert!(schemes[name].is_object(), "{what}: scheme {name}");
                }
            }
        }
    }

    // The upload is multipart with `image` (binary) and `meta` (JSON).
    let upload = &doc["paths"]["/api/v1/sessions/{id}/captures"]["post"]["requestBody"];
    let form = &upload["content"]["multipart/form-data"]["schema"];
    assert_eq!(form["properties"]["image"]["format"], "binary");
    assert!(form["properties"]["meta"]["$ref"].is_string());
    assert_eq!(form["required"], serde_json::json!(["image", "meta"]));

    // Every $ref resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        assert!(resolve(&doc, r).is_some(), "dangling $ref {r}");
    }
    for name in [
        "Problem",
        "CreateSession",
        "SessionView",
        "CaptureView",
        "Area",
        "Angle",
    ] {
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "schema {name}"
        );
    }
    srv.shutdown().await;
}

/// The documented operations are really routed: without a credential each answers 401 (or 200
/// for the document), never the router's 404 or 405.
#[tokio::test]
async fn documented_routes_are_routed() {
    let srv = TestServer::start().await;
    for (method, path) in ROUTES {
        let url = srv.url(&path.replace("{id}", "ses_none"));
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let res = srv.http.request(method.clone(), &url).send().await.unwrap();
        let expected = if *path == "/api/v1/openapi.json" {
            200
        } else {
            401
        };
        assert_eq!(res.status().as_u16(), expected, "{method} {path}");
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn docs_page_is_self_contained_html() {
    let srv = TestServer::start().await;
    let res = srv.http.get(srv.url("/api/docs")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(ct.starts_with("text/html"), "{ct}");
    let csp = res.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = res.text().await.unwrap();
    assert!(
        html.contains("/api/v1/openapi.json"),
        "the page loads the document"
    );
    // No asset from a CDN or anywhere else: no absolute URL at all, no external script or style.
    for needle in [
        "http://",
        "https://",
        "<script src",
        "<link",
        "@import",
        "url(",
    ] {
        assert!(!html.contains(needle), "the page contains {needle:?}");
    }
    srv.shutdown().await;
}
