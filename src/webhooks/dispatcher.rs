//! The outbox worker: takes due rows, POSTs them (a few at a time), and records what happened.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::address;
use super::signing::{self, Secret, SecretError};
use super::{WebhookSettings, backoff};
use crate::store::webhooks::DueWebhook;
use crate::store::{Store, now_ms};

/// How long in-flight attempts may finish after shutdown is asked; the rest are abandoned and stay
/// `pending`, to be sent again (same `webhook-id`) after the restart.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Longest error text kept in `last_error`.
const MAX_ERROR_LEN: usize = 500;

/// Pokes the dispatcher to look at the outbox now. Call [`Wakeup::notify`] after committing rows;
/// a poke while the dispatcher is busy is remembered, not lost.
#[derive(Clone, Debug, Default)]
pub struct Wakeup(Arc<Notify>);

impl Wakeup {
    pub fn notify(&self) {
        self.0.notify_one();
    }
}

pub struct Dispatcher {
    shared: Arc<Shared>,
    wakeup: Wakeup,
}

struct Shared {
    store: Store,
    client: reqwest::Client,
    secret: Secret,
    settings: WebhookSettings,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// What one attempt came to.
enum Outcome {
    Delivered(u16),
    Gone,
    Failed {
        status: Option<u16>,
        error: String,
    },
    /// `--webhook-public-only` and the endpoint is not on a public address: no retry.
    Refused(String),
}

impl Dispatcher {
    /// Fails only if the secret cannot be used (empty, or `whsec_` with bad base64).
    ///
    /// The client should not follow redirects (`reqwest::redirect::Policy::none()`): a webhook
    /// endpoint that redirects is answering 3xx, which is retried like any other failure.
    pub fn new(
        store: Store,
        client: reqwest::Client,
        settings: WebhookSettings,
    ) -> Result<Self, SecretError> {
        let secret = Secret::parse(&settings.secret)?;
        Ok(Self {
            shared: Arc::new(Shared {
                store,
                client,
                secret,
                settings,
                metrics: None,
            }),
            wakeup: Wakeup::default(),
        })
    }

    /// Counts delivery attempts in `metrics`. Call before [`Self::run`].
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.metrics = Some(metrics);
        }
        self
    }

    /// The handle enqueuers poke after their transaction commits.
    pub fn notifier(&self) -> Wakeup {
        self.wakeup.clone()
    }

    /// Works the outbox until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let settings = &self.shared.settings;
        let concurrency = settings.concurrency.max(1);
        let mut tasks = JoinSet::new();
        // task id -> webhook-id of the row it is delivering
        let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
        loop {
            let now = now_ms();
            let mut sleep_for = settings.poll_interval;
            if in_flight.len() < concurrency {
                // A store that claims rows hands out only rows not in flight, so only as many as
                // will be delivered now; otherwise those in flight come back too and are skipped.
                let wanted = if self.shared.store.claims_webhooks() {
                    concurrency - in_flight.len()
                } else {
                    concurrency + in_flight.len()
                };
                let limit = u32::try_from(wanted).unwrap_or(u32::MAX);
                match self.shared.store.due_webhooks(now, limit).await {
                    Ok(rows) => {
                        for row in rows {
                            if in_flight.len() >= concurrency {
                                break;
                            }
                            if in_flight.values().any(|id| *id == row.id) {
                                continue;
                            }
                            let id = row.id.clone();
                            let task = tasks.spawn(deliver(self.shared.clone(), row));
                            in_flight.insert(task.id(), id);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the webhook outbox failed"),
                }
                // Every due row is in flight: sleep until the next one falls due (in flight rows
                // wake us when they finish).
                if in_flight.len() < concurrency {
                    match self.shared.store.next_webhook_due(now).await {
                        Ok(Some(at)) => {
                            let wait = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
                            sleep_for = sleep_for.min(Duration::from_millis(wait));
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "reading the webhook outbox failed"),
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wakeup.0.notified() => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => {
                            tracing::error!(error = %e, "a webhook delivery task failed");
                            e.id()
                        }
                    };
                    in_flight.remove(&id);
                }
                _ = tokio::time::sleep(sleep_for) => {}
            }
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::info!(
                abandoned = tasks.len(),
                "webhook deliveries left pending for the next start"
            );
        }
        tasks.abort_all();
    }
}

