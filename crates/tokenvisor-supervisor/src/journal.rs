//! The journal of uncommitted token sets: where tokens the provider issued live while
//! the store cannot take them, so that not even a `kill -9` drops them.
//!
//! A refresh whose commit fails appends the token set here (encrypted with the store's
//! keyring, then `fsync`ed) before the process goes on holding it alone; when the set is
//! committed later a `committed` record follows, and the file is truncated once nothing
//! is outstanding. [`crate::Tokenvisor::start`] replays what is outstanding before it
//! loads any connection: a set is committed when the stored row still holds the refresh
//! token the refresh started from, and dropped when the row moved on (it was committed
//! already, re-authorized, or deleted).
//!
//! Why a local file rather than a second database: the journal is needed exactly when
//! the database cannot be reached, and the only state that must survive is a handful of
//! token sets of this process; one append-only file on the local disk, written rarely
//! (only after a failed commit), is the smallest thing that survives a crash.
//!
//! Format: one line per record, `base64(keyring.encrypt(json))` with the associated data
//! `tokenvisor:journal`; unreadable lines (a torn last write) are skipped with a warning.

use crate::connection::PendingTokens;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokenvisor_core::{ConnectionId, SecretString, TokenSet};
use tokenvisor_store::Keyring;

const AAD: &[u8] = b"tokenvisor:journal";

/// Where the journal lives and the key that encrypts it (use the store's keyring, so
/// whoever can read the tokens in the database can read the journal and nobody else).
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The journal file (created with mode 0600 if missing). Keep it on local disk, next
    /// to the data the process owns; one file per process.
    pub path: PathBuf,
    /// Encrypts the records.
    pub keyring: Keyring,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    Pending {
        seq: u64,
        connection_id: uuid::Uuid,
        base_refresh_token: Option<String>,
        access_token: String,
        refresh_token: Option<String>,
        token_type: Option<String>,
        scope: Option<String>,
        expires_in_secs: i64,
        metadata: serde_json::Map<String, serde_json::Value>,
        obtained_at: DateTime<Utc>,
    },
    Committed {
        seq: u64,
    },
}

/// An outstanding token set read back from the journal.
#[derive(Debug)]
pub(crate) struct JournalEntry {
    pub connection_id: ConnectionId,
    pub pending: PendingTokens,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    outstanding: HashSet<u64>,
}

/// The open journal (see the module docs).
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    keyring: Keyring,
    state: Mutex<State>,
}

/// A journal operation failed (the disk, or a record that cannot be encrypted).
#[derive(Debug, thiserror::Error)]
#[error("pending-token journal {path}: {message}")]
pub struct JournalError {
    path: String,
    message: String,
}

