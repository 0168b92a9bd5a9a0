//! The client message parser: every text frame a client sends goes through
//! `capturelink::signaling::protocol::parse` before anything else looks at it.
//!
//! Beyond "never panics": what it accepts, relayed to the peer and parsed again, is the same
//! message (the peer sees exactly the validated fields), and every refusal serializes.

#![no_main]

use capturelink::auth::Role;
use capturelink::signaling::protocol::{self, Event, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer hands over text frames only, so valid UTF-8, at most 64 KiB.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > protocol::MAX_MESSAGE_BYTES {
        return;
    }
    match parse(text) {
        Err(e) => {
            let reply: serde_json::Value =
                serde_json::from_str(&protocol::error(&e)).expect("an error reply is JSON");
            assert_eq!(reply["type"], "error");
        }
        Ok(incoming) => {
            if let Some(id) = &incoming.id {
                assert!(id.is_string() || id.is_number());
                let _ = protocol::ack(id);
            }
            for role in Role::BOTH {
                if !incoming.msg.allowed_from(role) {
                    continue;
                }
                let Some(event) = Event::relayed(role, incoming.msg.clone()) else {
                    continue;
                };
                let relayed = event.to_text(1);
                let again = parse(&relayed)
                    .unwrap_or_else(|e| panic!("relayed {relayed} does not parse: {e:?}"));
                assert_eq!(again.msg, incoming.msg, "relayed as {relayed}");
            }
        }
    }
});
