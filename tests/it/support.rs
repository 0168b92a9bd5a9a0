//! The harness: the real server on 127.0.0.1:0 with a fresh data dir, REST through reqwest and
//! real WebSocket clients through tokio-tungstenite.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use capturelink::app::{Running, start};
use capturelink::config::Settings;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const API_KEY: &str = "test-api-key";
/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    running: Option<Running>,
}

pub fn settings(data_dir: &Path) -> Settings {
    let mut s = Settings::with_data_dir(data_dir);
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.api_keys = vec![API_KEY.to_owned()];
    if on_postgres() {
        s.database_url = postgres_url(data_dir);
    }
    s
}

/// True when the suite runs on PostgreSQL instead of SQLite (`CAPTURELINK_TEST_STORE=postgres`,
/// set by scripts/test for its second pass).
pub fn on_postgres() -> bool {
    std::env::var("CAPTURELINK_TEST_STORE").as_deref() == Ok("postgres")
}

/// The throwaway PostgreSQL server scripts/test started (scripts/pg-server), as the URL of its
/// `postgres` database: `CAPTURELINK_TEST_PG_SERVER`. The tests that need one fail without it,
/// unless `CAPTURELINK_SKIP_PG=1`, which makes this None (after a loud line).
pub fn postgres_admin_url() -> Option<String> {
    if let Ok(url) = std::env::var("CAPTURELINK_TEST_PG_SERVER")
        && !url.is_empty()
    {
        return Some(url);
    }
    if std::env::var("CAPTURELINK_SKIP_PG").as_deref() == Ok("1") {
        use std::io::Write;
        let _ = std::io::stderr()
            .write_all(b"\n*** SKIPPED: a PostgreSQL store test (CAPTURELINK_SKIP_PG=1) ***\n");
        return None;
    }
    panic!(
        "the PostgreSQL store tests need a PostgreSQL server: run scripts/test (which starts one \
         with scripts/pg-server and sets CAPTURELINK_TEST_PG_SERVER), or start one yourself with \
         `export CAPTURELINK_TEST_PG_SERVER=$(scripts/pg-server)`; CAPTURELINK_SKIP_PG=1 skips them"
    )
}

/// A fresh database on the test server, named after `data_dir` (so that a restart on the same
/// dir finds the same database); created by [`TestServer::start_in`].
pub fn postgres_url(data_dir: &Path) -> Option<String> {
    let admin = postgres_admin_url()?;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let name = format!("t_{}", hex::encode(&digest[..12]));
    let base = admin
        .strip_suffix("/postgres")
        .expect("the admin URL ends in /postgres");
    Some(format!("{base}/{name}"))
}

impl TestServer {
    /// A connection to the server's database, as another process would open it: its SQLite
    /// file, or its PostgreSQL database. Queries use `$1`, `$2`, … placeholders, which both
    /// understand.
    pub async fn db(&self) -> sqlx::AnyConnection {
        db_at(
            &self.data_dir,
            self.state().settings.database_url.as_deref(),
        )
        .await
    }
}

/// [`TestServer::db`] for a server run otherwise (a child process): the SQLite file in
/// `data_dir`, or the PostgreSQL database at `database_url`.
pub async fn db_at(data_dir: &Path, database_url: Option<&str>) -> sqlx::AnyConnection {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let url = match database_url {
        Some(url) => url.to_owned(),
        None => format!(
            "sqlite://{}?mode=rw",
            data_dir.join(capturelink::store::DB_FILE).display()
        ),
    };
    sqlx::AnyConnection::connect(&url).await.unwrap()
}

