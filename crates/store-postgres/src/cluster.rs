//! What several nodes share beyond the tables of one node: the per-recipient seq counters, the
//! participants with their epochs, and the nodes' heartbeats (`migrations/postgres/0002_cluster.sql`).

use std::collections::{BTreeMap, HashMap};

use sqlx::{PgPool, Postgres};

use capturelink_store_types::events::EventRow;
use capturelink_store_types::events::RowRef;
use capturelink_store_types::events::with_seq;
use capturelink_store_types::{Result, StoreError};

/// Takes `n` numbers for one recipient inside the caller's transaction and returns the last. The
/// counter row stays locked until the transaction ends, so a second append for the same recipient
/// (on any node) waits for this one's commit: commit order is seq order, and a reader that sees
/// seq N finds every durable event before it in the log. A session numbered in one node's memory
/// before (`last_seqs` of the log) continues after the log's last seq.
async fn take<'c, E>(conn: E, session_id: &str, role: &str, n: i64) -> Result<i64>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    sqlx::query_scalar!(
        "INSERT INTO session_counters (session_id, role, last) \
         VALUES ($1, $2, COALESCE((SELECT MAX(seq) FROM events WHERE session_id = $1 AND role = $2), 0) + $3) \
         ON CONFLICT (session_id, role) DO UPDATE SET last = GREATEST(session_counters.last, \
         COALESCE((SELECT MAX(seq) FROM events WHERE session_id = $1 AND role = $2), 0)) + $3 \
         RETURNING last",
        session_id,
        role,
        n
    )
    .fetch_one(conn)
    .await
    .map_err(StoreError::classify)
}

/// Numbers event rows in the caller's transaction: each recipient's rows, in their order, take the
/// next numbers of its counter, and each body is given its seq.
pub async fn number(tx: &mut sqlx::Transaction<'_, Postgres>, rows: &mut [EventRow]) -> Result<()> {
    let mut refs: Vec<&mut EventRow> = rows.iter_mut().collect();
    number_refs(tx, &mut refs).await
}

