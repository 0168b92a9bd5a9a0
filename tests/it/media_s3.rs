//! The S3 image store against a real S3 API: moto's server (from PyPI), started per test on a free
//! port of 127.0.0.1. scripts/test installs it and sets `CAPTURELINK_TEST_MOTO` to its
//! `moto_server`; without it these tests fail, unless `CAPTURELINK_SKIP_S3=1` skips them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::*;

pub(crate) const BUCKET: &str = "claims-media";
const PREFIX: &str = "node-a";

/// moto's S3 API, killed when dropped.
pub(crate) struct Moto {
    child: Child,
    pub(crate) endpoint: String,
    http: reqwest::Client,
}

/// `moto_server`, or None (after a loud line) when the S3 tests are to be skipped.
pub(crate) fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CAPTURELINK_TEST_MOTO") {
        return Some(PathBuf::from(path));
    }
    if std::env::var("CAPTURELINK_SKIP_S3").as_deref() == Ok("1") {
        // Straight to stderr, past the test harness's capture, so it shows in every run.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"\n*** SKIPPED: an S3 image store test (CAPTURELINK_SKIP_S3=1) ***\n",
        );
        return None;
    }
    panic!(
        "the S3 image store tests need moto's S3 server: run ./scripts/test (it installs \
         moto[server] into target/tools/venv and sets CAPTURELINK_TEST_MOTO), or set \
         CAPTURELINK_TEST_MOTO=target/tools/venv/bin/moto_server yourself; \
         CAPTURELINK_SKIP_S3=1 skips them"
    );
}

impl Moto {
    /// Starts moto on a free port and creates the bucket. The port is free when picked, but
    /// another test's server may take it before moto binds it (then moto exits, and what answers
    /// there is not S3): that start is dropped and another port tried.
    pub(crate) async fn start(bin: &std::path::Path) -> Self {
        for _ in 0..5 {
            if let Some(moto) = Self::try_start(bin).await {
                return moto;
            }
        }
        panic!("moto did not start with its bucket on any of 5 ports");
    }

