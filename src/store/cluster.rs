//! What the nodes of a cluster (`--nats-url`) share in the database besides one node's tables:
//! seq counters, participants and node heartbeats. PostgreSQL only; the SQL is in
//! [`postgres::cluster`].

pub use capturelink_store_types::Claim;

use super::events::{Appender, Writer};
use super::{Backend, Result, Store, StoreError, postgres};

impl Store {
    fn cluster_pool(&self) -> Result<&sqlx::PgPool> {
        match &self.backend {
            Backend::Postgres(pg) => Ok(&pg.pool),
            Backend::Sqlite(_) => Err(StoreError::Db(sqlx::Error::Configuration(
                "several nodes need the database on PostgreSQL (--database-url)".into(),
            ))),
        }
    }

    /// From now on events take their seq from the session's counter rows as they are written,
    /// for several nodes sharing the database. Fails on SQLite.
    pub fn number_in_database(&mut self) -> Result<()> {
        let pool = self.cluster_pool()?.clone();
        // The appender writing through the old writer stops with its last sender, here.
        self.appender = Appender::start(Writer::PostgresNumbered(pool));
        self.numbers_events = true;
        Ok(())
    }

    /// Do events take their seq from the database (see [`Store::number_in_database`])?
    pub fn numbers_events(&self) -> bool {
        self.numbers_events
    }

    /// Makes a new connection on `node` the session's `role`.
    pub async fn claim_participant(
        &self,
        session_id: &str,
        role: &str,
        node: &str,
        now: i64,
    ) -> Result<Claim> {
        let pool = self.cluster_pool()?;
        let (epoch, replaced) =
            postgres::cluster::claim_participant(pool, session_id, role, node, now).await?;
        Ok(Claim { epoch, replaced })
    }

    /// The connection of `epoch` has left: true if it was still the participant (the peer is to
    /// be told), false if a newer one had replaced it.
    pub async fn release_participant(
        &self,
        session_id: &str,
        role: &str,
        epoch: i64,
    ) -> Result<bool> {
        postgres::cluster::release_participant(self.cluster_pool()?, session_id, role, epoch).await
    }

    /// The roles connected to a session through nodes seen since `alive_since`.
    pub async fn connected_roles(&self, session_id: &str, alive_since: i64) -> Result<Vec<String>> {
        postgres::cluster::connected_roles(self.cluster_pool()?, session_id, alive_since).await
    }

    /// The newest epoch each role of a session has claimed (a connection of an older one was
    /// replaced).
    pub async fn participant_epochs(&self, session_id: &str) -> Result<Vec<(String, i64)>> {
        postgres::cluster::epochs(self.cluster_pool()?, session_id).await
    }

    /// Records that `node` is alive now.
    pub async fn node_heartbeat(&self, node: &str, now: i64) -> Result<()> {
        postgres::cluster::heartbeat(self.cluster_pool()?, node, now).await
    }

    /// A node stopping: its participants count as gone at once.
    pub async fn forget_node(&self, node: &str) -> Result<()> {
        postgres::cluster::forget_node(self.cluster_pool()?, node).await
    }

    /// Marks gone the participants of nodes not seen since `alive_since`; each (session, role,
    /// epoch) is returned to one node only.
    pub async fn sweep_orphaned_participants(
        &self,
        alive_since: i64,
    ) -> Result<Vec<(String, String, i64)>> {
        postgres::cluster::sweep_orphans(self.cluster_pool()?, alive_since).await
    }
}