async fn number_refs(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    rows: &mut [&mut EventRow],
) -> Result<()> {
    // (session, role) -> (how many, next number), in (session, role) order: every transaction
    // locks the counters it takes in the same order, so two nodes' groups never deadlock on them.
    let mut recipients: BTreeMap<(String, &'static str), (i64, i64)> = BTreeMap::new();
    for row in rows.iter() {
        recipients
            .entry((row.session_id.clone(), row.role))
            .or_default()
            .0 += 1;
    }
    // The counters that exist, all in one statement (a group holds many rooms' events).
    let session_ids: Vec<String> = recipients.keys().map(|(s, _)| s.clone()).collect();
    let roles: Vec<String> = recipients.keys().map(|(_, r)| (*r).to_owned()).collect();
    let counts: Vec<i64> = recipients.values().map(|(n, _)| *n).collect();
    let taken: HashMap<(String, String), i64> = sqlx::query!(
        "WITH wanted AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) \
           AS w(session_id, role, n)), \
         locked AS (SELECT c.session_id, c.role FROM session_counters c \
           JOIN wanted w USING (session_id, role) ORDER BY c.session_id, c.role FOR UPDATE OF c) \
         UPDATE session_counters c SET last = GREATEST(c.last, COALESCE((SELECT MAX(e.seq) \
           FROM events e WHERE e.session_id = c.session_id AND e.role = c.role), 0)) + w.n \
         FROM wanted w, locked l \
         WHERE c.session_id = w.session_id AND c.role = w.role \
           AND l.session_id = c.session_id AND l.role = c.role \
         RETURNING c.session_id, c.role, c.last",
        &session_ids,
        &roles,
        &counts
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::classify)?
    .into_iter()
    .map(|r| ((r.session_id, r.role), r.last))
    .collect();
    for ((session_id, role), (n, next)) in &mut recipients {
        let last = match taken.get(&(session_id.clone(), (*role).to_owned())) {
            Some(last) => *last,
            // A recipient's first event: its counter row is created.
            None => take(&mut **tx, session_id, role, *n).await?,
        };
        *next = last - *n + 1;
    }
    for row in rows.iter_mut() {
        let (_, next) = recipients
            .get_mut(&(row.session_id.clone(), row.role))
            .expect("every recipient was counted");
        row.seq = *next;
        row.body = with_seq(&row.body, *next);
        *next += 1;
    }
    Ok(())
}

/// Writes one group of the appender with several nodes: the rows are numbered, then stored, in
/// one transaction; rows of kind `signal` (live-only) are numbered only. A group of signals alone
/// commits without waiting for the flush (`synchronous_commit = off`): a number lost in a crash
/// of the database server is issued again only to a signal, which is not stored either.
pub async fn write_numbered(pool: &PgPool, rows: &mut [&mut EventRow]) -> Result<()> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    if rows.iter().all(|r| r.kind == "signal") {
        sqlx::query!("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
    }
    number_refs(&mut tx, rows).await?;
    let stored: Vec<RowRef<'_>> = rows
        .iter()
        .filter(|r| r.kind != "signal")
        .map(|r| RowRef::from(&**r))
        .collect();
    super::events::insert_rows(&mut tx, &stored, false).await?;
    tx.commit().await.map_err(StoreError::classify)
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
    let before: Option<bool> = sqlx::query_scalar!(
        "SELECT connected FROM participants WHERE session_id = $1 AND role = $2 FOR UPDATE",
        session_id,
        role
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    let epoch: i64 = sqlx::query_scalar!(
        "INSERT INTO participants (session_id, role, epoch, node_id, connected, since) \
         VALUES ($1, $2, 1, $3, TRUE, $4) \
         ON CONFLICT (session_id, role) DO UPDATE SET epoch = participants.epoch + 1, \
         node_id = $3, connected = TRUE, since = $4 RETURNING epoch",
        session_id,
        role,
        node,
        now
    )
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
    let done = sqlx::query!(
        "UPDATE participants SET connected = FALSE \
         WHERE session_id = $1 AND role = $2 AND epoch = $3 AND connected",
        session_id,
        role,
        epoch
    )
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
    sqlx::query_scalar!(
        "SELECT p.role FROM participants p JOIN nodes n ON n.id = p.node_id \
         WHERE p.session_id = $1 AND p.connected AND n.seen_at >= $2",
        session_id,
        alive_since
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)
}

/// The newest epoch each role of a session has claimed, connected or not.
pub async fn epochs(pool: &PgPool, session_id: &str) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        "SELECT role, epoch FROM participants WHERE session_id = $1",
        session_id
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(rows.into_iter().map(|r| (r.role, r.epoch)).collect())
}

/// Records that `node` is alive at `now`.
pub async fn heartbeat(pool: &PgPool, node: &str, now: i64) -> Result<()> {
    sqlx::query!(
        "INSERT INTO nodes (id, seen_at) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at",
        node,
        now
    )
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

/// A node stopping: its participants are gone at once (their connections were closed).
pub async fn forget_node(pool: &PgPool, node: &str) -> Result<()> {
    sqlx::query!("DELETE FROM nodes WHERE id = $1", node)
        .execute(pool)
        .await
        .map_err(StoreError::classify)?;
    Ok(())
}

/// Marks gone the participants of nodes not seen since `alive_since` (dead, or stopped), and
/// returns them as (session, role, epoch): each is returned to one caller only, which tells the
/// peer.
pub async fn sweep_orphans(pool: &PgPool, alive_since: i64) -> Result<Vec<(String, String, i64)>> {
    let rows = sqlx::query!(
        "UPDATE participants p SET connected = FALSE \
         WHERE p.connected AND NOT EXISTS \
         (SELECT 1 FROM nodes n WHERE n.id = p.node_id AND n.seen_at >= $1) \
         RETURNING p.session_id, p.role, p.epoch",
        alive_since
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    sqlx::query!(
        "DELETE FROM nodes WHERE seen_at < $1",
        alive_since - 86_400_000
    )
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(rows
        .into_iter()
        .map(|r| (r.session_id, r.role, r.epoch))
        .collect())
}
