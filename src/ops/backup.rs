//! `capturelink backup FILE`: a consistent copy of a data dir, taken while the service runs.
//!
//! 1. The database is copied with SQLite's `VACUUM INTO` (one read transaction, so one committed
//!    state, while the service keeps writing through WAL).
//! 2. Then the image files the snapshot's captures name (originals and thumbnails) are copied.
//!    Files are written before the row that names them, are named by their content and never
//!    rewritten, so every row in the snapshot has its files on disk by now. The only exception is
//!    a retention purge that ran between the two steps: such files are left out and counted.
//! 3. With the generated secrets (`secret`, `api-key`, `webhook-secret`, where present) and a
//!    `manifest.json` listing every entry with its size and SHA-256.
//!
//! The archive is a zip file, with the data dir's own layout inside. Zip rather than tar: the
//! `zip` crate is already a dependency (the session export uses it), and its central directory
//! lets `restore` read the manifest first and check each entry against it. Images are stored as
//! they are (JPEG, PNG and WebP are compressed already); the database is deflated.
//!
//! The archive is written to a temporary file beside FILE, fsynced and renamed into place, so FILE
//! is either a complete backup or untouched.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

use crate::capture::kind_from_mime;
use crate::media::MediaStore;
use crate::store::DB_FILE;
use crate::store::admin::{LiveDb, inspect};

/// The `format` of a backup's manifest.
pub const FORMAT: &str = "capturelink.backup.v1";
pub const MANIFEST: &str = "manifest.json";
/// Secrets generated into the data dir, carried so restored join links and keys keep working.
pub const SECRET_FILES: [&str; 3] = [
    crate::auth::SECRET_FILE,
    crate::auth::API_KEY_FILE,
    crate::app::WEBHOOK_SECRET_FILE,
];

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The version of CaptureLink that wrote it.
    pub version: String,
    pub created_at: String,
    /// The database entry (`capturelink.db`).
    pub database: String,
    /// Migration versions the database has.
    pub migrations: Vec<i64>,
    pub sessions: i64,
    pub captures: i64,
    /// Every entry but the manifest, with its size and SHA-256.
    pub files: Vec<FileEntry>,
    /// Content (SHA-256) whose files a retention purge removed during the backup.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Path inside the archive and inside the data dir, with `/`.
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub sessions: i64,
    pub captures: i64,
    pub files: usize,
    pub bytes: u64,
    pub skipped: usize,
}

/// One file to put into the archive.
struct Source {
    name: String,
    path: PathBuf,
    /// The content it belongs to, for a file a concurrent purge may have removed.
    content: Option<String>,
    compress: bool,
    secret: bool,
}

