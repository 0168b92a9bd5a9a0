//! Integration tests: the real server, real SQLite file, real WebSocket clients.

mod support;

mod captures;
mod claims;
mod durability;
mod lifecycle;
mod openapi;
mod pages;
mod pairing;
mod protocol;
mod sessions_api;
