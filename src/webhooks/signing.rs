//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, the MAC is HMAC-SHA256 with the
//! secret's bytes, and the header carries `v1,<base64 MAC>`; several space-separated signatures are
//! allowed (for key rotation), and a receiver accepts the message if any of them matches.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

const SECRET_PREFIX: &str = "whsec_";

/// The HMAC key, held as an HMAC state keyed once. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct Secret(HmacSha256);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the webhook secret is empty")]
    Empty,
    #[error("the webhook secret after `whsec_` is not valid base64")]
    Base64,
}

impl Secret {
    /// `whsec_<base64>` (the key is the decoded bytes, as Standard Webhooks libraries expect), or
    /// any other string, whose UTF-8 bytes are then the key.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let key = match s.strip_prefix(SECRET_PREFIX) {
            Some(b64) => B64.decode(b64.trim()).map_err(|_| SecretError::Base64)?,
            None => s.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        // HMAC takes a key of any length, so this error cannot happen.
        let mac = HmacSha256::new_from_slice(&key).map_err(|_| SecretError::Empty)?;
        Ok(Self(mac))
    }

    /// A new random secret in `whsec_` form (32 bytes of key), for a data dir without one.
    pub fn generate() -> String {
        let key: [u8; 32] = rand::random();
        format!("{SECRET_PREFIX}{}", B64.encode(key))
    }

    fn mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` value for one message: `v1,<base64 HMAC-SHA256>`.
pub fn sign(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = secret
        .mac(msg_id, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("v1,{}", B64.encode(tag))
}

/// The headers of one delivery attempt, Content-Type included.
pub fn headers(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
    use reqwest::header::{CONTENT_TYPE, HeaderValue};
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Ids are `msg_` + hex and the rest is digits and base64: always valid header values.
    if let Ok(v) = HeaderValue::from_str(msg_id) {
        h.insert(HEADER_ID, v);
    }
    h.insert(HEADER_TIMESTAMP, HeaderValue::from(timestamp));
    if let Ok(v) = HeaderValue::from_str(&sign(secret, msg_id, timestamp, body)) {
        h.insert(HEADER_SIGNATURE, v);
    }
    h
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing or unreadable header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the tolerance")]
    TimestampOutOfRange,
    #[error("no signature matches")]
    NoMatch,
}

/// Checks a received message as a Standard Webhooks receiver would, against the current time.
pub fn verify(
    secret: &Secret,
    headers: &HeaderMap,
    body: &[u8],
    tolerance: std::time::Duration,
) -> Result<(), VerifyError> {
    let get = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(VerifyError::MissingHeader(name))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    verify_at(
        secret,
        get(HEADER_ID)?,
        get(HEADER_TIMESTAMP)?,
        get(HEADER_SIGNATURE)?,
        body,
        tolerance,
        now,
    )
}

/// [`verify`] with the header values given one by one and the time (`now`, unix seconds) injected.
/// The timestamp may be at most `tolerance` in the past or the future.
pub fn verify_at(
    secret: &Secret,
    msg_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    tolerance: std::time::Duration,
    now: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(ts).abs() > tolerance {
        return Err(VerifyError::TimestampOutOfRange);
    }
    let mac = secret.mac(msg_id, timestamp.trim(), body);
    let matched = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| B64.decode(b64).ok())
        // `verify_slice` compares in constant time.
        .any(|tag| mac.clone().verify_slice(&tag).is_ok());
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // The example secret of the Standard Webhooks spec; its key in hex is
    // 31f290f6bf06298aab4f08d43c3f082cf648a362da2da4b0.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn matches_the_spec_example() {
        // The spec's published test vector; openssl gives the same:
        // printf '%s' 'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}' \
        //   | openssl dgst -sha256 -mac HMAC -macopt hexkey:31f2...a4b0 -binary | base64
        let s = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(
            sign(
                &s,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn matches_openssl_known_answers() {
        // printf '%s' 'msg_1.1700000000.{"a":1}' \
        //   | openssl dgst -sha256 -mac HMAC -macopt hexkey:31f2...a4b0 -binary | base64
        let s = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(
            sign(&s, "msg_1", 1700000000, br#"{"a":1}"#),
            "v1,hVsFLpmw4Ib/Xm0eZLt3KqYBZdt0U8gdGeuz0EsGv78="
        );
        // A secret without the prefix is the key itself:
        // ... | openssl dgst -sha256 -mac HMAC -macopt key:rawsecret -binary | base64
        let raw = Secret::parse("rawsecret").unwrap();
        assert_eq!(
            sign(&raw, "msg_1", 1700000000, br#"{"a":1}"#),
            "v1,8H4Oc4h1ZamlObresOtDGXf0sR3hRo+8bDnBldb0n0A="
        );
    }

    #[test]
    fn secrets_parse() {
        assert_eq!(Secret::parse("").unwrap_err(), SecretError::Empty);
        assert_eq!(Secret::parse("whsec_").unwrap_err(), SecretError::Empty);
        assert_eq!(Secret::parse("whsec_!!").unwrap_err(), SecretError::Base64);
        let generated = Secret::generate();
        assert!(generated.starts_with("whsec_"));
        let b64 = generated.strip_prefix("whsec_").unwrap();
        assert_eq!(B64.decode(b64).unwrap().len(), 32);
        assert!(Secret::parse(&generated).is_ok());
        assert_eq!(format!("{:?}", Secret::parse("k").unwrap()), "Secret(..)");
    }

    #[test]
    fn verify_accepts_and_rejects() {
        let s = Secret::parse(SPEC_SECRET).unwrap();
        let tol = Duration::from_secs(300);
        let body = br#"{"a":1}"#;
        let sig = sign(&s, "msg_1", 1700000000, body);
        let ok = |id, ts, sig: &str, body: &[u8], now| verify_at(&s, id, ts, sig, body, tol, now);

        assert_eq!(ok("msg_1", "1700000000", &sig, body, 1700000000), Ok(()));
        assert_eq!(ok("msg_1", "1700000000", &sig, body, 1700000300), Ok(()));
        // Another signature first (key rotation) still verifies.
        let two = format!("v1,AAAA {sig}");
        assert_eq!(ok("msg_1", "1700000000", &two, body, 1700000000), Ok(()));

        let tampered = br#"{"a":2}"#;
        assert_eq!(
            ok("msg_1", "1700000000", &sig, tampered, 1700000000),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            ok("msg_2", "1700000000", &sig, body, 1700000000),
            Err(VerifyError::NoMatch)
        );
        // An old (or far future) timestamp fails even with a correct signature.
        assert_eq!(
            ok("msg_1", "1700000000", &sig, body, 1700000301),
            Err(VerifyError::TimestampOutOfRange)
        );
        assert_eq!(
            ok("msg_1", "1700000000", &sig, body, 1699999699),
            Err(VerifyError::TimestampOutOfRange)
        );
        assert_eq!(
            ok("msg_1", "soon", &sig, body, 1700000000),
            Err(VerifyError::BadTimestamp)
        );
        let other = Secret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert_eq!(
            verify_at(&other, "msg_1", "1700000000", &sig, body, tol, 1700000000),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn headers_verify_now() {
        let s = Secret::parse(SPEC_SECRET).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let h = headers(&s, "msg_abc", now, b"{}");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h[HEADER_ID], "msg_abc");
        assert_eq!(verify(&s, &h, b"{}", Duration::from_secs(300)), Ok(()));
        assert_eq!(
            verify(&s, &h, b"{ }", Duration::from_secs(300)),
            Err(VerifyError::NoMatch)
        );
        let mut missing = h.clone();
        missing.remove(HEADER_SIGNATURE);
        assert_eq!(
            verify(&s, &missing, b"{}", Duration::from_secs(300)),
            Err(VerifyError::MissingHeader(HEADER_SIGNATURE))
        );
    }
}
