//! The sessions REST API (`/api/v1/sessions`): create, idempotency, list, get, close.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode, header};
use serde_json::{Value, json};
use sqlx::Row;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::*;

/// The `claim_default` checklist, in the contract's order.
const CLAIM_DEFAULT: [(&str, &str); 8] = [
    ("vin", "document"),
    ("odometer", "interior"),
    ("overview", "front_left_45"),
    ("overview", "front_right_45"),
    ("overview", "rear_left_45"),
    ("overview", "rear_right_45"),
    ("front_license_plate", "front"),
    ("rear_license_plate", "rear"),
];

fn post_sessions(srv: &TestServer) -> RequestBuilder {
    srv.http.post(srv.url("/api/v1/sessions"))
}

async fn create_raw(srv: &TestServer, body: Value) -> Response {
    post_sessions(srv)
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn get_json(srv: &TestServer, path: &str, credential: &str) -> (StatusCode, Value) {
    let res = srv
        .http
        .get(srv.url(path))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

async fn close(srv: &TestServer, id: &str, credential: &str) -> Response {
    srv.http
        .post(srv.url(&format!("/api/v1/sessions/{id}/close")))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap()
}

/// Asserts that `res` is an `application/problem+json` refusal with `status` and `code`.
async fn assert_problem(res: Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status(), status, "status of {}", res.url());
    let ct = res
        .headers()
        .get(header::CONTENT_TYPE)
        .expect("a content type")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        ct.starts_with("application/problem+json"),
        "problem content type, got {ct}"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status, "problem status: {body}");
    assert_eq!(body["code"], code, "problem code: {body}");
    body
}

fn rfc3339(v: &Value) -> OffsetDateTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp string, got {v}"));
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("`{s}` is not RFC 3339: {e}"))
}

