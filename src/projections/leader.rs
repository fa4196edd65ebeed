//! Leadership of the event processors across processes (PostgreSQL): exactly one process runs
//! the projections and sagas at a time. A process takes the lead by taking a session advisory
//! lock (waiting while another holds it) and bumping the leader row's epoch; its read store is
//! then fenced by that epoch, so once another process takes over, nothing of the old one can
//! commit. The lock is held by one dedicated connection: when the process dies, the connection
//! drops and the lock goes to the next process waiting. A process that notices it lost the lead
//! (its connection broke, or the epoch moved) must stop processing: [`Leadership::lost`].
//!
//! Must not touch: HTTP, concrete read models.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::StoreError;

/// The lead over the processors named `name`, held by this process.
pub struct Leadership {
    name: String,
    epoch: i64,
    lost: watch::Receiver<bool>,
}

impl Leadership {
    /// Waits until this process leads `name` (another process may hold it), then takes it.
    pub async fn take(pool: &PgPool, name: &str) -> Result<Self, StoreError> {
        let mut conn = pool.acquire().await?.detach();
        info!(%name, "waiting to lead the event processors");
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 7))")
            .bind(name)
            .execute(&mut conn)
            .await?;
        let epoch: i64 = sqlx::query_scalar(
            "INSERT INTO processor_leaders (name, epoch) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET epoch = processor_leaders.epoch + 1 RETURNING epoch",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
        info!(%name, epoch, "leading the event processors");
        let (tell, lost) = watch::channel(false);
        let watched = name.to_owned();
        actix_rt::spawn(async move {
            watch_lead(conn, watched, epoch, tell).await;
        });
        Ok(Self {
            name: name.to_owned(),
            epoch,
            lost,
        })
    }

    /// The name led.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The epoch this process took.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Resolves when the lead is lost.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }
}

/// Checks the lock's connection every second; the lead is lost when the connection breaks or
/// the epoch moves.
async fn watch_lead(mut conn: PgConnection, name: String, epoch: i64, tell: watch::Sender<bool>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let current: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT epoch FROM processor_leaders WHERE name = $1")
                .bind(&name)
                .fetch_optional(&mut conn)
                .await;
        match current {
            Ok(Some(now)) if now == epoch => {}
            outcome => {
                warn!(%name, epoch, ?outcome, "the lead over the event processors is lost");
                let _ = tell.send(true);
                let _ = conn.close().await;
                return;
            }
        }
        if tell.is_closed() {
            let _ = conn.close().await; // nobody cares any more: give the lock up
            return;
        }
    }
}
