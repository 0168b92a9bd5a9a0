//! HTTPS served by the binary (a self-signed certificate in the data dir, or one from files), seen
//! by clients that trust exactly that certificate; and the limits on slow clients.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capturelink::config::Settings;
use capturelink::tls::{Source, fingerprint};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

use crate::support::*;

fn self_signed(dir: &Path) -> Settings {
    let mut s = settings(dir);
    s.tls_self_signed = true;
    s
}

fn cert_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("cert.pem")
}

/// The SHA-256 fingerprint of the certificate the server presented for `path`.
async fn served_fingerprint(srv: &TestServer, path: &str) -> String {
    let res = srv.http.get(srv.url(path)).send().await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    let info = res
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    fingerprint(info.peer_certificate().expect("a peer certificate"))
}

/// Reads until the peer closes; returns how long that took, or panics after `limit`.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), stream.read(&mut buf)).await
        {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTPS

#[tokio::test]
async fn https_with_a_self_signed_certificate_serves_the_pages_the_api_and_the_websocket() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = cert_path(tmp.path());
    let srv = TestServer::start_https(self_signed(tmp.path()), None, &cert).await;
    assert!(srv.base.starts_with("https://127.0.0.1:"), "{}", srv.base);

    let info = srv.running().tls.clone().expect("TLS is on");
    match &info.source {
        Source::SelfSigned { names, created } => {
            assert!(created, "made on the first start");
            for n in ["localhost", "127.0.0.1"] {
                assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
            }
        }
        other => panic!("{other:?}"),
    }
    // The key is kept readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = tmp.path().join("tls").join("key.pem");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key.pem mode {mode:o}");
    }

    for path in ["/agent/", "/customer/"] {
        let res = srv.http.get(srv.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let body = res.text().await.unwrap();
        assert!(body.contains("<html"), "{path}: a page");
    }
    assert_eq!(served_fingerprint(&srv, "/healthz").await, info.fingerprint);

    // Join links default to the https origin; both roles meet over wss.
    let s = srv.session().await;
    let customer_url = s.body["customer_url"].as_str().unwrap();
    assert!(customer_url.starts_with(&srv.base), "{customer_url}");
    let pem = std::fs::read(&cert).unwrap();
    let (mut agent, w) = srv.join_wss(&s.agent_token, &pem).await;
    assert_eq!(w["role"], "agent");
    let (mut customer, _) = srv.join_wss(&s.customer_token, &pem).await;
    assert_eq!(agent.expect("peer.joined").await["role"], "customer");
    agent
        .send(json!({"type":"chat","id":"c1","text":"over wss"}))
        .await;
    assert_eq!(customer.expect("chat").await["text"], "over wss");

    // Graceful shutdown as over plain HTTP: the WebSockets are closed with 1001.
    srv.shutdown().await;
    assert_eq!(agent.expect_close().await.0, 1001);
    assert_eq!(customer.expect_close().await.0, 1001);
}

#[tokio::test]
async fn the_self_signed_certificate_is_reused_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = cert_path(tmp.path());
    let srv = TestServer::start_https(self_signed(tmp.path()), None, &cert).await;
    let first = served_fingerprint(&srv, "/healthz").await;
    srv.shutdown().await;

    let srv = TestServer::start_https(self_signed(tmp.path()), None, &cert).await;
    assert_eq!(served_fingerprint(&srv, "/healthz").await, first);
    let info = srv.running().tls.clone().unwrap();
    assert_eq!(info.fingerprint, first);
    assert!(
        matches!(info.source, Source::SelfSigned { created: false, .. }),
        "{:?}",
        info.source
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_files_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_file, key_file) = (certs.path().join("c.pem"), certs.path().join("k.pem"));
    std::fs::write(&cert_file, made.cert.pem()).unwrap();
    std::fs::write(&key_file, made.signing_key.serialize_pem()).unwrap();

    let mut s = settings(tmp.path());
    s.tls_cert = Some(cert_file.clone());
    s.tls_key = Some(key_file);
    let srv = TestServer::start_https(s, None, &cert_file).await;
    let expected = fingerprint(made.cert.der().as_ref());
    assert_eq!(served_fingerprint(&srv, "/agent/").await, expected);
    let info = srv.running().tls.clone().unwrap();
    assert_eq!((info.source, info.fingerprint), (Source::Files, expected));
    assert!(
        !tmp.path().join("tls").exists(),
        "nothing self-signed is made"
    );

    let s = srv.session().await;
    let (_agent, w) = srv
        .join_wss(&s.agent_token, made.cert.pem().as_bytes())
        .await;
    assert_eq!(w["role"], "agent");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_file, key_file) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    std::fs::write(&cert_file, a.cert.pem()).unwrap();
    std::fs::write(&key_file, b.signing_key.serialize_pem()).unwrap();
    let mut s = settings(&tmp.path().join("data"));
    s.tls_cert = Some(cert_file);
    s.tls_key = Some(key_file);
    let err = match capturelink::app::start(s).await {
        Ok(_) => panic!("started with a key of another certificate"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("c.pem"), "{err}");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_fails_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = cert_path(tmp.path());
    let srv = TestServer::start_https(self_signed(tmp.path()), None, &cert).await;

    // A client trusting another certificate only, and one with the system's roots.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let stranger = https_client(other.cert.pem().as_bytes());
    let err = stranger.get(srv.url("/healthz")).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let err = reqwest::Client::new()
        .get(srv.url("/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    // The same for the WebSocket.
    let s = srv.session().await;
    assert!(
        srv.connect_wss(&s.agent_token, other.cert.pem().as_bytes())
            .await
            .is_err()
    );
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let plain = srv.url("/healthz").replacen("https://", "http://", 1);
    assert!(reqwest::Client::new().get(plain).send().await.is_err());
    srv.shutdown().await;
}

/// The real binary with `--tls-self-signed`: its banner says https, shows the fingerprint of the
/// certificate it keeps in the data dir and warns about the browser's certificate warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_the_https_address_and_the_certificates_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capturelink"));
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-self-signed",
    ])
    .args(["--api-key", "k", "--data-dir"])
    .arg(tmp.path())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for var in [
        "CAPTURELINK_API_KEYS",
        "CAPTURELINK_PUBLIC_URL",
        "CAPTURELINK_LISTEN",
        "CAPTURELINK_TLS_CERT",
        "CAPTURELINK_TLS_KEY",
    ] {
        cmd.env_remove(var);
    }
    let mut child = KillOnDrop(cmd.spawn().expect("the binary starts"));
    let child = &mut child.0;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lines
        .iter()
        .any(|l: &String| l.contains("SHA-256 fingerprint:"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("no fingerprint line; stdout: {lines:?}");
            }
        }
    }
    let base = format!("https://127.0.0.1:{port}");
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has(&format!("listening on {base}")), "{lines:?}");
    assert!(has(&format!("agent console: {base}/agent/")), "{lines:?}");
    assert!(has("certificate warning"), "{lines:?}");
    let pem = std::fs::read(cert_path(tmp.path())).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    assert!(has(&fingerprint(der.as_ref())), "{lines:?}");

    let res = https_client(&pem)
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}

