//! The application: shared state, the router, start-up and graceful shutdown.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::TraceLayer;

use crate::auth::{ApiKeys, TokenMinter};
use crate::capture::{Limits, Pipeline};
use crate::media::MediaStore;
use crate::webhooks::{Dispatcher, Outbox, WebhookSettings};

/// The generated webhook signing secret, in the data dir.
pub const WEBHOOK_SECRET_FILE: &str = "webhook-secret";
use crate::config::Settings;
use crate::session::Registry;
use crate::signaling::ice::IceConfig;
use crate::signaling::origin_of;
use crate::store::Store;
use crate::{api, signaling, web};

pub struct AppInner {
    pub settings: Settings,
    pub store: Store,
    pub media: MediaStore,
    pub pipeline: Pipeline,
    pub outbox: Arc<Outbox>,
    pub registry: Registry,
    pub api_keys: ApiKeys,
    pub tokens: TokenMinter,
    pub ice: IceConfig,
    /// Base of join links, without a trailing slash.
    pub public_url: String,
    pub allowed_origins: Vec<String>,
    /// Cancelled when the server shuts down: WebSockets close with 1001.
    pub shutdown: CancellationToken,
    /// The WebSocket connections, awaited on shutdown.
    pub tracker: TaskTracker,
    conn_ids: AtomicU64,
}

/// Cheap to clone: handed to every handler.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .nest("/api/v1", api::router())
        .merge(api::openapi::docs_router())
        .route("/ws", get(signaling::ws_handler))
        .route("/healthz", get(|| async { "ok" }))
        .merge(web::router())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // The path only: query strings carry join tokens.
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
        }))
        .with_state(state)
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    /// The API key generated on this start (first start without configured keys).
    pub generated_api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    server: JoinHandle<std::io::Result<()>>,
    sweeper: JoinHandle<()>,
    webhooks: JoinHandle<()>,
}

/// Opens the data dir and database, binds the listener and starts serving.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    settings.validate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let public_url = settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let allowed_origins = if settings.allowed_origins.is_empty() {
        vec![origin_of(&public_url)]
    } else {
        settings
            .allowed_origins
            .iter()
            .map(|o| origin_of(o))
            .collect()
    };
    let secret = match &settings.secret {
        Some(s) => s.clone(),
        None => {
            crate::auth::keys_file(&settings.data_dir, crate::auth::SECRET_FILE, || {
                crate::auth::random_secret("")
            })?
            .0
        }
    };
    let (api_keys, generated_api_key, api_key_file) = if settings.api_keys.is_empty() {
        let (key, created) =
            crate::auth::keys_file(&settings.data_dir, crate::auth::API_KEY_FILE, || {
                crate::auth::random_secret("clk_")
            })?;
        (
            ApiKeys::new([&key]),
            created.then_some(key),
            Some(settings.data_dir.join(crate::auth::API_KEY_FILE)),
        )
    } else {
        (ApiKeys::new(&settings.api_keys), None, None)
    };
    let store = Store::open(&settings.data_dir)
        .await
        .context("opening the database")?;
    let media = MediaStore::open(&settings.data_dir).context("opening the media dir")?;
    // Files written before a crash whose rows never committed are not evidence of anything.
    let known = store.capture_hashes().await?;
    let swept = media
        .sweep_orphans(&known)
        .context("sweeping orphaned files")?;
    if swept > 0 {
        tracing::info!(files = swept, "removed files no capture names");
    }
    let webhook_secret = match &settings.webhook_secret {
        Some(s) => s.clone(),
        None => {
            crate::auth::keys_file(
                &settings.data_dir,
                WEBHOOK_SECRET_FILE,
                crate::webhooks::Secret::generate,
            )?
            .0
        }
    };
    let webhook_settings = WebhookSettings {
        server_url: settings.webhook_url.clone(),
        horizon: Duration::from_secs(settings.webhook_horizon),
        base_backoff: Duration::from_millis(settings.webhook_backoff_ms.max(1)),
        ..WebhookSettings::new(webhook_secret)
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("CaptureLink-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the webhook client")?;
    let dispatcher = Dispatcher::new(store.clone(), http, webhook_settings.clone())
        .map_err(|e| anyhow::anyhow!("webhook secret: {e}"))?;
    let outbox = Arc::new(Outbox::new(
        webhook_settings,
        dispatcher.notifier(),
        public_url.clone(),
    ));
    let pipeline = Pipeline::new(Limits::default(), settings.decode_concurrency);
    let ice = IceConfig {
        stun_urls: settings.stun_urls.clone(),
        turn_urls: settings.turn_urls.clone(),
        turn_secret: settings.turn_secret.clone(),
        turn_ttl_s: settings.turn_ttl,
    };
    let state = AppState(Arc::new(AppInner {
        registry: Registry::new(store.clone(), outbox.clone()),
        store,
        media,
        pipeline,
        outbox,
        api_keys,
        tokens: TokenMinter::new(secret.into_bytes()),
        ice,
        public_url,
        allowed_origins,
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        conn_ids: AtomicU64::new(0),
        settings,
    }));

    let app = router(state.clone());
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(state.shutdown.clone().cancelled_owned())
            .into_future(),
    );
    let sweeper = tokio::spawn(sweep_expired(state.clone()));
    let webhooks = tokio::spawn(dispatcher.run(state.shutdown.clone()));
    Ok(Running {
        addr,
        state,
        generated_api_key,
        api_key_file,
        server,
        sweeper,
        webhooks,
    })
}

/// Expires sessions whose time is up, once a second: their peers get `session.closed` and 4010.
async fn sweep_expired(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = state.registry.expire_due().await {
                    tracing::warn!(error = %e, "expiry sweep failed");
                }
            }
        }
    }
}

impl Running {
    pub fn print_banner(&self) {
        println!("listening on http://{}", self.addr);
        println!("agent console: {}/agent/", self.state.public_url);
        match (&self.generated_api_key, &self.api_key_file) {
            (Some(key), Some(file)) => {
                println!(
                    "API key (generated on first start, kept in {}): {key}",
                    file.display()
                )
            }
            (None, Some(file)) => println!("API key: in {}", file.display()),
            _ => println!("API keys: from settings"),
        }
    }

    /// Stops serving: WebSockets are closed with 1001, in-flight requests finish, the database closes.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        if let Err(e) = self
            .server
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(Into::into))
        {
            tracing::warn!(error = %e, "server ended with an error");
        }
        let _ = self.sweeper.await;
        let _ = self.webhooks.await;
        self.state.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        self.state.store.close().await;
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn serve_until_signal(self) -> anyhow::Result<()> {
        wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
        Ok(())
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
