//! API keys created with `capturelink api-key create`: only their SHA-256 is stored.

pub use capturelink_store_types::api_keys::{ApiKeyRow, Revoked};

use super::{Result, Store, StoreError};
use super::{on_postgres, postgres};

impl Store {
    /// Records a new key by its hash; returns its id.
    pub async fn insert_api_key(&self, name: Option<&str>, hash: &[u8], now: i64) -> Result<i64> {
        let db = on_postgres!(self, |pg| postgres::api_keys::insert_api_key(
            pg, name, hash, now
        )
        .await);
        let id = sqlx::query_scalar!(
            "INSERT INTO api_keys (name, hash, created_at) VALUES (?, ?, ?) RETURNING id",
            name,
            hash,
            now
        )
        .fetch_one(&db.write)
        .await
        .map_err(StoreError::classify)?;
        Ok(id)
    }

    /// Every key, oldest first, revoked ones included.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRow>> {
        let db = on_postgres!(self, |pg| postgres::api_keys::list_api_keys(pg).await);
        sqlx::query_as!(
            ApiKeyRow,
            "SELECT id, name, hash, created_at, revoked_at, last_used_at FROM api_keys ORDER BY id",
        )
        .fetch_all(&db.read)
        .await
        .map_err(StoreError::classify)
    }

    pub async fn revoke_api_key(&self, id: i64, now: i64) -> Result<Revoked> {
        let db = on_postgres!(self, |pg| postgres::api_keys::revoke_api_key(pg, id, now)
            .await);
        let mut tx = db.write.begin().await.map_err(StoreError::classify)?;
        let revoked_at = sqlx::query_scalar!("SELECT revoked_at FROM api_keys WHERE id = ?", id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
        let outcome = match revoked_at {
            None => Revoked::NotFound,
            Some(Some(at)) => Revoked::Already(at),
            Some(None) => {
                sqlx::query!("UPDATE api_keys SET revoked_at = ? WHERE id = ?", now, id)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::classify)?;
                Revoked::Now
            }
        };
        tx.commit().await.map_err(StoreError::classify)?;
        Ok(outcome)
    }

    /// The id of the live (not revoked) key with this hash. Read on every request that presents
    /// such a key, so a revoke made by another process takes effect at once.
    pub async fn live_api_key(&self, hash: &[u8]) -> Result<Option<i64>> {
        let db = on_postgres!(self, |pg| postgres::api_keys::live_api_key(pg, hash).await);
        sqlx::query_scalar!(
            "SELECT id FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
            hash
        )
        .fetch_optional(&db.read)
        .await
        .map_err(StoreError::classify)
    }

    pub async fn touch_api_key(&self, id: i64, now: i64) -> Result<()> {
        let db = on_postgres!(self, |pg| postgres::api_keys::touch_api_key(pg, id, now)
            .await);
        sqlx::query!("UPDATE api_keys SET last_used_at = ? WHERE id = ?", now, id)
            .execute(&db.write)
            .await
            .map_err(StoreError::classify)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_round_trip_by_hash_and_revoke_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let id = store
            .insert_api_key(Some("claims"), &[7u8; 32], 1_000)
            .await
            .unwrap();
        assert_eq!(store.live_api_key(&[7u8; 32]).await.unwrap(), Some(id));
        assert_eq!(store.live_api_key(&[8u8; 32]).await.unwrap(), None);
        store.touch_api_key(id, 1_500).await.unwrap();
        assert_eq!(store.revoke_api_key(id, 2_000).await.unwrap(), Revoked::Now);
        assert_eq!(
            store.revoke_api_key(id, 3_000).await.unwrap(),
            Revoked::Already(2_000)
        );
        assert_eq!(
            store.revoke_api_key(id + 1, 3_000).await.unwrap(),
            Revoked::NotFound
        );
        assert_eq!(store.live_api_key(&[7u8; 32]).await.unwrap(), None);
        let all = store.list_api_keys().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name.as_deref(), Some("claims"));
        assert_eq!(
            (all[0].created_at, all[0].revoked_at, all[0].last_used_at),
            (1_000, Some(2_000), Some(1_500))
        );
        store.close().await;
    }
}
