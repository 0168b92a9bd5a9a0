//! Settings: every one a command-line flag and a `CAPTURELINK_*` environment variable,
//! validated once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "capturelink",
    version,
    about = "Guided photo capture for motor-insurance claims"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

// Parsed once at start and consumed at once: the size of `Serve` costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default when no subcommand is given).
    Serve(Settings),
    /// Create, list or revoke the API keys kept (hashed) in the database.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Write a consistent copy of the database and the images to FILE, while the service runs.
    Backup(BackupArgs),
    /// Lay out a backup into a data dir, ready for `capturelink serve --data-dir DIR`.
    Restore(RestoreArgs),
    /// Create the database if needed, apply the migrations it lacks, and exit.
    Migrate(DataDirArg),
    /// Ask a running service whether it is alive (for a container's HEALTHCHECK, which has no
    /// curl): exits 0 when the URL answers 200, 1 otherwise.
    Probe(ProbeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The URL to ask.
    #[arg(
        long,
        env = "CAPTURELINK_PROBE_URL",
        default_value = "http://127.0.0.1:8080/healthz"
    )]
    pub url: String,
    /// Accept any certificate: only for probing this machine's own HTTPS port, which may have a
    /// self-signed certificate.
    #[arg(long)]
    pub insecure: bool,
}

