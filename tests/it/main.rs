//! Integration tests: the real server, real SQLite file, real WebSocket clients.

mod support;

mod captures;
mod claims;
mod cluster;
mod conformance;
mod durability;
mod faults;
mod health;
mod lifecycle;
mod limits;
mod media_s3;
mod openapi;
mod ops;
mod pages;
mod pairing;
mod postgres;
mod protocol;
mod sessions_api;
mod tls;
