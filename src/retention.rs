//! Retention: with `--retention-days N`, a sweeper (once at start, then hourly) deletes what
//! sessions gathered N days after they ended: the image files, the capture rows, capture requests,
//! the event log and the webhook outbox rows. The session row stays as a tombstone with
//! `purged_at`; its captures then answer 410 `session_purged`. Expiry itself (sessions past
//! `expires_at`) is the registry's sweeper, every second (see [`crate::app`]).
//!
//! Whatever `--retention-days` says, the webhook outbox's finished rows (delivered, failed, or
//! for a disabled endpoint) are deleted `--webhook-keep-days` after they were written (default
//! 30): they are the delivery log, not evidence, and would otherwise grow without end.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::capture::kind_from_mime;
use crate::media::ImageStore;
use crate::store::{Store, StoreError, now_ms};

/// How often the sweeper runs after the first sweep at start.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

const DAY_MS: i64 = 86_400_000;
/// Sessions purged per query; the sweep goes on until none is due.
const BATCH: u32 = 100;

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub sessions: usize,
    /// Distinct contents whose original and thumbnail were deleted.
    pub contents: usize,
}

/// Purges every session that ended at least `days` days before `now` (epoch ms). `now` is a
/// parameter so tests can run the sweep at a later date instead of waiting for one.
pub async fn sweep(
    store: &Store,
    media: &dyn ImageStore,
    days: u32,
    now: i64,
) -> Result<Swept, StoreError> {
    let cutoff = now.saturating_sub(i64::from(days).saturating_mul(DAY_MS));
    let mut swept = Swept::default();
    loop {
        let due = store.due_purges(cutoff, BATCH).await?;
        let mut purged_any = false;
        for id in &due {
            let Some(content) = store.purge_session(id, now).await? else {
                continue;
            };
            purged_any = true;
            swept.sessions += 1;
            for (sha, mime) in content {
                // Files are named by content: the same picture may belong to another session too.
                // (An upload of the very same bytes racing this check could lose its file; the
                // window is between this read and its own row's commit, and needs identical bytes.)
                if store.hash_in_use(&sha).await? {
                    continue;
                }
                let ext = kind_from_mime(&mime).map(|k| k.ext()).unwrap_or("bin");
                media.remove_capture(&sha, ext).await;
                swept.contents += 1;
            }
            tracing::info!(session = %id, "retention: purged the session's captures and events");
        }
        if due.len() < BATCH as usize || !purged_any {
            return Ok(swept);
        }
    }
}

/// Deletes the webhook outbox's finished rows written more than `days` days before `now`;
/// returns how many.
pub async fn prune_webhooks(store: &Store, days: u32, now: i64) -> Result<u64, StoreError> {
    let before = now.saturating_sub(i64::from(days).saturating_mul(DAY_MS));
    let mut pruned = 0;
    loop {
        let n = store.prune_webhooks(before, 1000).await?;
        pruned += n;
        if n < 1000 {
            return Ok(pruned);
        }
    }
}

/// Prunes the webhook outbox once now and then every [`SWEEP_EVERY`] until `shutdown`.
pub async fn run_webhook_pruning(store: Store, days: u32, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => match prune_webhooks(&store, days, now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, keep_days = days, "pruned the webhook outbox"),
                Err(e) => tracing::warn!(error = %e, "pruning the webhook outbox failed"),
            },
        }
    }
}

/// Sweeps once now and then every [`SWEEP_EVERY`] until `shutdown`.
pub async fn run(
    store: Store,
    media: std::sync::Arc<dyn ImageStore>,
    days: u32,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                match sweep(&store, media.as_ref(), days, now_ms()).await {
                    Ok(s) if s.sessions > 0 => tracing::info!(
                        sessions = s.sessions,
                        contents = s.contents,
                        retention_days = days,
                        "retention sweep"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
                }
            }
        }
    }
}
