//! Encryption at rest: AES-256-GCM with a keyring that supports rotation.
//!
//! A [`Keyring`] holds one primary key (used for every new write) and older keys
//! (still accepted for reading). Every key has a short public id, the first 8 hex
//! characters of the SHA-256 of the key bytes, which is written into each ciphertext
//! so the right key is found on reading and a missing one can be named.
//!
//! Ciphertext layout (see [`CIPHERTEXT_VERSION`]):
//!
//! ```text
//! version (1 byte) | key id (4 bytes) | nonce (12 bytes, random) | ciphertext + tag (16 bytes)
//! ```
//!
//! The associated data is the caller's context (table, row id and column, e.g.
//! `connections:<uuid>:access_token`) preceded by the header, so a ciphertext moved to
//! another row or column, or re-labelled with another key id, fails to decrypt.
//!
//! Keys are written to files as standard base64, one key per line: the primary key
//! first, older keys after it (`#` starts a comment line).

use crate::StoreError;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write as _;
use std::path::Path;

/// The format version written as the first byte of every ciphertext.
pub const CIPHERTEXT_VERSION: u8 = 1;

/// Length of an AES-256 key in bytes.
pub const KEY_LEN: usize = 32;

const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// The public id of a key: the first 4 bytes of the SHA-256 of the key, shown as
/// 8 hex characters. It identifies a key without revealing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    fn of(key: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::digest(key);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

struct Key {
    id: KeyId,
    bytes: [u8; KEY_LEN],
    cipher: Aes256Gcm,
}

impl Key {
    fn new(bytes: [u8; KEY_LEN]) -> Self {
        let cipher = Aes256Gcm::new(&bytes.into());
        Self {
            id: KeyId::of(&bytes),
            bytes,
            cipher,
        }
    }
}

impl Clone for Key {
    fn clone(&self) -> Self {
        Self::new(self.bytes)
    }
}

