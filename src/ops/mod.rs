//! The commands of the binary: `serve`, and the operator's `api-key`, `backup`, `restore` and
//! `migrate`. The operator's commands print for people on standard error and only what a script
//! needs (a created key) on standard output.

mod api_keys;
pub mod backup;
pub mod restore;

use std::path::Path;

use anyhow::Context;

use crate::config::{Command, Settings};

/// Runs one command of the binary to its end.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(settings) => serve(settings).await,
        Command::ApiKey(c) => api_keys::run(c).await,
        Command::Backup(a) => {
            a.dir.require_sqlite("backup").map_err(anyhow::Error::msg)?;
            a.media
                .require_local("backup")
                .map_err(anyhow::Error::msg)?;
            let s = backup::backup(&a.dir.data_dir, &a.file).await?;
            eprintln!(
                "backup written to {}: {} sessions, {} captures, {} files ({} bytes)",
                a.file.display(),
                s.sessions,
                s.captures,
                s.files,
                s.bytes
            );
            if s.skipped > 0 {
                eprintln!(
                    "{} picture(s) purged by retention during the backup were left out",
                    s.skipped
                );
            }
            Ok(())
        }
        Command::Restore(a) => {
            a.dir
                .require_sqlite("restore")
                .map_err(anyhow::Error::msg)?;
            a.media
                .require_local("restore")
                .map_err(anyhow::Error::msg)?;
            let s = restore::restore(&a.file, &a.dir.data_dir, a.force).await?;
            eprintln!(
                "restored into {}: {} sessions, {} captures, {} files; start it with \
                 `capturelink serve --data-dir {}`",
                a.dir.data_dir.display(),
                s.sessions,
                s.captures,
                s.files,
                a.dir.data_dir.display()
            );
            Ok(())
        }
        Command::Migrate(d) => match &d.database_url {
            Some(url) => migrate_postgres(url).await,
            None => migrate(&d.data_dir).await,
        },
        Command::Probe(p) => probe(&p.url, p.insecure).await,
    }
}

async fn probe(url: &str, insecure: bool) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .danger_accept_invalid_certs(insecure)
        .build()?;
    let res = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("asking {url}"))?;
    if res.status() == reqwest::StatusCode::OK {
        Ok(())
    } else {
        anyhow::bail!("{url} answered {}", res.status())
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    settings.validate().map_err(anyhow::Error::msg)?;
    crate::telemetry::init(settings.log_format);
    let running = crate::app::start(settings).await?;
    running.print_banner();
    running.serve_until_signal().await
}

async fn migrate(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let applied = crate::store::admin::migrate(data_dir)
        .await
        .context("migrating the database")?;
    println!(
        "database {}",
        data_dir.join(crate::store::DB_FILE).display()
    );
    print_migrations(&applied);
    Ok(())
}

fn print_migrations(applied: &[crate::store::admin::AppliedMigration]) {
    for m in applied {
        println!(
            "{:04} {} ({})",
            m.version,
            m.description,
            if m.now {
                "applied now"
            } else {
                "already applied"
            }
        );
    }
}

async fn migrate_postgres(url: &str) -> anyhow::Result<()> {
    let applied = crate::store::postgres::migrate(url)
        .await
        .context("migrating the PostgreSQL database")?;
    println!("database postgres");
    print_migrations(&applied);
    Ok(())
}

/// The data dir's database must exist (for commands that only read or change what is there).
fn require_database(data_dir: &Path) -> anyhow::Result<()> {
    let db = data_dir.join(crate::store::DB_FILE);
    anyhow::ensure!(
        db.is_file(),
        "no database at {} (is --data-dir right?)",
        db.display()
    );
    Ok(())
}