fn slots(session: &Value) -> Vec<(String, String)> {
    session["checklist"]
        .as_array()
        .unwrap_or_else(|| panic!("a checklist array: {session}"))
        .iter()
        .map(|s| {
            (
                s["area"].as_str().unwrap().to_owned(),
                s["angle"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn default_slots() -> Vec<(String, String)> {
    CLAIM_DEFAULT
        .iter()
        .map(|(a, g)| (a.to_string(), g.to_string()))
        .collect()
}

async fn count(conn: &mut sqlx::AnyConnection, sql: &'static str) -> i64 {
    sqlx::query(sql).fetch_one(&mut *conn).await.unwrap().get(0)
}

/// Polls `GET /sessions/{id}` (with the API key) until `done` holds for it; panics after [`WAIT`].
async fn poll_session(srv: &TestServer, id: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, s) = get_json(srv, &format!("/api/v1/sessions/{id}"), API_KEY).await;
        assert_eq!(status, 200);
        if done(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within the wait: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- POST /sessions: authentication -------------------------------------------------------------

#[tokio::test]
async fn create_requires_an_api_key() {
    let srv = TestServer::start().await;
    let body = json!({"claim_ref": "CLM-1"});

    let res = post_sessions(&srv).json(&body).send().await.unwrap();
    assert_problem(res, 401, "unauthorized").await;

    let res = post_sessions(&srv)
        .bearer_auth("not-the-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;

    // A join token is not an API key either.
    let s = srv.session().await;
    let res = post_sessions(&srv)
        .bearer_auth(&s.agent_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;

    let mut conn = srv.db().await;
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM sessions").await,
        1,
        "refused creates leave nothing behind"
    );
}

// ---- POST /sessions: the created session --------------------------------------------------------

#[tokio::test]
async fn create_returns_the_session_with_links_tokens_and_default_checklist() {
    let srv = TestServer::start().await;
    let before = OffsetDateTime::now_utc();
    let res = create_raw(&srv, json!({"claim_ref": "CLM-2024-001"})).await;
    assert_eq!(res.status(), 201);
    let location = res
        .headers()
        .get(header::LOCATION)
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_owned();
    let s: Value = res.json().await.unwrap();

    let id = s["id"].as_str().expect("an id");
    assert!(!id.is_empty());
    assert_eq!(s["claim_ref"], "CLM-2024-001");
    assert_eq!(s["status"], "created");

    let created = rfc3339(&s["created_at"]);
    let expires = rfc3339(&s["expires_at"]);
    assert!(
        created >= before - Duration::from_secs(5) && created <= OffsetDateTime::now_utc(),
        "created_at is now: {created}"
    );
    assert!(expires > created, "expires_at after created_at");

    let agent_token = s["agent_token"].as_str().expect("agent_token");
    let customer_token = s["customer_token"].as_str().expect("customer_token");
    let agent_url = s["agent_url"].as_str().expect("agent_url");
    let customer_url = s["customer_url"].as_str().expect("customer_url");
    assert!(agent_url.starts_with("http"), "absolute: {agent_url}");
    assert!(customer_url.starts_with("http"), "absolute: {customer_url}");
    assert!(agent_url.contains(agent_token), "{agent_url}");
    assert!(customer_url.contains(customer_token), "{customer_url}");
    assert!(!customer_url.contains(agent_token), "{customer_url}");
    assert!(!agent_url.contains(customer_token), "{agent_url}");

    assert_eq!(slots(&s), default_slots());
    for slot in s["checklist"].as_array().unwrap() {
        assert_eq!(slot["status"], "pending", "{slot}");
        assert!(slot["id"].is_string(), "{slot}");
    }

    // The Location names the new resource, and the API key can read it there.
    assert!(
        location.ends_with(&format!("/api/v1/sessions/{id}")),
        "Location: {location}"
    );
    let (status, got) = get_json(&srv, &format!("/api/v1/sessions/{id}"), API_KEY).await;
    assert_eq!(status, 200);
    assert_eq!(got["id"], id);
    assert_eq!(got["claim_ref"], "CLM-2024-001");
}

#[tokio::test]
async fn expires_in_s_sets_the_expiry() {
    let srv = TestServer::start().await;
    let s = srv
        .create_session(json!({"claim_ref": "CLM-1", "expires_in_s": 3600}))
        .await;
    let lifetime = rfc3339(&s["expires_at"]) - rfc3339(&s["created_at"]);
    assert_eq!(lifetime.whole_seconds(), 3600, "{s}");
}

#[tokio::test]
async fn named_claim_default_checklist_equals_the_omitted_one() {
    let srv = TestServer::start().await;
    let s = srv
        .create_session(json!({"claim_ref": "CLM-1", "checklist": "claim_default"}))
        .await;
    assert_eq!(slots(&s), default_slots());
}

#[tokio::test]
async fn creator_checklist_is_kept_in_order_with_labels() {
    let srv = TestServer::start().await;
    let s = srv
        .create_session(json!({
            "claim_ref": "CLM-1",
            "checklist": [
                {"area": "hood", "angle": "close_up", "label": "Dent on the hood"},
                {"area": "door_front_left", "angle": "left"},
                {"area": "vin", "angle": "document"},
            ],
        }))
        .await;
    assert_eq!(
        slots(&s),
        vec![
            ("hood".to_owned(), "close_up".to_owned()),
            ("door_front_left".to_owned(), "left".to_owned()),
            ("vin".to_owned(), "document".to_owned()),
        ]
    );
    let list = s["checklist"].as_array().unwrap();
    assert_eq!(list[0]["label"], "Dent on the hood");
    let ids: HashSet<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "slot ids are distinct: {list:?}");

    // The same list is what GET shows.
    let id = s["id"].as_str().unwrap();
    let (_, got) = get_json(&srv, &format!("/api/v1/sessions/{id}"), API_KEY).await;
    assert_eq!(slots(&got), slots(&s));
}

// ---- POST /sessions: refusals -------------------------------------------------------------------

#[tokio::test]
async fn invalid_create_bodies_are_422_with_stable_codes() {
    let srv = TestServer::start().await;
    let cases = [
        (json!({"claim_ref": ""}), "invalid_claim_ref"),
        (json!({"claim_ref": "   "}), "invalid_claim_ref"),
        (
            json!({"claim_ref": "C", "checklist": [{"area": "spoiler", "angle": "front"}]}),
            "invalid_area",
        ),
        (
            json!({"claim_ref": "C", "checklist": [{"area": "hood", "angle": "sideways"}]}),
            "invalid_angle",
        ),
        (json!({"claim_ref": "C", "locale": "fr"}), "invalid_locale"),
        (
            json!({"claim_ref": "C", "expires_in_s": 0}),
            "invalid_expires_in",
        ),
        (
            json!({"claim_ref": "C", "checklist": "claim_deluxe"}),
            "invalid_checklist",
        ),
        // Control characters: a NUL (which PostgreSQL's text refuses), an escape sequence.
        (json!({"claim_ref": "CLM\u{0}1"}), "invalid_claim_ref"),
        (
            json!({"claim_ref": "C", "webhook_url": "https://claims.example/hook\u{0}"}),
            "invalid_webhook_url",
        ),
        (
            json!({"claim_ref": "C", "webhook_url": "https://"}),
            "invalid_webhook_url",
        ),
        (json!({"claim_ref": "\u{1b}[2JCLM"}), "invalid_claim_ref"),
        (
            json!({"claim_ref": "C", "checklist": [{"area": "hood", "angle": "close_up", "label": "dent\u{0}"}]}),
            "invalid_checklist",
        ),
    ];
    for (body, code) in cases {
        let res = create_raw(&srv, body.clone()).await;
        let p = assert_problem(res, 422, code).await;
        assert!(p["detail"].is_string(), "{body} -> {p}");
    }
    let mut conn = srv.db().await;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM sessions").await, 0);
    // The listing's filter is checked the same way (400: a query, not a body).
    let res = srv
        .http
        .get(srv.url("/api/v1/sessions?claim_ref=CLM%001"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "invalid_query").await;
}

#[tokio::test]
async fn broken_json_is_400_malformed_json() {
    let srv = TestServer::start().await;
    let res = post_sessions(&srv)
        .bearer_auth(API_KEY)
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"claim_ref": "CLM-1",}"#)
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "malformed_json").await;
}

#[tokio::test]
async fn non_json_content_type_is_415() {
    let srv = TestServer::start().await;
    let body = r#"{"claim_ref": "CLM-1"}"#;
    let res = post_sessions(&srv)
        .bearer_auth(API_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_problem(res, 415, "unsupported_media_type").await;

    let res = post_sessions(&srv)
        .bearer_auth(API_KEY)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_problem(res, 415, "unsupported_media_type").await;
}

// ---- Join tokens --------------------------------------------------------------------------------

#[tokio::test]
async fn tokens_are_long_distinct_and_stored_only_as_hashes() {
    let srv = TestServer::start().await;
    let a = srv.session().await;
    let b = srv.session().await;

    let all = [
        &a.agent_token,
        &a.customer_token,
        &b.agent_token,
        &b.customer_token,
    ];
    for t in all {
        assert!(t.len() >= 22, "at least 128 bits of base64url: {t}");
        assert!(
            t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "base64url: {t}"
        );
    }
    let distinct: HashSet<&String> = all.into_iter().collect();
    assert_eq!(distinct.len(), 4, "every token is its own");

    let mut conn = srv.db().await;
    // Each session has one token row per role, and none of them is the token itself.
    let rows = sqlx::query("SELECT token_hash, role FROM join_tokens WHERE session_id = $1")
        .bind(&a.id)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let roles: HashSet<String> = rows.iter().map(|r| r.get("role")).collect();
    assert_eq!(
        roles,
        HashSet::from(["agent".to_owned(), "customer".to_owned()])
    );
    for r in &rows {
        let stored: Vec<u8> = r.get("token_hash");
        for t in all {
            assert_ne!(stored, t.as_bytes(), "a token is stored in the clear");
        }
    }

    // No column of any table holds a token, as text or inside a blob. (The same scan does find
    // what is stored: the session id.)
    let tables_sql = if on_postgres() {
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    };
    let tables: Vec<String> = sqlx::query(tables_sql)
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.iter().any(|t| t == "sessions"), "{tables:?}");
    assert!(tables.iter().any(|t| t == "join_tokens"), "{tables:?}");
    let columns_sql = if on_postgres() {
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = $1"
    } else {
        "SELECT name, type FROM pragma_table_info($1)"
    };
    let mut id_found = false;
    for table in &tables {
        let columns: Vec<(String, String)> = sqlx::query(columns_sql)
            .bind(table)
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (column, kind) in &columns {
            // The column's bytes hold the needle's bytes (a blob's too, not its hex rendering).
            let sql = match (on_postgres(), kind.as_str()) {
                (false, _) => format!(
                    "SELECT count(*) FROM \"{table}\" \
                     WHERE instr(CAST(\"{column}\" AS BLOB), CAST($1 AS BLOB)) > 0"
                ),
                (true, "bytea") => format!(
                    "SELECT count(*) FROM \"{table}\" \
                     WHERE position(convert_to($1, 'UTF8') IN \"{column}\") > 0"
                ),
                (true, _) => format!(
                    "SELECT count(*) FROM \"{table}\" WHERE strpos(CAST(\"{column}\" AS TEXT), $1) > 0"
                ),
            };
            for needle in all.into_iter().chain([&a.id]) {
                let hits: i64 = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(needle.as_str())
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
                    .get(0);
                if needle == &a.id {
                    id_found |= hits > 0;
                } else {
                    assert_eq!(hits, 0, "a join token is stored in {table}.{column}");
                }
            }
        }
    }
    assert!(id_found, "the scan finds the session id");
    drop(conn);

    // Nor do the database files hold one anywhere (free pages and the WAL included).
    for name in ["capturelink.db", "capturelink.db-wal"] {
        let path = srv.data_dir.join(name);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        for t in all {
            assert!(
                !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                "a join token is in {name}"
            );
        }
    }
}

// ---- Idempotency-Key ----------------------------------------------------------------------------

async fn create_with_key(srv: &TestServer, key: &str, body: &Value) -> Response {
    post_sessions(srv)
        .bearer_auth(API_KEY)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn idempotency_key_replays_the_same_session() {
    let srv = TestServer::start().await;
    let body = json!({"claim_ref": "CLM-7", "locale": "en", "vehicle": {"plate": "ABC-123"}});

    let first = create_with_key(&srv, "key-1", &body).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = create_with_key(&srv, "key-1", &body).await;
    assert_eq!(again.status(), 201);
    let again: Value = again.json().await.unwrap();

    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["agent_token"], first["agent_token"]);
    assert_eq!(again["customer_token"], first["customer_token"]);
    assert_eq!(again["agent_url"], first["agent_url"]);
    assert_eq!(again["created_at"], first["created_at"]);

    let mut conn = srv.db().await;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM sessions").await, 1);
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM join_tokens").await,
        2
    );

    // The replayed tokens are the live ones: both join the one session.
    let (_agent, w) = srv.join(again["agent_token"].as_str().unwrap()).await;
    assert_eq!(w["session"]["id"], first["id"]);
    let (_customer, w) = srv.join(again["customer_token"].as_str().unwrap()).await;
    assert_eq!(w["session"]["id"], first["id"]);
}

#[tokio::test]
async fn idempotency_key_with_another_body_is_409() {
    let srv = TestServer::start().await;
    let res = create_with_key(&srv, "key-1", &json!({"claim_ref": "CLM-1"})).await;
    assert_eq!(res.status(), 201);

    let res = create_with_key(&srv, "key-1", &json!({"claim_ref": "CLM-2"})).await;
    assert_problem(res, 409, "idempotency_key_reused").await;

    let mut conn = srv.db().await;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM sessions").await, 1);
}

#[tokio::test]
async fn different_idempotency_keys_create_different_sessions() {
    let srv = TestServer::start().await;
    let body = json!({"claim_ref": "CLM-1"});
    let a: Value = create_with_key(&srv, "key-a", &body)
        .await
        .json()
        .await
        .unwrap();
    let b: Value = create_with_key(&srv, "key-b", &body)
        .await
        .json()
        .await
        .unwrap();
    // And without a key, every create is a new session.
    let c = srv.create_session(body.clone()).await;
    let d = srv.create_session(body.clone()).await;

    let ids: HashSet<&str> = [&a, &b, &c, &d]
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4);
    assert_ne!(a["agent_token"], b["agent_token"]);

    let mut conn = srv.db().await;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM sessions").await, 4);
}

// ---- GET /sessions ------------------------------------------------------------------------------

async fn list(srv: &TestServer, query: &str) -> Value {
    let (status, body) = get_json(srv, &format!("/api/v1/sessions?{query}"), API_KEY).await;
    assert_eq!(status, 200, "list ?{query}: {body}");
    body
}

fn item_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items: {page}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn list_requires_an_api_key() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let res = srv
        .http
        .get(srv.url("/api/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;
    // A join token lists nothing either.
    let res = srv
        .http
        .get(srv.url("/api/v1/sessions"))
        .bearer_auth(&s.agent_token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;
}

#[tokio::test]
async fn list_filters_by_status_and_claim_ref() {
    let srv = TestServer::start().await;
    let created = srv.create_session(json!({"claim_ref": "CLM-A"})).await;
    let active = srv.session().await;
    let closed = srv.create_session(json!({"claim_ref": "CLM-A"})).await;
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();

    let (_agent, _) = srv.join(&active.agent_token).await;
    assert_eq!(close(&srv, &id(&closed), API_KEY).await.status(), 200);

    let all = list(&srv, "").await;
    assert_eq!(item_ids(&all).len(), 3);
    assert!(all["next_cursor"].is_null());

    let page = list(&srv, "status=created").await;
    assert_eq!(item_ids(&page), vec![id(&created)]);
    assert_eq!(page["items"][0]["status"], "created");
    assert_eq!(
        item_ids(&list(&srv, "status=active").await),
        vec![active.id.clone()]
    );
    assert_eq!(
        item_ids(&list(&srv, "status=closed").await),
        vec![id(&closed)]
    );
    assert!(item_ids(&list(&srv, "status=expired").await).is_empty());

    let page = list(&srv, "claim_ref=CLM-A").await;
    let ids: HashSet<String> = item_ids(&page).into_iter().collect();
    assert_eq!(ids, HashSet::from([id(&created), id(&closed)]));
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["claim_ref"] == "CLM-A")
    );
    assert!(item_ids(&list(&srv, "claim_ref=CLM-NONE").await).is_empty());

    // Both filters together.
    assert_eq!(
        item_ids(&list(&srv, "claim_ref=CLM-A&status=closed").await),
        vec![id(&closed)]
    );
    // A claim's sessions a page at a time, newest first: the cursor applies within the claim.
    let first = list(&srv, "claim_ref=CLM-A&limit=1").await;
    assert_eq!(item_ids(&first), vec![id(&closed)]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = list(&srv, &format!("claim_ref=CLM-A&limit=1&cursor={cursor}")).await;
    assert_eq!(item_ids(&second), vec![id(&created)]);
    let status_page = list(&srv, &format!("status=created&limit=1&cursor={cursor}")).await;
    assert_eq!(item_ids(&status_page), vec![id(&created)]);
    // The list never hands out join tokens.
    let text = all.to_string();
    assert!(!text.contains(&active.agent_token));
    assert!(!text.contains(&active.customer_token));
}

#[tokio::test]
async fn list_pages_through_every_session_newest_first() {
    let srv = TestServer::start().await;
    let mut made = Vec::new();
    for i in 0..7 {
        let s = srv
            .create_session(json!({"claim_ref": format!("CLM-{i}")}))
            .await;
        made.push(s["id"].as_str().unwrap().to_owned());
    }
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();

    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            None => "limit=3".to_owned(),
            Some(c) => format!("limit=3&cursor={c}"),
        };
        let page = list(&srv, &query).await;
        let ids = item_ids(&page);
        assert!(ids.len() <= 3, "limit is honoured: {page}");
        pages.push(ids.len());
        seen.extend(ids);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                break;
            }
        }
        assert!(pages.len() <= 7, "pagination does not end");
    }
    assert_eq!(pages, vec![3, 3, 1]);
    assert_eq!(seen, newest_first, "all of them, once each, newest first");

    // A page that holds everything has no next cursor.
    let page = list(&srv, "limit=7").await;
    assert_eq!(item_ids(&page), newest_first);
    assert!(page["next_cursor"].is_null());

    // Filters and pagination combine.
    let page = list(&srv, "limit=1&claim_ref=CLM-3").await;
    assert_eq!(item_ids(&page), vec![made[3].clone()]);
    assert!(page["next_cursor"].is_null());
}