/// The encryption keys: a primary key for writing and older keys for reading.
///
/// `Debug` prints only the key ids, never a key.
#[derive(Clone)]
pub struct Keyring {
    primary: Key,
    older: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary.id)
            .field("older", &self.older.iter().map(|key| key.id).collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// A keyring whose new writes use `primary` and that can still read data
    /// encrypted under any of the `older` keys.
    pub fn new(primary: [u8; KEY_LEN], older: Vec<[u8; KEY_LEN]>) -> Self {
        let primary = Key::new(primary);
        let older = older
            .into_iter()
            .map(Key::new)
            .filter(|key| key.id != primary.id)
            .collect();
        Self { primary, older }
    }

    /// A keyring from base64-encoded (standard alphabet) 32-byte keys. The error says
    /// which key is wrong and why (not base64, wrong length), and never echoes a key.
    pub fn from_base64(primary: &str, older: &[&str]) -> Result<Self, StoreError> {
        let primary_key = decode_key(primary, "the primary key")?;
        let mut older_keys = Vec::with_capacity(older.len());
        for (index, encoded) in older.iter().enumerate() {
            older_keys.push(decode_key(encoded, &format!("older key #{}", index + 1))?);
        }
        Ok(Self::new(primary_key, older_keys))
    }

    /// A keyring with a new random primary key, and that key in base64 (to be
    /// saved by the caller: data written with it cannot be read without it).
    pub fn generate() -> (Self, String) {
        let key: [u8; KEY_LEN] = rand::random();
        let encoded = BASE64.encode(key);
        (Self::new(key, Vec::new()), encoded)
    }

    /// Reads a key file: base64 keys one per line, the primary key first, older keys
    /// after it; empty lines and lines starting with `#` are ignored.
    /// `Ok(None)` if the file does not exist.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Option<Self>, StoreError> {
        let path = path.as_ref();
        let contents = match std::fs::read_to_string(path) {
            Ok(contents) => contents,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(StoreError::Key(format!(
                    "cannot read key file {}: {error}",
                    path.display()
                )));
            }
        };
        let mut lines = contents
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        let Some(primary) = lines.next() else {
            return Err(StoreError::Key(format!("key file {} holds no key", path.display())));
        };
        let older: Vec<&str> = lines.collect();
        Self::from_base64(primary, &older)
            .map(Some)
            .map_err(|error| StoreError::Key(format!("key file {}: {}", path.display(), key_error_detail(error))))
    }

    /// Writes the keys to a new file (the primary key first, then the older keys), with
    /// mode 0600 on unix. Fails if the file already exists: an existing key is never
    /// overwritten.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<(), StoreError> {
        let path = path.as_ref();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .map_err(|error| StoreError::Key(format!("cannot create key file {}: {error}", path.display())))?;
        let mut contents = String::new();
        for key in std::iter::once(&self.primary).chain(&self.older) {
            contents.push_str(&BASE64.encode(key.bytes));
            contents.push('\n');
        }
        file.write_all(contents.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|error| StoreError::Key(format!("cannot write key file {}: {error}", path.display())))
    }

    /// Reads the key file, or creates it with a new random key (mode 0600 on unix) when
    /// it does not exist. The flag says whether it was created.
    ///
    /// Do not call this for a database that already holds data: a new key cannot read
    /// it. Use [`Keyring::load_file`] and [`Keyring::write_file`] to decide.
    pub fn load_or_create_file(path: impl AsRef<Path>) -> Result<(Self, bool), StoreError> {
        let path = path.as_ref();
        if let Some(keyring) = Self::load_file(path)? {
            return Ok((keyring, false));
        }
        let (keyring, _encoded) = Self::generate();
        match keyring.write_file(path) {
            Ok(()) => Ok((keyring, true)),
            // Someone else created it in between: use theirs.
            Err(_) if path.exists() => match Self::load_file(path)? {
                Some(existing) => Ok((existing, false)),
                None => Err(StoreError::Key(format!(
                    "key file {} vanished while creating it",
                    path.display()
                ))),
            },
            Err(error) => Err(error),
        }
    }

    /// The id of the key used for new writes.
    pub fn primary_key_id(&self) -> KeyId {
        self.primary.id
    }

    /// The ids of every key, the primary first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        std::iter::once(&self.primary)
            .chain(&self.older)
            .map(|key| key.id)
            .collect()
    }

    /// The id of the key a ciphertext was written with, if it has a known layout.
    pub fn ciphertext_key_id(ciphertext: &[u8]) -> Option<KeyId> {
        if ciphertext.len() < HEADER_LEN + TAG_LEN || ciphertext[0] != CIPHERTEXT_VERSION {
            return None;
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&ciphertext[1..1 + KEY_ID_LEN]);
        Some(KeyId(id))
    }

    /// Encrypts `plaintext` under the primary key with a random nonce; `aad` binds the
    /// ciphertext to its place (table, row id, column).
    ///
    /// Fails only for a plaintext beyond AES-GCM's limit (64 GiB).
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(CIPHERTEXT_VERSION);
        out.extend_from_slice(&self.primary.id.0);
        out.extend_from_slice(&nonce);
        let full_aad = [&out[..1 + KEY_ID_LEN], aad].concat();
        let sealed = self
            .primary
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &full_aad,
                },
            )
            .map_err(|_| StoreError::Key("value too large to encrypt".to_owned()))?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypts a value written by [`Keyring::encrypt`] with the same `aad`. The error
    /// says whether the key id is unknown, the layout is wrong, or authentication failed
    /// (wrong key, wrong place, tampered data); it never contains data or key.
    pub fn decrypt(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let failure = |reason: String| StoreError::Decryption {
            context: String::from_utf8_lossy(aad).into_owned(),
            reason,
        };
        if ciphertext.len() < HEADER_LEN + TAG_LEN {
            return Err(failure(format!("ciphertext too short ({} bytes)", ciphertext.len())));
        }
        if ciphertext[0] != CIPHERTEXT_VERSION {
            return Err(failure(format!("unknown ciphertext format version {}", ciphertext[0])));
        }
        let Some(key_id) = Self::ciphertext_key_id(ciphertext) else {
            return Err(failure("unreadable ciphertext header".to_owned()));
        };
        let Some(key) = std::iter::once(&self.primary)
            .chain(&self.older)
            .find(|key| key.id == key_id)
        else {
            return Err(failure(format!(
                "encrypted with key id {key_id}, which is not configured (configured: {})",
                self.key_ids_list()
            )));
        };
        let nonce = &ciphertext[1 + KEY_ID_LEN..HEADER_LEN];
        let full_aad = [&ciphertext[..1 + KEY_ID_LEN], aad].concat();
        key.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: &ciphertext[HEADER_LEN..], aad: &full_aad })
            .map_err(|_| {
                failure(format!(
                    "authentication failed with key id {key_id} (wrong key, value moved from another row or column, or tampered)"
                ))
            })
    }

    /// The configured key ids, comma-separated, primary first.
    pub(crate) fn key_ids_list(&self) -> String {
        self.key_ids()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn decode_key(encoded: &str, what: &str) -> Result<[u8; KEY_LEN], StoreError> {
    let bytes = BASE64
        .decode(encoded.trim())
        .map_err(|_| StoreError::Key(format!("{what} is not valid base64 (standard alphabet)")))?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        StoreError::Key(format!(
            "{what} must be {KEY_LEN} bytes once base64-decoded, not {} bytes",
            bytes.len()
        ))
    })
}

