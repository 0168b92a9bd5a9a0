//! The S3 image store (`--media-url s3://bucket[/prefix]`), through the `object_store` crate: any
//! S3-compatible API (AWS, MinIO, Ceph, …), plain http allowed for a local endpoint.
//!
//! Objects have the local store's layout below the prefix (`originals/ab/abcd….jpg`,
//! `thumbnails/ab/abcd….jpg`). A PUT is atomic and durable once acknowledged, so there is no
//! temporary name: an object is whole or absent. Requests are retried briefly (a few attempts
//! within [`RETRY_WITHIN`]); past that, an upload is refused with 503 and stores nothing.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use super::{ImageBody, ImageStore, MediaError, StoredOriginal};
use crate::config::Settings;

/// How long a request is retried (connection refused, timeouts, 5xx) before it fails.
pub const RETRY_WITHIN: Duration = Duration::from_secs(10);
/// An object younger than this is left alone by the orphan sweep, even if no row names it: another
/// node sharing the bucket may be between its PUT and its row's commit.
pub const SWEEP_GRACE: Duration = Duration::from_secs(3600);

/// Where the bucket is and how to sign requests to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without slashes at either end ("" for the bucket's root).
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<(String, String), String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("--media-url must be s3://bucket[/prefix], got {url}"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("--media-url names no bucket: {url}"));
        }
        Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
    }

    /// From the settings; credentials not given there come from `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (and the rest of the usual AWS environment, see [`S3Store::connect`]).
    pub fn from_settings(url: &str, s: &Settings) -> Result<Self, String> {
        let (bucket, prefix) = Self::parse(url)?;
        Ok(Self {
            bucket,
            prefix,
            endpoint: s.s3_endpoint.clone(),
            region: s.s3_region.clone(),
            access_key_id: s.s3_access_key_id.clone(),
            secret_access_key: s.s3_secret_access_key.clone(),
        })
    }
}

pub struct S3Store {
    client: AmazonS3,
    bucket: String,
    prefix: String,
}

fn refused(e: object_store::Error) -> MediaError {
    match e {
        object_store::Error::NotFound { path, .. } => MediaError::Missing(path),
        object_store::Error::Generic { .. } => MediaError::Unavailable(e.to_string()),
        other => MediaError::Refused(other.to_string()),
    }
}

impl S3Store {
    /// A client for the bucket (no request is made yet). `AWS_*` environment variables fill in
    /// what the settings leave out (credentials, a session token); with no credentials at all, the
    /// instance's role is asked (EC2/ECS metadata).
    pub fn connect(at: &S3Location) -> anyhow::Result<Self> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&at.bucket)
            .with_region(&at.region)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 4,
                retry_timeout: RETRY_WITHIN,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60)),
            );
        if let Some(endpoint) = &at.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(id) = &at.access_key_id {
            b = b.with_access_key_id(id);
        }
        if let Some(secret) = &at.secret_access_key {
            b = b.with_secret_access_key(secret);
        }
        Ok(Self {
            client: b.build()?,
            bucket: at.bucket.clone(),
            prefix: at.prefix.clone(),
        })
    }

    fn key(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    async fn put(&self, key: &ObjectPath, bytes: Bytes) -> Result<(), MediaError> {
        self.client
            .put(key, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(refused)
    }

    async fn delete(&self, key: &ObjectPath) {
        match self.client.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(key = %key, error = %e, "could not delete an image object"),
        }
    }

    async fn get(&self, key: &ObjectPath) -> Result<ImageBody, MediaError> {
        let got = self.client.get(key).await.map_err(refused)?;
        let len = got.meta.size;
        Ok(ImageBody::new(
            len,
            got.into_stream().map_err(std::io::Error::other),
        ))
    }
}

#[async_trait::async_trait]
impl ImageStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn put_original(
        &self,
        sha256_hex: String,
        ext: &'static str,
        original: Bytes,
    ) -> Result<StoredOriginal, MediaError> {
        let key = self.key(&super::original_name(&sha256_hex, ext));
        // Content-named: an object of that name and size holds these bytes already.
        let there = match self.client.head(&key).await {
            Ok(meta) => meta.size == original.len() as u64,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(refused(e)),
        };
        if !there {
            self.put(&key, original).await?;
        }
        Ok(StoredOriginal {
            sha256: sha256_hex,
            ext,
            wrote: !there,
        })
    }

    async fn put_thumbnail(
        &self,
        stored: &StoredOriginal,
        thumbnail: Vec<u8>,
    ) -> Result<(), MediaError> {
        let key = self.key(&super::thumbnail_name(&stored.sha256));
        if let Err(e) = self.put(&key, Bytes::from(thumbnail)).await {
            self.discard(stored).await;
            return Err(e);
        }
        Ok(())
    }

    async fn discard(&self, stored: &StoredOriginal) {
        if stored.wrote {
            self.delete(&self.key(&super::original_name(&stored.sha256, stored.ext)))
                .await;
        }
    }

    async fn remove_capture(&self, sha256_hex: &str, ext: &str) {
        self.delete(&self.key(&super::original_name(sha256_hex, ext)))
            .await;
        self.delete(&self.key(&super::thumbnail_name(sha256_hex)))
            .await;
    }

    async fn original(&self, sha256_hex: &str, ext: &str) -> Result<ImageBody, MediaError> {
        self.get(&self.key(&super::original_name(sha256_hex, ext)))
            .await
    }

    async fn thumbnail(&self, sha256_hex: &str) -> Result<ImageBody, MediaError> {
        self.get(&self.key(&super::thumbnail_name(sha256_hex)))
            .await
    }

    /// Lists the prefix's `originals/` and `thumbnails/` and deletes the objects no capture names,
    /// if they are older than [`SWEEP_GRACE`].
    async fn sweep_orphans(&self, known: &HashSet<String>) -> Result<usize, MediaError> {
        let cutoff = chrono_cutoff();
        let mut removed = 0;
        for kind in ["originals", "thumbnails"] {
            let prefix = self.key(kind);
            let mut listing = self.client.list(Some(&prefix));
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(refused)?;
                let stem = meta
                    .location
                    .filename()
                    .and_then(|f| f.split('.').next())
                    .unwrap_or("");
                if known.contains(stem) || meta.last_modified.timestamp_millis() > cutoff {
                    continue;
                }
                self.delete(&meta.location).await;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// [`SWEEP_GRACE`] before now, in epoch milliseconds.
fn chrono_cutoff() -> i64 {
    crate::store::now_ms().saturating_sub(SWEEP_GRACE.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_urls_parse() {
        assert_eq!(
            S3Location::parse("s3://claims").unwrap(),
            ("claims".into(), "".into())
        );
        assert_eq!(
            S3Location::parse("s3://claims/prod/images/").unwrap(),
            ("claims".into(), "prod/images".into())
        );
        assert!(S3Location::parse("s3:///x").is_err());
        assert!(S3Location::parse("https://claims").is_err());
    }
}