/// Creates the database of `url` on the test server if it does not exist yet.
pub async fn ensure_database(url: &str) {
    use sqlx::Connection;
    let admin = postgres_admin_url().unwrap();
    let name = url.rsplit('/').next().unwrap();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("the test PostgreSQL server");
    let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await;
    match created {
        Ok(_) => {}
        // 42P04: duplicate_database (a restart on the same data dir).
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
        Err(e) => panic!("creating test database {name}: {e}"),
    }
    let _ = conn.close().await;
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server with a fresh data dir, after `tune` adjusts its settings.
    pub async fn start_with(tune: impl FnOnce(&mut Settings)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = settings(tmp.path());
        tune(&mut s);
        Self::start_in(s, Some(tmp)).await
    }

    async fn start_in(s: Settings, tmp: Option<tempfile::TempDir>) -> Self {
        if let Some(url) = &s.database_url {
            ensure_database(url).await;
        }
        let data_dir = s.data_dir.clone();
        let running = start(s).await.expect("server starts");
        Self {
            base: format!("http://{}", running.addr),
            http: reqwest::Client::new(),
            data_dir,
            _tmp: tmp,
            running: Some(running),
        }
    }

    /// Shuts the server down gracefully and starts a new one on the same data dir (new port).
    pub async fn restart(mut self) -> Self {
        let tmp = self._tmp.take();
        let data_dir = self.data_dir.clone();
        self.running.take().unwrap().shutdown().await;
        Self::start_in(settings(&data_dir), tmp).await
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn state(&self) -> &capturelink::app::AppState {
        &self.running.as_ref().unwrap().state
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, token: &str, last_seq: Option<i64>) -> String {
        ws_url(&self.base, token, last_seq)
    }

    /// `POST /api/v1/sessions` with the test key; panics unless 201.
    pub async fn create_session(&self, body: Value) -> Value {
        let res = self
            .http
            .post(self.url("/api/v1/sessions"))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "create session");
        res.json().await.unwrap()
    }

    /// A session with the default checklist and both tokens.
    pub async fn session(&self) -> Session {
        let v = self.create_session(json!({"claim_ref": "CLM-1"})).await;
        Session {
            id: v["id"].as_str().unwrap().to_owned(),
            agent_token: v["agent_token"].as_str().unwrap().to_owned(),
            customer_token: v["customer_token"].as_str().unwrap().to_owned(),
            body: v,
        }
    }

    pub async fn connect(&self, token: &str) -> Client {
        self.connect_at(token, None).await
    }

    pub async fn connect_at(&self, token: &str, last_seq: Option<i64>) -> Client {
        connect_base(&self.base, token, last_seq).await
    }

    /// Connects and reads the welcome.
    pub async fn join(&self, token: &str) -> (Client, Value) {
        self.join_at(token, None).await
    }

    pub async fn join_at(&self, token: &str, last_seq: Option<i64>) -> (Client, Value) {
        join_base(&self.base, token, last_seq).await
    }

    /// The HTTP status a WebSocket handshake is refused with.
    pub async fn refused_status(&self, url: &str, origin: Option<&str>) -> u16 {
        let mut req = url.into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut()
                .insert("origin", HeaderValue::from_str(o).unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => panic!("handshake to {url} was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}

/// The WebSocket URL of a server at `base` (`http://host:port`, in process or a child process).
pub fn ws_url(base: &str, token: &str, last_seq: Option<i64>) -> String {
    let base = base.replacen("http://", "ws://", 1);
    match last_seq {
        Some(n) => format!("{base}/ws?token={token}&last_seq={n}"),
        None => format!("{base}/ws?token={token}"),
    }
}

pub async fn connect_base(base: &str, token: &str, last_seq: Option<i64>) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(base, token, last_seq))
        .await
        .expect("websocket connects");
    Client { ws }
}

/// Connects to the server at `base` and reads the welcome.
pub async fn join_base(base: &str, token: &str, last_seq: Option<i64>) -> (Client, Value) {
    let mut c = connect_base(base, token, last_seq).await;
    let w = c.recv().await;
    assert_eq!(w["type"], "welcome", "first message is the welcome: {w}");
    (c, w)
}

pub struct Session {
    pub id: String,
    pub agent_token: String,
    pub customer_token: String,
    pub body: Value,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// The next JSON message (pings and pongs are skipped); panics after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT)
            .await
            .expect("a message within the wait")
    }

    /// The next JSON message within `wait`, or None if none came (or the socket closed).
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match next {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Close(f)) => panic!("closed while waiting for a message: {f:?}"),
                Ok(other) => panic!("unexpected frame {other:?}"),
                Err(e) => panic!("socket error while waiting for a message: {e}"),
            }
        }
    }

    /// Reads until a message of `kind` arrives, returning it; panics if something else comes first.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let m = self.recv().await;
        assert_eq!(m["type"], kind, "expected `{kind}`, got {m}");
        m
    }

    /// Asserts that no message arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(m) = self.try_recv(wait).await {
            panic!("expected nothing, got {m}");
        }
    }

    /// Reads (discarding messages) until the server closes; returns the close code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        self.expect_close_within(WAIT).await
    }

    /// The close frame's code and reason, skipping messages before it, within `wait`.
    pub async fn expect_close_within(&mut self, wait: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no close within the wait"),
                Ok(None) => panic!("stream ended without a close frame"),
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    return (u16::from(f.code), f.reason.to_string());
                }
                Ok(Some(Ok(Message::Close(None)))) => {
                    return (u16::from(CloseCode::Status), String::new());
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("socket error before a close frame: {e}"),
            }
        }
    }

    /// Messages received until `kind` arrives (inclusive).
    pub async fn collect_until(&mut self, kind: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let m = self.recv().await;
            let done = m["type"] == kind;
            out.push(m);
            if done {
                return out;
            }
        }
    }
}

