//! The PostgreSQL store (`--database-url postgres://…`), against the throwaway server that
//! scripts/test starts with scripts/pg-server (`CAPTURELINK_TEST_PG_SERVER`). Without one these
//! tests fail, unless `CAPTURELINK_SKIP_PG=1` skips them. scripts/test also runs the behaviour
//! suite a second time with every test server on PostgreSQL (`CAPTURELINK_TEST_STORE=postgres`).

use std::process::Output;

use image::{Rgb, RgbImage};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, Row};

use crate::support::*;

/// A server on a fresh PostgreSQL database (None when the PostgreSQL tests are skipped).
async fn start_on_postgres() -> Option<TestServer> {
    postgres_admin_url()?;
    Some(TestServer::start_with(|s| s.database_url = postgres_url(&s.data_dir)).await)
}

fn database_url(srv: &TestServer) -> String {
    srv.state()
        .settings
        .database_url
        .clone()
        .expect("on PostgreSQL")
}

async fn pg(srv: &TestServer) -> PgConnection {
    PgConnection::connect(&database_url(srv)).await.unwrap()
}

async fn cli(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_capturelink"))
        .args(args)
        .env_remove("CAPTURELINK_DATA_DIR")
        .env_remove("CAPTURELINK_DATABASE_URL")
        .output()
        .await
        .expect("the binary runs")
}

