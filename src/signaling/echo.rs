//! `/__echo`: a WebSocket that sends back every message it receives, with the production socket
//! limits of [`super::limits`]. It exists only under the hidden `--test-echo-route` setting, for
//! the Autobahn conformance run (scripts/autobahn): the same binary and the same WebSocket stack
//! as `/ws`, without the application protocol on top.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;

use crate::session::close_code;

/// `GET /__echo`
pub async fn echo_handler(upgrade: WebSocketUpgrade) -> Response {
    super::limits(upgrade).on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    // Pings are answered by the WebSocket layer itself; a received close is answered there too,
    // and flushed by the next read, which then ends the stream.
    while let Some(frame) = socket.recv().await {
        let reply = match frame {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => m,
            Ok(_) => continue,
            Err(e) => {
                // Over the 64 KiB limit: say so with 1009, as `/ws` does. Any other protocol
                // error has been answered (or the socket is gone): just stop.
                if super::connection::is_too_big(e) {
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code: close_code::TOO_BIG,
                            reason: "message larger than 64 KiB".into(),
                        })))
                        .await;
                }
                return;
            }
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}
