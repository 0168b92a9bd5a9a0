//! `capturelink restore FILE --data-dir DIR`: lays a backup out as a data dir that
//! `capturelink serve --data-dir DIR` starts on.
//!
//! Only the entries the manifest lists are extracted, each checked against its size and SHA-256
//! (and an original against the content hash it is named by), each written to a temporary name,
//! fsynced and renamed. The database comes last, so an interrupted restore leaves no database
//! that would look complete. A data dir that is not empty is refused unless `--force`, which
//! replaces its database (with its WAL files) and its media dir and keeps anything else.
//! Stop the service of DIR before restoring into it.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::backup::{FORMAT, FileEntry, MANIFEST, Manifest, SECRET_FILES};
use crate::store::DB_FILE;

#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub sessions: i64,
    pub captures: i64,
    pub files: usize,
}

pub async fn restore(file: &Path, data_dir: &Path, force: bool) -> anyhow::Result<Summary> {
    let (file_in, dir) = (file.to_path_buf(), data_dir.to_path_buf());
    let manifest = tokio::task::spawn_blocking(move || extract(&file_in, &dir, force))
        .await
        .context("the restore stopped")??;
    let contents = crate::store::admin::inspect(&data_dir.join(DB_FILE))
        .await
        .context("checking the restored database")?;
    anyhow::ensure!(
        contents.sessions == manifest.sessions && contents.captures == manifest.captures,
        "the restored database holds {} sessions and {} captures, the manifest says {} and {}",
        contents.sessions,
        contents.captures,
        manifest.sessions,
        manifest.captures
    );
    Ok(Summary {
        sessions: contents.sessions,
        captures: contents.captures,
        files: manifest.files.len(),
    })
}

fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// The path below `data_dir` an archive entry may be restored to, or None if the name is not
/// one a backup writes (absolute, `..`, or outside the known layout).
fn target_of(data_dir: &Path, name: &str) -> Option<PathBuf> {
    let rel = Path::new(name);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let known = name == DB_FILE
        || SECRET_FILES.contains(&name)
        || name.starts_with("media/originals/")
        || name.starts_with("media/thumbnails/");
    known.then(|| data_dir.join(rel))
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    let outcome = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match outcome {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn extract(file: &Path, data_dir: &Path, force: bool) -> anyhow::Result<Manifest> {
    let archive =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut zip = zip::ZipArchive::new(archive)
        .with_context(|| format!("{} is not a zip archive", file.display()))?;
    let manifest: Manifest = {
        let mut entry = zip.by_name(MANIFEST).with_context(|| {
            format!(
                "{} has no {MANIFEST}: not a CaptureLink backup",
                file.display()
            )
        })?;
        let mut text = Vec::new();
        entry.read_to_end(&mut text)?;
        serde_json::from_slice(&text).context("reading the manifest")?
    };
    anyhow::ensure!(
        manifest.format == FORMAT,
        "unknown backup format {:?} (this version reads {FORMAT})",
        manifest.format
    );
    anyhow::ensure!(
        manifest.files.iter().any(|f| f.name == DB_FILE),
        "the backup has no database"
    );
    let mut targets = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let target = target_of(data_dir, &f.name)
            .with_context(|| format!("the backup names an unexpected entry {:?}", f.name))?;
        targets.push((f, target));
    }

    if !is_empty_dir(data_dir)? {
        anyhow::ensure!(
            force,
            "{} is not empty; restore into an empty dir, or give --force to replace its database \
             and images",
            data_dir.display()
        );
        for name in [
            DB_FILE.to_owned(),
            format!("{DB_FILE}-wal"),
            format!("{DB_FILE}-shm"),
            "media".to_owned(),
        ] {
            remove_if_present(&data_dir.join(name))?;
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;

    // The database last: until it is in place, the dir does not look restored.
    targets.sort_by_key(|(f, _)| f.name == DB_FILE);
    for (entry, target) in &targets {
        let secret = SECRET_FILES.contains(&entry.name.as_str());
        let mut input = zip
            .by_name(&entry.name)
            .with_context(|| format!("the backup lacks {}", entry.name))?;
        write_checked(&mut input, entry, target, secret)?;
    }
    Ok(manifest)
}

/// Copies one entry to `target` through a temporary file, checking size and SHA-256.
fn write_checked(
    input: &mut impl Read,
    entry: &FileEntry,
    target: &Path,
    secret: bool,
) -> anyhow::Result<()> {
    let dir = target.parent().context("an entry without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".restore-")
        .suffix(".part")
        .tempfile_in(dir)?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])?;
        bytes += n as u64;
    }
    let sha = hex::encode(hasher.finalize());
    anyhow::ensure!(
        bytes == entry.bytes && sha == entry.sha256,
        "{} is damaged: {bytes} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
        entry.name,
        entry.bytes,
        entry.sha256
    );
    if entry.name.starts_with("media/originals/") {
        // Originals are named by their content: the name is a second check.
        let stem = Path::new(&entry.name)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        anyhow::ensure!(
            stem == sha,
            "{} does not hold the content it is named by",
            entry.name
        );
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    tmp.as_file().sync_all()?;
    tmp.persist(target)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", target.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_known_layout_is_restored() {
        let d = Path::new("/srv/data");
        assert_eq!(target_of(d, DB_FILE), Some(d.join(DB_FILE)));
        assert!(target_of(d, "media/originals/ab/ab12.jpg").is_some());
        assert!(target_of(d, "secret").is_some());
        assert!(target_of(d, "../etc/passwd").is_none());
        assert!(target_of(d, "/etc/passwd").is_none());
        assert!(target_of(d, "media/originals/../../x").is_none());
        assert!(target_of(d, "other.txt").is_none());
    }
}
