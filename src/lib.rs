//! CaptureLink: guided photo capture for motor-insurance claims.
//!
//! An agent in a browser console and a customer on a phone are paired over a WebSocket
//! ([`signaling`]); their session's events are sequenced and logged ([`session`], [`store`]) so a
//! reconnect resumes without loss; claims systems drive it over REST ([`api`]).
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod capture;
pub mod config;
pub mod error;
pub mod health;
pub mod media;
pub mod metrics;
pub mod ops;
pub mod retention;
pub mod serve;
pub mod session;
pub mod signaling;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod vocabulary;
pub mod web;
pub mod webhooks;
