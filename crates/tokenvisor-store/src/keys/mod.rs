//! Key wrapping: the data keys of the [`Keyring`] stored wrapped by a key-encryption key
//! (KEK) that lives elsewhere (a file, an environment variable, a cloud KMS, Vault).
//!
//! [`KeyEncryptionKey`] is the hook: [`LocalKek`] implements it with a 32-byte KEK held
//! in memory (XChaCha20-Poly1305, random 192-bit nonce, the KEK id and the data key's label
//! as associated data). A wrapped key list is one `label:base64(wrapped)` per line (or
//! comma-separated), the primary first; [`unwrap_key_list`] turns it into a [`Keyring`]
//! and [`wrap_key`] produces a line.
//!
//! A cloud KMS or Vault implements the trait with two calls: `wrap` is KMS `Encrypt`
//! (AWS: `Encrypt` with the key ARN and an encryption context `{"tokenvisor-key": label}`;
//! GCP: `cryptoKeys.encrypt` with `additionalAuthenticatedData`; Vault transit:
//! `POST transit/encrypt/<name>` with `context`), `unwrap` is the matching `Decrypt`. The
//! data keys then never exist in plaintext outside the process's memory, and revoking the
//! KMS key revokes access to the data. An embedder unwraps once at start and hands the
//! [`Keyring`] to [`crate::SqlStore`].

use crate::StoreError;
use crate::crypto::{KEY_LEN, KeyMaterial, Keyring, key_list_entries, validate_label};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

/// A key-encryption key: wraps and unwraps data keys. Implement it for a KMS or Vault.
#[async_trait]
pub trait KeyEncryptionKey: Send + Sync + fmt::Debug {
    /// A public id of the KEK (shown in errors; never secret).
    fn id(&self) -> String;
    /// Wraps a data key; `label` is bound to the result (associated data or encryption
    /// context), so a wrapped key cannot be passed off under another label.
    async fn wrap(&self, label: &str, data_key: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// Unwraps what [`KeyEncryptionKey::wrap`] returned for the same `label`.
    async fn unwrap(&self, label: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError>;
}

/// A KEK held in memory (from a file or an environment variable), wiped on drop.
pub struct LocalKek {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek").field("id", &self.id).finish_non_exhaustive()
    }
}

const WRAP_NONCE_LEN: usize = 24;

impl LocalKek {
    /// A KEK from its 32 bytes.
    pub fn new(key: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let digest = Sha256::digest(key.as_ref());
        let id = digest.iter().take(4).map(|byte| format!("{byte:02x}")).collect();
        Self {
            id,
            cipher: XChaCha20Poly1305::new(key.as_ref().into()),
        }
    }

    /// A KEK from standard base64; errors never echo it.
    pub fn from_base64(encoded: &str) -> Result<Self, StoreError> {
        let material = KeyMaterial::parse(encoded, "the key-encryption key")?;
        Ok(Self::new(material.bytes))
    }

    fn aad(&self, label: &str) -> Vec<u8> {
        format!("tokenvisor:kek:{}:{label}", self.id).into_bytes()
    }
}

#[async_trait]
impl KeyEncryptionKey for LocalKek {
    fn id(&self) -> String {
        self.id.clone()
    }

    async fn wrap(&self, label: &str, data_key: &[u8]) -> Result<Vec<u8>, StoreError> {
        let nonce: [u8; WRAP_NONCE_LEN] = rand::random();
        let aad = self.aad(label);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: data_key,
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::Key("cannot wrap the key".to_owned()))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    async fn unwrap(&self, label: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if wrapped.len() < WRAP_NONCE_LEN {
            return Err(StoreError::Key(format!("wrapped key \"{label}\" is too short")));
        }
        let (nonce, sealed) = wrapped.split_at(WRAP_NONCE_LEN);
        let aad = self.aad(label);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| {
                StoreError::Key(format!(
                    "the key-encryption key {} does not unwrap key \"{label}\" (another KEK, another label, or tampered)",
                    self.id
                ))
            })
    }
}

/// `label:base64(wrapped)` of `data_key` under `kek`.
pub async fn wrap_key(kek: &dyn KeyEncryptionKey, label: &str, data_key: &[u8; KEY_LEN]) -> Result<String, StoreError> {
    validate_label(label, "a wrapped key")?;
    Ok(format!("{label}:{}", BASE64.encode(kek.wrap(label, data_key).await?)))
}

/// A [`Keyring`] from wrapped keys, `label:base64(wrapped)` one per line or
/// comma-separated, the primary first (`#` starts a comment line).
pub async fn unwrap_key_list(kek: &dyn KeyEncryptionKey, list: &str) -> Result<Keyring, StoreError> {
    let mut keys = Vec::new();
    for entry in key_list_entries(list) {
        let Some((label, encoded)) = entry.split_once(':') else {
            return Err(StoreError::Key("a wrapped key must be written label:base64".to_owned()));
        };
        validate_label(label, "a wrapped key")?;
        let wrapped = BASE64
            .decode(encoded.trim())
            .map_err(|_| StoreError::Key(format!("wrapped key \"{label}\" is not valid base64")))?;
        let unwrapped = kek.unwrap(label, &wrapped).await?;
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        if unwrapped.len() != KEY_LEN {
            return Err(StoreError::Key(format!(
                "wrapped key \"{label}\" unwraps to {} bytes, not {KEY_LEN}",
                unwrapped.len()
            )));
        }
        bytes.copy_from_slice(&unwrapped);
        keys.push(KeyMaterial {
            label: Some(label.to_owned()),
            bytes,
        });
    }
    Keyring::from_keys(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(byte: u8) -> LocalKek {
        LocalKek::new(Zeroizing::new([byte; KEY_LEN]))
    }

    #[tokio::test]
    async fn wrapped_keys_unwrap_into_the_same_keyring() {
        let kek = kek(9);
        let list = format!(
            "{}\n# older\n{}\n",
            wrap_key(&kek, "new", &[2; KEY_LEN]).await.expect("wrap"),
            wrap_key(&kek, "old", &[1; KEY_LEN]).await.expect("wrap")
        );
        assert!(!list.contains(&BASE64.encode([2u8; KEY_LEN])), "wrapped, not plain");
        let keyring = unwrap_key_list(&kek, &list).await.expect("unwraps");
        let plain = Keyring::new([2; KEY_LEN], vec![[1; KEY_LEN]]);
        assert_eq!(keyring.key_ids(), plain.key_ids());
        assert_eq!(keyring.label(keyring.primary_key_id()), Some("new"));
    }

    #[tokio::test]
    async fn another_kek_or_label_or_tampering_fails_without_echoing_keys() {
        let line = wrap_key(&kek(9), "new", &[2; KEY_LEN]).await.expect("wrap");
        let message = unwrap_key_list(&kek(8), &line)
            .await
            .expect_err("other KEK")
            .to_string();
        assert!(message.contains("does not unwrap key \"new\""), "{message}");
        let relabelled = line.replacen("new:", "other:", 1);
        assert!(unwrap_key_list(&kek(9), &relabelled).await.is_err());
        let mut wrapped = BASE64.decode(line.split_once(':').expect("label").1).expect("base64");
        let last = wrapped.len() - 1;
        wrapped[last] ^= 1;
        let tampered = format!("new:{}", BASE64.encode(&wrapped));
        assert!(unwrap_key_list(&kek(9), &tampered).await.is_err());
        assert!(!format!("{:?}", kek(9)).contains("9, 9"));
    }
}
