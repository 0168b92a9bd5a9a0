//! A bare WebSocket relay, built only as the yardstick of docs/BENCHMARKS.md: the same stack as
//! CaptureLink's `/ws` (axum 0.8 `ws` on tokio-tungstenite 0.29, the same buffer and size limits
//! as src/signaling/mod.rs, the same shape of connection: a writer task that owns the sink, fed by
//! a bounded queue, and a reader loop) and nothing else: no auth, no database, no log, no seq, no
//! validation. Two sockets that name the same `?session=` are paired; each text frame one sends is
//! forwarded, byte for byte, to the other.
//!
//! When the second socket of a session arrives, both are sent `{"type":"paired"}` (what
//! `peer.joined` is to CaptureLink), so the load generator knows when to start.
//!
//! ```sh
//! cargo run --release -p capturelink-loadgen --bin bare-relay -- --listen 127.0.0.1:18081
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

/// The same limits as src/signaling/mod.rs and src/signaling/protocol.rs.
const READ_BUFFER: usize = 2 * 1024;
const WRITE_BUFFER: usize = 8 * 1024;
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
const MAX_WRITE_BUFFER: usize = MAX_MESSAGE_BYTES + 16 * 1024;

#[derive(Parser, Debug)]
#[command(about = "Bare WebSocket relay: the comparison point of the relay benchmark")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: SocketAddr,
    /// Outbound frames queued per connection (CaptureLink's `--ws-queue` default).
    #[arg(long, default_value_t = 256)]
    queue: usize,
}

type PeerTx = mpsc::Sender<String>;
/// A socket waiting for its partner: its own sender, and where the partner's goes.
type Waiting = (PeerTx, oneshot::Sender<PeerTx>);

/// Sessions with one socket waiting for its partner: the partner hands its sender over.
#[derive(Clone)]
struct Relay {
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
    queue: usize,
}

#[derive(serde::Deserialize)]
struct Params {
    session: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The same runtime as the service: tokio's multi-threaded default, one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let relay = Relay {
            waiting: Arc::default(),
            queue: args.queue,
        };
        let app = Router::new()
            .route("/ws", get(ws))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(relay);
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!("bare relay listening on ws://{}/ws", listener.local_addr()?);
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await?;
        Ok(())
    })
}

async fn ws(State(relay): State<Relay>, Query(p): Query<Params>, up: WebSocketUpgrade) -> Response {
    up.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| connection(socket, relay, p.session))
}

async fn connection(socket: WebSocket, relay: Relay, session: String) {
    let (tx, mut rx) = mpsc::channel::<String>(relay.queue);
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    // Pair: the first socket of a session waits for the second to hand over its sender.
    let peer: Option<PeerTx> = {
        let waiting =
            relay
                .waiting
                .lock()
                .expect("lock")
                .remove(&session)
                .map(|(first, hand_over)| {
                    let _ = hand_over.send(tx.clone());
                    first
                });
        match waiting {
            Some(first) => Some(first),
            None => {
                let (hand_over, handed) = oneshot::channel();
                relay
                    .waiting
                    .lock()
                    .expect("lock")
                    .insert(session.clone(), (tx.clone(), hand_over));
                // Keep reading while waiting, so a close is noticed.
                tokio::select! {
                    p = handed => p.ok(),
                    _ = drain_until_closed(&mut stream) => None,
                }
            }
        }
    };
    let Some(peer) = peer else {
        relay.waiting.lock().expect("lock").remove(&session);
        drop(tx);
        let _ = writer.await;
        return;
    };
    let _ = tx.try_send(r#"{"type":"paired"}"#.to_owned());

    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(text) => {
                // A full queue closes the slow peer in CaptureLink; here the frame is dropped.
                let _ = peer.try_send(text.as_str().to_owned());
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    // The partner holds a sender to this writer too: stop it rather than wait for the partner.
    writer.abort();
}

async fn drain_until_closed(stream: &mut futures_util::stream::SplitStream<WebSocket>) {
    while let Some(Ok(msg)) = stream.next().await {
        if matches!(msg, Message::Close(_)) {
            break;
        }
    }
}
