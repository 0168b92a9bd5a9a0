//! The event log on PostgreSQL.

use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use capturelink_store_types::events::EventRow;
use capturelink_store_types::events::RowRef;
use capturelink_store_types::{Result, StoreError};

/// Writes one group of the appender: event rows and seq marks in one transaction. A group of seq
/// marks alone commits with `synchronous_commit = off`: PostgreSQL keeps it (a crash of this
/// node loses nothing) and the next commit of an event flushes it; marks only guard against
/// numbering a live-only signal twice, so they need no flush of their own.
pub async fn write_group(pool: &PgPool, rows: &[RowRef<'_>], marks: &[RowRef<'_>]) -> Result<()> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    if rows.is_empty() {
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
    }
    insert_rows(&mut tx, rows, false).await?;
    // ON CONFLICT DO NOTHING: a number already on record (a mark that failed with its group and
    // was taken again) is no reason to fail the events committed with it.
    insert_rows(&mut tx, marks, true).await?;
    tx.commit().await.map_err(StoreError::classify)
}

/// Inserts event rows inside a caller's transaction, numbering them first from the session's
/// counters when the database numbers events (several nodes: [`super::cluster::number`]).
pub async fn insert_events(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    rows: &mut [EventRow],
    numbered: bool,
) -> Result<()> {
    if numbered {
        super::cluster::number(tx, rows).await?;
    }
    let rows: Vec<RowRef<'_>> = rows.iter().map(RowRef::from).collect();
    insert_rows(tx, &rows, false).await
}

/// Rows per INSERT statement at most (six parameters each, well under PostgreSQL's 65,535).
const CHUNK: usize = 256;

pub(super) async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    rows: &[RowRef<'_>],
    ignore_duplicates: bool,
) -> Result<()> {
    for chunk in rows.chunks(CHUNK) {
        let mut insert = QueryBuilder::<Postgres>::new(
            "INSERT INTO events (session_id, role, seq, kind, body, created_at) ",
        );
        insert.push_values(chunk, |mut b, row| {
            b.push_bind(row.session_id)
                .push_bind(row.role)
                .push_bind(row.seq)
                .push_bind(row.kind)
                .push_bind(row.body)
                .push_bind(row.created_at);
        });
        if ignore_duplicates {
            insert.push(" ON CONFLICT DO NOTHING");
        }
        insert
            .build()
            .execute(&mut **tx)
            .await
            .map_err(StoreError::classify)?;
    }
    Ok(())
}

pub async fn last_seqs(pool: &PgPool, session_id: &str) -> Result<(i64, i64)> {
    // The counters too: with several nodes the last seq may have gone to a signal, not logged.
    let rows = sqlx::query(
        "SELECT role, MAX(seq) FROM (SELECT role, seq FROM events WHERE session_id = $1 \
         UNION ALL SELECT role, last FROM session_counters WHERE session_id = $1) AS s \
         GROUP BY role",
    )
    .bind(session_id)
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    let (mut agent, mut customer) = (0, 0);
    for r in rows {
        let role: String = r.try_get(0)?;
        let seq: i64 = r.try_get(1)?;
        match role.as_str() {
            "agent" => agent = seq,
            _ => customer = seq,
        }
    }
    Ok((agent, customer))
}

pub async fn events_between(
    pool: &PgPool,
    session_id: &str,
    role: &str,
    after: i64,
    upto: i64,
) -> Result<Vec<(i64, String)>> {
    let rows = sqlx::query(
        "SELECT seq, body FROM events WHERE session_id = $1 AND role = $2 AND seq > $3 \
         AND seq <= $4 AND kind <> 'signal' ORDER BY seq",
    )
    .bind(session_id)
    .bind(role)
    .bind(after)
    .bind(upto)
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}
