//! Integration tests: the real server, real SQLite file, real WebSocket clients.

mod support;

mod pairing;
