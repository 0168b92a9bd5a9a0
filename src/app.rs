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
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::{ApiKeys, TokenMinter};
use crate::capture::{Limits, Pipeline};
use crate::media::ImageStore;
use crate::metrics::Metrics;
use crate::throttle::{self, Throttle};
use crate::webhooks::{Dispatcher, Outbox, WebhookSettings};

/// The generated webhook signing secret, in the data dir.
pub const WEBHOOK_SECRET_FILE: &str = "webhook-secret";
use crate::config::Settings;
use crate::session::Registry;
use crate::signaling::ice::IceConfig;
use crate::signaling::origin_of;
use crate::store::Store;
use crate::{api, health, signaling, web};

pub struct AppInner {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub throttle: Throttle,
    pub store: Store,
    /// The images: `<data dir>/media` or an S3 bucket (`--media-url`).
    pub media: Arc<dyn ImageStore>,
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
    let limited = axum::middleware::from_fn_with_state(state.clone(), throttle::limit_requests);
    let mut rest = api::router().layer(limited.clone());
    if let Some(cors) = cors(&state.settings.cors_origins) {
        rest = rest.layer(cors);
    }
    let mut app = Router::new();
    if state.settings.test_echo_route {
        // Test-only (hidden setting): the Autobahn conformance run's echo with `/ws`'s limits.
        app = app.route("/__echo", get(signaling::echo::echo_handler));
    }
    app.nest("/api/v1", rest)
        .merge(api::openapi::docs_router())
        .route("/ws", get(signaling::ws_handler).layer(limited))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(web::router())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            // The path only: query strings carry join tokens.
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id)
        }))
        // Outside the trace layer, so the span has the id: the client's `X-Request-Id` if it sent
        // one, else a fresh UUID; echoed in the response for support tickets.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// CORS for the REST API, for the configured origins only (none by default: the pages are
/// same-origin, and claims systems call server to server).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                header::LOCATION,
                header::ETAG,
                header::RETRY_AFTER,
                HeaderName::from_static("idempotent-replayed"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    /// The API key generated on this start (first start without configured keys).
    pub generated_api_key: Option<String>,
    /// The certificate served, when the binary serves HTTPS itself.
    pub tls: Option<crate::tls::TlsInfo>,
    api_key_file: Option<PathBuf>,
    server: JoinHandle<std::io::Result<()>>,
    sweeper: JoinHandle<()>,
    /// The retention sweeper, when `--retention-days` is set.
    retention: Option<JoinHandle<()>>,
    /// Deletes the webhook outbox's finished rows after `--webhook-keep-days`.
    outbox_pruning: JoinHandle<()>,
    webhooks: JoinHandle<()>,
    /// Several nodes: this node's heartbeat and the sweep of dead nodes' participants.
    heartbeat: Option<JoinHandle<()>>,
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
        .unwrap_or_else(|| format!("{}://{addr}", scheme(&settings)))
        .trim_end_matches('/')
        .to_owned();
    let tls = crate::tls::load(&settings, addr, &public_url)?;
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
    let store = Store::open_configured(
        &settings.data_dir,
        settings.database_url.as_deref(),
        settings.db_busy_timeout(),
        settings.database_pool,
    )
    .await
    .context("opening the database")?;
    let mut store = store;
    let bus = match &settings.nats_url {
        // Several nodes: the database numbers events and the bus carries them; no node lock.
        Some(url) => {
            store
                .number_in_database()
                .context("several nodes (--nats-url)")?;
            let bus = crate::bus::Bus::connect(url)
                .await
                .with_context(|| format!("connecting to NATS at {url}"))?;
            store
                .node_heartbeat(bus.node(), crate::store::now_ms())
                .await
                .context("recording this node in the database")?;
            tracing::info!(node = bus.node(), "joined the cluster");
            Some(Arc::new(bus))
        }
        None => {
            store
                .lock_for_node()
                .await
                .context("locking the database for this node")?;
            None
        }
    };
    tracing::info!(database = store.describe(), "database open");
    // Keys created with `capturelink api-key create`, besides those of the settings or key file.
    let api_keys = api_keys.with_store(store.clone());
    let media = crate::media::open(&settings).context("opening the image store")?;
    // Images stored before a crash whose rows never committed are not evidence of anything.
    let known = store.capture_hashes().await?;
    let swept = media
        .sweep_orphans(&known)
        .await
        .with_context(|| format!("sweeping orphaned images in {}", media.describe()))?;
    if swept > 0 {
        tracing::info!(files = swept, "removed images no capture names");
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
        public_only: settings.webhook_public_only,
        horizon: Duration::from_secs(settings.webhook_horizon),
        base_backoff: Duration::from_millis(settings.webhook_backoff_ms.max(1)),
        ..WebhookSettings::new(webhook_secret)
    };
    let mut http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("CaptureLink-Webhooks/", env!("CARGO_PKG_VERSION")));
    if settings.webhook_public_only {
        http = http.dns_resolver(crate::webhooks::address::PublicOnly);
    }
    let http = http.build().context("building the webhook client")?;
    let metrics = Arc::new(Metrics::new());
    let dispatcher = Dispatcher::new(store.clone(), http, webhook_settings.clone())
        .map_err(|e| anyhow::anyhow!("webhook secret: {e}"))?
        .with_metrics(metrics.clone());
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
        registry: Registry::new(store.clone(), outbox.clone(), bus.clone()),
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
        metrics,
        throttle: Throttle::new(
            (settings.ip_rate, settings.ip_burst),
            (settings.key_rate, settings.key_burst),
            settings.max_ws_per_ip,
            settings.trust_forwarded_for,
        ),
        settings,
    }));

    let app = router(state.clone());
    let (acceptor, tls) = tls.map(|t| (t.acceptor, t.info)).unzip();
    let server = tokio::spawn(crate::serve::run(
        listener,
        app,
        acceptor,
        crate::serve::Timeouts::from_settings(&state.settings),
        state.shutdown.clone(),
    ));
    let sweeper = tokio::spawn(sweep_expired(state.clone()));
    let heartbeat = bus.map(|bus| tokio::spawn(keep_node_alive(state.clone(), bus)));
    let retention = state.settings.retention_days.map(|days| {
        tokio::spawn(crate::retention::run(
            state.store.clone(),
            state.media.clone(),
            days,
            state.shutdown.clone(),
        ))
    });
    let webhooks = tokio::spawn(dispatcher.run(state.shutdown.clone()));
    let outbox_pruning = tokio::spawn(crate::retention::run_webhook_pruning(
        state.store.clone(),
        state.settings.webhook_keep_days,
        state.shutdown.clone(),
    ));
    Ok(Running {
        addr,
        state,
        generated_api_key,
        tls,
        api_key_file,
        server,
        sweeper,
        retention,
        webhooks,
        outbox_pruning,
        heartbeat,
    })
}

