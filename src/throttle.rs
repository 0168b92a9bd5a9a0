//! Limits on how much one client may ask of the service: REST and WebSocket handshakes per
//! second, by client IP and by credential (API key or join token), and open WebSockets per IP.
//!
//! The rate limits are GCRA buckets from the `governor` crate (one small state per key, no timer
//! per key); a refusal is 429 problem+json `rate_limited` with `Retry-After`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::ApiError;

/// Open WebSockets per client IP.
type OpenCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

pub struct Throttle {
    by_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    by_credential: Option<DefaultKeyedRateLimiter<[u8; 16]>>,
    ws_per_ip: usize,
    ws_open: OpenCounts,
    trust_forwarded: bool,
}

fn quota(rate: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(rate)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(rate)))
}

impl Throttle {
    /// `0` for a rate or the WebSocket cap turns that limit off.
    pub fn new(
        ip: (u32, u32),
        credential: (u32, u32),
        ws_per_ip: usize,
        trust_forwarded: bool,
    ) -> Self {
        Self {
            by_ip: quota(ip.0, ip.1).map(RateLimiter::keyed),
            by_credential: quota(credential.0, credential.1).map(RateLimiter::keyed),
            ws_per_ip,
            ws_open: Arc::default(),
            trust_forwarded,
        }
    }

    /// Forgets buckets that have refilled, so idle clients cost nothing. Called now and then.
    pub fn prune(&self) {
        if let Some(l) = &self.by_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.by_credential {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// The client's address: the peer's, or behind a trusted proxy the last `X-Forwarded-For` hop
    /// (the one the proxy itself appended).
    pub fn client_ip(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        if self.trust_forwarded
            && let Some(ip) = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|s| s.trim().parse::<IpAddr>().ok())
                .next_back()
        {
            return Some(ip);
        }
        peer
    }

    /// Takes one request from the IP's and the credential's buckets.
    pub fn check(&self, ip: Option<IpAddr>, credential: Option<&str>) -> Result<(), ApiError> {
        let clock = DefaultClock::default();
        if let (Some(l), Some(ip)) = (&self.by_ip, ip)
            && let Err(not_until) = l.check_key(&ip)
        {
            return Err(limited(not_until.wait_time_from(clock.now()), "address"));
        }
        if let (Some(l), Some(c)) = (&self.by_credential, credential) {
            // Keyed by a digest: the limiter's map never holds a secret.
            let digest = Sha256::digest(c.as_bytes());
            let mut key = [0u8; 16];
            key.copy_from_slice(&digest[..16]);
            if let Err(not_until) = l.check_key(&key) {
                return Err(limited(not_until.wait_time_from(clock.now()), "credential"));
            }
        }
        Ok(())
    }

    /// Counts an opening WebSocket against its IP; `None` when the IP has its fill. The slot is
    /// given back when the returned guard drops (the connection ends).
    pub fn open_ws(&self, ip: Option<IpAddr>) -> Option<WsSlot> {
        let Some(ip) = ip else {
            return Some(WsSlot { held: None });
        };
        if self.ws_per_ip == 0 {
            return Some(WsSlot { held: None });
        }
        let mut open = self.ws_open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.ws_per_ip {
            return None;
        }
        *n += 1;
        Some(WsSlot {
            held: Some((ip, self.ws_open.clone())),
        })
    }
}

/// One open WebSocket of an IP; gives the slot back on drop.
pub struct WsSlot {
    held: Option<(IpAddr, OpenCounts)>,
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        if let Some((ip, open)) = self.held.take() {
            let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

fn limited(wait: Duration, what: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from this {what}; retry later"),
    );
    // Whole seconds, rounded up: "0" would invite an immediate retry.
    e.retry_after = Some(wait.as_millis().div_ceil(1000).max(1) as u64);
    e
}

/// The peer's address, where the server recorded it.
pub fn peer_ip(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The client's address as [`limit_requests`] saw it, for the handlers behind it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

/// Middleware for `/api/v1` and `/ws`: one request from each of the client's buckets.
pub async fn limit_requests(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let throttle = &state.throttle;
    let ip = throttle.client_ip(req.headers(), peer_ip(&req));
    req.extensions_mut().insert(ClientIp(ip));
    let credential = crate::auth::credential(req.headers(), req.uri());
    if let Err(e) = throttle.check(ip, credential.as_deref()) {
        tracing::debug!(ip = ?ip, "rate limited");
        return e.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t = Throttle::new((1, 3), (0, 0), 0, false);
        let ip = Some("10.0.0.1".parse().unwrap());
        for _ in 0..3 {
            t.check(ip, None).unwrap();
        }
        let e = t.check(ip, None).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, "rate_limited");
        assert_eq!(e.retry_after, Some(1));
        // Another address has its own bucket.
        t.check(Some("10.0.0.2".parse().unwrap()), None).unwrap();
    }

    #[test]
    fn credentials_have_their_own_buckets() {
        let t = Throttle::new((0, 0), (1, 2), 0, false);
        t.check(None, Some("key-a")).unwrap();
        t.check(None, Some("key-a")).unwrap();
        assert!(t.check(None, Some("key-a")).is_err());
        t.check(None, Some("key-b")).unwrap();
        // No credential, no credential limit.
        t.check(None, None).unwrap();
    }

    #[test]
    fn websockets_per_ip_are_capped_and_given_back() {
        let t = Throttle::new((0, 0), (0, 0), 2, false);
        let ip = Some("10.0.0.1".parse().unwrap());
        let a = t.open_ws(ip).unwrap();
        let _b = t.open_ws(ip).unwrap();
        assert!(t.open_ws(ip).is_none());
        assert!(t.open_ws(Some("10.0.0.9".parse().unwrap())).is_some());
        drop(a);
        assert!(t.open_ws(ip).is_some());
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
        let peer = Some("127.0.0.1".parse().unwrap());
        let untrusted = Throttle::new((0, 0), (0, 0), 0, false);
        assert_eq!(untrusted.client_ip(&h, peer), peer);
        let trusted = Throttle::new((0, 0), (0, 0), 0, true);
        assert_eq!(
            trusted.client_ip(&h, peer),
            Some("5.6.7.8".parse().unwrap())
        );
    }
}