/// The data dir of an operator's command (the same setting as `serve`'s).
#[derive(Debug, Clone, Args)]
pub struct DataDirArg {
    /// Directory of the SQLite database, the image files and generated secrets.
    #[arg(long, env = "CAPTURELINK_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The service's PostgreSQL database, when it has one instead of the data dir's SQLite file.
    #[arg(long, env = "CAPTURELINK_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl DataDirArg {
    /// Refuses a PostgreSQL database, for the commands that copy the SQLite file.
    pub fn require_sqlite(&self, command: &str) -> Result<(), String> {
        match &self.database_url {
            Some(_) => Err(format!(
                "`capturelink {command}` copies the embedded SQLite database, and this service's \
                 database is PostgreSQL (--database-url); back it up with PostgreSQL's own tools \
                 (pg_dump, or continuous archiving) and the images with the image store's"
            )),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print it, once, on standard output (only its hash is kept).
    Create {
        /// Who the key is for (shown by `list`).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// List the keys: id, name, fingerprint, created, last used, revoked (never the key).
    List {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Revoke a key by its id: the running service refuses it from its next request on.
    Revoke {
        /// The key's id, as `list` shows it.
        id: i64,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The archive to write (a zip file); it is replaced if it exists.
    pub file: PathBuf,
    #[command(flatten)]
    pub dir: DataDirArg,
    #[command(flatten)]
    pub media: MediaUrlArg,
}

/// The service's `--media-url`, for the commands that copy images: they work on the media dir only.
#[derive(Debug, Clone, Args)]
pub struct MediaUrlArg {
    /// The service's image store; backup and restore refuse an S3 one (`s3://…`).
    #[arg(long, env = "CAPTURELINK_MEDIA_URL")]
    pub media_url: Option<String>,
}

impl MediaUrlArg {
    /// Refuses an S3 image store: its images are not in the data dir.
    pub fn require_local(&self, command: &str) -> Result<(), String> {
        match &self.media_url {
            Some(url) => Err(format!(
                "`capturelink {command}` works with a local image store only, and the images are \
                 in S3 here (--media-url {url}); protect them with the bucket's own versioning \
                 and replication instead"
            )),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The archive `capturelink backup` wrote.
    pub file: PathBuf,
    #[command(flatten)]
    pub dir: DataDirArg,
    /// Restore into a data dir that is not empty, replacing its database and images.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub media: MediaUrlArg,
}

impl Cli {
    /// The settings of `serve`, whichever way it was spelled (for another command: the settings
    /// given without a subcommand, i.e. the defaults and the environment).
    pub fn into_settings(self) -> Settings {
        match self.command {
            Some(Command::Serve(s)) => s,
            _ => self.settings,
        }
    }

    /// What to run: the service with its settings, or an operator's command.
    pub fn into_command(self) -> Command {
        match self.command {
            Some(c) => c,
            None => Command::Serve(self.settings),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "CAPTURELINK_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the SQLite database, the image files and generated secrets.
    #[arg(long, env = "CAPTURELINK_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Base URL of join links (default: http://<listen address>).
    #[arg(long, env = "CAPTURELINK_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// API keys accepted as `Authorization: Bearer <key>` (the variable is comma-separated).
    /// Where none is given, a key is generated on first start, kept in the data dir and printed.
    #[arg(long = "api-key", env = "CAPTURELINK_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<String>,

    /// Origins allowed to open the WebSocket (comma-separated; default: the public URL's origin).
    /// Clients that send no Origin (servers, native apps) are not browsers and are let through.
    #[arg(
        long = "allowed-origin",
        env = "CAPTURELINK_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Secret from which join tokens are derived (default: generated once into the data dir).
    #[arg(long, env = "CAPTURELINK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// STUN server URLs handed to both browsers in `welcome.ice_servers`.
    #[arg(
        long = "stun-url",
        env = "CAPTURELINK_STUN_URLS",
        value_delimiter = ','
    )]
    pub stun_urls: Vec<String>,

    /// TURN server URLs; credentials are minted per session from `--turn-secret`.
    #[arg(
        long = "turn-url",
        env = "CAPTURELINK_TURN_URLS",
        value_delimiter = ','
    )]
    pub turn_urls: Vec<String>,

    /// Shared secret of the TURN server (coturn `static-auth-secret`, REST API scheme).
    #[arg(long, env = "CAPTURELINK_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// Lifetime of minted TURN credentials, in seconds.
    #[arg(long, env = "CAPTURELINK_TURN_TTL", default_value_t = 3600)]
    pub turn_ttl: u64,

    /// Default session lifetime in seconds, when the creator gives no `expires_in_s`.
    #[arg(long, env = "CAPTURELINK_SESSION_TTL", default_value_t = 86_400)]
    pub session_ttl: u64,

    /// Interval of the server's WebSocket pings, in milliseconds; a peer silent for two intervals is dropped.
    #[arg(long, env = "CAPTURELINK_HEARTBEAT_MS", default_value_t = 20_000)]
    pub heartbeat_ms: u64,

    /// Outbound messages queued per connection before the connection counts as too slow and is closed.
    #[arg(long, env = "CAPTURELINK_WS_QUEUE", default_value_t = 256)]
    pub ws_queue: usize,

    /// Messages a connection may send per second, sustained.
    #[arg(long, env = "CAPTURELINK_WS_RATE", default_value_t = 50)]
    pub ws_rate: u32,

    /// Messages a connection may send at once above the sustained rate (ICE candidates come in bursts).
    #[arg(long, env = "CAPTURELINK_WS_BURST", default_value_t = 200)]
    pub ws_burst: u32,

    /// Largest image a capture upload may carry, in bytes.
    #[arg(long, env = "CAPTURELINK_MAX_UPLOAD_BYTES", default_value_t = 15 * 1024 * 1024)]
    pub max_upload_bytes: usize,

    /// REST requests and WebSocket handshakes one client IP may make per second, sustained
    /// (0: no limit).
    #[arg(long, env = "CAPTURELINK_IP_RATE", default_value_t = 100)]
    pub ip_rate: u32,

    /// Requests one IP may make at once above `--ip-rate` (a page loading its thumbnails).
    #[arg(long, env = "CAPTURELINK_IP_BURST", default_value_t = 500)]
    pub ip_burst: u32,

    /// REST requests one credential (API key or join token) may make per second (0: no limit).
    #[arg(long, env = "CAPTURELINK_KEY_RATE", default_value_t = 20)]
    pub key_rate: u32,

    /// Requests one credential may make at once above `--key-rate`.
    #[arg(long, env = "CAPTURELINK_KEY_BURST", default_value_t = 200)]
    pub key_burst: u32,

    /// Open WebSocket connections one client IP may hold (0: no limit). A service centre behind
    /// one NAT address holds one per agent.
    #[arg(long, env = "CAPTURELINK_MAX_WS_PER_IP", default_value_t = 500)]
    pub max_ws_per_ip: usize,

    /// Take the client's IP from the last `X-Forwarded-For` hop (only behind a reverse proxy that
    /// sets it; otherwise clients could pick their own address).
    #[arg(long, env = "CAPTURELINK_TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,

    /// Origins allowed to call the REST API from a browser (CORS; comma-separated). Default: none,
    /// the pages are same-origin.
    #[arg(
        long = "cors-origin",
        env = "CAPTURELINK_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Free space the data dir must keep, in MiB: below it `/readyz` answers 503.
    #[arg(long, env = "CAPTURELINK_MIN_FREE_MB", default_value_t = 256)]
    pub min_free_mb: u64,

    /// Images decoded at the same time (each may take a few hundred MB for a 40 MP still).
    #[arg(long, env = "CAPTURELINK_DECODE_CONCURRENCY", default_value_t = 2)]
    pub decode_concurrency: usize,

    /// A server-wide webhook endpoint every session's events also go to.
    #[arg(long, env = "CAPTURELINK_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Send webhooks to public internet addresses only: refuse a session's `webhook_url` whose
    /// host is a loopback, private, link-local (cloud metadata) or other non-public IP, and connect
    /// only to the public addresses a host name resolves to. For deployments whose API keys are
    /// held by parties outside the service's own network.
    #[arg(long, env = "CAPTURELINK_WEBHOOK_PUBLIC_ONLY")]
    pub webhook_public_only: bool,

    /// Webhook signing secret, `whsec_<base64>` (Standard Webhooks). Default: generated once into
    /// the data dir (`webhook-secret`).
    #[arg(long, env = "CAPTURELINK_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// How long an undelivered webhook is retried, in seconds.
    #[arg(long, env = "CAPTURELINK_WEBHOOK_HORIZON", default_value_t = 86_400)]
    pub webhook_horizon: u64,

    /// First webhook retry delay in milliseconds; it doubles per attempt (with jitter) up to an hour.
    #[arg(long, env = "CAPTURELINK_WEBHOOK_BACKOFF_MS", default_value_t = 5_000)]
    pub webhook_backoff_ms: u64,

    /// Days the webhook outbox keeps a finished delivery (delivered, failed, or to a disabled
    /// endpoint) before it is deleted; pending deliveries are kept until they finish.
    #[arg(long, env = "CAPTURELINK_WEBHOOK_KEEP_DAYS", default_value_t = 30)]
    pub webhook_keep_days: u32,

    /// Days after a session ended (closed or expired) when its images, captures, events and
    /// webhook rows are deleted; the session row stays, marked purged. Default: keep forever.
    #[arg(long, env = "CAPTURELINK_RETENTION_DAYS")]
    pub retention_days: Option<u32>,

    /// The database: `postgres://user:password@host:port/dbname[?sslmode=require]` for a
    /// PostgreSQL server that several nodes share. Default: the SQLite file in the data dir.
    #[arg(long, env = "CAPTURELINK_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Connections to PostgreSQL this node keeps at most (`--database-url`; at least 2).
    #[arg(long, env = "CAPTURELINK_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: u32,

    /// Several nodes: the NATS server (`nats://host:4222`) that carries live events between the
    /// nodes sharing `--database-url`. Needs PostgreSQL, and on every node the same `--secret`
    /// and `--webhook-secret` (and images in S3, `--media-url`). Default: one node, no bus.
    #[arg(long, env = "CAPTURELINK_NATS_URL")]
    pub nats_url: Option<String>,

    /// Where the images go: `s3://bucket[/prefix]` for S3-compatible object storage (with the
    /// `--s3-*` settings). Default: the `media` directory of the data dir.
    #[arg(long, env = "CAPTURELINK_MEDIA_URL")]
    pub media_url: Option<String>,

    /// The S3 API's endpoint, for a store other than AWS (`http://127.0.0.1:9000` for a local
    /// MinIO; plain http is allowed). Default: AWS's endpoint for `--s3-region`.
    #[arg(long, env = "CAPTURELINK_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// The bucket's region.
    #[arg(long, env = "CAPTURELINK_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// Access key id for the S3 API (default: `AWS_ACCESS_KEY_ID`).
    #[arg(long, env = "CAPTURELINK_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,

    /// Secret access key for the S3 API (default: `AWS_SECRET_ACCESS_KEY`).
    #[arg(long, env = "CAPTURELINK_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,

    /// Log format.
    #[arg(long, env = "CAPTURELINK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve HTTPS with this PEM certificate chain (and `--tls-key`). Leave unset behind a reverse
    /// proxy that terminates TLS.
    #[arg(
        long,
        env = "CAPTURELINK_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "CAPTURELINK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve HTTPS with a self-signed certificate for localhost, the listen address and the public
    /// URL's host, made once into the data dir (`tls/`) and reused. For trying it on a phone over
    /// a LAN: browsers show a certificate warning.
    #[arg(long, env = "CAPTURELINK_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,

    /// Seconds a client has to send a request's headers (and to finish the TLS handshake); an idle
    /// keep-alive connection is closed after as long.
    #[arg(long, env = "CAPTURELINK_HEADER_TIMEOUT_S", default_value_t = 10)]
    pub header_timeout_s: u64,

    /// How long a database write waits for a lock another process holds before the request is
    /// answered 503 (`unavailable`, with `Retry-After`), in milliseconds.
    #[arg(long, env = "CAPTURELINK_DB_BUSY_TIMEOUT_MS", default_value_t = 5_000)]
    pub db_busy_timeout_ms: u64,

    /// Serves `/__echo`, a WebSocket echo with the production socket limits, for the Autobahn
    /// conformance run (scripts/autobahn). Never in production: hidden from --help.
    #[arg(long, env = "CAPTURELINK_TEST_ECHO_ROUTE", hide = true)]
    pub test_echo_route: bool,

    /// Seconds a request body may stall (no bytes arriving) before the request fails. A body that
    /// keeps moving is never cut; WebSockets and event streams are not subject to it.
    #[arg(long, env = "CAPTURELINK_BODY_TIMEOUT_S", default_value_t = 120)]
    pub body_timeout_s: u64,
}

impl Settings {
    pub fn min_free_bytes(&self) -> u64 {
        self.min_free_mb.saturating_mul(1024 * 1024)
    }

    /// Defaults with the given data dir, as if started with no flags and no environment.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut s = <Self as clap::FromArgMatches>::from_arg_matches(
            &<Self as clap::Args>::augment_args(clap::Command::new("capturelink"))
                .no_binary_name(true)
                .try_get_matches_from(std::iter::empty::<String>())
                .expect("defaults parse"),
        )
        .expect("defaults parse");
        s.data_dir = data_dir.into();
        s
    }

    pub fn db_busy_timeout(&self) -> Duration {
        Duration::from_millis(self.db_busy_timeout_ms)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(10))
    }

    /// Checks what clap cannot; called once at start.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "--public-url must start with http:// or https://, got {url}"
            ));
        }
        if !self.turn_urls.is_empty() && self.turn_secret.is_none() {
            return Err("--turn-url needs --turn-secret to mint credentials".into());
        }
        if self.ws_queue < 8 {
            return Err("--ws-queue must be at least 8".into());
        }
        if self.ws_rate == 0 || self.ws_burst == 0 {
            return Err("--ws-rate and --ws-burst must be positive".into());
        }
        if let Some(u) = &self.webhook_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(format!("--webhook-url must be an http(s) URL, got {u}"));
        }
        if self.webhook_public_only
            && let Some(ip) = self
                .webhook_url
                .as_deref()
                .and_then(crate::webhooks::address::non_public_literal)
        {
            return Err(format!(
                "--webhook-url is on {ip}, not a public address, and --webhook-public-only \
                 sends webhooks to public addresses only"
            ));
        }
        if self.max_upload_bytes < 1024 {
            return Err("--max-upload-bytes must be at least 1024".into());
        }
        if self.decode_concurrency == 0 {
            return Err("--decode-concurrency must be positive".into());
        }
        if self.session_ttl == 0 {
            return Err("--session-ttl must be positive".into());
        }
        if self.webhook_keep_days == 0 {
            return Err("--webhook-keep-days must be at least 1".into());
        }
        if self.retention_days == Some(0) {
            return Err(
                "--retention-days must be at least 1 (leave it unset to keep forever)".into(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together".into());
        }
        if self.tls_self_signed && self.tls_cert.is_some() {
            return Err("--tls-self-signed and --tls-cert exclude each other".into());
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(
                "--database-url must be a postgres:// URL (leave it unset for the embedded SQLite)"
                    .into(),
            );
        }
        if self.database_pool < 2 {
            return Err("--database-pool must be at least 2".into());
        }
        if let Some(url) = &self.nats_url {
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                return Err("--nats-url must be a nats:// or tls:// URL".into());
            }
            if self.database_url.is_none() {
                return Err(
                    "--nats-url (several nodes) needs the database on PostgreSQL: --database-url"
                        .into(),
                );
            }
            if self.secret.is_none() || self.webhook_secret.is_none() {
                return Err(
                    "--nats-url (several nodes) needs --secret and --webhook-secret, the \
                            same on every node (each node would generate its own)"
                        .into(),
                );
            }
        }
        match &self.media_url {
            Some(url) => {
                crate::media::S3Location::parse(url)?;
            }
            None if self.s3_endpoint.is_some()
                || self.s3_access_key_id.is_some()
                || self.s3_secret_access_key.is_some() =>
            {
                return Err("the --s3-* settings need --media-url s3://bucket".into());
            }
            None => {}
        }
        if let Some(e) = &self.s3_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(format!("--s3-endpoint must be an http(s) URL, got {e}"));
        }
        if self.header_timeout_s == 0 || self.body_timeout_s == 0 {
            return Err("--header-timeout-s and --body-timeout-s must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::with_data_dir("/tmp/x");
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.heartbeat(), Duration::from_secs(20));
        assert!(s.api_keys.is_empty());
        s.validate().unwrap();
    }

    #[test]
    fn serve_is_the_default_subcommand() {
        let a = Cli::try_parse_from(["capturelink", "--listen", "127.0.0.1:9"]).unwrap();
        assert_eq!(a.into_settings().listen.port(), 9);
        let b = Cli::try_parse_from(["capturelink", "serve", "--api-key", "k1,k2"]).unwrap();
        assert_eq!(b.into_settings().api_keys, vec!["k1", "k2"]);
    }

    #[test]
    fn operator_commands_parse() {
        let c = Cli::try_parse_from([
            "capturelink",
            "api-key",
            "create",
            "--name",
            "claims",
            "--data-dir",
            "/tmp/d",
        ])
        .unwrap();
        match c.into_command() {
            Command::ApiKey(ApiKeyCommand::Create { name, dir }) => {
                assert_eq!(name.as_deref(), Some("claims"));
                assert_eq!(dir.data_dir, PathBuf::from("/tmp/d"));
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["capturelink", "api-key", "revoke", "7"]).unwrap();
        assert!(matches!(
            c.into_command(),
            Command::ApiKey(ApiKeyCommand::Revoke { id: 7, .. })
        ));
        let c = Cli::try_parse_from([
            "capturelink",
            "restore",
            "b.zip",
            "--data-dir",
            "x",
            "--force",
        ])
        .unwrap();
        assert!(matches!(
            c.into_command(),
            Command::Restore(RestoreArgs { force: true, .. })
        ));
        let c = Cli::try_parse_from(["capturelink"]).unwrap();
        assert!(matches!(c.into_command(), Command::Serve(_)));
    }

    #[test]
    fn retention_is_off_by_default_and_positive() {
        let mut s = Settings::with_data_dir("/tmp/x");
        assert_eq!(s.retention_days, None);
        s.retention_days = Some(0);
        assert!(s.validate().is_err());
        s.retention_days = Some(30);
        s.validate().unwrap();
    }

    #[test]
    fn the_database_url_is_checked() {
        let mut s = Settings::with_data_dir("/tmp/x");
        assert_eq!(s.database_url, None);
        s.database_url = Some("postgres://u:p@db.internal:5432/capturelink".into());
        assert_eq!(s.validate(), Ok(()));
        s.database_url = Some("postgresql://db.internal/capturelink".into());
        assert_eq!(s.validate(), Ok(()));
        s.database_url = Some("sqlite://data/capturelink.db".into());
        assert!(s.validate().unwrap_err().contains("postgres://"));
        s.database_url = None;
        assert_eq!(s.database_pool, 16);
        s.database_pool = 1;
        assert!(s.validate().unwrap_err().contains("--database-pool"));
    }

    #[test]
    fn public_only_webhooks_refuse_a_private_server_wide_url() {
        let mut s = Settings::with_data_dir("/tmp/x");
        s.webhook_url = Some("http://10.1.2.3/hook".into());
        assert_eq!(s.validate(), Ok(()));
        s.webhook_public_only = true;
        assert!(s.validate().unwrap_err().contains("10.1.2.3"));
        s.webhook_url = Some("https://claims.example.com/hook".into());
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn several_nodes_need_postgres_and_shared_secrets() {
        let mut s = Settings::with_data_dir("/tmp/x");
        assert_eq!(s.nats_url, None);
        s.nats_url = Some("nats://127.0.0.1:4222".into());
        assert!(s.validate().unwrap_err().contains("--database-url"));
        s.database_url = Some("postgres://db.internal/capturelink".into());
        assert!(s.validate().unwrap_err().contains("--secret"));
        s.secret = Some("a shared secret of enough length".into());
        s.webhook_secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        assert_eq!(s.validate(), Ok(()));
        s.nats_url = Some("http://127.0.0.1:4222".into());
        assert!(s.validate().unwrap_err().contains("nats://"));
    }

    #[test]
    fn webhook_deliveries_are_kept_at_least_a_day() {
        let mut s = Settings::with_data_dir("/tmp/x");
        assert_eq!(s.webhook_keep_days, 30);
        s.webhook_keep_days = 0;
        assert!(s.validate().unwrap_err().contains("--webhook-keep-days"));
    }

    #[test]
    fn the_media_url_is_checked() {
        let mut s = Settings::with_data_dir("/tmp/x");
        assert_eq!(s.media_url, None);
        assert_eq!(s.s3_region, "us-east-1");
        s.s3_endpoint = Some("http://127.0.0.1:9000".into());
        assert!(s.validate().is_err(), "an endpoint without a media url");
        s.media_url = Some("s3://claims/images".into());
        s.validate().unwrap();
        s.media_url = Some("file:///srv/images".into());
        assert!(s.validate().is_err());
        s.media_url = Some("s3://claims".into());
        s.s3_endpoint = Some("127.0.0.1:9000".into());
        assert!(s.validate().is_err());
    }

    #[test]
    fn backup_and_restore_refuse_an_s3_image_store() {
        let c = Cli::try_parse_from(["capturelink", "backup", "b.zip", "--media-url", "s3://m"])
            .unwrap();
        let Command::Backup(a) = c.into_command() else {
            panic!("backup")
        };
        let err = a.media.require_local("backup").unwrap_err();
        assert!(
            err.contains("s3://m") && err.contains("versioning"),
            "{err}"
        );
        let c = Cli::try_parse_from(["capturelink", "restore", "b.zip"]).unwrap();
        let Command::Restore(a) = c.into_command() else {
            panic!("restore")
        };
        if std::env::var_os("CAPTURELINK_MEDIA_URL").is_none() {
            a.media.require_local("restore").unwrap();
        }
    }

    #[test]
    fn turn_without_secret_is_refused() {
        let mut s = Settings::with_data_dir("/tmp/x");
        s.turn_urls = vec!["turn:example.org:3478".into()];
        assert!(s.validate().is_err());
    }
}
