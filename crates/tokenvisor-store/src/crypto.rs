//! Encryption at rest with a keyring that supports rotation.
//!
//! A [`Keyring`] holds one primary key (used for every new write) and older keys
//! (still accepted for reading). Every key has a short public id, the first 8 hex
//! characters of the SHA-256 of the key bytes, which is written into each ciphertext
//! so the right key is found on reading and a missing one can be named. Keys may also
//! carry an operator label (`a-z`, `0-9`, `-`, `_`, at most 32 characters), for humans
//! only: relabelling a key never changes its id, so it never breaks stored data.
//!
//! Ciphertext layouts (the first byte says which):
//!
//! ```text
//! version 2 (written): 2 | key id (4 bytes) | nonce (24 bytes, random) | ciphertext + tag (16 bytes)
//! version 1 (read):    1 | key id (4 bytes) | nonce (12 bytes, random) | ciphertext + tag (16 bytes)
//! ```
//!
//! Version 2 is XChaCha20-Poly1305; version 1, written by earlier releases, is
//! AES-256-GCM and stays readable. Why the switch: AES-GCM with random 96-bit nonces
//! must not seal more than about 2^32 values under one key (the nonce-collision bound
//! NIST SP 800-38D sets), and a token store that refreshes 100,000 connections every
//! hour reaches that in a few years, so the key would have to be retired on a counter.
//! XChaCha20-Poly1305's 192-bit random nonces make a collision negligible (about 2^-64
//! after 2^64 messages), so a key needs no usage counter and never expires for nonce
//! reasons; rotation is then a policy choice (`tokenvisor keys rotate`), not a deadline.
//!
//! The associated data is the caller's context (table, row id and column, e.g.
//! `connections:<uuid>:access_token`) preceded by the version byte and key id, so a
//! ciphertext moved to another row or column, or re-labelled with another key id,
//! fails to decrypt.
//!
//! Key material is zeroized when dropped: the key bytes live in [`zeroize::Zeroizing`],
//! decoded base64 buffers are wiped, and both ciphers wipe their key schedules on drop
//! (`aes-gcm`'s `zeroize` feature; `chacha20poly1305` always does).
//!
//! Keys are written to files one per line, `label:base64` or bare standard base64: the
//! primary key first, older keys after it (`#` starts a comment line).

use crate::StoreError;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use zeroize::Zeroizing;

/// The format version written as the first byte of every new ciphertext
/// (XChaCha20-Poly1305).
pub const CIPHERTEXT_VERSION: u8 = 2;

/// The format version of ciphertexts written by earlier releases (AES-256-GCM), still read.
pub const CIPHERTEXT_VERSION_AES_GCM: u8 = 1;

/// Length of a key in bytes (256 bits).
pub const KEY_LEN: usize = 32;

/// The longest key label.
pub const MAX_LABEL_LEN: usize = 32;

const KEY_ID_LEN: usize = 4;
const NONCE_LEN_V1: usize = 12;
const NONCE_LEN_V2: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN_V1: usize = 1 + KEY_ID_LEN + NONCE_LEN_V1;
const HEADER_LEN_V2: usize = 1 + KEY_ID_LEN + NONCE_LEN_V2;

