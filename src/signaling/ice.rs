//! `welcome.ice_servers`: STUN URLs as configured, and TURN URLs with short-lived credentials in the
//! coturn REST API scheme (username `expiry:session`, password base64 of HMAC-SHA1 over the
//! username with the shared secret), so the TURN server needs no per-user state.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct IceConfig {
    pub stun_urls: Vec<String>,
    pub turn_urls: Vec<String>,
    pub turn_secret: Option<String>,
    pub turn_ttl_s: u64,
}

/// The coturn REST API password for `username`.
pub fn turn_password(secret: &str, username: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

impl IceConfig {
    /// The ICE servers for one session, with credentials valid from `now_s` for the TTL.
    pub fn servers(&self, session_id: &str, now_s: u64) -> Vec<IceServer> {
        let mut out = Vec::new();
        if !self.stun_urls.is_empty() {
            out.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let (false, Some(secret)) = (self.turn_urls.is_empty(), &self.turn_secret) {
            let username = format!("{}:{session_id}", now_s + self.turn_ttl_s);
            out.push(IceServer {
                urls: self.turn_urls.clone(),
                credential: Some(turn_password(secret, &username)),
                username: Some(username),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_credentials_follow_the_coturn_scheme() {
        let cfg = IceConfig {
            stun_urls: vec!["stun:stun.example.org:3478".into()],
            turn_urls: vec!["turn:turn.example.org:3478?transport=udp".into()],
            turn_secret: Some("north".into()),
            turn_ttl_s: 600,
        };
        let s = cfg.servers("ses_1", 1_000);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].urls, vec!["stun:stun.example.org:3478"]);
        assert_eq!(s[1].username.as_deref(), Some("1600:ses_1"));
        // Known answer: base64(HMAC-SHA1("north", "1600:ses_1")), computed independently with
        // `printf %s 1600:ses_1 | openssl dgst -sha1 -hmac north -binary | base64`.
        assert_eq!(
            s[1].credential.as_deref(),
            Some("Z2L7LPDScQcp54S/GfoBieqphG0=")
        );
    }

    #[test]
    fn nothing_configured_means_no_servers() {
        assert!(IceConfig::default().servers("s", 0).is_empty());
    }
}
