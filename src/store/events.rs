//! The per-session, per-recipient event log, and the group-commit appender that writes it.

pub use capturelink_store_types::events::{EventRow, RowRef};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::{Result, Store, StoreError};
use super::{on_postgres, postgres};

/// The latest seq that live-only `signal`s took for one recipient, to be recorded (not their
/// bodies: only the number, so that after a restart the numbering continues past it).
///
/// One mark per recipient is queued at a time, and it is written with the value it holds when the
/// writer gets to it: a burst of signals costs one row per commit, not one per signal (at tens of
/// thousands of signals a second, a row each outran the writer and marks were dropped).
#[derive(Debug)]
pub struct SeqMark {
    session_id: String,
    role: &'static str,
    seq: AtomicI64,
    queued: AtomicBool,
}

impl SeqMark {
    pub fn new(session_id: String, role: &'static str) -> Arc<Self> {
        Arc::new(Self {
            session_id,
            role,
            seq: AtomicI64::new(0),
            queued: AtomicBool::new(false),
        })
    }
}

/// Batches that must reach the log in queue order and with no gap: once one fails, the ones queued
/// after it fail unwritten, until their owner has taken the failure in and [`Chain::mend`]s it.
/// A room's pipelined messages form one chain, so a recipient never gets a later `seq` of a
/// session whose earlier one was lost.
#[derive(Debug, Default)]
pub struct Chain {
    broken: AtomicBool,
}

impl Chain {
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Lets the chain take batches again (its owner has renumbered after the failure).
    pub fn mend(&self) {
        self.broken.store(false, Ordering::SeqCst);
    }
}

/// Why a batch was not written, kept so that every batch of a failed group gets its own copy.
#[derive(Debug, Clone)]
enum Failure {
    Busy(String),
    Full(String),
    Other(String),
}

impl Failure {
    fn of(e: &StoreError) -> Self {
        match e {
            StoreError::Busy(m) => Failure::Busy(m.clone()),
            StoreError::Full(m) => Failure::Full(m.clone()),
            other => Failure::Other(other.to_string()),
        }
    }

    fn into_error(self) -> StoreError {
        match self {
            Failure::Busy(m) => StoreError::Busy(m),
            Failure::Full(m) => StoreError::Full(m),
            Failure::Other(m) => StoreError::Db(sqlx::Error::Protocol(m)),
        }
    }
}

/// Run by the writer once a batch's group has committed (Ok) or failed, with the batch's rows.
pub type Then = Box<dyn FnOnce(Result<()>, Vec<EventRow>) + Send + Sync>;

enum Job {
    Rows(Vec<EventRow>),
    Mark(Arc<SeqMark>),
}

enum Done {
    /// A caller waits for the outcome (and the rows as written).
    Wait(oneshot::Sender<Result<Vec<EventRow>, Failure>>),
    /// The writer runs this, in queue order.
    Then(Then),
    Nothing,
}

struct Batch {
    job: Job,
    done: Done,
    chain: Option<Arc<Chain>>,
}

/// Writes event rows with group commit: whatever batches are waiting when the writer is free go
/// into one transaction, so a burst of events from many sessions costs one fsync. A batch's rows
/// are sent on only once they are durable: its caller waits ([`Appender::append`]), or the writer
/// runs the batch's continuation after the commit, in queue order ([`Appender::append_then`]).
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Batch>,
}

/// Batches taken into one transaction at the most.
const MAX_GROUP: usize = 512;

/// The database connection the appender writes through.
pub(super) enum Writer {
    /// The one writer connection of the SQLite file.
    Sqlite(SqlitePool),
    Postgres(sqlx::PgPool),
    /// Several nodes: each group's rows take their seq from the sessions' counters as they are
    /// written (rows of kind `signal` are numbered only, not stored).
    PostgresNumbered(sqlx::PgPool),
}