/// Writes a backup of `data_dir` to `file`.
pub async fn backup(data_dir: &Path, file: &Path) -> anyhow::Result<Summary> {
    super::require_database(data_dir)?;
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The snapshot goes beside FILE (the same file system as the archive, not the data dir's).
    let staging = tempfile::Builder::new()
        .prefix(".capturelink-backup-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary dir in {}", parent.display()))?;
    let snapshot = staging.path().join(DB_FILE);

    let live = LiveDb::open(data_dir)
        .await
        .with_context(|| format!("opening the database in {}", data_dir.display()))?;
    let outcome = async {
        live.vacuum_into(&snapshot)
            .await
            .context("snapshotting the database (VACUUM INTO)")?;
        let contents = inspect(&snapshot).await.context("reading the snapshot")?;

        // Only now the files: every row of the snapshot has its files on disk already.
        let media = MediaStore::at(data_dir);
        let mut sources = vec![Source {
            name: DB_FILE.to_owned(),
            path: snapshot.clone(),
            content: None,
            compress: true,
            secret: false,
        }];
        for (sha, mime) in &contents.content {
            let ext = kind_from_mime(mime).map(|k| k.ext()).unwrap_or("bin");
            for path in [media.original_path(sha, ext), media.thumbnail_path(sha)] {
                sources.push(Source {
                    name: relative_name(data_dir, &path)?,
                    path,
                    content: Some(sha.clone()),
                    compress: false,
                    secret: false,
                });
            }
        }
        for name in SECRET_FILES {
            let path = data_dir.join(name);
            if path.is_file() {
                sources.push(Source {
                    name: name.to_owned(),
                    path,
                    content: None,
                    compress: false,
                    secret: true,
                });
            }
        }

        let manifest = Manifest {
            format: FORMAT.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: crate::session::view::rfc3339(crate::store::now_ms()),
            database: DB_FILE.to_owned(),
            migrations: contents.migrations.clone(),
            sessions: contents.sessions,
            captures: contents.captures,
            files: Vec::new(),
            skipped: Vec::new(),
        };
        let (file_out, parent_out) = (file.to_path_buf(), parent.clone());
        let (written, missing) = tokio::task::spawn_blocking(move || {
            write_archive(&file_out, &parent_out, manifest, sources)
        })
        .await
        .context("the archive writer stopped")??;

        // A missing file is acceptable only if no capture names its content any more (a purge ran
        // after the snapshot); anything else means the data dir lost a file it should have.
        for sha in &missing {
            if live.hash_in_use(sha).await? {
                let _ = std::fs::remove_file(file);
                anyhow::bail!(
                    "the image files of content {sha} are missing from {}, though a capture \
                     names them; no backup was written",
                    data_dir.display()
                );
            }
        }
        Ok(Summary {
            sessions: contents.sessions,
            captures: contents.captures,
            files: written.files.len(),
            bytes: written.files.iter().map(|f| f.bytes).sum(),
            skipped: missing.len(),
        })
    }
    .await;
    live.close().await;
    outcome
}

/// `media/originals/ab/abcd….jpg`: the path below the data dir, with `/`.
fn relative_name(data_dir: &Path, path: &Path) -> anyhow::Result<String> {
    let rel = path
        .strip_prefix(data_dir)
        .with_context(|| format!("{} is outside the data dir", path.display()))?;
    let parts: Vec<&str> = rel
        .components()
        .map(|c| c.as_os_str().to_str().context("a file name is not UTF-8"))
        .collect::<anyhow::Result<_>>()?;
    Ok(parts.join("/"))
}

/// Writes the archive (blocking). Returns the manifest written and the content whose files were
/// missing (left out, and listed as skipped).
fn write_archive(
    file: &Path,
    dir: &Path,
    mut manifest: Manifest,
    sources: Vec<Source>,
) -> anyhow::Result<(Manifest, Vec<String>)> {
    let tmp = tempfile::Builder::new()
        .prefix(".capturelink-backup-")
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut zip = zip::ZipWriter::new(tmp.reopen()?);
    let mut missing: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    for src in sources {
        if src.content.as_ref().is_some_and(|c| missing.contains(c)) {
            continue;
        }
        let mut input = match std::fs::File::open(&src.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && src.content.is_some() => {
                missing.extend(src.content);
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", src.path.display()));
            }
        };
        let len = input.metadata()?.len();
        let mut options = SimpleFileOptions::default()
            .compression_method(if src.compress {
                zip::CompressionMethod::Deflated
            } else {
                zip::CompressionMethod::Stored
            })
            .large_file(len >= u64::from(u32::MAX));
        if src.secret {
            options = options.unix_permissions(0o600);
        }
        zip.start_file(src.name.as_str(), options)?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            zip.write_all(&buf[..n])?;
            bytes += n as u64;
        }
        manifest.files.push(FileEntry {
            name: src.name,
            bytes,
            sha256: hex::encode(hasher.finalize()),
        });
    }
    // Thumbnails of skipped content may have gone in before the original was found missing.
    manifest.files.retain(|f| {
        !missing
            .iter()
            .any(|sha| f.name.starts_with("media/") && f.name.contains(sha.as_str()))
    });
    manifest.skipped = missing.clone();
    zip.start_file(
        MANIFEST,
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated),
    )?;
    zip.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
    zip.finish()?.sync_all()?;
    tmp.persist(file)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", file.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok((manifest, missing))
}