fn gradient_jpeg() -> Vec<u8> {
    let img = RgbImage::from_fn(640, 480, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
    encode_jpeg(&img, 85)
}

#[tokio::test]
async fn a_call_runs_on_postgres_and_resumes_after_a_restart() {
    let Some(srv) = start_on_postgres().await else {
        return;
    };
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let (mut customer, _) = srv.join(&s.customer_token).await;
    agent.expect("peer.joined").await;

    // A durable message one way, a live-only signal the other way.
    agent
        .send(json!({"type": "guide", "id": "g1", "hint": "closer"}))
        .await;
    let guide = customer.expect("guide").await;
    assert_eq!(guide["hint"], "closer");
    assert_eq!(agent.expect("ack").await["id"], "g1");
    customer
        .send(json!({"type": "signal", "data": {"sdp": "offer"}}))
        .await;
    let signal = agent.expect("signal").await;
    assert_eq!(signal["data"]["sdp"], "offer");

    // A capture through the REST API reaches both participants, and is in PostgreSQL.
    let jpeg = gradient_jpeg();
    let meta = json!({"area": "rear_bumper", "angle": "close_up", "source": "agent_frame"});
    let res = srv
        .upload(
            &s.id,
            API_KEY,
            capture_form(Some((jpeg.clone(), "image/jpeg")), &meta),
            None,
        )
        .await;
    assert_eq!(res.status(), 201);
    let capture: Value = res.json().await.unwrap();
    let pushed = customer.expect("capture.created").await;
    assert_eq!(pushed["capture"]["id"], capture["id"]);
    agent.expect("capture.created").await;

    let mut conn = pg(&srv).await;
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM captures WHERE session_id = $1")
        .bind(&s.id)
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    let kinds: Vec<String> = sqlx::query(
        "SELECT kind FROM events WHERE session_id = $1 AND role = 'customer' AND kind <> 'signal' \
         ORDER BY seq",
    )
    .bind(&s.id)
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert!(
        kinds.ends_with(&["guide".to_owned(), "capture.created".to_owned()]),
        "the customer's log: {kinds:?}"
    );
    conn.close().await.unwrap();
    drop((agent, customer));

    // After a restart the state is read back from PostgreSQL: the customer resumes from the
    // start and is replayed the guide and the capture, and the capture is listed and served.
    let srv = srv
        .restart_with(|s| s.database_url = postgres_url(&s.data_dir))
        .await;
    let (mut customer, w) = srv.join_at(&s.customer_token, Some(0)).await;
    assert_eq!(w["resumed"], true, "{w}");
    let replay = customer.collect_until("capture.created").await;
    assert!(
        replay
            .iter()
            .any(|m| m["type"] == "guide" && m["hint"] == "closer"),
        "replayed: {replay:?}"
    );
    let list: Value = srv
        .http
        .get(srv.url(&format!("/api/v1/sessions/{}/captures", s.id)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    let original = srv
        .http
        .get(srv.url(&format!(
            "/api/v1/captures/{}/image",
            capture["id"].as_str().unwrap()
        )))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(original.status(), 200);
    assert_eq!(original.bytes().await.unwrap().as_ref(), jpeg.as_slice());
}

#[tokio::test]
async fn a_second_node_on_the_same_database_is_refused_until_the_first_stops() {
    let Some(first) = start_on_postgres().await else {
        return;
    };
    let url = database_url(&first);
    let other_dir = tempfile::tempdir().unwrap();
    let mut s = settings(other_dir.path());
    s.database_url = Some(url.clone());
    let err = match capturelink::app::start(s.clone()).await {
        Ok(_) => panic!("a second node started on the same database"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("another CaptureLink node"), "{err}");

    // The first node still serves, and once it has stopped the second one starts.
    first.session().await;
    first.shutdown().await;
    let second = capturelink::app::start(s)
        .await
        .expect("starts once the first is gone");
    second.shutdown().await;
}

#[tokio::test]
async fn migrate_and_api_keys_work_on_postgres() {
    if postgres_admin_url().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let url = postgres_url(tmp.path()).unwrap();
    ensure_database(&url).await;

    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout.clone()).unwrap()
    };
    let first = ok(&cli(&["migrate", "--database-url", &url]).await);
    assert!(first.contains("database postgres"), "{first}");
    assert!(first.contains("0001 schema (applied now)"), "{first}");
    let again = ok(&cli(&["migrate", "--database-url", &url]).await);
    assert!(again.contains("0001 schema (already applied)"), "{again}");

    // A key created in the database is taken by a server on it.
    let key = ok(&cli(&[
        "api-key",
        "create",
        "--name",
        "claims-pg",
        "--database-url",
        &url,
    ])
    .await);
    let key = key.trim().to_owned();
    let list = ok(&cli(&["api-key", "list", "--database-url", &url]).await);
    assert!(list.contains("claims-pg"), "{list}");
    let data = tempfile::tempdir().unwrap();
    let srv = TestServer::start_at(data.path(), |s| {
        s.database_url = Some(url.clone());
        s.api_keys = vec!["another-key".into()];
    })
    .await;
    let res = srv
        .http
        .post(srv.url("/api/v1/sessions"))
        .bearer_auth(&key)
        .json(&json!({"claim_ref": "CLM-PG"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    srv.shutdown().await;

    // Backups copy the SQLite file: they refuse a PostgreSQL database and say what to use.
    let archive = data.path().join("backup.zip");
    let out = cli(&[
        "backup",
        archive.to_str().unwrap(),
        "--data-dir",
        data.path().to_str().unwrap(),
        "--database-url",
        &url,
    ])
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pg_dump"), "{err}");
    assert!(!archive.exists());
}

/// Runs `sql` on the test server's admin database.
async fn admin(sql: &str) {
    let mut conn = PgConnection::connect(&postgres_admin_url().unwrap())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

async fn readyz(srv: &TestServer) -> (u16, Value) {
    let res = srv.http.get(srv.url("/readyz")).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn a_database_that_refuses_connections_is_503_until_it_is_back() {
    let Some(srv) = start_on_postgres().await else {
        return;
    };
    let url = database_url(&srv);
    let name = url.rsplit('/').next().unwrap().to_owned();
    assert_eq!(readyz(&srv).await.0, 200);

    // The database stops taking connections, and the node's are cut (as a failover would).
    admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    let (status, body) = readyz(&srv).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["database"]["ok"], false, "{body}");
    let res = srv
        .http
        .post(srv.url("/api/v1/sessions"))
        .bearer_auth(API_KEY)
        .json(&json!({"claim_ref": "CLM-DOWN"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "unavailable", "{problem}");

    // Back: ready again (the node's lock taken again), and writes go through.
    admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    let (status, body) = readyz(&srv).await;
    assert_eq!(status, 200, "{body}");
    srv.session().await;
    let mut conn = pg(&srv).await;
    let locks: i64 = sqlx::query(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get(0);
    assert_eq!(locks, 1, "the node's lock is held again");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_at_start_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    // Nothing listens on port 1 of the loopback.
    s.database_url = Some("postgres://capturelink@127.0.0.1:1/capturelink".into());
    let err = match capturelink::app::start(s).await {
        Ok(_) => panic!("started without its database"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("opening the database"), "{err}");
    // The connection's own error, not the pool's "timed out" after waiting for one.
    assert!(
        err.contains("Connection refused"),
        "the cause is named: {err}"
    );
    assert!(!err.contains("timed out"), "{err}");
}