/// The public id of a key: the first 4 bytes of the SHA-256 of the key, shown as
/// 8 hex characters. It identifies a key without revealing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    fn of(key: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::digest(key);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self(id)
    }

    /// The 4 raw bytes, as written in a ciphertext header.
    pub fn to_bytes(self) -> [u8; KEY_ID_LEN] {
        self.0
    }

    /// The id from its 8 hex characters, as [`fmt::Display`] shows it.
    pub fn parse_hex(text: &str) -> Option<Self> {
        if text.len() != KEY_ID_LEN * 2 || !text.is_ascii() {
            return None;
        }
        let mut id = [0u8; KEY_ID_LEN];
        for (index, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
        }
        Some(Self(id))
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

/// One key: its bytes (wiped on drop), id, optional label and both ciphers.
struct Key {
    id: KeyId,
    label: Option<String>,
    bytes: Zeroizing<[u8; KEY_LEN]>,
    aes: Aes256Gcm,
    xchacha: XChaCha20Poly1305,
}

impl Key {
    fn new(bytes: Zeroizing<[u8; KEY_LEN]>, label: Option<String>) -> Self {
        let aes = Aes256Gcm::new(bytes.as_ref().into());
        let xchacha = XChaCha20Poly1305::new(bytes.as_ref().into());
        Self {
            id: KeyId::of(&bytes),
            label,
            bytes,
            aes,
            xchacha,
        }
    }
}

impl Clone for Key {
    fn clone(&self) -> Self {
        Self::new(self.bytes.clone(), self.label.clone())
    }
}

/// A key given to [`Keyring::from_keys`]: its bytes (wiped on drop) and an optional label.
pub struct KeyMaterial {
    /// The operator's label, if any (`[a-z0-9_-]{1,32}`).
    pub label: Option<String>,
    /// The 32 key bytes.
    pub bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("label", &self.label)
            .field("id", &KeyId::of(&self.bytes))
            .finish_non_exhaustive()
    }
}

impl KeyMaterial {
    /// Parses `label:base64` or bare base64; `what` names the key in errors, which
    /// never echo key material.
    pub fn parse(entry: &str, what: &str) -> Result<Self, StoreError> {
        let entry = entry.trim();
        // Standard base64 never contains ':', so a ':' always separates a label.
        let (label, encoded) = match entry.split_once(':') {
            Some((label, encoded)) => {
                let label = label.trim();
                validate_label(label, what)?;
                (Some(label.to_owned()), encoded)
            }
            None => (None, entry),
        };
        let what = match &label {
            Some(label) => format!("{what} (\"{label}\")"),
            None => what.to_owned(),
        };
        Ok(Self {
            label,
            bytes: decode_key(encoded, &what)?,
        })
    }
}

/// The entries of a key list (`TOKENVISOR_ENCRYPTION_KEYS`, plain or wrapped): separated
/// by commas or new lines, trimmed, empty ones and lines starting with `#` left out.
pub fn key_list_entries(list: &str) -> impl Iterator<Item = &str> {
    list.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
}

/// Checks a key label: 1 to 32 characters among `a-z`, `0-9`, `-`, `_`.
pub fn validate_label(label: &str, what: &str) -> Result<(), StoreError> {
    let valid = !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'_');
    if valid {
        return Ok(());
    }
    Err(StoreError::Key(format!(
        "{what}: a key label must be 1 to {MAX_LABEL_LEN} characters among a-z, 0-9, '-' and '_' (write keys as label:base64)"
    )))
}