/// Kills the child when a failed assertion unwinds past it (it would hold the test's output open).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Slow clients

fn short_timeouts(s: &mut Settings) {
    s.header_timeout_s = 1;
    s.body_timeout_s = 1;
}

#[tokio::test]
async fn a_client_that_stalls_in_its_request_line_is_disconnected_after_the_header_timeout() {
    let srv = TestServer::start_with(short_timeouts).await;
    let addr = srv.running().addr;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /agent/ HT").await.unwrap();
    let took = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");

    // One that sends nothing at all is closed too; a prompt client is served as before.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    closed_within(&mut idle, Duration::from_secs(5)).await;
    let res = srv.http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    srv.shutdown().await;
}

#[tokio::test]
async fn over_tls_a_stalled_handshake_or_request_line_is_disconnected() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = cert_path(tmp.path());
    let mut s = self_signed(tmp.path());
    short_timeouts(&mut s);
    let srv = TestServer::start_https(s, None, &cert).await;
    let addr = srv.running().addr;

    // Connected, but no ClientHello.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");

    // Handshake done, then half a request line.
    let pem = std::fs::read(&cert).unwrap();
    let connector = tokio_rustls::TlsConnector::from(rustls_client_config(&pem));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(b"GET /agent/ HT").await.unwrap();
    tls.flush().await.unwrap();
    let took = closed_within(&mut tls, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    srv.shutdown().await;
}

/// Sends `head` (a request head and the start of its body) and nothing more; returns the status
/// of the answer and how long it took.
async fn stalled_body_status(srv: &TestServer, head: &str) -> (u16, Duration) {
    let mut stream = TcpStream::connect(srv.running().addr).await.unwrap();
    let t0 = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Err(_) => panic!("no answer within 5 s: {}", String::from_utf8_lossy(&got)),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&got);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, took)
}

#[tokio::test]
async fn a_request_body_that_stalls_fails_after_the_body_timeout() {
    let srv = TestServer::start_with(short_timeouts).await;
    // A JSON body.
    let head = format!(
        "POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"claim_ref\":"
    );
    let (status, took) = stalled_body_status(&srv, &head).await;
    assert_eq!(status, 408, "Request Timeout");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );

    // An upload that stops in the middle of its image.
    let s = srv.session().await;
    let head = format!(
        "POST /api/v1/sessions/{}/captures HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: 100000\r\n\r\n\
         --XX\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\nthe first bytes",
        s.id
    );
    let (status, took) = stalled_body_status(&srv, &head).await;
    assert_eq!(status, 408, "Request Timeout");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    srv.shutdown().await;
}

/// WebSockets and the event stream live far longer than the header and body timeouts, and do not
/// hold up a shutdown.
#[tokio::test]
async fn long_lived_connections_outlive_the_timeouts() {
    let srv = TestServer::start_with(short_timeouts).await;
    let s = srv.session().await;
    let (mut agent, _) = srv.join(&s.agent_token).await;
    let mut events = srv
        .http
        .get(srv.url(&format!("/api/v1/sessions/{}/events", s.id)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_customer, _) = srv.join(&s.customer_token).await;
    assert_eq!(agent.expect("peer.joined").await["role"], "customer");
    let mut seen = String::new();
    while !seen.contains("peer.joined") {
        let chunk = tokio::time::timeout(WAIT, events.chunk())
            .await
            .expect("an event within the wait")
            .expect("the stream is up")
            .expect("the stream has not ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // On shutdown the event stream ends (its client resumes elsewhere with Last-Event-ID) rather
    // than keeping the graceful shutdown waiting.
    tokio::time::timeout(WAIT, srv.shutdown())
        .await
        .expect("shut down with an event stream open");
    let end = tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = events.chunk().await {}
    });
    end.await.expect("the event stream ended");
}