/// Makes one attempt at `row` and records the outcome.
async fn deliver(shared: Arc<Shared>, row: DueWebhook) {
    let store = &shared.store;
    let settings = &shared.settings;
    // Another row for this URL may have been answered 410 since this one was read.
    if let Ok(true) = store.is_disabled(&row.url).await {
        if let Err(e) = store.disable_endpoint(&row.url, now_ms()).await {
            tracing::warn!(error = %e, "recording a disabled webhook endpoint failed");
        }
        return;
    }
    let outcome = attempt(&shared, &row).await;
    if let Some(m) = &shared.metrics {
        m.webhook_attempt(matches!(outcome, Outcome::Delivered(_)));
    }
    let attempts = row.attempts + 1;
    let now = now_ms();
    let recorded = match outcome {
        Outcome::Delivered(status) => {
            tracing::debug!(id = %row.id, url = %row.url, attempts, "webhook delivered");
            store.mark_delivered(&row.id, now, attempts, status).await
        }
        Outcome::Gone => {
            tracing::info!(url = %row.url, "webhook endpoint answered 410 Gone; disabling it");
            let noted = store
                .mark_retry(&row.id, now, attempts, Some(410), Some("410 Gone"))
                .await;
            match noted {
                Ok(()) => store.disable_endpoint(&row.url, now).await.map(|_| ()),
                Err(e) => Err(e),
            }
        }
        Outcome::Refused(error) => {
            tracing::warn!(id = %row.id, url = %row.url, error = %error,
                "webhook endpoint refused: not a public address");
            store
                .mark_failed(&row.id, attempts, None, Some(&error))
                .await
        }
        Outcome::Failed { status, error } => {
            let deadline = row
                .created_at
                .saturating_add(i64::try_from(settings.horizon.as_millis()).unwrap_or(i64::MAX));
            if now >= deadline {
                tracing::warn!(id = %row.id, url = %row.url, attempts, error = %error,
                    "webhook delivery failed; giving up after the retry horizon");
                store
                    .mark_failed(&row.id, attempts, status, Some(&error))
                    .await
            } else {
                let retry = u32::try_from(attempts).unwrap_or(u32::MAX);
                let wait = backoff::delay(
                    retry,
                    settings.base_backoff,
                    settings.max_backoff,
                    &mut rand::rng(),
                );
                let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                // The last try falls on the horizon itself.
                let next = now.saturating_add(wait).min(deadline);
                tracing::debug!(id = %row.id, url = %row.url, attempts, error = %error,
                    "webhook delivery failed; will retry");
                store
                    .mark_retry(&row.id, next, attempts, status, Some(&error))
                    .await
            }
        }
    };
    if let Err(e) = recorded {
        tracing::warn!(id = %row.id, error = %e, "recording a webhook attempt failed");
        // The row is still due: do not hammer the endpoint while the database is unwell.
        tokio::time::sleep(settings.poll_interval).await;
    }
}

async fn attempt(shared: &Shared, row: &DueWebhook) -> Outcome {
    if shared.settings.public_only
        && let Some(host) = address::non_public_literal(&row.url)
    {
        return Outcome::Refused(address::NotPublic(host).to_string());
    }
    // Signed afresh on every attempt: receivers reject old timestamps; the id stays the same.
    let timestamp = now_ms() / 1000;
    let headers = signing::headers(&shared.secret, &row.id, timestamp, row.payload.as_bytes());
    let sent = shared
        .client
        .post(&row.url)
        .headers(headers)
        .header(reqwest::header::USER_AGENT, "CaptureLink-Webhooks/1")
        .body(row.payload.clone())
        .timeout(shared.settings.timeout)
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => Outcome::Delivered(resp.status().as_u16()),
        Ok(resp) if resp.status() == reqwest::StatusCode::GONE => Outcome::Gone,
        Ok(resp) => Outcome::Failed {
            status: Some(resp.status().as_u16()),
            error: format!("HTTP {}", resp.status()),
        },
        // The client's resolver refused the host (address::PublicOnly).
        Err(e) if crate::error::chain_has::<address::NotPublic>(&e) => {
            Outcome::Refused(error_chain(&e))
        }
        Err(e) => Outcome::Failed {
            status: None,
            error: error_chain(&e),
        },
    }
}

/// The error and its causes on one line ("error sending request: connection refused"), bounded.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if text.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