#[tokio::test]
async fn list_refuses_bad_status_and_cursor() {
    let srv = TestServer::start().await;
    srv.session().await;
    let get = |q: &'static str| {
        srv.http
            .get(srv.url(&format!("/api/v1/sessions?{q}")))
            .bearer_auth(API_KEY)
            .send()
    };
    assert_problem(get("status=open").await.unwrap(), 400, "invalid_query").await;
    assert_problem(
        get("cursor=!!not-a-cursor!!").await.unwrap(),
        400,
        "invalid_cursor",
    )
    .await;
    // Valid base64url, but not a cursor this service gave out ("hello").
    assert_problem(get("cursor=aGVsbG8").await.unwrap(), 400, "invalid_cursor").await;
}

// ---- GET /sessions/{id} -------------------------------------------------------------------------

#[tokio::test]
async fn get_shows_presence_and_status_as_peers_come_and_go() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let path = format!("/api/v1/sessions/{}", s.id);

    let (status, got) = get_json(&srv, &path, API_KEY).await;
    assert_eq!(status, 200);
    assert_eq!(got["presence"], json!({"agent": false, "customer": false}));
    assert_eq!(got["status"], "created");
    assert_eq!(slots(&got), default_slots());
    assert_eq!(got["capture_count"], 0);
    // The claims system gets the links again.
    assert_eq!(got["agent_token"], s.agent_token.as_str());
    assert_eq!(got["customer_token"], s.customer_token.as_str());

    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (_, got) = get_json(&srv, &path, API_KEY).await;
    assert_eq!(got["presence"], json!({"agent": true, "customer": false}));
    assert_eq!(got["status"], "active", "the first join starts the session");
    rfc3339(&got["started_at"]);

    let (mut customer, _) = srv.join(&s.customer_token).await;
    agent.expect("peer.joined").await;
    let (_, got) = get_json(&srv, &path, API_KEY).await;
    assert_eq!(got["presence"], json!({"agent": true, "customer": true}));

    agent.ws.close(None).await.unwrap();
    poll_session(&srv, &s.id, "the agent's leave", |v| {
        v["presence"] == json!({"agent": false, "customer": true})
    })
    .await;
    customer.ws.close(None).await.unwrap();
    poll_session(&srv, &s.id, "the customer's leave", |v| {
        v["presence"] == json!({"agent": false, "customer": false})
    })
    .await;

    let (_, got) = get_json(&srv, &path, API_KEY).await;
    assert_eq!(
        got["status"], "active",
        "leaving does not close the session"
    );
}

