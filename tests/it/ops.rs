//! The operator's commands (issue 5) against the real binary, beside a running server on the
//! same data dir: API keys in the database, backup during uploads and restore, migrate, and the
//! retention sweeper.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;

use image::{Rgb, RgbImage};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};

use crate::support::*;

/// Runs the `capturelink` binary with `args`.
async fn cli(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_capturelink"))
        .args(args)
        .env_remove("CAPTURELINK_DATA_DIR")
        .env_remove("CAPTURELINK_API_KEYS")
        .output()
        .await
        .expect("the binary runs")
}

/// Runs the binary and asserts it succeeded; returns its standard output.
async fn cli_ok(args: &[&str]) -> String {
    let out = cli(args).await;
    assert!(
        out.status.success(),
        "capturelink {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// A JPEG of random pixels (incompressible, so it takes a moment to decode and store).
fn noise_jpeg(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let img = RgbImage::from_fn(w, h, |_, _| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let b = s.to_le_bytes();
        Rgb([b[0], b[1], b[2]])
    });
    encode_jpeg(&img, 85)
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn meta() -> Value {
    json!({"area": "rear_bumper", "angle": "close_up", "source": "agent_frame"})
}

async fn upload_ok(srv: &TestServer, session_id: &str, bytes: &[u8]) -> Value {
    let form = capture_form(Some((bytes.to_vec(), "image/jpeg")), &meta());
    let res = srv.upload(session_id, API_KEY, form, None).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "upload: {body}");
    body
}

async fn create_session_with(srv: &TestServer, key: &str) -> reqwest::Response {
    srv.http
        .post(srv.url("/api/v1/sessions"))
        .bearer_auth(key)
        .json(&json!({"claim_ref": "CLM-OPS-1"}))
        .send()
        .await
        .unwrap()
}

async fn get(srv: &TestServer, path_or_url: &str) -> reqwest::Response {
    let url = if path_or_url.starts_with("http") {
        path_or_url.to_owned()
    } else {
        srv.url(path_or_url)
    };
    srv.http.get(url).bearer_auth(API_KEY).send().await.unwrap()
}

async fn db(data_dir: &Path) -> SqliteConnection {
    let opts = SqliteConnectOptions::new().filename(data_dir.join("capturelink.db"));
    SqliteConnection::connect_with(&opts).await.unwrap()
}

async fn count(conn: &mut sqlx::AnyConnection, sql: &str, session_id: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(session_id)
        .fetch_one(conn)
        .await
        .unwrap()
        .get(0)
}

// ---------------------------------------------------------------------------------------------
// API keys.

#[tokio::test]
async fn api_key_cli_round_trip_against_a_running_server() {
    let srv = TestServer::start().await;
    let dir = path_str(&srv.data_dir).to_owned();

    let out = cli_ok(&[
        "api-key",
        "create",
        "--name",
        "claims-a",
        "--data-dir",
        &dir,
    ])
    .await;
    let key = out.trim().to_owned();
    assert_eq!(out.lines().count(), 1, "only the key on stdout: {out:?}");
    assert!(key.starts_with("clk_"), "{key}");
    // 256 random bits, base64url without padding.
    assert!(key.len() >= 4 + 43, "{key}");

    // The running server takes it at once.
    let res = create_session_with(&srv, &key).await;
    assert_eq!(res.status(), 201);

    // Listed by id and name, never with the key; only its hash is in the database.
    let list = cli_ok(&["api-key", "list", "--data-dir", &dir]).await;
    assert!(!list.contains(&key), "the key is listed: {list}");
    assert!(
        !list.contains(&key[4..20]),
        "part of the key is listed: {list}"
    );
    let line = list
        .lines()
        .find(|l| l.contains("claims-a"))
        .unwrap_or_else(|| panic!("claims-a is not listed: {list}"));
    let id = line.split_whitespace().next().unwrap().to_owned();
    assert!(id.parse::<i64>().is_ok(), "{line}");
    assert!(line.trim_end().ends_with('-'), "not revoked yet: {line}");
    let mut conn = db(&srv.data_dir).await;
    let stored: Vec<u8> = sqlx::query("SELECT hash FROM api_keys WHERE id = ?")
        .bind(id.parse::<i64>().unwrap())
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(hex::encode(stored), sha_hex(key.as_bytes()));
    conn.close().await.unwrap();

    // Revoked in another process: the next request is refused.
    cli_ok(&["api-key", "revoke", &id, "--data-dir", &dir]).await;
    let res = create_session_with(&srv, &key).await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    // Reading with it is refused too; the key of the settings still works.
    let res = srv
        .http
        .get(srv.url("/api/v1/sessions"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(create_session_with(&srv, API_KEY).await.status(), 201);

    let list = cli_ok(&["api-key", "list", "--data-dir", &dir]).await;
    let line = list.lines().find(|l| l.contains("claims-a")).unwrap();
    assert!(!line.trim_end().ends_with('-'), "shown revoked: {line}");
    // Revoking again changes nothing; an unknown id is an error.
    cli_ok(&["api-key", "revoke", &id, "--data-dir", &dir]).await;
    assert!(
        !cli(&["api-key", "revoke", "9999", "--data-dir", &dir])
            .await
            .status
            .success()
    );
    srv.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Backup and restore.

#[tokio::test]
async fn a_backup_taken_during_uploads_restores_into_a_working_server() {
    let srv = TestServer::start().await;
    let sessions = [srv.session().await, srv.session().await];
    let images: Vec<Vec<u8>> = (0..16u64).map(|i| noise_jpeg(960, 720, 500 + i)).collect();
    let by_sha: HashMap<String, &Vec<u8>> = images.iter().map(|b| (sha_hex(b), b)).collect();

    // Four are stored before the backup starts: the backup must have them.
    let mut before = Vec::new();
    for (i, bytes) in images[..4].iter().enumerate() {
        let c = upload_ok(&srv, &sessions[i % 2].id, bytes).await;
        before.push(c["id"].as_str().unwrap().to_owned());
    }
    // Twelve more in flight; the backup starts once three of them are stored, so it runs while
    // the others are still being received, decoded and written.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let uploads: Vec<_> = images[4..]
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let url = srv.url(&format!("/api/v1/sessions/{}/captures", sessions[i % 2].id));
            let http = srv.http.clone();
            let form = capture_form(Some((bytes.clone(), "image/jpeg")), &meta());
            let done = done_tx.clone();
            tokio::spawn(async move {
                let res = http
                    .post(url)
                    .bearer_auth(API_KEY)
                    .multipart(form)
                    .send()
                    .await
                    .unwrap();
                let _ = done.send(());
                res.status()
            })
        })
        .collect();
    for _ in 0..3 {
        done_rx.recv().await.unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("backup.zip");
    cli_ok(&[
        "backup",
        path_str(&archive),
        "--data-dir",
        path_str(&srv.data_dir),
    ])
    .await;
    let in_flight_after_backup = 12 - 3 - done_rx.len();
    for u in uploads {
        assert_eq!(u.await.unwrap(), 201);
    }

    // The archive: a manifest naming the database and every file with its hash.
    let manifest: Value = {
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&archive).unwrap()).unwrap();
        let entry = zip.by_name("manifest.json").unwrap();
        serde_json::from_reader(entry).unwrap()
    };
    assert_eq!(manifest["format"], "capturelink.backup.v1");
    let names: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"capturelink.db"), "{names:?}");
    assert!(names.contains(&"secret"), "{names:?}");
    let backed_up = manifest["captures"].as_i64().unwrap();
    assert!((7..=16).contains(&backed_up), "{manifest}");
    eprintln!(
        "the backup holds {backed_up} of 16 captures; {in_flight_after_backup} uploads were \
         still in flight when it ended"
    );

    // Restore into a fresh dir; a second restore into it is refused without --force.
    let restored = work.path().join("restored");
    let restored_s = path_str(&restored).to_owned();
    cli_ok(&["restore", path_str(&archive), "--data-dir", &restored_s]).await;
    let again = cli(&["restore", path_str(&archive), "--data-dir", &restored_s]).await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    cli_ok(&[
        "restore",
        path_str(&archive),
        "--data-dir",
        &restored_s,
        "--force",
    ])
    .await;
    srv.shutdown().await;

    // The restored dir serves every capture of the snapshot, whole.
    let copy = TestServer::start_at(&restored, |_| {}).await;
    let mut listed = Vec::new();
    for s in &sessions {
        let res = get(&copy, &format!("/api/v1/sessions/{}/captures", s.id)).await;
        assert_eq!(res.status(), 200);
        let list: Value = res.json().await.unwrap();
        for c in list["items"].as_array().unwrap() {
            let sha = c["sha256"].as_str().unwrap().to_owned();
            let res = get(&copy, c["image_url"].as_str().unwrap()).await;
            assert_eq!(res.status(), 200, "image of {c}");
            let bytes = res.bytes().await.unwrap();
            assert_eq!(sha_hex(&bytes), sha, "restored image differs from its row");
            assert_eq!(by_sha.get(&sha).map(|b| b.as_slice()), Some(&bytes[..]));
            let res = get(&copy, c["thumbnail_url"].as_str().unwrap()).await;
            assert_eq!(res.status(), 200, "thumbnail of {c}");
            listed.push(c["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(listed.len() as i64, backed_up);
    for id in &before {
        assert!(
            listed.contains(id),
            "capture {id} stored before the backup is missing"
        );
    }
    // And it takes new work.
    let s = copy.session().await;
    upload_ok(&copy, &s.id, &images[0]).await;
    copy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Migrations.

#[tokio::test]
async fn migrate_creates_the_database_of_a_fresh_dir() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("fresh");
    let out = cli_ok(&["migrate", "--data-dir", path_str(&dir)]).await;
    assert!(dir.join("capturelink.db").is_file());
    for v in ["0001", "0002", "0003", "0004"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(v) && l.ends_with("(applied now)")),
            "{v} not applied: {out}"
        );
    }
    let again = cli_ok(&["migrate", "--data-dir", path_str(&dir)]).await;
    assert!(!again.contains("applied now"), "{again}");
    assert!(again.contains("0004"), "{again}");
    // The service starts on it.
    let srv = TestServer::start_at(&dir, |_| {}).await;
    srv.session().await;
    srv.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Retention.

#[tokio::test]
async fn retention_purges_an_old_closed_sessions_images_and_events() {
    let mut srv = TestServer::start().await;
    let old = srv
        .create_session(json!({"claim_ref": "CLM-OLD", "webhook_url": "http://127.0.0.1:9/hook"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let recent = srv.session().await.id;
    let shared = noise_jpeg(320, 240, 1);
    let only_old = noise_jpeg(320, 240, 2);
    let c_shared_old = upload_ok(&srv, &old, &shared).await;
    let c_only_old = upload_ok(&srv, &old, &only_old).await;
    let c_recent = upload_ok(&srv, &recent, &shared).await;
    for id in [&old, &recent] {
        let res = srv
            .http
            .post(srv.url(&format!("/api/v1/sessions/{id}/close")))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let media = capturelink::media::MediaStore::at(&srv.data_dir);
    let only_old_sha = sha_hex(&only_old);
    let shared_sha = sha_hex(&shared);
    assert!(media.original_path(&only_old_sha, "jpg").exists());

    // Closed 31 days ago, by the clock of its row.
    let mut conn = srv.db().await;
    sqlx::query("UPDATE sessions SET closed_at = closed_at - CAST(31 * 86400 AS BIGINT) * 1000 WHERE id = $1")
        .bind(&old)
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(
        count(
            &mut conn,
            "SELECT COUNT(*) FROM events WHERE session_id = $1",
            &old
        )
        .await
            > 0
    );
    assert!(
        count(
            &mut conn,
            "SELECT COUNT(*) FROM webhook_outbox WHERE session_id = $1",
            &old
        )
        .await
            > 0
    );

    // A start with a 30-day retention sweeps at once.
    srv = srv.restart_with(|s| s.retention_days = Some(30)).await;
    let captures_of_old = format!("/api/v1/sessions/{old}/captures");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let res = get(&srv, &captures_of_old).await;
        if res.status() == 410 {
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["code"], "session_purged");
            break;
        }
        assert_eq!(res.status(), 200);
        assert!(tokio::time::Instant::now() < deadline, "not purged in time");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The old session's files, captures, events and webhook rows are gone; its row stays. (The
    // files go right after the purge's commit, which the 410 above shows: wait for them.)
    let files = [
        media.original_path(&only_old_sha, "jpg"),
        media.thumbnail_path(&only_old_sha),
    ];
    while files.iter().any(|f| f.exists()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "files not removed in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for c in [&c_shared_old, &c_only_old] {
        let id = c["id"].as_str().unwrap();
        assert_eq!(
            get(&srv, &format!("/api/v1/captures/{id}")).await.status(),
            404
        );
    }
    for sql in [
        "SELECT COUNT(*) FROM events WHERE session_id = $1",
        "SELECT COUNT(*) FROM webhook_outbox WHERE session_id = $1",
        "SELECT COUNT(*) FROM captures WHERE session_id = $1",
    ] {
        assert_eq!(count(&mut conn, sql, &old).await, 0, "{sql}");
    }
    assert_eq!(
        count(
            &mut conn,
            "SELECT COUNT(*) FROM sessions WHERE id = $1 AND purged_at IS NOT NULL",
            &old
        )
        .await,
        1
    );
    let res = get(&srv, &format!("/api/v1/sessions/{old}")).await;
    assert_eq!(res.status(), 200);
    let row: Value = res.json().await.unwrap();
    assert_eq!(row["status"], "closed");
    let res = get(&srv, &format!("/api/v1/sessions/{old}/export")).await;
    assert_eq!(res.status(), 410);

    // The recently closed session keeps everything, including the picture both had.
    assert!(media.original_path(&shared_sha, "jpg").exists());
    assert!(
        count(
            &mut conn,
            "SELECT COUNT(*) FROM events WHERE session_id = $1",
            &recent
        )
        .await
            > 0
    );
    let id = c_recent["id"].as_str().unwrap();
    let res = get(&srv, &format!("/api/v1/captures/{id}/image")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(sha_hex(&res.bytes().await.unwrap()), shared_sha);
    conn.close().await.unwrap();
    srv.shutdown().await;
}
