//! The accept loop: HTTP/1.1 over plain TCP or TLS, with limits against slow clients and the
//! graceful shutdown of `axum::serve`.
//!
//! Why a loop of our own (about a hundred lines) rather than `axum::serve` or the axum-server
//! crate: `axum::serve` takes no hyper settings, so it has neither TLS nor a header read timeout.
//! axum-server has both, but it is one more crate between us and hyper, with a shutdown `Handle`
//! of its own beside our `CancellationToken`, where the shutdown must stay exactly what the tests
//! pin down: stop accepting, let in-flight requests finish, leave upgraded WebSockets to the
//! application (which closes them with 1001). hyper's own HTTP/1.1 builder gives the header
//! timeout and upgrades, tokio-rustls (already compiled for reqwest) the TLS with a bounded
//! handshake, and the shutdown below is `axum::serve`'s plus a backstop ([`DRAIN_LIMIT`]).
//! HTTP/1.1 only, as `axum::serve` served it here (axum's `http2` feature is off): the header
//! timeout and WebSocket upgrades are HTTP/1.1 mechanisms, and HTTP/2 would need limits of its own.

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::middleware::AddExtension;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::config::Settings;

/// How long connections may go on finishing their requests after shutdown before they are cut: a
/// backstop against a response that never ends, not a limit well-behaved clients meet.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// The limits on slow clients, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To send a request's headers, to finish a TLS handshake; also how long an idle keep-alive
    /// connection stays open (hyper starts the clock whenever it waits for a request head).
    pub header: Duration,
    /// The longest a request body may go without a byte arriving.
    pub body: Duration,
}

impl Timeouts {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            header: Duration::from_secs(s.header_timeout_s.max(1)),
            body: Duration::from_secs(s.body_timeout_s.max(1)),
        }
    }
}

/// What each connection is served by: the router, with the peer's address as
/// `ConnectInfo<SocketAddr>` (per-IP limits read it).
type ConnService = AddExtension<Router, ConnectInfo<SocketAddr>>;

/// Serves `app` on `listener` until `shutdown` is cancelled; then stops accepting, lets every
/// connection finish the request it is in, and returns once they have all closed. Upgraded
/// connections (WebSockets) are no longer hyper's by then: the application ends those.
pub async fn run(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // A stalled body fails its request (`TimeoutBody` restarts the clock at every frame, so a
    // slow but moving upload is never cut). Only bodies: a total request timeout would end the
    // long-lived WebSocket and event-stream responses, whose requests have no body to wait for.
    let app = app.layer(RequestBodyTimeoutLayer::new(timeouts.body));
    let mut make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    let connections = TaskTracker::new();
    let cut = CancellationToken::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        // Small signaling messages go out at once rather than waiting for Nagle's timer.
        let _ = stream.set_nodelay(true);
        // `IntoMakeServiceWithConnectInfo` is always ready and never fails.
        let service = match make_service.call(remote).await {
            Ok(s) => s,
            Err(never) => match never {},
        };
        connections.spawn(connection(
            stream,
            service,
            tls.clone(),
            timeouts,
            shutdown.clone(),
            cut.clone(),
        ));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_LIMIT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "requests still running {DRAIN_LIMIT:?} after shutdown; closing their connections"
        );
        cut.cancel();
        connections.wait().await;
    }
    Ok(())
}

async fn connection(
    stream: TcpStream,
    service: ConnService,
    tls: Option<TlsAcceptor>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
    cut: CancellationToken,
) {
    let Some(acceptor) = tls else {
        return http1(stream, service, timeouts, shutdown, cut).await;
    };
    // A client that opens a connection and never finishes the handshake is a slow client too.
    let handshake = tokio::time::timeout(timeouts.header, acceptor.accept(stream));
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        },
    };
    http1(stream, service, timeouts, shutdown, cut).await
}

async fn http1<I>(
    io: I,
    service: ConnService,
    timeouts: Timeouts,
    shutdown: CancellationToken,
    cut: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    let conn = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    let mut conn = pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return done(r),
        _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    // The request in flight (an upload, say) finishes; an idle connection closes at once.
    tokio::select! {
        r = conn.as_mut() => done(r),
        _ = cut.cancelled() => {}
    }
}

fn done(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        if e.is_timeout() {
            tracing::debug!("closed a connection that sent no complete request in time");
        } else {
            tracing::trace!(error = %e, "connection ended with an error");
        }
    }
}

/// As `axum::serve`: errors about one connection are that connection's; others (out of file
/// descriptors) would spin the loop, so it pauses.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