impl Appender {
    pub(super) fn start(writer: Writer) -> Self {
        let (tx, mut rx) = mpsc::channel::<Batch>(4096);
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(64);
            let mut skip = Vec::with_capacity(64);
            while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
                linger_for_marks(&mut rx, &mut group).await;
                // A batch of a broken chain is not written: it fails with the one before it.
                skip.clear();
                skip.extend(
                    group
                        .iter()
                        .map(|b: &Batch| b.chain.as_ref().is_some_and(|c| c.is_broken())),
                );
                let outcome = write_group(&writer, &mut group, &skip)
                    .await
                    .map_err(|e| Failure::of(&e));
                if outcome.is_err() {
                    for batch in &group {
                        if let Some(chain) = &batch.chain {
                            chain.broken.store(true, Ordering::SeqCst);
                        }
                    }
                }
                for (batch, skipped) in group.drain(..).zip(skip.iter()) {
                    let result = if *skipped {
                        Err(Failure::Busy(
                            "an earlier event of this session could not be stored".into(),
                        ))
                    } else {
                        outcome.clone()
                    };
                    batch.finish(result);
                }
            }
        });
        Self { tx }
    }

    /// Records that a live-only `signal` took `seq` (without waiting for the commit). It is
    /// committed no later than any row appended after this call, and within [`MARK_LINGER`] when
    /// nothing else is written; marks of one recipient coalesce while one is queued.
    pub fn record_mark(&self, mark: &Arc<SeqMark>, seq: i64) {
        // The seq first, then the flag: a writer that has taken the flag down reads the seq after,
        // so it either sees this seq or leaves the flag down for this call to queue a new mark.
        mark.seq.fetch_max(seq, Ordering::SeqCst);
        if mark.queued.swap(true, Ordering::SeqCst) {
            return;
        }
        let job = Job::Mark(Arc::clone(mark));
        let batch = Batch {
            job,
            done: Done::Nothing,
            chain: None,
        };
        if self.tx.try_send(batch).is_err() {
            mark.queued.store(false, Ordering::SeqCst);
            tracing::warn!("event writer backlogged: a signal's seq mark was not recorded");
        }
    }

    /// Returns once everything queued before it has been written (or has failed): what
    /// [`Self::record_mark`] queued is on disk before the database is closed.
    pub async fn flush(&self) {
        let _ = self.append_waiting(Vec::new()).await;
    }

    /// Appends rows and returns them once they are committed (numbered by the database when
    /// several nodes share it; as they were otherwise).
    pub async fn append(&self, rows: Vec<EventRow>) -> Result<Vec<EventRow>> {
        if rows.is_empty() {
            return Ok(rows);
        }
        self.append_waiting(rows).await
    }

    async fn append_waiting(&self, rows: Vec<EventRow>) -> Result<Vec<EventRow>> {
        let (done, wait) = oneshot::channel();
        let batch = Batch {
            job: Job::Rows(rows),
            done: Done::Wait(done),
            chain: None,
        };
        self.tx
            .send(batch)
            .await
            .map_err(|_| StoreError::WriterGone)?;
        match wait.await {
            Ok(outcome) => outcome.map_err(Failure::into_error),
            Err(_) => Err(StoreError::WriterGone),
        }
    }

    /// Queues rows (possibly none: a place in the queue is all some callers need) on `chain` and
    /// returns without waiting for the commit; the writer runs `then` with the outcome and the
    /// rows once their group is committed or has failed, after the `then` of every batch queued
    /// before. `then` runs exactly once (at once, if the writer has stopped), and must not block.
    pub async fn append_then(&self, rows: Vec<EventRow>, chain: &Arc<Chain>, then: Then) {
        let batch = Batch {
            job: Job::Rows(rows),
            done: Done::Then(then),
            chain: Some(Arc::clone(chain)),
        };
        if let Err(mpsc::error::SendError(batch)) = self.tx.send(batch).await {
            batch.finish(Err(Failure::Other("the event writer has stopped".into())));
        }
    }
}

impl Batch {
    fn finish(self, outcome: Result<(), Failure>) {
        match self.done {
            Done::Wait(tx) => {
                let rows = match self.job {
                    Job::Rows(rows) => rows,
                    Job::Mark(_) => Vec::new(),
                };
                let _ = tx.send(outcome.map(|()| rows));
            }
            Done::Then(then) => {
                let rows = match self.job {
                    Job::Rows(rows) => rows,
                    Job::Mark(_) => Vec::new(),
                };
                then(outcome.map_err(Failure::into_error), rows);
            }
            Done::Nothing => {}
        }
    }
}

