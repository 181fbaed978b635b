//! Real stores for tests that run in real time: SQLite files and PostgreSQL databases.

use crate::test_config;
use std::sync::Arc;
use tokenvisor_core::SchedulePolicy;
use tokenvisor_store::{Keyring, SqlStore};
use tokenvisor_supervisor::TokenvisorConfig;
pub use tokenvisor_testkit::database::{Backend, TestDatabase};

/// Opens a SQL store on `database` with `keyring`.
pub async fn open(database: &TestDatabase, keyring: Keyring) -> Arc<SqlStore> {
    Arc::new(SqlStore::connect(database.url(), keyring).await.expect("store opens"))
}

/// A fixed test key.
pub fn test_keyring() -> Keyring {
    Keyring::new([7u8; 32], vec![])
}

/// A configuration for real-time tests with tokens living a few seconds: spacing and
/// backoff scaled down accordingly.
pub fn fast_config() -> TokenvisorConfig {
    TokenvisorConfig {
        schedule: SchedulePolicy {
            min_spacing: std::time::Duration::from_millis(500),
            retry_base: std::time::Duration::from_millis(200),
            retry_cap: std::time::Duration::from_secs(2),
            startup_spread: std::time::Duration::from_millis(200),
            ..SchedulePolicy::default()
        },
        ..test_config()
    }
}

/// Runs an async scenario taking a [`TestDatabase`] on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$scenario($crate::databases::TestDatabase::create($crate::databases::Backend::Sqlite).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$scenario($crate::databases::TestDatabase::create($crate::databases::Backend::Postgres).await).await;
                }
            }
        )*
    };
}
