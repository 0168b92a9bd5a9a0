//! What was acknowledged survives `kill -9`: the binary runs as a child process, is killed without
//! warning while uploads are in flight, and is started again on the same data dir.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::*;

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) struct Proc {
    child: Child,
    pub(crate) base: String,
}

impl Proc {
    pub(crate) async fn start(dir: &std::path::Path, port: u16) -> Proc {
        Self::start_with_args(dir, port, &[]).await
    }

    /// [`Proc::start`] with more flags for `serve`.
    pub(crate) async fn start_with_args(dir: &std::path::Path, port: u16, extra: &[&str]) -> Proc {
        let mut command = Command::new(env!("CARGO_BIN_EXE_capturelink"));
        // On the suite's PostgreSQL pass, the dir's database is on the test server.
        if let Some(url) = settings(dir).database_url {
            ensure_database(&url).await;
            command.env("CAPTURELINK_DATABASE_URL", url);
        }
        let child = command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--api-key",
                API_KEY,
            ])
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("binary starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Proc { child, base }
    }

    pub(crate) fn kill9(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 640x480 JPEG whose pixels depend on `seed`, so every upload has its own bytes.
pub(crate) fn jpeg(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        let v = (x * 7 + y * 13 + seed * 31) % 256;
        image::Rgb([v as u8, ((x ^ y) % 256) as u8, (seed % 256) as u8])
    });
    // 75: the quality `image` encodes with by default.
    encode_jpeg(&img, 75)
}

async fn upload(base: &str, session: &str, bytes: Vec<u8>) -> reqwest::Result<reqwest::Response> {
    let meta = json!({"area": "hood", "angle": "close_up", "source": "agent_frame"});
    let form = reqwest::multipart::Form::new()
        .part("meta", reqwest::multipart::Part::text(meta.to_string()))
        .part(
            "image",
            reqwest::multipart::Part::bytes(bytes)
                .file_name("shot.jpg")
                .mime_str("image/jpeg")
                .unwrap(),
        );
    reqwest::Client::new()
        .post(format!("{base}/api/v1/sessions/{session}/captures"))
        .bearer_auth(API_KEY)
        .multipart(form)
        .send()
        .await
}

#[tokio::test]
async fn acknowledged_captures_and_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut proc = Proc::start(dir.path(), port).await;
    let http = reqwest::Client::new();
    let s: Value = http
        .post(format!("{}/api/v1/sessions", proc.base))
        .bearer_auth(API_KEY)
        .json(&json!({"claim_ref": "CLM-KILL"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = s["id"].as_str().unwrap().to_owned();
    let agent_token = s["agent_token"].as_str().unwrap().to_owned();

    // An acknowledged chat: durable before the ack.
    let url = format!("ws://127.0.0.1:{port}/ws?token={agent_token}");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut agent = Client { ws };
    agent.expect("welcome").await;
    agent
        .send(json!({"type":"chat","id":"c1","text":"before the crash"}))
        .await;
    agent.expect("ack").await;

    // Uploads in flight: keep sending until 6 are acknowledged, then kill the server mid-stream.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut uploaders = Vec::new();
    for worker in 0..4u32 {
        let (base, session, tx) = (proc.base.clone(), session.clone(), tx.clone());
        uploaders.push(tokio::spawn(async move {
            for i in 0..50u32 {
                let bytes = jpeg(worker * 1000 + i);
                let sha = hex::encode(Sha256::digest(&bytes));
                match upload(&base, &session, bytes).await {
                    Ok(r) if r.status() == 201 => {
                        let body: Value = match r.json().await {
                            Ok(b) => b,
                            Err(_) => return,
                        };
                        let _ = tx.send((body["id"].as_str().unwrap().to_owned(), sha));
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(tx);
    let mut acked = Vec::new();
    while acked.len() < 6 {
        acked.push(rx.recv().await.expect("uploads are acknowledged"));
    }
    proc.kill9();
    for u in uploaders {
        let _ = u.await;
    }
    while let Ok(a) = rx.try_recv() {
        acked.push(a);
    }

    let proc = Proc::start(dir.path(), port).await;
    for (id, sha) in &acked {
        let meta: Value = http
            .get(format!("{}/api/v1/captures/{id}", proc.base))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(meta["sha256"], sha.as_str(), "capture {id} after the crash");
        let bytes = http
            .get(format!("{}/api/v1/captures/{id}/image", proc.base))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            *sha,
            "image bytes of {id}"
        );
    }

    // Every capture in the list has its file, no id twice, and no file is left without a row.
    let list: Value = http
        .get(format!("{}/api/v1/sessions/{session}/captures", proc.base))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = list["items"].as_array().unwrap();
    assert!(items.len() >= acked.len());
    let mut ids: Vec<&str> = items.iter().map(|c| c["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), items.len());
    let stored: std::collections::HashSet<String> = items
        .iter()
        .map(|c| c["sha256"].as_str().unwrap().to_owned())
        .collect();
    let mut files = 0;
    for fan in std::fs::read_dir(dir.path().join("media/originals")).unwrap() {
        for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            assert!(
                stored.contains(&stem),
                "orphan file {} survived the restart",
                path.display()
            );
            files += 1;
        }
    }
    assert_eq!(files, stored.len());
    assert_eq!(
        std::fs::read_dir(dir.path().join("media/tmp"))
            .unwrap()
            .count(),
        0
    );

    // The acknowledged chat is in the customer's log.
    let customer_token = s["customer_token"].as_str().unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws?token={customer_token}&last_seq=0");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut customer = Client { ws };
    customer.expect("welcome").await;
    let mut saw_chat = false;
    while let Some(m) = customer.try_recv(Duration::from_millis(500)).await {
        if m["type"] == "chat" && m["text"] == "before the crash" {
            saw_chat = true;
        }
    }
    assert!(
        saw_chat,
        "the acknowledged chat was replayed after the crash"
    );
}