/// How long a group holding only seq marks waits for more work before it is written. Under a
/// stream of signals this turns a commit per few signals into one per 2 ms for all rooms; a durable
/// event, a flush or a full group ends the wait at once. It is of the order of the fsync a mark
/// used to wait behind, so a killed process loses no more marks than it did.
const MARK_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

async fn linger_for_marks(rx: &mut mpsc::Receiver<Batch>, group: &mut Vec<Batch>) {
    let only_marks = |group: &[Batch]| group.iter().all(|b| matches!(b.job, Job::Mark(_)));
    if !only_marks(group) {
        return;
    }
    let deadline = tokio::time::Instant::now() + MARK_LINGER;
    while only_marks(group) && group.len() < MAX_GROUP {
        let room = MAX_GROUP - group.len();
        match tokio::time::timeout_at(deadline, rx.recv_many(group, room)).await {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

async fn write_group(writer: &Writer, group: &mut [Batch], skip: &[bool]) -> Result<()> {
    if let Writer::PostgresNumbered(pool) = writer {
        let mut rows: Vec<&mut EventRow> = group
            .iter_mut()
            .zip(skip)
            .filter(|(_, s)| !**s)
            .filter_map(|(batch, _)| match &mut batch.job {
                Job::Rows(r) => Some(r.iter_mut()),
                Job::Mark(_) => None,
            })
            .flatten()
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        return super::postgres::cluster::write_numbered(pool, &mut rows).await;
    }
    let mut rows = Vec::new();
    let mut marks = Vec::new();
    for (batch, _) in group.iter().zip(skip).filter(|(_, s)| !**s) {
        match &batch.job {
            Job::Rows(r) => rows.extend(r.iter().map(RowRef::from)),
            Job::Mark(mark) => marks.push(mark),
        }
    }
    if rows.is_empty() && marks.is_empty() {
        return Ok(());
    }
    let now = super::now_ms();
    let marks: Vec<RowRef<'_>> = marks
        .into_iter()
        .map(|mark| {
            mark.queued.store(false, Ordering::SeqCst);
            RowRef {
                session_id: &mark.session_id,
                role: mark.role,
                seq: mark.seq.load(Ordering::SeqCst),
                kind: "signal",
                body: "",
                created_at: now,
            }
        })
        .collect();
    let pool = match writer {
        Writer::Sqlite(pool) => pool,
        Writer::Postgres(pg) => {
            return super::postgres::events::write_group(pg, &rows, &marks).await;
        }
        Writer::PostgresNumbered(_) => unreachable!("written above"),
    };
    if rows.is_empty() {
        return write_marks(pool, &marks).await;
    }
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    insert_rows(&mut tx, &rows, false).await?;
    // OR IGNORE: a number already on record (a mark that failed with its group and was taken
    // again) is no reason to fail the events committed with it.
    insert_rows(&mut tx, &marks, true).await?;
    tx.commit().await.map_err(StoreError::classify)
}

/// Commits a group of seq marks alone with `synchronous=NORMAL`: in the WAL (so a killed process
/// loses none) but without an fsync of their own; the next commit of an event syncs them with it.
/// Marks guard against numbering a signal twice after a restart, and a signal is live-only, so
/// only a power cut between two commits could cost one, where an fsync per group of marks was
/// most of the disk work of a call's signalling.
async fn write_marks(pool: &SqlitePool, marks: &[RowRef<'_>]) -> Result<()> {
    use sqlx::{Acquire, Connection};
    let mut conn = pool.acquire().await.map_err(StoreError::classify)?;
    sqlx::query!("PRAGMA synchronous = NORMAL")
        .execute(&mut *conn)
        .await
        .map_err(StoreError::classify)?;
    let written = async {
        let mut tx = conn.begin().await.map_err(StoreError::classify)?;
        insert_rows(&mut tx, marks, true).await?;
        tx.commit().await.map_err(StoreError::classify)
    }
    .await;
    // Back to FULL before the connection is used for anything else; a connection that cannot be
    // put back is closed rather than left to commit events without an fsync.
    if let Err(e) = sqlx::query!("PRAGMA synchronous = FULL")
        .execute(&mut *conn)
        .await
    {
        tracing::error!(error = %e, "closing the database writer: could not restore synchronous=FULL");
        let _ = conn.detach().close().await;
    }
    written
}

/// Inserts event rows inside a caller's transaction.
pub(crate) async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[EventRow],
) -> Result<()> {
    let rows: Vec<RowRef<'_>> = rows.iter().map(RowRef::from).collect();
    insert_rows(tx, &rows, false).await
}

/// Writes rows in one statement however many there are: the rows go as one JSON array of
/// `[session_id, role, seq, kind, body, created_at]` that SQLite's `json_each` spreads into rows
/// (one round trip to SQLite's thread per group, and one statement the compiler checks, where
/// multi-row `VALUES` lists would need a statement per size). `or_ignore`: a row already on record
/// is skipped (a seq mark taken again after its group failed).
async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[RowRef<'_>],
    or_ignore: bool,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(
        &rows
            .iter()
            .map(|r| (r.session_id, r.role, r.seq, r.kind, r.body, r.created_at))
            .collect::<Vec<_>>(),
    )
    .expect("rows serialize");
    let done = if or_ignore {
        sqlx::query!(
            "INSERT OR IGNORE INTO events (session_id, role, seq, kind, body, created_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 \
             FROM json_each(?)",
            json
        )
        .execute(&mut **tx)
        .await
    } else {
        sqlx::query!(
            "INSERT INTO events (session_id, role, seq, kind, body, created_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 \
             FROM json_each(?)",
            json
        )
        .execute(&mut **tx)
        .await
    };
    done.map_err(StoreError::classify)?;
    Ok(())
}

impl Store {
    /// The highest seq issued to each role of a session (0 where none).
    pub async fn last_seqs(&self, session_id: &str) -> Result<(i64, i64)> {
        let db = on_postgres!(self, |pg| postgres::events::last_seqs(pg, session_id).await);
        let rows = sqlx::query!(
            r#"SELECT role AS "role!", MAX(seq) AS "seq!: i64" FROM events WHERE session_id = ? GROUP BY role"#,
            session_id
        )
        .fetch_all(&db.read)
        .await
        .map_err(StoreError::classify)?;
        let (mut agent, mut customer) = (0, 0);
        for r in rows {
            match r.role.as_str() {
                "agent" => agent = r.seq,
                _ => customer = r.seq,
            }
        }
        Ok((agent, customer))
    }

    /// The bodies of a recipient's events with `after < seq <= upto`, in seq order; signals' seq
    /// marks are not events to replay.
    pub async fn events_between(
        &self,
        session_id: &str,
        role: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<(i64, String)>> {
        let db = on_postgres!(self, |pg| postgres::events::events_between(
            pg, session_id, role, after, upto
        )
        .await);
        let rows = sqlx::query!(
            "SELECT seq, body FROM events WHERE session_id = ? AND role = ? AND seq > ? AND seq <= ? \
             AND kind <> 'signal' ORDER BY seq",
            session_id,
            role,
            after,
            upto
        )
        .fetch_all(&db.read)
        .await
        .map_err(StoreError::classify)?;
        Ok(rows.into_iter().map(|r| (r.seq, r.body)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with_session(dir: &std::path::Path, id: &str) -> Store {
        let store = Store::open(dir).await.unwrap();
        sqlx::query(
            "INSERT INTO sessions (id, claim_ref, status, token_salt, created_at, expires_at) \
             VALUES (?, 'CLM-1', 'active', 'salt', 0, 9000000000000)",
        )
        .bind(id)
        .execute(store.sqlite_writer())
        .await
        .unwrap();
        store
    }

    /// A group's rows go in as one JSON array: every row of a batch of any size is written, its
    /// body exactly as given (quotes, backslashes, escapes, non-ASCII text).
    #[tokio::test]
    async fn a_batch_of_any_size_is_written_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_session(dir.path(), "ses_rows").await;
        let rows = |from: i64, n: i64| -> Vec<EventRow> {
            (from..from + n)
                .map(|seq| EventRow {
                    session_id: "ses_rows".into(),
                    role: "agent",
                    seq,
                    kind: "chat",
                    body: format!("{{\"n\":{seq}}}"),
                    created_at: 0,
                })
                .collect()
        };
        store.appender().append(rows(1, 77)).await.unwrap();
        store.appender().append(rows(78, 1)).await.unwrap();
        store.appender().append(rows(79, 8)).await.unwrap();
        let got = store
            .events_between("ses_rows", "agent", 0, 1000)
            .await
            .unwrap();
        let want: Vec<(i64, String)> = (1..=86).map(|n| (n, format!("{{\"n\":{n}}}"))).collect();
        assert_eq!(got, want);
        let bodies = [
            r#"{"seq":1,"type":"chat","text":"a \"quoted\" word, a \\ and a\nnew line"}"#,
            r#"{"seq":1,"type":"chat","text":"左前门有凹痕 ✓ \u0007"}"#,
            "[1, 2.5e3, null, true, {}]",
            "not JSON at all: ' \" \\",
        ];
        let odd: Vec<EventRow> = bodies
            .iter()
            .zip(200..)
            .map(|(body, seq)| EventRow {
                body: (*body).to_owned(),
                ..rows(seq, 1).remove(0)
            })
            .collect();
        store.appender().append(odd).await.unwrap();
        let got = store
            .events_between("ses_rows", "agent", 199, 1000)
            .await
            .unwrap();
        let got: Vec<&str> = got.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(got, bodies);
        // A duplicate seq fails the whole batch: none of its rows is written.
        let mut dup = rows(204, 40);
        dup[39].seq = 5;
        assert!(store.appender().append(dup).await.is_err());
        assert_eq!(store.last_seqs("ses_rows").await.unwrap(), (203, 0));
    }

    /// Marks alone are committed without an fsync of their own, and the writer goes back to
    /// `synchronous=FULL` for the events after them; a mark waits at most a few ms for company.
    #[tokio::test]
    async fn marks_alone_leave_the_writer_at_synchronous_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_session(dir.path(), "ses_sync").await;
        let mark = SeqMark::new("ses_sync".into(), "agent");
        store.appender().record_mark(&mark, 7);
        // No flush: the lingering group is written on its own.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while store.last_seqs("ses_sync").await.unwrap() != (7, 0) {
            assert!(tokio::time::Instant::now() < deadline, "mark never written");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(store.sqlite_writer())
            .await
            .unwrap();
        assert_eq!(sync, 2, "FULL");
    }

    /// A burst of signals, faster than the writer commits (the relay benchmark's 40,000/s), must
    /// still leave the latest seq on record, or a restart would issue it again.
    #[tokio::test]
    async fn a_burst_of_signals_keeps_the_latest_seq_on_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_session(dir.path(), "ses_burst").await;
        let mark = SeqMark::new("ses_burst".into(), "customer");
        for seq in 1..=20_000 {
            store.appender().record_mark(&mark, seq);
            if seq % 5_000 == 0 {
                // Let the writer take some marks mid-burst, as it does under load.
                tokio::task::yield_now().await;
            }
        }
        store.appender().flush().await;
        assert_eq!(store.last_seqs("ses_burst").await.unwrap(), (0, 20_000));
        // A later durable event numbers after it and is committed with it.
        store.appender().record_mark(&mark, 20_001);
        store
            .appender()
            .append(vec![EventRow {
                session_id: "ses_burst".into(),
                role: "customer",
                seq: 20_002,
                kind: "chat",
                body: "{}".into(),
                created_at: 0,
            }])
            .await
            .unwrap();
        let rows = store
            .events_between("ses_burst", "customer", 0, 30_000)
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![(20_002, "{}".to_owned())],
            "marks are not replayed"
        );
    }
}
