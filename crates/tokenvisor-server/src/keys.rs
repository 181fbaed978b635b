//! `tokenvisor keys`: generate a key, show which keys the stored values are under, and
//! rotate every stored secret to the primary key, against the database directly (like
//! `migrate`, with the same storage settings), while `serve` keeps running.

use crate::exit::Exit;
use crate::settings::{Kek, KekArgs, Storage, StorageArgs};
use anyhow::Context as _;
use base64::Engine as _;
use std::io::Write as _;
use std::time::{Duration, Instant};
use tokenvisor_store::crypto::{KeyMaterial, key_list_entries, validate_label};
use tokenvisor_store::keys::wrap_key;
use tokenvisor_store::sql::{KeyRotation, RotationOptions, RotationProgress};
use tokenvisor_store::{Keyring, SqlStore};
use zeroize::Zeroizing;

/// The `keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Print a new random key as `label:base64`, to put first in TOKENVISOR_ENCRYPTION_KEYS.
    ///
    /// The same output serves as a key-encryption key (TOKENVISOR_KEK, or the file of
    /// TOKENVISOR_KEK_FILE).
    Generate {
        /// The key's label (`a-z 0-9 - _`, at most 32 characters).
        #[arg(long, default_value = "key")]
        label: String,
        /// Print the new key wrapped by the key-encryption key (TOKENVISOR_KEK or
        /// TOKENVISOR_KEK_FILE) instead of in plain text; the plain key is never shown.
        #[arg(long)]
        wrapped: bool,
        #[command(flatten)]
        kek: KekArgs,
    },
    /// Wrap keys with the key-encryption key (TOKENVISOR_KEK or TOKENVISOR_KEK_FILE):
    /// reads a TOKENVISOR_ENCRYPTION_KEYS value (`label:base64`, comma-separated or one
    /// per line) on standard input and prints the same keys wrapped, in the same order:
    /// the value of TOKENVISOR_ENCRYPTION_KEYS once TOKENVISOR_KEK is set. The key ids do
    /// not change, so nothing stored needs rewriting.
    Wrap {
        #[command(flatten)]
        kek: KekArgs,
    },
    /// The configured keys (the primary first), how many stored values each key holds,
    /// and the progress of the last rotation.
    Status(StorageArgs),
    /// Re-encrypt every stored secret under the primary key (the first configured key),
    /// online: in short batches, each row with a compare-and-set so no refresh is lost or
    /// blocked for long. Resumes where an interrupted run stopped. Exits non-zero when
    /// values are left under another key.
    Rotate {
        #[command(flatten)]
        storage: StorageArgs,
        /// Rows per transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: u32,
        /// A pause after each batch (`0s`, `50ms`), to spare a busy database.
        #[arg(long, default_value = "0s")]
        pause: humantime::Duration,
        /// Only print the progress of the last rotation; rotate nothing.
        #[arg(long)]
        status: bool,
    },
}

/// Runs a `keys` subcommand.
pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate { label, wrapped, kek } => {
            let kek = if wrapped { Some(required_kek(&kek)?) } else { None };
            generate(&label, kek.as_ref()).await
        }
        KeysCommand::Wrap { kek } => wrap(&required_kek(&kek)?).await,
        KeysCommand::Status(args) => {
            let storage = args.resolve().map_err(|error| Exit::Usage.with(error))?;
            status(&storage).await
        }
        KeysCommand::Rotate {
            storage,
            batch_size,
            pause,
            status: only_status,
        } => {
            let storage = storage.resolve().map_err(|error| Exit::Usage.with(error))?;
            let options = RotationOptions {
                batch_size: batch_size.max(1),
                pause: pause.into(),
            };
            rotate(&storage, &options, only_status).await
        }
    }
}

fn required_kek(args: &KekArgs) -> anyhow::Result<Kek> {
    args.load()
        .map_err(|error| Exit::Usage.with(error))?
        .ok_or_else(|| Exit::Usage.msg("no key-encryption key: set TOKENVISOR_KEK or TOKENVISOR_KEK_FILE"))
}

async fn generate(label: &str, kek: Option<&Kek>) -> anyhow::Result<()> {
    validate_label(label, "--label").map_err(|error| Exit::Usage.with(anyhow::anyhow!("{error}")))?;
    let key = Zeroizing::new(rand::random::<[u8; 32]>());
    let line = Zeroizing::new(match kek {
        Some(kek) => format!("{}\n", wrap_key(kek.key_encryption_key(), label, &key).await?),
        None => format!(
            "{label}:{}\n",
            base64::engine::general_purpose::STANDARD.encode(key.as_ref())
        ),
    });
    std::io::stdout().write_all(line.as_bytes())?;
    Ok(())
}

async fn wrap(kek: &Kek) -> anyhow::Result<()> {
    let mut input = Zeroizing::new(String::new());
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input).context("cannot read standard input")?;
    let mut wrapped = Vec::new();
    for entry in key_list_entries(&input) {
        let material = KeyMaterial::parse(entry, "a key on standard input")
            .map_err(|error| Exit::Usage.with(anyhow::anyhow!("{error}")))?;
        let Some(label) = &material.label else {
            return Err(Exit::Usage.msg(
                "a key on standard input has no label: write label:base64 (a label names the key in status and errors)",
            ));
        };
        wrapped.push(wrap_key(kek.key_encryption_key(), label, &material.bytes).await?);
    }
    if wrapped.is_empty() {
        return Err(Exit::Usage.msg("no key on standard input: pipe in a TOKENVISOR_ENCRYPTION_KEYS value"));
    }
    println!("{}", wrapped.join(","));
    Ok(())
}