/// A capture upload's multipart body: the `image` part (bytes with a declared content type, or
/// none) and the `meta` part (JSON).
pub fn capture_form(image: Option<(Vec<u8>, &str)>, meta: &Value) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new();
    if let Some((bytes, mime)) = image {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name("capture")
            .mime_str(mime)
            .unwrap();
        form = form.part("image", part);
    }
    form.part(
        "meta",
        reqwest::multipart::Part::text(meta.to_string())
            .mime_str("application/json")
            .unwrap(),
    )
}

impl TestServer {
    /// `POST /api/v1/sessions/{id}/captures` with `credential` (API key or join token).
    pub async fn upload(
        &self,
        session_id: &str,
        credential: &str,
        form: reqwest::multipart::Form,
        idempotency_key: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url(&format!("/api/v1/sessions/{session_id}/captures")))
            .bearer_auth(credential)
            .multipart(form);
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        req.send().await.expect("upload request completes")
    }
}

impl TestServer {
    /// Like [`TestServer::restart`], with `tune` applied to the new start's settings (which
    /// `restart` takes fresh from [`settings`]).
    pub async fn restart_with(mut self, tune: impl FnOnce(&mut Settings)) -> Self {
        let tmp = self._tmp.take();
        let data_dir = self.data_dir.clone();
        self.running.take().unwrap().shutdown().await;
        let mut s = settings(&data_dir);
        tune(&mut s);
        Self::start_in(s, tmp).await
    }
}

impl TestServer {
    /// A server on an existing data dir (a restored backup, say), with the test settings after
    /// `tune`. The dir is not removed when the server is dropped.
    pub async fn start_at(data_dir: &Path, tune: impl FnOnce(&mut Settings)) -> Self {
        let mut s = settings(data_dir);
        tune(&mut s);
        Self::start_in(s, None).await
    }
}

// ---------------------------------------------------------------------------------------------
// HTTPS (tests/it/tls.rs)

impl TestServer {
    /// Starts with `s` (TLS on) and a client that trusts exactly the PEM certificate at `trust`,
    /// read once the server has started (so a self-signed one made by this start works); `base`
    /// is `https://…`.
    pub async fn start_https(s: Settings, tmp: Option<tempfile::TempDir>, trust: &Path) -> Self {
        let mut srv = Self::start_in(s, tmp).await;
        srv.http = https_client(&std::fs::read(trust).expect("the certificate file"));
        srv.base = srv.base.replacen("http://", "https://", 1);
        srv
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Opens the WebSocket over wss with a rustls client that trusts exactly `cert_pem`.
    pub async fn connect_wss(
        &self,
        token: &str,
        cert_pem: &[u8],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let url = format!(
            "{}/ws?token={token}",
            self.base.replacen("https://", "wss://", 1)
        );
        let connector = tokio_tungstenite::Connector::Rustls(rustls_client_config(cert_pem));
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
                .await?;
        Ok(Client { ws })
    }

    /// [`TestServer::connect_wss`], then the welcome.
    pub async fn join_wss(&self, token: &str, cert_pem: &[u8]) -> (Client, Value) {
        let mut c = self
            .connect_wss(token, cert_pem)
            .await
            .expect("wss connects");
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "first message is the welcome: {w}");
        (c, w)
    }
}

/// A reqwest client whose only trusted root is `cert_pem`, reporting the peer's certificate.
pub fn https_client(cert_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem).unwrap()])
        .tls_info(true)
        .build()
        .unwrap()
}

/// A rustls client configuration whose only trusted root is `cert_pem` (aws-lc-rs, as the server).
pub fn rustls_client_config(cert_pem: &[u8]) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// A second SQLite connection to the server's database, as another process would open it, holding
/// the write lock (`BEGIN IMMEDIATE`) until it runs `ROLLBACK` or is dropped.
pub async fn hold_write_lock(data_dir: &Path) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions;
    let mut other = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join(capturelink::store::DB_FILE))
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    other
}

/// `img` encoded as a baseline JPEG at `quality` (1-100).
pub fn encode_jpeg(img: &image::RgbImage, quality: u8) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}