/// The encryption keys: a primary key for writing and older keys for reading.
///
/// `Debug` prints only the key ids and labels, never a key.
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
            .field(
                "labels",
                &self.all().map(|key| key.label.as_deref()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// A keyring whose new writes use `primary` and that can still read data
    /// encrypted under any of the `older` keys.
    pub fn new(primary: [u8; KEY_LEN], older: Vec<[u8; KEY_LEN]>) -> Self {
        let primary = Key::new(Zeroizing::new(primary), None);
        let older = older
            .into_iter()
            .map(|bytes| Key::new(Zeroizing::new(bytes), None))
            .filter(|key| key.id != primary.id)
            .collect();
        Self { primary, older }
    }

    /// A keyring from keys with optional labels, the primary first. Labels must be
    /// unique, and a key may appear only once.
    pub fn from_keys(keys: Vec<KeyMaterial>) -> Result<Self, StoreError> {
        let mut keys = keys
            .into_iter()
            .map(|material| Key::new(material.bytes, material.label));
        let Some(primary) = keys.next() else {
            return Err(StoreError::Key("no encryption key given".to_owned()));
        };
        let mut older: Vec<Key> = Vec::new();
        for key in keys {
            if let Some(label) = &key.label
                && std::iter::once(&primary)
                    .chain(&older)
                    .any(|other| other.label.as_deref() == Some(label))
            {
                return Err(StoreError::Key(format!("key label \"{label}\" is given twice")));
            }
            if std::iter::once(&primary).chain(&older).any(|other| other.id == key.id) {
                return Err(StoreError::Key(format!(
                    "the key with id {} is given twice{}",
                    key.id,
                    key.label
                        .as_deref()
                        .map(|label| format!(" (\"{label}\")"))
                        .unwrap_or_default()
                )));
            }
            older.push(key);
        }
        Ok(Self { primary, older })
    }

    /// A keyring from a list of `label:base64` (or bare base64) keys, comma-separated or
    /// one per line ([`key_list_entries`]), the primary first, as
    /// `TOKENVISOR_ENCRYPTION_KEYS` holds. Errors never echo a key.
    pub fn from_key_list(list: &str) -> Result<Self, StoreError> {
        let mut keys = Vec::new();
        for (index, entry) in key_list_entries(list).enumerate() {
            let what = if index == 0 {
                "the primary key".to_owned()
            } else {
                format!("key #{}", index + 1)
            };
            keys.push(KeyMaterial::parse(entry, &what)?);
        }
        Self::from_keys(keys)
    }

    /// A keyring from base64-encoded (standard alphabet) 32-byte keys. The error says
    /// which key is wrong and why (not base64, wrong length), and never echoes a key.
    pub fn from_base64(primary: &str, older: &[&str]) -> Result<Self, StoreError> {
        let primary_key = decode_key(primary, "the primary key")?;
        let mut keys = vec![KeyMaterial {
            label: None,
            bytes: primary_key,
        }];
        for (index, encoded) in older.iter().enumerate() {
            let bytes = decode_key(encoded, &format!("older key #{}", index + 1))?;
            if keys.iter().all(|key| KeyId::of(&key.bytes) != KeyId::of(&bytes)) {
                keys.push(KeyMaterial { label: None, bytes });
            }
        }
        Self::from_keys(keys)
    }

    /// A keyring with a new random primary key, and that key in base64 (to be
    /// saved by the caller: data written with it cannot be read without it).
    pub fn generate() -> (Self, String) {
        let key = Zeroizing::new(rand::random::<[u8; KEY_LEN]>());
        let encoded = BASE64.encode(key.as_ref());
        (
            Self {
                primary: Key::new(key, None),
                older: Vec::new(),
            },
            encoded,
        )
    }

    /// Reads a key file: keys one per line (`label:base64` or bare base64), the primary
    /// key first, older keys after it; empty lines and lines starting with `#` are ignored.
    /// `Ok(None)` if the file does not exist.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Option<Self>, StoreError> {
        let path = path.as_ref();
        let contents = match std::fs::read_to_string(path) {
            Ok(contents) => Zeroizing::new(contents),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(StoreError::Key(format!(
                    "cannot read key file {}: {error}",
                    path.display()
                )));
            }
        };
        let lines: Vec<&str> = contents
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        if lines.is_empty() {
            return Err(StoreError::Key(format!("key file {} holds no key", path.display())));
        }
        let parse = || -> Result<Self, StoreError> {
            let mut keys = Vec::with_capacity(lines.len());
            for (index, line) in lines.iter().enumerate() {
                let what = if index == 0 {
                    "the primary key".to_owned()
                } else {
                    format!("older key #{index}")
                };
                keys.push(KeyMaterial::parse(line, &what)?);
            }
            Self::from_keys(keys)
        };
        parse()
            .map(Some)
            .map_err(|error| StoreError::Key(format!("key file {}: {}", path.display(), key_error_detail(error))))
    }

    /// Writes the keys to a new file (the primary key first, then the older keys, each
    /// `label:base64` when labelled), with mode 0600 on unix. Fails if the file already
    /// exists: an existing key is never overwritten.
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
        let mut contents = Zeroizing::new(String::new());
        for key in self.all() {
            if let Some(label) = &key.label {
                contents.push_str(label);
                contents.push(':');
            }
            contents.push_str(&Zeroizing::new(BASE64.encode(key.bytes.as_ref())));
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

    fn all(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.primary).chain(&self.older)
    }

    /// The id of the key used for new writes.
    pub fn primary_key_id(&self) -> KeyId {
        self.primary.id
    }

    /// The ids of every key, the primary first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.all().map(|key| key.id).collect()
    }

    /// The operator's label of a configured key, if it has one.
    pub fn label(&self, id: KeyId) -> Option<&str> {
        self.all().find(|key| key.id == id).and_then(|key| key.label.as_deref())
    }

    /// A key id for humans: `label (id)` when labelled, else the id.
    pub fn describe(&self, id: KeyId) -> String {
        match self.label(id) {
            Some(label) => format!("{label} ({id})"),
            None => id.to_string(),
        }
    }

    /// The id of the key a ciphertext was written with, if it has a known layout.
    pub fn ciphertext_key_id(ciphertext: &[u8]) -> Option<KeyId> {
        let header_len = match ciphertext.first() {
            Some(&CIPHERTEXT_VERSION) => HEADER_LEN_V2,
            Some(&CIPHERTEXT_VERSION_AES_GCM) => HEADER_LEN_V1,
            _ => return None,
        };
        if ciphertext.len() < header_len + TAG_LEN {
            return None;
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&ciphertext[1..1 + KEY_ID_LEN]);
        Some(KeyId(id))
    }

    /// Whether `ciphertext` is in the current layout under the primary key, so
    /// re-encrypting it would change nothing.
    pub fn is_current(&self, ciphertext: &[u8]) -> bool {
        ciphertext.first() == Some(&CIPHERTEXT_VERSION) && Self::ciphertext_key_id(ciphertext) == Some(self.primary.id)
    }

    /// Encrypts `plaintext` under the primary key (XChaCha20-Poly1305, random 192-bit
    /// nonce); `aad` binds the ciphertext to its place (table, row id, column).
    ///
    /// Fails only for a plaintext beyond the cipher's limit (256 GiB).
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let nonce: [u8; NONCE_LEN_V2] = rand::random();
        let mut out = Vec::with_capacity(HEADER_LEN_V2 + plaintext.len() + TAG_LEN);
        out.push(CIPHERTEXT_VERSION);
        out.extend_from_slice(&self.primary.id.0);
        out.extend_from_slice(&nonce);
        let full_aad = [&out[..1 + KEY_ID_LEN], aad].concat();
        let sealed = self
            .primary
            .xchacha
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &full_aad,
                },
            )
            .map_err(|_| StoreError::Key("value too large to encrypt".to_owned()))?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypts a value written by [`Keyring::encrypt`] (or by an earlier release, in
    /// the AES-256-GCM layout) with the same `aad`. The error says whether the key id is
    /// unknown, the layout is wrong, or authentication failed (wrong key, wrong place,
    /// tampered data); it never contains data or key. The plaintext is wiped on drop.
    pub fn decrypt(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let failure = |reason: String| StoreError::Decryption {
            context: String::from_utf8_lossy(aad).into_owned(),
            reason,
        };
        let Some(&version) = ciphertext.first() else {
            return Err(failure("ciphertext too short (0 bytes)".to_owned()));
        };
        let header_len = match version {
            CIPHERTEXT_VERSION => HEADER_LEN_V2,
            CIPHERTEXT_VERSION_AES_GCM => HEADER_LEN_V1,
            other => return Err(failure(format!("unknown ciphertext format version {other}"))),
        };
        if ciphertext.len() < header_len + TAG_LEN {
            return Err(failure(format!("ciphertext too short ({} bytes)", ciphertext.len())));
        }
        let Some(key_id) = Self::ciphertext_key_id(ciphertext) else {
            return Err(failure("unreadable ciphertext header".to_owned()));
        };
        let Some(key) = self.all().find(|key| key.id == key_id) else {
            return Err(failure(format!(
                "encrypted with key id {key_id}, which is not configured (configured: {})",
                self.key_ids_list()
            )));
        };
        let nonce = &ciphertext[1 + KEY_ID_LEN..header_len];
        let full_aad = [&ciphertext[..1 + KEY_ID_LEN], aad].concat();
        let payload = Payload {
            msg: &ciphertext[header_len..],
            aad: &full_aad,
        };
        let opened = if version == CIPHERTEXT_VERSION {
            key.xchacha.decrypt(XNonce::from_slice(nonce), payload)
        } else {
            key.aes.decrypt(Nonce::from_slice(nonce), payload)
        };
        opened.map(Zeroizing::new).map_err(|_| {
            failure(format!(
                "authentication failed with key id {key_id} (wrong key, value moved from another row or column, or tampered)"
            ))
        })
    }

    /// Decrypts `ciphertext` and encrypts it again under the primary key, bound to the
    /// same `aad`: what key rotation does to each stored value.
    pub fn reencrypt(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let plaintext = self.decrypt(ciphertext, aad)?;
        self.encrypt(&plaintext, aad)
    }

    /// The configured key ids, comma-separated, primary first.
    pub(crate) fn key_ids_list(&self) -> String {
        self.all()
            .map(|key| self.describe(key.id))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn decode_key(encoded: &str, what: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, StoreError> {
    let bytes = Zeroizing::new(
        BASE64
            .decode(encoded.trim())
            .map_err(|_| StoreError::Key(format!("{what} is not valid base64 (standard alphabet)")))?,
    );
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if bytes.len() != KEY_LEN {
        return Err(StoreError::Key(format!(
            "{what} must be {KEY_LEN} bytes once base64-decoded, not {} bytes",
            bytes.len()
        )));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
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
        assert_eq!(sealed.len(), HEADER_LEN_V2 + b"secret-token".len() + TAG_LEN);
        assert!(!sealed.windows(6).any(|window| window == b"secret"));
        let opened = keyring
            .decrypt(&sealed, b"connections:1:access_token")
            .expect("decrypt");
        assert_eq!(opened.as_slice(), b"secret-token");
    }

    /// A value sealed as releases before version 2 did (AES-256-GCM, 96-bit nonce).
    fn encrypt_v1(keyring: &Keyring, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN_V1] = rand::random();
        let mut out = vec![CIPHERTEXT_VERSION_AES_GCM];
        out.extend_from_slice(&keyring.primary.id.0);
        out.extend_from_slice(&nonce);
        let full_aad = [&out[..1 + KEY_ID_LEN], aad].concat();
        let sealed = keyring
            .primary
            .aes
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &full_aad,
                },
            )
            .expect("encrypt");
        out.extend_from_slice(&sealed);
        out
    }

    #[test]
    fn values_written_by_earlier_releases_with_aes_gcm_still_decrypt() {
        let keyring = Keyring::new(key(1), vec![]);
        let sealed = encrypt_v1(&keyring, b"old-token", b"connections:1:access_token");
        assert_eq!(sealed.len(), HEADER_LEN_V1 + b"old-token".len() + TAG_LEN);
        assert_eq!(Keyring::ciphertext_key_id(&sealed), Some(keyring.primary_key_id()));
        assert!(!keyring.is_current(&sealed), "a v1 value is re-encrypted by rotation");
        let opened = keyring
            .decrypt(&sealed, b"connections:1:access_token")
            .expect("v1 reads");
        assert_eq!(opened.as_slice(), b"old-token");
        assert!(keyring.decrypt(&sealed, b"connections:2:access_token").is_err());
        let mut tampered = sealed.clone();
        tampered[HEADER_LEN_V1] ^= 1;
        assert!(keyring.decrypt(&tampered, b"connections:1:access_token").is_err());

        let again = keyring
            .reencrypt(&sealed, b"connections:1:access_token")
            .expect("re-encrypt");
        assert_eq!(again[0], CIPHERTEXT_VERSION);
        assert!(keyring.is_current(&again));
        assert_eq!(
            keyring
                .decrypt(&again, b"connections:1:access_token")
                .expect("v2 reads")
                .as_slice(),
            b"old-token"
        );
    }

    #[test]
    fn a_version_header_swapped_between_layouts_fails_to_decrypt() {
        let keyring = Keyring::new(key(1), vec![]);
        let mut sealed = keyring.encrypt(b"secret", b"aad").expect("encrypt");
        sealed[0] = CIPHERTEXT_VERSION_AES_GCM;
        assert!(keyring.decrypt(&sealed, b"aad").is_err());
    }

    #[test]
    fn key_lists_carry_labels_the_primary_first_and_never_echo_keys() {
        let first = BASE64.encode(key(1));
        let second = BASE64.encode(key(2));
        let keyring = Keyring::from_key_list(&format!("new-2026:{second}, old_1:{first}")).expect("parses");
        assert_eq!(keyring.primary_key_id(), Keyring::new(key(2), vec![]).primary_key_id());
        assert_eq!(keyring.key_ids().len(), 2);
        assert_eq!(keyring.label(keyring.primary_key_id()), Some("new-2026"));
        assert!(keyring.describe(keyring.primary_key_id()).starts_with("new-2026 ("));

        let bare = Keyring::from_key_list(&first).expect("a bare key is fine");
        assert_eq!(bare.label(bare.primary_key_id()), None);

        for (list, expected) in [
            (format!("a:{first},a:{second}"), "given twice"),
            (format!("a:{first},b:{first}"), "given twice"),
            (format!("Upper:{first}"), "key label must be"),
            (format!("{}:{first}", "x".repeat(33)), "key label must be"),
            (format!("a:{first},b:not-base64!"), "key #2 (\"b\") is not valid base64"),
            (String::new(), "no encryption key"),
        ] {
            let message = Keyring::from_key_list(&list).expect_err(expected).to_string();
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains(&first) && !message.contains(&second), "{message}");
        }
    }

    #[test]
    fn relabelling_a_key_keeps_its_id_and_data() {
        let encoded = BASE64.encode(key(5));
        let labelled = Keyring::from_key_list(&format!("one:{encoded}")).expect("parses");
        let sealed = labelled.encrypt(b"v", b"aad").expect("encrypt");
        let relabelled = Keyring::from_key_list(&format!("two:{encoded}")).expect("parses");
        assert_eq!(relabelled.primary_key_id(), labelled.primary_key_id());
        assert_eq!(relabelled.decrypt(&sealed, b"aad").expect("reads").as_slice(), b"v");
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
            rotated
                .decrypt(&sealed_old, b"aad")
                .expect("old key still reads")
                .as_slice(),
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

        let labelled = Keyring::from_key_list(&format!("b:{},a:{}", BASE64.encode(key(2)), BASE64.encode(key(1))))
            .expect("parses");
        let labelled_path = dir.path().join("labelled");
        labelled.write_file(&labelled_path).expect("write");
        let loaded = Keyring::load_file(&labelled_path).expect("read").expect("present");
        assert_eq!(loaded.key_ids(), labelled.key_ids());
        assert_eq!(loaded.label(loaded.primary_key_id()), Some("b"));

        std::fs::write(&path, "AAAA\n").expect("write");
        let message = Keyring::load_file(&path).expect_err("bad").to_string();
        assert!(message.contains("primary key must be 32 bytes"), "{message}");
    }
}