#[tokio::test]
async fn get_unknown_session_is_404() {
    let srv = TestServer::start().await;
    let res = srv
        .http
        .get(srv.url("/api/v1/sessions/ses_0000000000000000000000000000dead"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "not_found").await;
}

#[tokio::test]
async fn get_requires_a_credential() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let url = srv.url(&format!("/api/v1/sessions/{}", s.id));
    let res = srv.http.get(&url).send().await.unwrap();
    assert_problem(res, 401, "unauthorized").await;
    let res = srv
        .http
        .get(&url)
        .bearer_auth("no-such-token")
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_participant_sees_its_own_session_without_tokens() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let other = srv.session().await;
    let path = format!("/api/v1/sessions/{}", s.id);

    for token in [&s.customer_token, &s.agent_token] {
        let (status, got) = get_json(&srv, &path, token).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["id"], s.id.as_str());
        assert_eq!(got["status"], "created");
        assert_eq!(slots(&got), default_slots());
        let obj = got.as_object().unwrap();
        let leaked: Vec<&String> = obj
            .keys()
            .filter(|k| k.ends_with("_token") || k.ends_with("_url"))
            .collect();
        assert!(leaked.is_empty(), "fields with tokens: {leaked:?}");
        let text = got.to_string();
        assert!(!text.contains(&s.agent_token), "the agent token leaks");
        assert!(
            !text.contains(&s.customer_token),
            "the customer token leaks"
        );
    }

    // Another session's token does not even learn that this session exists.
    for token in [&other.agent_token, &other.customer_token] {
        let res = srv
            .http
            .get(srv.url(&path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_problem(res, 404, "not_found").await;
    }
}

// ---- POST /sessions/{id}/close ------------------------------------------------------------------

#[tokio::test]
async fn close_with_api_key_ends_both_connections_and_kills_the_tokens() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (mut customer, _) = srv.join(&s.customer_token).await;
    agent.expect("peer.joined").await;

    let res = close(&srv, &s.id, API_KEY).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], s.id.as_str());
    assert_eq!(body["status"], "closed");
    rfc3339(&body["closed_at"]);

    for c in [&mut agent, &mut customer] {
        c.expect("session.closed").await;
        let (code, _reason) = c.expect_close().await;
        assert_eq!(code, 4009);
    }

    // The tokens died with the session: no more joins, no more REST.
    for token in [&s.agent_token, &s.customer_token] {
        assert_eq!(
            srv.refused_status(&srv.ws_url(token, None), None).await,
            410
        );
    }
    let res = srv
        .http
        .get(srv.url(&format!("/api/v1/sessions/{}", s.id)))
        .bearer_auth(&s.agent_token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 410, "session_closed").await;
    let res = close(&srv, &s.id, &s.agent_token).await;
    assert_problem(res, 410, "session_closed").await;

    // The claims system still sees it, closed and empty.
    poll_session(&srv, &s.id, "both leaves", |v| {
        v["presence"] == json!({"agent": false, "customer": false})
    })
    .await;
    let (_, got) = get_json(&srv, &format!("/api/v1/sessions/{}", s.id), API_KEY).await;
    assert_eq!(got["status"], "closed");
    assert_eq!(
        item_ids(&list(&srv, "status=closed").await),
        vec![s.id.clone()]
    );
}

