//! The event log on PostgreSQL.

use sqlx::{PgPool, Postgres};

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
        sqlx::query!("SET LOCAL synchronous_commit = off")
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

/// Inserts the rows with one statement whatever their number: each column is one array parameter
/// (UNNEST), so a group never nears PostgreSQL's 65,535 parameters and needs no chunks.
pub(super) async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    rows: &[RowRef<'_>],
    ignore_duplicates: bool,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let session_ids: Vec<String> = rows.iter().map(|r| r.session_id.to_owned()).collect();
    let roles: Vec<String> = rows.iter().map(|r| r.role.to_owned()).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let kinds: Vec<String> = rows.iter().map(|r| r.kind.to_owned()).collect();
    let bodies: Vec<String> = rows.iter().map(|r| r.body.to_owned()).collect();
    let created: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
    if ignore_duplicates {
        sqlx::query!(
            "INSERT INTO events (session_id, role, seq, kind, body, created_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
             $6::bigint[]) ON CONFLICT DO NOTHING",
            &session_ids,
            &roles,
            &seqs,
            &kinds,
            &bodies,
            &created
        )
        .execute(&mut **tx)
        .await
        .map_err(StoreError::classify)?;
    } else {
        sqlx::query!(
            "INSERT INTO events (session_id, role, seq, kind, body, created_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
             $6::bigint[])",
            &session_ids,
            &roles,
            &seqs,
            &kinds,
            &bodies,
            &created
        )
        .execute(&mut **tx)
        .await
        .map_err(StoreError::classify)?;
    }
    Ok(())
}

pub async fn last_seqs(pool: &PgPool, session_id: &str) -> Result<(i64, i64)> {
    // The counters too: with several nodes the last seq may have gone to a signal, not logged.
    let rows = sqlx::query!(
        r#"SELECT role AS "role!", MAX(seq) AS "seq!" FROM (SELECT role, seq FROM events
         WHERE session_id = $1
         UNION ALL SELECT role, last FROM session_counters WHERE session_id = $1) AS s
         GROUP BY role"#,
        session_id
    )
    .fetch_all(pool)
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

pub async fn events_between(
    pool: &PgPool,
    session_id: &str,
    role: &str,
    after: i64,
    upto: i64,
) -> Result<Vec<(i64, String)>> {
    let rows = sqlx::query!(
        "SELECT seq, body FROM events WHERE session_id = $1 AND role = $2 AND seq > $3 \
         AND seq <= $4 AND kind <> 'signal' ORDER BY seq",
        session_id,
        role,
        after,
        upto
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(rows.into_iter().map(|r| (r.seq, r.body)).collect())
}
