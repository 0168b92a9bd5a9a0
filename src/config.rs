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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default when no subcommand is given).
    Serve(Settings),
}

impl Cli {
    /// The settings of `serve`, whichever way it was spelled.
    pub fn into_settings(self) -> Settings {
        match self.command {
            Some(Command::Serve(s)) => s,
            None => self.settings,
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

    /// Images decoded at the same time (each may take a few hundred MB for a 40 MP still).
    #[arg(long, env = "CAPTURELINK_DECODE_CONCURRENCY", default_value_t = 2)]
    pub decode_concurrency: usize,

    /// A server-wide webhook endpoint every session's events also go to.
    #[arg(long, env = "CAPTURELINK_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

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

    /// Log format.
    #[arg(long, env = "CAPTURELINK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Settings {
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
        if self.max_upload_bytes < 1024 {
            return Err("--max-upload-bytes must be at least 1024".into());
        }
        if self.decode_concurrency == 0 {
            return Err("--decode-concurrency must be positive".into());
        }
        if self.session_ttl == 0 {
            return Err("--session-ttl must be positive".into());
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
    fn turn_without_secret_is_refused() {
        let mut s = Settings::with_data_dir("/tmp/x");
        s.turn_urls = vec!["turn:example.org:3478".into()];
        assert!(s.validate().is_err());
    }
}
