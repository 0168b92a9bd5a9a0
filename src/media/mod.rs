//! The image files: originals exactly as received (evidence), named by their SHA-256, and their
//! thumbnails, under `<data dir>/media`.
//!
//! A file is written to `tmp/`, fsynced, renamed into place and its directory fsynced, so after a
//! crash a file is either whole under its final name or absent. Files are written before the
//! database row that names them; at start, files no row names (left by a crash between the two)
//! are removed.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

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

    /// `originals/ab/abcdef….jpg`: a two-hex-digit fan-out keeps directories small.
    pub fn original_path(&self, sha256_hex: &str, ext: &str) -> PathBuf {
        let fan = sha256_hex.get(..2).unwrap_or("00");
        self.root
            .join("originals")
            .join(fan)
            .join(format!("{sha256_hex}.{ext}"))
    }

    pub fn thumbnail_path(&self, sha256_hex: &str) -> PathBuf {
        let fan = sha256_hex.get(..2).unwrap_or("00");
        self.root
            .join("thumbnails")
            .join(fan)
            .join(format!("{sha256_hex}.jpg"))
    }

    /// Writes `bytes` durably under `dest` (blocking; run it on the blocking pool).
    fn put(&self, dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
        if let Ok(meta) = std::fs::metadata(dest)
            && meta.len() == bytes.len() as u64
        {
            // Content-named: the same name holds the same bytes already.
            return Ok(());
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
        outcome
    }

    /// Stores an original and its thumbnail; returns once both are on disk.
    pub async fn put_capture(
        &self,
        sha256_hex: String,
        ext: &'static str,
        original: bytes::Bytes,
        thumbnail: Vec<u8>,
    ) -> std::io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.put(&this.original_path(&sha256_hex, ext), &original)?;
            this.put(&this.thumbnail_path(&sha256_hex), &thumbnail)
        })
        .await
        .map_err(std::io::Error::other)?
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
}