impl Journal {
    /// Opens the journal and returns the outstanding entries (oldest first).
    pub(crate) fn open(config: &JournalConfig) -> Result<(Arc<Self>, Vec<JournalEntry>), JournalError> {
        let error = |message: String| JournalError {
            path: config.path.display().to_string(),
            message,
        };
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| error(e.to_string()))?;
        }
        let mut records = Vec::new();
        match std::fs::File::open(&config.path) {
            Ok(file) => {
                for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
                    let line = line.map_err(|e| error(e.to_string()))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match decode(&config.keyring, &line) {
                        Some(record) => records.push(record),
                        None => tracing::warn!(line = number + 1, "skipping an unreadable journal record"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(e.to_string())),
        }
        let committed: HashSet<u64> = records
            .iter()
            .filter_map(|record| match record {
                Record::Committed { seq } => Some(*seq),
                Record::Pending { .. } => None,
            })
            .collect();
        let mut next_seq = 1;
        let mut entries = Vec::new();
        for record in records {
            if let Record::Pending {
                seq,
                connection_id,
                base_refresh_token,
                access_token,
                refresh_token,
                token_type,
                scope,
                expires_in_secs,
                metadata,
                obtained_at,
            } = record
            {
                next_seq = next_seq.max(seq + 1);
                if committed.contains(&seq) {
                    continue;
                }
                entries.push(JournalEntry {
                    connection_id: ConnectionId(connection_id),
                    pending: PendingTokens {
                        tokens: TokenSet {
                            access_token: SecretString::new(access_token),
                            refresh_token: refresh_token.map(SecretString::new),
                            token_type,
                            scope,
                            expires_in: std::time::Duration::from_secs(u64::try_from(expires_in_secs).unwrap_or(0)),
                            metadata,
                        },
                        obtained_at,
                        base_refresh_token: base_refresh_token.map(SecretString::new),
                        journal_seq: Some(seq),
                    },
                });
            }
        }
        let outstanding = entries.iter().filter_map(|e| e.pending.journal_seq).collect();
        let journal = Arc::new(Self {
            path: config.path.clone(),
            keyring: config.keyring.clone(),
            state: Mutex::new(State { next_seq, outstanding }),
        });
        Ok((journal, entries))
    }

    /// Appends `pending` (of connection `id`) and syncs it to disk; returns its sequence
    /// number, to be passed to [`Journal::committed`] once the set is committed.
    pub(crate) async fn record(
        self: &Arc<Self>,
        id: ConnectionId,
        pending: &PendingTokens,
    ) -> Result<u64, JournalError> {
        let seq = {
            let mut state = self.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.outstanding.insert(seq);
            seq
        };
        let record = Record::Pending {
            seq,
            connection_id: id.0,
            base_refresh_token: pending.base_refresh_token.as_ref().map(|t| t.expose().to_owned()),
            access_token: pending.tokens.access_token.expose().to_owned(),
            refresh_token: pending.tokens.refresh_token.as_ref().map(|t| t.expose().to_owned()),
            token_type: pending.tokens.token_type.clone(),
            scope: pending.tokens.scope.clone(),
            expires_in_secs: i64::try_from(pending.tokens.expires_in.as_secs()).unwrap_or(i64::MAX),
            metadata: pending.tokens.metadata.clone(),
            obtained_at: pending.obtained_at,
        };
        self.append(record).await?;
        Ok(seq)
    }

    /// Records that the set `seq` is committed; truncates the file once nothing is
    /// outstanding.
    pub(crate) async fn committed(self: &Arc<Self>, seq: u64) -> Result<(), JournalError> {
        let empty = {
            let mut state = self.lock();
            state.outstanding.remove(&seq);
            state.outstanding.is_empty()
        };
        if empty {
            return self.truncate_if_idle().await;
        }
        self.append(Record::Committed { seq }).await
    }

    /// How many sets are outstanding.
    pub(crate) fn outstanding(&self) -> usize {
        self.lock().outstanding.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, message: impl ToString) -> JournalError {
        JournalError {
            path: self.path.display().to_string(),
            message: message.to_string(),
        }
    }

    async fn append(self: &Arc<Self>, record: Record) -> Result<(), JournalError> {
        let json = serde_json::to_vec(&record).map_err(|e| self.error(e))?;
        let sealed = self.keyring.encrypt(&json, AAD).map_err(|e| self.error(e))?;
        let mut line = base64::engine::general_purpose::STANDARD.encode(sealed);
        line.push('\n');
        let journal = self.clone();
        tokio::task::spawn_blocking(move || {
            // One writer at a time: the state lock orders the appends.
            let _state = journal.lock();
            let mut file = open_append(&journal.path)?;
            file.write_all(line.as_bytes())?;
            file.sync_data()
        })
        .await
        .map_err(|e| self.error(e))?
        .map_err(|e| self.error(e))
    }

    /// Empties the file when nothing is outstanding (checked under the lock).
    pub(crate) async fn truncate_if_idle(self: &Arc<Self>) -> Result<(), JournalError> {
        let journal = self.clone();
        tokio::task::spawn_blocking(move || {
            let state = journal.lock();
            if !state.outstanding.is_empty() {
                return Ok(());
            }
            match std::fs::OpenOptions::new().write(true).open(&journal.path) {
                Ok(file) => {
                    file.set_len(0)?;
                    file.sync_data()
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| self.error(e))?
        .map_err(|e| self.error(e))
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

fn decode(keyring: &Keyring, line: &str) -> Option<Record> {
    let sealed = base64::engine::general_purpose::STANDARD.decode(line.trim()).ok()?;
    let json = keyring.decrypt(&sealed, AAD).ok()?;
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pending(refresh: &str) -> PendingTokens {
        PendingTokens {
            tokens: TokenSet {
                access_token: SecretString::new("access-token-value"),
                refresh_token: Some(SecretString::new(refresh)),
                token_type: Some("Bearer".into()),
                scope: None,
                expires_in: std::time::Duration::from_secs(3600),
                metadata: serde_json::Map::new(),
            },
            obtained_at: Utc::now(),
            base_refresh_token: Some(SecretString::new("old-refresh-token")),
            journal_seq: None,
        }
    }

    #[tokio::test]
    async fn outstanding_sets_survive_a_reopen_and_committed_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (keyring, _) = Keyring::generate();
        let config = JournalConfig {
            path: dir.path().join("journal"),
            keyring,
        };
        let (journal, entries) = Journal::open(&config).unwrap();
        assert!(entries.is_empty());
        let first = ConnectionId::new();
        let second = ConnectionId::new();
        let seq = journal.record(first, &pending("rotated-1")).await.unwrap();
        journal.record(second, &pending("rotated-2")).await.unwrap();
        journal.committed(seq).await.unwrap();
        let text = std::fs::read_to_string(&config.path).unwrap();
        assert!(!text.contains("rotated"), "records are encrypted");

        let (reopened, entries) = Journal::open(&config).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].connection_id, second);
        assert_eq!(
            entries[0].pending.tokens.refresh_token.as_ref().unwrap().expose(),
            "rotated-2"
        );
        assert_eq!(reopened.outstanding(), 1);
        reopened
            .committed(entries[0].pending.journal_seq.unwrap())
            .await
            .unwrap();
        assert_eq!(
            std::fs::metadata(&config.path).unwrap().len(),
            0,
            "truncated once empty"
        );
    }

    #[tokio::test]
    async fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (keyring, _) = Keyring::generate();
        let config = JournalConfig {
            path: dir.path().join("journal"),
            keyring,
        };
        let (journal, _) = Journal::open(&config).unwrap();
        journal.record(ConnectionId::new(), &pending("kept")).await.unwrap();
        let mut file = open_append(&config.path).unwrap();
        file.write_all(b"AAAAtorn").unwrap();
        let (_, entries) = Journal::open(&config).unwrap();
        assert_eq!(entries.len(), 1);
    }
}
