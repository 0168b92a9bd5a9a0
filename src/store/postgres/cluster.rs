//! What several nodes share beyond the tables of one node: the per-recipient seq counters, the
//! participants with their epochs, and the nodes' heartbeats (`migrations/postgres/0002_cluster.sql`).

use sqlx::{PgPool, Postgres, Row};

use crate::signaling::protocol::with_seq;
use crate::store::{EventRow, Result, StoreError};

/// Takes `n` numbers for one recipient inside the caller's transaction and returns the last. The
/// counter row stays locked until the transaction ends, so a second append for the same recipient
/// (on any node) waits for this one's commit: commit order is seq order, and a reader that sees
/// seq N finds every durable event before it in the log. A session numbered in one node's memory
/// before (`last_seqs` of the log) continues after the log's last seq.
async fn take<'c, E>(conn: E, session_id: &str, role: &str, n: i64) -> Result<i64>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    sqlx::query_scalar(
        "INSERT INTO session_counters (session_id, role, last) \
         VALUES ($1, $2, COALESCE((SELECT MAX(seq) FROM events WHERE session_id = $1 AND role = $2), 0) + $3) \
         ON CONFLICT (session_id, role) DO UPDATE SET last = GREATEST(session_counters.last, \
         COALESCE((SELECT MAX(seq) FROM events WHERE session_id = $1 AND role = $2), 0)) + $3 \
         RETURNING last",
    )
    .bind(session_id)
    .bind(role)
    .bind(n)
    .fetch_one(conn)
    .await
    .map_err(StoreError::classify)
}

/// Numbers event rows in the caller's transaction: each recipient's rows, in their order, take the
/// next numbers of its counter, and each body is given its seq.
pub async fn number(tx: &mut sqlx::Transaction<'_, Postgres>, rows: &mut [EventRow]) -> Result<()> {
    let mut recipients: Vec<(&str, &'static str)> = Vec::new();
    for row in rows.iter() {
        if !recipients.contains(&(row.session_id.as_str(), row.role)) {
            recipients.push((row.session_id.as_str(), row.role));
        }
    }
    let mut firsts = Vec::with_capacity(recipients.len());
    for (session_id, role) in &recipients {
        let n = rows
            .iter()
            .filter(|r| r.session_id == *session_id && r.role == *role)
            .count();
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let last = take(&mut **tx, session_id, role, n).await?;
        firsts.push(((session_id.to_string(), *role), last - n + 1));
    }
    for row in rows.iter_mut() {
        let next = firsts
            .iter_mut()
            .find(|((s, r), _)| *s == row.session_id && *r == row.role)
            .map(|(_, next)| next)
            .expect("every recipient was counted");
        row.seq = *next;
        row.body = with_seq(&row.body, *next);
        *next += 1;
    }
    Ok(())
}

/// Numbers and appends event rows in a transaction of their own.
pub async fn append_numbered(pool: &PgPool, rows: &mut [EventRow]) -> Result<()> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    super::events::insert_events(&mut tx, rows, true).await?;
    tx.commit().await.map_err(StoreError::classify)
}

/// Takes one seq for a live-only `signal`. Committed without waiting for the flush
/// (`synchronous_commit = off`): a number lost in a crash of the database server is issued again
/// only to a signal, which is not logged either.
pub async fn take_seq(pool: &PgPool, session_id: &str, role: &str) -> Result<i64> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    let seq = take(&mut *tx, session_id, role, 1).await?;
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(seq)
}

/// Makes a new connection the session's `role` on `node`: the next epoch, and whether a connection
/// was there before it (now replaced).
pub async fn claim_participant(
    pool: &PgPool,
    session_id: &str,
    role: &str,
    node: &str,
    now: i64,
) -> Result<(i64, bool)> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    let before: Option<bool> = sqlx::query_scalar(
        "SELECT connected FROM participants WHERE session_id = $1 AND role = $2 FOR UPDATE",
    )
    .bind(session_id)
    .bind(role)
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    let epoch: i64 = sqlx::query_scalar(
        "INSERT INTO participants (session_id, role, epoch, node_id, connected, since) \
         VALUES ($1, $2, 1, $3, TRUE, $4) \
         ON CONFLICT (session_id, role) DO UPDATE SET epoch = participants.epoch + 1, \
         node_id = $3, connected = TRUE, since = $4 RETURNING epoch",
    )
    .bind(session_id)
    .bind(role)
    .bind(node)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    tx.commit().await.map_err(StoreError::classify)?;
    Ok((epoch, before.unwrap_or(false)))
}

/// The connection of `epoch` has left; false when a newer connection had replaced it already.
pub async fn release_participant(
    pool: &PgPool,
    session_id: &str,
    role: &str,
    epoch: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE participants SET connected = FALSE \
         WHERE session_id = $1 AND role = $2 AND epoch = $3 AND connected",
    )
    .bind(session_id)
    .bind(role)
    .bind(epoch)
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(done.rows_affected() == 1)
}

/// The roles connected to a session on a node seen since `alive_since`.
pub async fn connected_roles(
    pool: &PgPool,
    session_id: &str,
    alive_since: i64,
) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT p.role FROM participants p JOIN nodes n ON n.id = p.node_id \
         WHERE p.session_id = $1 AND p.connected AND n.seen_at >= $2",
    )
    .bind(session_id)
    .bind(alive_since)
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)
}

/// Records that `node` is alive at `now`.
pub async fn heartbeat(pool: &PgPool, node: &str, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO nodes (id, seen_at) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at",
    )
    .bind(node)
    .bind(now)
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

/// A node stopping: its participants are gone at once (their connections were closed).
pub async fn forget_node(pool: &PgPool, node: &str) -> Result<()> {
    sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(node)
        .execute(pool)
        .await
        .map_err(StoreError::classify)?;
    Ok(())
}

/// Marks gone the participants of nodes not seen since `alive_since` (dead, or stopped), and
/// returns them as (session, role): each is returned to one caller only, which tells the peer.
pub async fn sweep_orphans(pool: &PgPool, alive_since: i64) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "UPDATE participants p SET connected = FALSE \
         WHERE p.connected AND NOT EXISTS \
         (SELECT 1 FROM nodes n WHERE n.id = p.node_id AND n.seen_at >= $1) \
         RETURNING p.session_id, p.role",
    )
    .bind(alive_since)
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    sqlx::query("DELETE FROM nodes WHERE seen_at < $1")
        .bind(alive_since - 86_400_000)
        .execute(pool)
        .await
        .map_err(StoreError::classify)?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}
