//! The image store: where originals (exactly as received, the evidence) and their thumbnails are
//! kept, both named by the original's SHA-256 and never rewritten.
//!
//! Two implementations, chosen by `--media-url`: a directory under the data dir ([`MediaStore`],
//! the default) and an S3-compatible bucket ([`S3Store`]). Either way an image is stored before the
//! database row that names it commits, so an acknowledged capture has its bytes: on disk, written
//! and synced; in S3, its PUT acknowledged. What a crash leaves between the two (images no row
//! names) the orphan sweep at start removes.

mod local;
mod s3;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

pub use local::MediaStore;
pub use s3::{S3Location, S3Store};

/// An original stored by an upload whose thumbnail is not written yet.
#[derive(Debug)]
pub struct StoredOriginal {
    pub sha256: String,
    ext: &'static str,
    /// This upload created the image (it was not there already as another capture's).
    wrote: bool,
}

/// Why the image store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The local file system failed (a full disk among others).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The object store did not answer in time or answered with a server error, after retries.
    #[error("the object store is unavailable: {0}")]
    Unavailable(String),
    /// The image a capture names is not there.
    #[error("image missing: {0}")]
    Missing(String),
    /// Any other refusal of the object store (credentials, permissions, the bucket).
    #[error("the object store refused: {0}")]
    Refused(String),
}

impl MediaError {
    /// The local disk is full.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, MediaError::Io(e)
            if e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// An image read for a GET: its length and its bytes as they arrive.
pub struct ImageBody {
    pub len: u64,
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

impl ImageBody {
    fn new(
        len: u64,
        stream: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    ) -> Self {
        Self {
            len,
            stream: stream.boxed(),
        }
    }

    /// All of it in memory (an image is at most `--max-upload-bytes`).
    pub async fn into_bytes(mut self) -> std::io::Result<Bytes> {
        let mut buf = bytes::BytesMut::with_capacity(usize::try_from(self.len).unwrap_or(0));
        while let Some(chunk) = self.stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }
}

/// What the service does with images: an upload stores its original (while the image is decoded)
/// and then its thumbnail, or discards what it wrote when it is refused; the GET endpoints and the
/// export read them; retention removes them; the start-up sweep removes what no capture names.
#[async_trait::async_trait]
pub trait ImageStore: Send + Sync + 'static {
    /// Where the images are, for the logs.
    fn describe(&self) -> String;

    /// Stores an upload's original, durably, before its thumbnail exists. The result says
    /// whether this call created it (it may be there already as another capture's).
    async fn put_original(
        &self,
        sha256_hex: String,
        ext: &'static str,
        original: Bytes,
    ) -> Result<StoredOriginal, MediaError>;

    /// Stores the thumbnail of an original from [`ImageStore::put_original`]; when it cannot be
    /// stored, the original is discarded too.
    async fn put_thumbnail(
        &self,
        stored: &StoredOriginal,
        thumbnail: Vec<u8>,
    ) -> Result<(), MediaError>;

    /// Removes an original that [`ImageStore::put_original`] created for an upload that was then
    /// refused (one that was there before stays).
    async fn discard(&self, stored: &StoredOriginal);

    /// Removes an original and its thumbnail; only for content no capture names any more.
    async fn remove_capture(&self, sha256_hex: &str, ext: &str);

    async fn original(&self, sha256_hex: &str, ext: &str) -> Result<ImageBody, MediaError>;

    async fn thumbnail(&self, sha256_hex: &str) -> Result<ImageBody, MediaError>;

    /// Removes images whose hash no capture names (and leftovers of interrupted writes); returns
    /// how many it removed.
    async fn sweep_orphans(&self, known: &HashSet<String>) -> Result<usize, MediaError>;
}

/// The image store the settings choose: S3 with `--media-url s3://…`, else `<data dir>/media`.
pub fn open(settings: &crate::config::Settings) -> anyhow::Result<Arc<dyn ImageStore>> {
    match &settings.media_url {
        Some(url) => {
            let location = S3Location::from_settings(url, settings).map_err(anyhow::Error::msg)?;
            Ok(Arc::new(S3Store::connect(&location)?))
        }
        None => Ok(Arc::new(MediaStore::open(&settings.data_dir)?)),
    }
}

/// `originals/ab/abcdef….jpg`: a two-hex-digit fan-out keeps directories (and listings) small.
fn original_name(sha256_hex: &str, ext: &str) -> String {
    let fan = sha256_hex.get(..2).unwrap_or("00");
    format!("originals/{fan}/{sha256_hex}.{ext}")
}

fn thumbnail_name(sha256_hex: &str) -> String {
    let fan = sha256_hex.get(..2).unwrap_or("00");
    format!("thumbnails/{fan}/{sha256_hex}.jpg")
}