    async fn try_start(bin: &std::path::Path) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while moto.http.get(&moto.endpoint).send().await.is_err() {
            assert!(Instant::now() < deadline, "moto did not start within 30 s");
            if moto.child.try_wait().ok().flatten().is_some() {
                return None; // exited: the port was taken
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let res = moto
            .http
            .put(format!("{}/{BUCKET}", moto.endpoint))
            .send()
            .await
            .unwrap();
        if !res.status().is_success() || moto.child.try_wait().ok().flatten().is_some() {
            moto.stop();
            return None; // something else answers on this port
        }
        Some(moto)
    }

    /// A client of the bucket of our own, signing like any S3 client.
    fn bucket(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap()
    }

    /// The bucket's keys, sorted.
    async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .bucket()
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    async fn object(&self, key: &str) -> Vec<u8> {
        let got = self.bucket().get(&ObjectPath::from(key)).await;
        got.unwrap_or_else(|e| panic!("GET {key}: {e}"))
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// The settings of a server whose images go to this bucket.
    fn tune(&self) -> impl Fn(&mut capturelink::config::Settings) + Clone + use<> {
        let endpoint = self.endpoint.clone();
        move |s| {
            s.media_url = Some(format!("s3://{BUCKET}/{PREFIX}"));
            s.s3_endpoint = Some(endpoint.clone());
            s.s3_access_key_id = Some("test".into());
            s.s3_secret_access_key = Some("test".into());
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server on a fresh data dir with its images in a fresh moto bucket; None when skipped.
async fn s3_server() -> Option<(Moto, TestServer)> {
    let moto = Moto::start(&moto_server()?).await;
    let srv = TestServer::start_with(moto.tune()).await;
    Some((moto, srv))
}

/// A 320x240 JPEG of a colour ramp; `seed` makes distinct content.
fn photo(seed: u8) -> Vec<u8> {
    let img = RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([(x as u8).wrapping_add(seed), y as u8, seed])
    });
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(img.as_raw(), 320, 240, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn keys_of(sha: &str) -> Vec<String> {
    let fan = &sha[..2];
    vec![
        format!("{PREFIX}/originals/{fan}/{sha}.jpg"),
        format!("{PREFIX}/thumbnails/{fan}/{sha}.jpg"),
    ]
}

async fn upload(srv: &TestServer, session_id: &str, bytes: &[u8]) -> reqwest::Response {
    let meta = json!({"area": "rear_bumper", "angle": "close_up", "source": "agent_frame"});
    let form = capture_form(Some((bytes.to_vec(), "image/jpeg")), &meta);
    srv.upload(session_id, API_KEY, form, None).await
}

async fn get(srv: &TestServer, path: &str) -> reqwest::Response {
    srv.http
        .get(srv.url(path))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
}

async fn close(srv: &TestServer, session_id: &str) {
    let url = srv.url(&format!("/api/v1/sessions/{session_id}/close"));
    let res = srv.http.post(url).bearer_auth(API_KEY).send().await;
    assert_eq!(res.unwrap().status(), 200, "close {session_id}");
}

async fn capture_count(srv: &TestServer) -> i64 {
    let mut conn = srv.db().await;
    sqlx::query_scalar("SELECT COUNT(*) FROM captures")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_capture_goes_to_the_bucket_and_is_served_back_from_it() {
    let Some((moto, srv)) = s3_server().await else {
        return;
    };
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;

    let bytes = photo(1);
    let sha = hex::encode(Sha256::digest(&bytes));
    let res = upload(&srv, &s.id, &bytes).await;
    assert_eq!(res.status(), 201);
    let capture: Value = res.json().await.unwrap();
    let id = capture["id"].as_str().unwrap();

    let created = agent.expect("capture.created").await;
    assert_eq!(created["capture"]["id"], id, "{created}");

    // In the bucket, under the prefix; nothing in the data dir.
    assert_eq!(moto.keys().await, keys_of(&sha));
    assert_eq!(moto.object(&keys_of(&sha)[0]).await, bytes);
    assert!(!srv.data_dir.join("media").join("originals").exists());

    let res = get(&srv, &format!("/api/v1/captures/{id}/image")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/jpeg");
    assert_eq!(res.headers()["content-length"], bytes.len().to_string());
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{sha}\""));
    assert_eq!(res.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let res = get(&srv, &format!("/api/v1/captures/{id}/thumbnail")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/jpeg");
    let thumb = res.bytes().await.unwrap();
    assert_eq!(thumb.as_ref(), moto.object(&keys_of(&sha)[1]).await);
    assert!(thumb.starts_with(&[0xFF, 0xD8]));

    let res = srv
        .http
        .get(srv.url(&format!("/api/v1/captures/{id}/image")))
        .bearer_auth(API_KEY)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);

    // The export reads the originals from the bucket too.
    let res = get(&srv, &format!("/api/v1/sessions/{}/export", s.id)).await;
    assert_eq!(res.status(), 200);
    let zip = res.bytes().await.unwrap().to_vec();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let mut entry = archive.by_name(&format!("images/{id}.jpg")).unwrap();
    let mut exported = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut exported).unwrap();
    assert_eq!(exported, bytes);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_refused_upload_leaves_no_object() {
    let Some((moto, srv)) = s3_server().await else {
        return;
    };
    let s = srv.session().await;
    let good = photo(2);
    // Refused after its original was stored (while the image was decoded): the object goes.
    let truncated = &good[..good.len() / 2];
    let res = upload(&srv, &s.id, truncated).await;
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "corrupt_image", "{body}");
    assert_eq!(moto.keys().await, Vec::<String>::new());
    assert_eq!(capture_count(&srv).await, 0);

    // The whole image is taken: the refusal was for its bytes. Sent again, it is stored once.
    let sha = hex::encode(Sha256::digest(&good));
    assert_eq!(upload(&srv, &s.id, &good).await.status(), 201);
    assert_eq!(upload(&srv, &s.id, &good).await.status(), 201);
    assert_eq!(moto.keys().await, keys_of(&sha));
    assert_eq!(capture_count(&srv).await, 2);
    srv.shutdown().await;
}

#[tokio::test]
async fn retention_removes_the_objects_and_the_sweep_spares_young_ones() {
    let Some((moto, srv)) = s3_server().await else {
        return;
    };
    let s = srv.session().await;
    let bytes = photo(3);
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(upload(&srv, &s.id, &bytes).await.status(), 201);
    close(&srv, &s.id).await;
    // An object no row names, as another node sharing the bucket leaves between its PUT and its
    // row's commit: the start-up sweep leaves it, as it is younger than the grace period.
    let young = format!("{PREFIX}/originals/ff/{}.jpg", "f".repeat(64));
    moto.bucket()
        .put(
            &ObjectPath::from(young.as_str()),
            "in flight elsewhere".into(),
        )
        .await
        .unwrap();

    let mut conn = srv.db().await;
    sqlx::query(
        "UPDATE sessions SET closed_at = closed_at - CAST(31 * 86400 AS BIGINT) * 1000 WHERE id = $1",
    )
        .bind(&s.id)
        .execute(&mut conn)
        .await
        .unwrap();
    let tune = moto.tune();
    let srv = srv
        .restart_with(move |st| {
            tune(st);
            st.retention_days = Some(30);
        })
        .await;

    let deadline = Instant::now() + WAIT;
    while get(&srv, &format!("/api/v1/sessions/{}/captures", s.id))
        .await
        .status()
        != 410
    {
        assert!(Instant::now() < deadline, "not purged in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The objects go right after the purge's commit, which the 410 shows: wait for them.
    let mut keys = moto.keys().await;
    while keys.iter().any(|k| keys_of(&sha).contains(k)) {
        assert!(
            Instant::now() < deadline,
            "objects not removed in time: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        keys = moto.keys().await;
    }
    assert_eq!(keys, vec![young]);
    srv.shutdown().await;
}

#[tokio::test]
async fn with_the_s3_api_down_an_upload_is_refused_with_503_and_nothing_stored() {
    let Some((mut moto, srv)) = s3_server().await else {
        return;
    };
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let first = photo(4);
    assert_eq!(upload(&srv, &s.id, &first).await.status(), 201);
    agent.expect("capture.created").await;
    let id = capture_count(&srv).await;
    assert_eq!(id, 1);

    moto.stop();
    let started = Instant::now();
    let res = upload(&srv, &s.id, &photo(5)).await;
    let took = started.elapsed();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "unavailable", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("image store"),
        "{body}"
    );
    assert!(took < Duration::from_secs(15), "refused after {took:?}");
    // Nothing half-stored: no row, no event.
    assert_eq!(capture_count(&srv).await, 1);
    agent.expect_silence(Duration::from_millis(300)).await;
    let list: Value = get(&srv, &format!("/api/v1/sessions/{}/captures", s.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // Reading an image answers 503 too, rather than a broken body.
    let cid = list["items"][0]["id"].as_str().unwrap();
    let res = get(&srv, &format!("/api/v1/captures/{cid}/image")).await;
    assert_eq!(res.status(), 503);
    srv.shutdown().await;
}
