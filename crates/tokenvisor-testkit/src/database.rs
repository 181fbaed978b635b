//! Fresh databases for tests: a temporary SQLite file, or a PostgreSQL database created
//! for one test and dropped afterwards (even when the test panics).
//!
//! PostgreSQL comes from `TOKENVISOR_TEST_POSTGRES_URL` (an admin URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`). When it is unreachable the test
//! fails: PostgreSQL tests are never skipped silently.

use sea_orm::{ConnectOptions, ConnectionTrait as _, Database};

/// The admin URL used when `TOKENVISOR_TEST_POSTGRES_URL` is not set.
pub const DEFAULT_POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Which database engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

/// A fresh, empty database for one test.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    backend: Backend,
    dir: Option<tempfile::TempDir>,
    /// Dropped with the handle: drops the PostgreSQL database.
    _postgres: Option<PostgresDatabase>,
}

#[derive(Debug)]
struct PostgresDatabase {
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// A fresh database of this backend.
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::sqlite(),
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// A SQLite file (not created yet) in a new temporary directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("temporary directory: {error}"));
        let url = format!("sqlite://{}", dir.path().join("tokenvisor.db").display());
        Self {
            url,
            backend: Backend::Sqlite,
            dir: Some(dir),
            _postgres: None,
        }
    }

    /// A new PostgreSQL database named after a random uuid.
    pub async fn postgres() -> Self {
        let admin_url =
            std::env::var("TOKENVISOR_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_ADMIN_URL.to_owned());
        let name = format!("tokenvisor_test_{}", uuid_like());
        let admin = Database::connect(admin_options(&admin_url)).await.unwrap_or_else(|error| {
            panic!("PostgreSQL is required for these tests and is unreachable ({error}); set TOKENVISOR_TEST_POSTGRES_URL")
        });
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|error| panic!("create test database: {error}"));
        let _ = admin.close().await;
        let url = database_url(&admin_url, &name);
        Self {
            url,
            backend: Backend::Postgres,
            dir: None,
            _postgres: Some(PostgresDatabase { admin_url, name }),
        }
    }

    /// The database URL (`sqlite://...` or `postgres://...`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The temporary directory of a SQLite database (a place for key files too).
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(|d| d.path())
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside the test's runtime: use a runtime of its own on another thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime
                .block_on(async move {
                    let admin = Database::connect(admin_options(&admin_url)).await?;
                    admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await?;
                    admin.close().await
                })
                .map_err(std::io::Error::other)
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

fn uuid_like() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn admin_options(admin_url: &str) -> ConnectOptions {
    let mut options = ConnectOptions::new(admin_url.to_owned());
    options.sqlx_logging(false).max_connections(1);
    options
}

/// The admin URL with its database name replaced.
pub fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin_url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    format!("{}/{name}{query}", &base[..authority_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_database_urls_replace_only_the_database_name() {
        assert_eq!(
            database_url("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            database_url("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(database_url("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
