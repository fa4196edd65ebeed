//! Backends for the tests: in-memory, a fresh SQLite file, a fresh PostgreSQL database.

use std::any::Any;
use std::sync::Arc;

use nursery::store::{EventStore, MemoryStore, PostgresStore, SqliteStore};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// A store under test, and whatever must live as long as it (a temp dir, a database).
pub struct Backend {
    pub store: Arc<dyn EventStore>,
    pub url: String,
    _guard: Box<dyn Any + Send + Sync>,
}

pub fn pg_server() -> String {
    std::env::var("NURSERY_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A PostgreSQL database that exists for as long as the value does.
pub struct FreshPg {
    pub name: String,
    pub url: String,
}

impl FreshPg {
    pub async fn new() -> Self {
        let name = format!("nursery_t_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&format!("{}/postgres", pg_server()))
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 (see .ci/run)");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        admin.close().await.ok();
        let url = format!("{}/{name}", pg_server());
        Self { name, url }
    }
}

impl Drop for FreshPg {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropping needs async I/O; do it on a thread of its own so it works from any context.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) =
                    PgConnection::connect(&format!("{}/postgres", pg_server())).await
                {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// Ends every session of the database at `url` but the caller's (as a restart of the server
/// would); answers how many it ended.
pub async fn end_sessions(url: &str) -> usize {
    let mut admin = PgConnection::connect(url).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    ended.into_iter().filter(|e| *e).count()
}

pub async fn memory() -> Backend {
    Backend {
        store: Arc::new(MemoryStore::new()),
        url: "memory://".into(),
        _guard: Box::new(()),
    }
}

pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    Backend {
        store: Arc::new(SqliteStore::connect(&url).await.unwrap()),
        url,
        _guard: Box::new(dir),
    }
}

pub async fn postgres() -> Backend {
    let db = FreshPg::new().await;
    let url = db.url.clone();
    Backend {
        store: Arc::new(PostgresStore::connect(&url).await.unwrap()),
        url,
        _guard: Box::new(db),
    }
}

/// An event store with its read store beside it.
pub struct ReadBackend {
    pub store: Arc<dyn EventStore>,
    pub url: String,
    pub read: Arc<dyn nursery::projections::ReadStore>,
    _guard: Box<dyn Any + Send + Sync>,
}

pub async fn read_memory() -> ReadBackend {
    ReadBackend {
        url: "memory://".into(),
        store: Arc::new(MemoryStore::new()),
        read: Arc::new(nursery::projections::MemoryReadStore::new()),
        _guard: Box::new(()),
    }
}

pub async fn read_sqlite() -> ReadBackend {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    ReadBackend {
        url,
        read: Arc::new(nursery::projections::SqliteReadStore::new(&store)),
        store: Arc::new(store),
        _guard: Box::new(dir),
    }
}

pub async fn read_postgres() -> ReadBackend {
    let db = FreshPg::new().await;
    let store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    ReadBackend {
        url: db.url.clone(),
        read: Arc::new(nursery::projections::PostgresReadStore::new(&store)),
        store: Arc::clone(&store) as Arc<dyn EventStore>,
        _guard: Box::new(db),
    }
}

/// Tests that use RabbitMQ share it; a test that restarts the broker takes it alone.
static BROKER: std::sync::RwLock<()> = std::sync::RwLock::new(());

enum BrokerTurn {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

/// A RabbitMQ vhost that exists for as long as the value does.
pub struct Vhost {
    pub name: String,
    pub url: String,
    _turn: BrokerTurn,
}

pub fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl must be installed (RabbitMQ on 127.0.0.1:5672)");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

impl Vhost {
    /// A vhost on the shared broker.
    pub fn new() -> Self {
        let turn = BrokerTurn::Shared(BROKER.read().unwrap_or_else(|e| e.into_inner()));
        Self::create(turn)
    }

    /// A vhost on a broker no other test uses meanwhile, so that it may be restarted.
    pub fn alone() -> Self {
        let turn = BrokerTurn::Alone(BROKER.write().unwrap_or_else(|e| e.into_inner()));
        Self::create(turn)
    }

    fn create(turn: BrokerTurn) -> Self {
        let name = format!("nursery_t_{}", uuid::Uuid::new_v4().simple());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        let url = format!("amqp://guest:guest@127.0.0.1:5672/{name}");
        Self {
            name,
            url,
            _turn: turn,
        }
    }

    /// Closes every connection to the vhost, as a network cut would.
    pub fn cut(&self) {
        rabbitmqctl(&["close_all_connections", "-p", &self.name, "cut by the test"]);
    }

    /// Stops the broker (every connection drops, the port refuses), runs `meanwhile`, and
    /// starts it again. Only for a vhost made with [`Vhost::alone`].
    pub async fn restart_broker<F: std::future::Future<Output = ()>>(&self, meanwhile: F) {
        assert!(
            matches!(self._turn, BrokerTurn::Alone(_)),
            "only a test that has the broker alone may restart it"
        );
        /// Starts the broker again even if the test fails while it is down (without asserting:
        /// a panic inside a panic would abort the whole test binary).
        struct StartAgain;
        impl Drop for StartAgain {
            fn drop(&mut self) {
                for args in [["start_app"], ["await_startup"]] {
                    let started = std::process::Command::new("rabbitmqctl")
                        .args(args)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    if !started && !std::thread::panicking() {
                        panic!("rabbitmqctl {args:?} failed: the broker stays down");
                    }
                }
            }
        }
        rabbitmqctl(&["stop_app"]);
        let again = StartAgain;
        meanwhile.await;
        drop(again);
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