/// Opens the store with the configured keys (never generating one); migrations run, so
/// the progress table exists.
async fn open(storage: &Storage) -> anyhow::Result<SqlStore> {
    let keyring = storage.existing_keyring().await?.ok_or_else(|| {
        Exit::Usage.msg(format_args!(
            "no encryption key: set TOKENVISOR_ENCRYPTION_KEYS (or TOKENVISOR_ENCRYPTION_KEY), or restore the key file {}",
            storage.key_file().display()
        ))
    })?;
    SqlStore::connect_with_pool(&storage.database_url(), keyring, storage.database_pool.min(4))
        .await
        .map_err(|error| Exit::Unavailable.with(anyhow::anyhow!("failed to open the database: {error}")))
}

async fn status(storage: &Storage) -> anyhow::Result<()> {
    let store = open(storage).await?;
    let rotation = store.key_rotation();
    let keyring = rotation.keyring().clone();
    let mut out = String::new();
    out.push_str("KEYS (primary first)\n");
    for (index, id) in keyring.key_ids().into_iter().enumerate() {
        let role = if index == 0 { "primary" } else { "older" };
        out.push_str(&format!("  {id}  {:<32}  {role}\n", keyring.label(id).unwrap_or("-")));
    }
    out.push_str("VALUES PER KEY\n");
    let usage = rotation.usage().await?;
    let mut per_key: std::collections::BTreeMap<(String, u8), u64> = std::collections::BTreeMap::new();
    for entry in &usage {
        *per_key
            .entry((
                entry.key_id.clone().unwrap_or_else(|| "unreadable".to_owned()),
                entry.version,
            ))
            .or_default() += entry.count;
    }
    for ((id, version), count) in &per_key {
        let label = tokenvisor_store::crypto::KeyId::parse_hex(id)
            .and_then(|key_id| keyring.label(key_id))
            .unwrap_or(if keyring.key_ids().iter().any(|key| key.to_string() == *id) {
                "-"
            } else {
                "NOT CONFIGURED"
            });
        out.push_str(&format!("  {id}  {label:<32}  v{version}  {count}\n"));
    }
    let not_current = rotation.values_not_current().await?;
    out.push_str(&format!("not under the primary key: {not_current}\n"));
    match rotation.progress(None).await? {
        Some(progress) => out.push_str(&format!("last rotation: {}\n", describe(&progress, &keyring))),
        None => out.push_str("last rotation: none\n"),
    }
    print!("{out}");
    store.close().await?;
    Ok(())
}

fn describe(progress: &RotationProgress, keyring: &Keyring) -> String {
    let target = tokenvisor_store::crypto::KeyId::parse_hex(&progress.target_key_id)
        .map(|id| keyring.describe(id))
        .unwrap_or_else(|| progress.target_key_id.clone());
    let state = if progress.finished() { "finished" } else { "in progress" };
    let seconds = (progress.updated_at_ms - progress.started_at_ms).max(0) as f64 / 1000.0;
    format!(
        "to {target}, {state}: {} rewritten, {} already current, {} raced (retried), over {seconds:.1}s",
        progress.rows_rewritten(),
        progress.rows_current(),
        progress.rows_raced()
    )
}

async fn rotate(storage: &Storage, options: &RotationOptions, only_status: bool) -> anyhow::Result<()> {
    let store = open(storage).await?;
    let rotation: KeyRotation = store.key_rotation();
    let keyring = rotation.keyring().clone();
    if only_status {
        match rotation.progress(Some(keyring.primary_key_id())).await? {
            Some(progress) => println!("rotation {}", describe(&progress, &keyring)),
            None => println!("no rotation to {} yet", keyring.describe(keyring.primary_key_id())),
        }
        store.close().await?;
        return Ok(());
    }
    println!(
        "rotating every stored secret to {} (batches of {})",
        keyring.describe(keyring.primary_key_id()),
        options.batch_size
    );
    let before = rotation
        .progress(Some(keyring.primary_key_id()))
        .await?
        .map_or(0, |progress| progress.rows_rewritten() + progress.rows_current());
    let started = Instant::now();
    let mut last_print = Instant::now();
    let result = rotation
        .rotate(options, |progress| {
            if last_print.elapsed() < Duration::from_secs(1) && !progress.finished() {
                return;
            }
            last_print = Instant::now();
            let done = progress.rows_rewritten() + progress.rows_current();
            let rate = done.saturating_sub(before) as f64 / started.elapsed().as_secs_f64().max(0.001);
            let table = progress
                .tables
                .iter()
                .find(|table| !table.finished)
                .map_or("all tables", |table| table.table.as_str());
            println!(
                "progress: {done} rows done ({} rewritten, {} already current, {} raced), {rate:.0} rows/s, now at {table}",
                progress.rows_rewritten(),
                progress.rows_current(),
                progress.rows_raced()
            );
            let _ = std::io::stdout().flush();
        })
        .await;
    let progress = result.map_err(|error| anyhow::anyhow!("key rotation failed (run it again to resume): {error}"))?;
    let left = rotation.values_not_current().await?;
    println!("rotation {}", describe(&progress, &keyring));
    store.close().await?;
    if left > 0 {
        return Err(Exit::Error.msg(format_args!(
            "{left} stored values are still not under {}: a process still writes with an older primary key \
             (restart every replica with the new keys first), then run `tokenvisor keys rotate` again",
            keyring.describe(keyring.primary_key_id())
        )));
    }
    println!(
        "verified: every stored value is under {}",
        keyring.describe(keyring.primary_key_id())
    );
    Ok(())
}
