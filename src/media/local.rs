//! The local image store (the default): originals exactly as received (evidence), named by their
//! SHA-256, and their thumbnails, under `<data dir>/media`.
//!
//! A file is written to `tmp/`, fsynced, renamed into place and its directory fsynced, so after a
//! crash a file is either whole under its final name or absent. Files are written before the
//! database row that names them; at start, files no row names (left by a crash between the two)
//! are removed.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{ImageBody, ImageStore, MediaError, StoredOriginal};

#[derive(Debug, Clone)]
pub struct MediaStore {
    root: PathBuf,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl MediaStore {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let root = data_dir.join("media");
        for sub in ["originals", "thumbnails", "tmp"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(Self { root })
    }

    /// The media dir of `data_dir`, without creating or touching anything (for the operator's
    /// commands, which read or lay out files beside a running service).
    pub fn at(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("media"),
        }
    }

    /// `originals/ab/abcdef….jpg` under the media dir.
    pub fn original_path(&self, sha256_hex: &str, ext: &str) -> PathBuf {
        self.root.join(super::original_name(sha256_hex, ext))
    }

    pub fn thumbnail_path(&self, sha256_hex: &str) -> PathBuf {
        self.root.join(super::thumbnail_name(sha256_hex))
    }

    /// Writes `bytes` durably under `dest` (blocking; run it on the blocking pool). True when
    /// this call wrote the file, false when it was there already.
    fn put(&self, dest: &Path, bytes: &[u8]) -> std::io::Result<bool> {
        if let Ok(meta) = std::fs::metadata(dest)
            && meta.len() == bytes.len() as u64
        {
            // Content-named: the same name holds the same bytes already.
            return Ok(false);
        }
        let dir = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir)?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.part", uuid::Uuid::now_v7().simple()));
        let outcome = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dest)?;
            sync_dir(dir)
        })();
        if outcome.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        outcome.map(|()| true)
    }

    /// Stores an original and its thumbnail; returns once both are on disk. When the thumbnail
    /// cannot be written (a full disk, say), the original this call wrote is removed again: a
    /// refused upload leaves no file behind.
    pub async fn put_capture(
        &self,
        sha256_hex: String,
        ext: &'static str,
        original: bytes::Bytes,
        thumbnail: Vec<u8>,
    ) -> std::io::Result<()> {
        let stored = self.put_original(sha256_hex, ext, original).await?;
        self.put_thumbnail(&stored, thumbnail).await
    }

    /// Stores an upload's original, before its thumbnail exists (so the write can run while the
    /// image is decoded). Follow with [`Self::put_thumbnail`], or [`Self::discard`] if the upload
    /// is refused after all.
    pub async fn put_original(
        &self,
        sha256_hex: String,
        ext: &'static str,
        original: bytes::Bytes,
    ) -> std::io::Result<StoredOriginal> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let wrote = this.put(&this.original_path(&sha256_hex, ext), &original)?;
            Ok(StoredOriginal {
                sha256: sha256_hex,
                ext,
                wrote,
            })
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Stores the thumbnail of an original from [`Self::put_original`]. When it cannot be written,
    /// the original is discarded too.
    pub async fn put_thumbnail(
        &self,
        stored: &StoredOriginal,
        thumbnail: Vec<u8>,
    ) -> std::io::Result<()> {
        let this = self.clone();
        let path = self.thumbnail_path(&stored.sha256);
        let written = tokio::task::spawn_blocking(move || this.put(&path, &thumbnail))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(e) = written {
            self.discard(stored).await;
            return Err(e);
        }
        Ok(())
    }

    /// Removes an original that [`Self::put_original`] wrote for an upload that was then refused
    /// (one that was there before, another capture's, stays).
    pub async fn discard(&self, stored: &StoredOriginal) {
        if stored.wrote {
            let _ = tokio::fs::remove_file(self.original_path(&stored.sha256, stored.ext)).await;
        }
    }

    /// Removes the files of a capture that was not recorded (the database refused the row).
    /// Only call it for content no other capture uses.
    pub async fn remove_capture(&self, sha256_hex: &str, ext: &str) {
        let _ = tokio::fs::remove_file(self.original_path(sha256_hex, ext)).await;
        let _ = tokio::fs::remove_file(self.thumbnail_path(sha256_hex)).await;
    }

    /// Deletes leftovers of interrupted writes and files whose hash no capture row names.
    /// Returns how many files it removed.
    pub fn sweep_orphans(&self, known: &HashSet<String>) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.root.join("tmp"))? {
            std::fs::remove_file(entry?.path())?;
            removed += 1;
        }
        for kind in ["originals", "thumbnails"] {
            for fan in std::fs::read_dir(self.root.join(kind))? {
                let fan = fan?.path();
                if !fan.is_dir() {
                    continue;
                }
                for file in std::fs::read_dir(&fan)? {
                    let path = file?.path();
                    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                    if !known.contains(stem) {
                        std::fs::remove_file(&path)?;
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// A file of the store for a GET: its length and its bytes as they are read.
async fn open_file(path: PathBuf) -> Result<ImageBody, MediaError> {
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            MediaError::Missing(path.display().to_string())
        } else {
            MediaError::Io(e)
        }
    })?;
    let len = file.metadata().await?.len();
    Ok(ImageBody::new(len, tokio_util::io::ReaderStream::new(file)))
}

#[async_trait::async_trait]
impl ImageStore for MediaStore {
    fn describe(&self) -> String {
        format!("the directory {}", self.root.display())
    }

    async fn put_original(
        &self,
        sha256_hex: String,
        ext: &'static str,
        original: bytes::Bytes,
    ) -> Result<StoredOriginal, MediaError> {
        Ok(MediaStore::put_original(self, sha256_hex, ext, original).await?)
    }

    async fn put_thumbnail(
        &self,
        stored: &StoredOriginal,
        thumbnail: Vec<u8>,
    ) -> Result<(), MediaError> {
        Ok(MediaStore::put_thumbnail(self, stored, thumbnail).await?)
    }

    async fn discard(&self, stored: &StoredOriginal) {
        MediaStore::discard(self, stored).await
    }

    async fn remove_capture(&self, sha256_hex: &str, ext: &str) {
        MediaStore::remove_capture(self, sha256_hex, ext).await
    }

    async fn original(&self, sha256_hex: &str, ext: &str) -> Result<ImageBody, MediaError> {
        open_file(self.original_path(sha256_hex, ext)).await
    }

    async fn thumbnail(&self, sha256_hex: &str) -> Result<ImageBody, MediaError> {
        open_file(self.thumbnail_path(sha256_hex)).await
    }

    async fn sweep_orphans(&self, known: &HashSet<String>) -> Result<usize, MediaError> {
        Ok(MediaStore::sweep_orphans(self, known)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_are_content_named_and_orphans_swept() {
        let dir = tempfile::tempdir().unwrap();
        let m = MediaStore::open(dir.path()).unwrap();
        let sha = "ab".repeat(32);
        m.put_capture(
            sha.clone(),
            "jpg",
            bytes::Bytes::from_static(b"orig"),
            b"thumb".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read(m.original_path(&sha, "jpg")).unwrap(),
            b"orig"
        );
        assert_eq!(std::fs::read(m.thumbnail_path(&sha)).unwrap(), b"thumb");
        let other = "cd".repeat(32);
        m.put_capture(
            other.clone(),
            "png",
            bytes::Bytes::from_static(b"x"),
            b"y".to_vec(),
        )
        .await
        .unwrap();
        std::fs::write(m.root.join("tmp").join("left.part"), b"half").unwrap();

        let known: HashSet<String> = [sha.clone()].into();
        assert_eq!(m.sweep_orphans(&known).unwrap(), 3);
        assert!(m.original_path(&sha, "jpg").exists());
        assert!(!m.original_path(&other, "png").exists());
        assert!(!m.thumbnail_path(&other).exists());
    }

    #[tokio::test]
    async fn a_thumbnail_that_cannot_be_written_takes_its_original_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = MediaStore::open(dir.path()).unwrap();
        let sha = "ef".repeat(32);
        // A file where the thumbnail's fan-out directory should be: the thumbnail write fails
        // after the original was written (as on a disk that fills up between the two).
        std::fs::write(m.root.join("thumbnails").join("ef"), b"in the way").unwrap();
        let err = m
            .put_capture(
                sha.clone(),
                "jpg",
                bytes::Bytes::from_static(b"orig"),
                b"thumb".to_vec(),
            )
            .await;
        assert!(err.is_err());
        assert!(!m.original_path(&sha, "jpg").exists(), "original removed");
        assert_eq!(std::fs::read_dir(m.root.join("tmp")).unwrap().count(), 0);

        // An original that was there before (another capture's) stays.
        std::fs::remove_file(m.root.join("thumbnails").join("ef")).unwrap();
        m.put_capture(
            sha.clone(),
            "jpg",
            bytes::Bytes::from_static(b"orig"),
            b"t".to_vec(),
        )
        .await
        .unwrap();
        std::fs::remove_dir_all(m.root.join("thumbnails").join("ef")).unwrap();
        std::fs::write(m.root.join("thumbnails").join("ef"), b"in the way").unwrap();
        let again = m
            .put_capture(
                sha.clone(),
                "jpg",
                bytes::Bytes::from_static(b"orig"),
                b"t".to_vec(),
            )
            .await;
        assert!(again.is_err());
        assert!(
            m.original_path(&sha, "jpg").exists(),
            "a shared original is kept"
        );
    }
}