/// `https` when the binary serves TLS itself, else `http` (also behind a TLS-terminating proxy).
fn scheme(settings: &Settings) -> &'static str {
    if crate::tls::enabled(settings) {
        "https"
    } else {
        "http"
    }
}

/// Expires sessions whose time is up, once a second: their peers get `session.closed` and 4010.
async fn sweep_expired(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(60) {
                    state.throttle.prune();
                }
                if let Err(e) = state.registry.expire_due().await {
                    tracing::warn!(error = %e, "expiry sweep failed");
                }
            }
        }
    }
}

/// Several nodes: records every few seconds that this node is alive, and tells the peers of the
/// participants of nodes that stopped doing so (died, or were cut off) that they left. When the
/// bus comes back after an outage, the live rooms read what they may have missed. On shutdown
/// the node's record goes, so its participants count as gone at once.
async fn keep_node_alive(state: AppState, bus: Arc<crate::bus::Bus>) {
    use crate::session::cluster::{HEARTBEAT, NODE_STALE_MS};
    use crate::signaling::protocol::{Event, LeaveReason};
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconnected = bus.reconnected();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = tick.tick() => {}
            Ok(()) = reconnected.changed() => {
                // A task of its own: a node with many rooms must not miss its heartbeats.
                let state = state.clone();
                tokio::spawn(async move { state.registry.resync().await });
                continue;
            }
        }
        let now = crate::store::now_ms();
        if let Err(e) = state.store.node_heartbeat(bus.node(), now).await {
            tracing::warn!(error = %e, "could not record this node's heartbeat");
        }
        let gone = match state
            .store
            .sweep_orphaned_participants(now - NODE_STALE_MS)
            .await
        {
            Ok(gone) => gone,
            Err(e) => {
                tracing::warn!(error = %e, "could not sweep the participants of dead nodes");
                continue;
            }
        };
        for (session, role, epoch) in gone {
            let Some(role) = crate::auth::Role::parse(&role) else {
                continue;
            };
            tracing::info!(session = %session, role = role.as_str(), "participant's node is gone");
            let open = matches!(state.store.get_session(&session).await, Ok(Some(s)) if s.status.is_open());
            let left = Event::PeerLeft {
                role,
                reason: LeaveReason::Timeout,
            };
            let told = async {
                bus.gone(&session, role, epoch);
                if open {
                    state
                        .registry
                        .publish(&session, &[role.peer()], &left)
                        .await?;
                }
                Ok::<_, crate::session::RoomError>(())
            }
            .await;
            if let Err(e) = told {
                tracing::warn!(session = %session, error = %e, "could not tell the peer");
            }
        }
    }
    if let Err(e) = state.store.forget_node(bus.node()).await {
        tracing::warn!(error = %e, "could not remove this node's record");
    }
    bus.flush().await;
}

impl Running {
    pub fn print_banner(&self) {
        println!(
            "listening on {}://{}",
            scheme(&self.state.settings),
            self.addr
        );
        println!("agent console: {}/agent/", self.state.public_url);
        if let Some(tls) = &self.tls {
            crate::tls::print_banner(tls);
        }
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
        if let Some(retention) = self.retention {
            let _ = retention.await;
        }
        let _ = self.webhooks.await;
        let _ = self.outbox_pruning.await;
        if let Some(heartbeat) = self.heartbeat {
            let _ = heartbeat.await;
        }
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