fn key_error_detail(error: StoreError) -> String {
    match error {
        StoreError::Key(detail) => detail,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> [u8; KEY_LEN] {
        [byte; KEY_LEN]
    }

    #[test]
    fn a_value_round_trips() {
        let keyring = Keyring::new(key(1), vec![]);
        let sealed = keyring
            .encrypt(b"secret-token", b"connections:1:access_token")
            .expect("encrypt");
        assert_eq!(sealed[0], CIPHERTEXT_VERSION);
        assert_eq!(sealed.len(), HEADER_LEN + b"secret-token".len() + TAG_LEN);
        assert!(!sealed.windows(6).any(|window| window == b"secret"));
        let opened = keyring
            .decrypt(&sealed, b"connections:1:access_token")
            .expect("decrypt");
        assert_eq!(opened, b"secret-token");
    }

    #[test]
    fn the_same_value_encrypts_differently_each_time() {
        let keyring = Keyring::new(key(1), vec![]);
        let first = keyring.encrypt(b"v", b"a").expect("encrypt");
        let second = keyring.encrypt(b"v", b"a").expect("encrypt");
        assert_ne!(first, second);
    }

    #[test]
    fn a_value_moved_to_another_place_fails_to_decrypt() {
        let keyring = Keyring::new(key(1), vec![]);
        let sealed = keyring
            .encrypt(b"secret-token", b"connections:1:access_token")
            .expect("encrypt");
        let error = keyring
            .decrypt(&sealed, b"connections:2:access_token")
            .expect_err("wrong aad");
        let message = error.to_string();
        assert!(message.contains("authentication failed"), "{message}");
        assert!(message.contains("connections:2:access_token"), "{message}");
        assert!(!message.contains("secret-token"));
        assert!(keyring.decrypt(&sealed, b"connections:1:refresh_token").is_err());
    }

    #[test]
    fn a_wrong_key_fails_to_decrypt() {
        let writer = Keyring::new(key(1), vec![]);
        let reader = Keyring::new(key(2), vec![]);
        let sealed = writer.encrypt(b"secret", b"aad").expect("encrypt");
        let message = reader.decrypt(&sealed, b"aad").expect_err("unknown key").to_string();
        assert!(message.contains("not configured"), "{message}");
        assert!(message.contains(&writer.primary_key_id().to_string()), "{message}");

        // Same key id claimed, other key: authentication failure, not "unknown key".
        let mut forged = writer.encrypt(b"secret", b"aad").expect("encrypt");
        forged[1..1 + KEY_ID_LEN].copy_from_slice(&reader.primary_key_id().0);
        let message = reader.decrypt(&forged, b"aad").expect_err("wrong key").to_string();
        assert!(message.contains("authentication failed"), "{message}");
    }

    #[test]
    fn tampered_or_truncated_data_fails_to_decrypt() {
        let keyring = Keyring::new(key(1), vec![]);
        let mut sealed = keyring.encrypt(b"secret", b"aad").expect("encrypt");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(keyring.decrypt(&sealed, b"aad").is_err());
        assert!(keyring.decrypt(&sealed[..10], b"aad").is_err());
        sealed[0] = 9;
        assert!(
            keyring
                .decrypt(&sealed, b"aad")
                .expect_err("version")
                .to_string()
                .contains("version 9")
        );
    }

    #[test]
    fn rotation_reads_old_data_and_writes_with_the_new_primary() {
        let old = Keyring::new(key(1), vec![]);
        let sealed_old = old.encrypt(b"old-secret", b"aad").expect("encrypt");

        let rotated = Keyring::new(key(2), vec![key(1)]);
        assert_eq!(
            rotated.decrypt(&sealed_old, b"aad").expect("old key still reads"),
            b"old-secret"
        );

        let sealed_new = rotated.encrypt(b"new-secret", b"aad").expect("encrypt");
        assert_eq!(Keyring::ciphertext_key_id(&sealed_new), Some(rotated.primary_key_id()));
        assert_ne!(rotated.primary_key_id(), old.primary_key_id());
        assert!(old.decrypt(&sealed_new, b"aad").is_err());
    }

    #[test]
    fn key_ids_are_the_first_eight_hex_characters_of_the_sha256() {
        let keyring = Keyring::new(key(0), vec![]);
        let digest = Sha256::digest([0u8; KEY_LEN]);
        let expected: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        assert_eq!(keyring.primary_key_id().to_string(), expected);
        assert_eq!(expected.len(), 8);
    }

    #[test]
    fn debug_shows_only_key_ids() {
        let keyring = Keyring::new(key(7), vec![key(8)]);
        let debug = format!("{keyring:?}");
        assert!(debug.contains(&keyring.primary_key_id().to_string()), "{debug}");
        assert!(!debug.contains(&BASE64.encode(key(7))), "{debug}");
        assert!(!debug.contains("7, 7"), "{debug}");
    }

    #[test]
    fn base64_keys_are_validated_without_echoing_them() {
        let good = BASE64.encode(key(3));
        assert!(Keyring::from_base64(&good, &[]).is_ok());

        let message = Keyring::from_base64("not base64 !!", &[]).expect_err("bad").to_string();
        assert!(message.contains("primary key is not valid base64"), "{message}");
        assert!(!message.contains("not base64 !!"));

        let short = BASE64.encode([1u8; 16]);
        let message = Keyring::from_base64(&good, &[&short]).expect_err("short").to_string();
        assert!(message.contains("older key #1 must be 32 bytes"), "{message}");
        assert!(!message.contains(&short));
    }

    #[test]
    fn generated_keys_are_random_and_decode_back() {
        let (first, encoded) = Keyring::generate();
        let (second, _) = Keyring::generate();
        assert_ne!(first.primary_key_id(), second.primary_key_id());
        let decoded = Keyring::from_base64(&encoded, &[]).expect("decodes");
        assert_eq!(decoded.primary_key_id(), first.primary_key_id());
    }

    #[test]
    fn key_files_are_created_once_with_mode_0600_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        assert!(Keyring::load_file(&path).expect("missing is fine").is_none());

        let (created, was_created) = Keyring::load_or_create_file(&path).expect("create");
        assert!(was_created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let (loaded, was_created) = Keyring::load_or_create_file(&path).expect("load");
        assert!(!was_created);
        assert_eq!(loaded.key_ids(), created.key_ids());
        assert!(
            created.write_file(&path).is_err(),
            "an existing key file is never overwritten"
        );
    }

    #[test]
    fn key_files_keep_older_keys_after_the_primary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        let keyring = Keyring::new(key(2), vec![key(1)]);
        keyring.write_file(&path).expect("write");
        let loaded = Keyring::load_file(&path).expect("read").expect("present");
        assert_eq!(loaded.key_ids(), keyring.key_ids());

        std::fs::write(&path, "# comment\n\n").expect("write");
        let message = Keyring::load_file(&path).expect_err("empty").to_string();
        assert!(message.contains("holds no key"), "{message}");

        std::fs::write(&path, "AAAA\n").expect("write");
        let message = Keyring::load_file(&path).expect_err("bad").to_string();
        assert!(message.contains("primary key must be 32 bytes"), "{message}");
    }
}