#[tokio::test]
async fn the_agent_token_may_close_its_session() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut customer, _) = srv.join(&s.customer_token).await;

    let res = close(&srv, &s.id, &s.agent_token).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "closed");

    customer.expect("session.closed").await;
    assert_eq!(customer.expect_close().await.0, 4009);
    assert_eq!(
        srv.refused_status(&srv.ws_url(&s.customer_token, None), None)
            .await,
        410
    );
    let (_, got) = get_json(&srv, &format!("/api/v1/sessions/{}", s.id), API_KEY).await;
    assert_eq!(got["status"], "closed");
}

#[tokio::test]
async fn the_customer_token_may_not_close() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;

    let res = close(&srv, &s.id, &s.customer_token).await;
    assert_problem(res, 403, "forbidden").await;

    // Nothing happened: the session is open and the agent is still connected.
    let (_, got) = get_json(&srv, &format!("/api/v1/sessions/{}", s.id), API_KEY).await;
    assert_eq!(got["status"], "active");
    assert_eq!(got["presence"]["agent"], true);
    agent.expect_silence(Duration::from_millis(200)).await;
    let (_customer, w) = srv.join(&s.customer_token).await;
    assert_eq!(w["role"], "customer");
}

#[tokio::test]
async fn closing_needs_a_credential_of_that_session() {
    let srv = TestServer::start().await;
    let s = srv.session().await;
    let other = srv.session().await;

    let res = srv
        .http
        .post(srv.url(&format!("/api/v1/sessions/{}/close", s.id)))
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;
    // Another session's agent cannot close this one.
    let res = close(&srv, &s.id, &other.agent_token).await;
    assert_problem(res, 404, "not_found").await;
    let res = close(&srv, "ses_0000000000000000000000000000dead", API_KEY).await;
    assert_problem(res, 404, "not_found").await;

    let (_, got) = get_json(&srv, &format!("/api/v1/sessions/{}", s.id), API_KEY).await;
    assert_eq!(got["status"], "created");
}
