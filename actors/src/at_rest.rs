//! Encryption at rest: the master key, the keys derived from it, and the one sealed-record
//! format used for stored secrets (the `sandra` crate's vault) and for personal data in sled
//! ([`crate::store`]).
//!
//! A sealed record is `MAGIC (1) | VERSION (1) | key id (4) | nonce (24) | ciphertext + tag`,
//! sealed with XChaCha20-Poly1305 under a 256-bit key, a fresh random nonce from the OS CSPRNG
//! per record (192-bit nonces: random ones never collide in practice), and caller-chosen
//! associated data (the secret's name, or the tree and key of a sled value) so that a record
//! copied to another place fails to open. The key id names the key that sealed the record, so a
//! rotation interrupted half-way leaves records that say which of the two keys opens them.
//!
//! Each purpose gets its own key, derived from the master key with HKDF-SHA256 and a purpose
//! label: the secrets and the database never share a key, and neither is the master key itself.
//! Key bytes live in `Zeroizing` buffers and are never printed (`Debug` shows the key id only).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// First byte of every sealed record. No JSON document starts with it (JSON starts with
/// whitespace, `{`, `[`, `"`, a digit, `-`, `t`, `f` or `n`), so a sealed value and a plain
/// value written before encryption was on are told apart by their first byte.
pub const MAGIC: u8 = 0xA7;
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 2 + 4 + NONCE_LEN;

/// What can go wrong opening a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed record (too short or unknown format)")]
    Format,
    #[error("sealed with key {found}, but the key in use is {expected}")]
    WrongKey { found: String, expected: String },
    #[error("the record does not authenticate: it was altered, or belongs under another name")]
    Tampered,
}

/// A master key parsed from text that is not 32 bytes of hex or base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a master key is 32 bytes written as 64 hex digits or as standard base64 (44 characters); got {0} characters that are neither"
)]
pub struct BadKeyText(pub usize);

/// The 32-byte master key. Everything stored encrypted hangs off it.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id {})", self.id())
    }
}

impl MasterKey {
    /// A new key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut()).expect("the OS random number generator failed");
        Self(k)
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(Zeroizing::new(b))
    }

    /// Parses 64 hex digits or standard base64 of 32 bytes, surrounding whitespace ignored.
    pub fn parse(text: &str) -> Result<Self, BadKeyText> {
        use base64::Engine;
        let t = text.trim();
        let mut k = Zeroizing::new([0u8; 32]);
        if t.len() == 64 && hex::decode_to_slice(t, k.as_mut()).is_ok() {
            return Ok(Self(k));
        }
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| BadKeyText(t.len()))?,
        );
        if bytes.len() != 32 {
            return Err(BadKeyText(t.len()));
        }
        k.copy_from_slice(&bytes);
        Ok(Self(k))
    }

    /// The key as 64 hex digits (what the key file holds).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }

    fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"sandra at rest v1"), self.0.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        hk.expand(label, out.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    /// A short public fingerprint of the key (derived one-way, so it says nothing about the
    /// key): written into every record, shown by `sandra secrets` and in error messages.
    pub fn id(&self) -> String {
        hex::encode(&self.derive(b"key id")[..4])
    }

    /// The sealer for one purpose (`b"secrets"`, `b"store"`): each purpose its own key.
    pub fn sealer(&self, purpose: &[u8]) -> Sealer {
        let mut label = b"purpose:".to_vec();
        label.extend_from_slice(purpose);
        let key = self.derive(&label);
        let mut id = [0u8; 4];
        id.copy_from_slice(&self.derive(b"key id")[..4]);
        Sealer {
            cipher: XChaCha20Poly1305::new_from_slice(key.as_ref())
                .expect("a 32-byte key is a valid XChaCha20-Poly1305 key"),
            key_id: id,
        }
    }
}

/// Seals and opens records under one derived key.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    key_id: [u8; 4],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(key {})", hex::encode(self.key_id))
    }
}

impl Sealer {
    pub fn key_id(&self) -> String {
        hex::encode(self.key_id)
    }

    /// Encrypts `plain` bound to `ad`.
    pub fn seal(&self, ad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random number generator failed");
        let ct = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: ad,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any length Sandra stores");
        let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
        out.push(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts a record sealed with [`Sealer::seal`] under the same `ad`.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let Some(found) = record_key_id(sealed) else {
            return Err(SealError::Format);
        };
        if found != self.key_id {
            return Err(SealError::WrongKey {
                found: hex::encode(found),
                expected: hex::encode(self.key_id),
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[6..HEADER_LEN]);
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad: ad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Tampered)
    }
}

/// Whether `b` is a sealed record (by its header; says nothing about whether it opens).
pub fn is_sealed(b: &[u8]) -> bool {
    record_key_id(b).is_some()
}

/// The key id in a sealed record's header.
pub fn record_key_id(b: &[u8]) -> Option<[u8; 4]> {
    if b.len() < HEADER_LEN + 16 || b[0] != MAGIC || b[1] != VERSION {
        return None;
    }
    let mut id = [0u8; 4];
    id.copy_from_slice(&b[2..6]);
    Some(id)
}

/// The sealers that may open a record: the current key, and during a key rotation the previous
/// one. Records are always sealed with the current key.
#[derive(Debug, Clone)]
pub struct Keyring {
    pub current: Sealer,
    pub previous: Option<Sealer>,
}

impl Keyring {
    pub fn new(current: Sealer) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    pub fn seal(&self, ad: &[u8], plain: &[u8]) -> Vec<u8> {
        self.current.seal(ad, plain)
    }

    /// Opens with whichever key sealed the record.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        match (&self.previous, record_key_id(sealed)) {
            (Some(p), Some(id)) if id == p.key_id => p.open(ad, sealed),
            _ => self.current.open(ad, sealed),
        }
    }

    /// Whether a sealed record is already under the current key.
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        record_key_id(sealed) == Some(self.current.key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_only_with_their_key_and_associated_data() {
        let k = MasterKey::generate();
        let s = k.sealer(b"secrets");
        let rec = s.seal(b"whatsapp.access_token", b"EAAG-token");
        assert!(is_sealed(&rec));
        assert_eq!(
            &s.open(b"whatsapp.access_token", &rec).unwrap()[..],
            b"EAAG-token"
        );
        // Another name, a flipped bit, another purpose's key, another master key: all refused.
        assert_eq!(
            s.open(b"whatsapp.app_secret", &rec),
            Err(SealError::Tampered)
        );
        let mut bad = rec.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            s.open(b"whatsapp.access_token", &bad),
            Err(SealError::Tampered)
        );
        assert_eq!(
            k.sealer(b"store").open(b"whatsapp.access_token", &rec),
            Err(SealError::Tampered)
        );
        assert!(matches!(
            MasterKey::generate()
                .sealer(b"secrets")
                .open(b"whatsapp.access_token", &rec),
            Err(SealError::WrongKey { .. })
        ));
        // Two seals of one value differ (fresh nonce), and the value is not in the record.
        assert_ne!(rec, s.seal(b"whatsapp.access_token", b"EAAG-token"));
        assert!(!rec.windows(10).any(|w| w == b"EAAG-token"));
    }

    #[test]
    fn keys_parse_from_hex_and_base64_only_at_32_bytes() {
        let k = MasterKey::generate();
        let hex_text = k.to_hex();
        assert_eq!(MasterKey::parse(&hex_text).unwrap().id(), k.id());
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(k.0.as_ref());
        assert_eq!(MasterKey::parse(&format!(" {b64}\n")).unwrap().id(), k.id());
        assert!(MasterKey::parse("abcd").is_err());
        assert!(MasterKey::parse(&"zz".repeat(32)).is_err());
        assert!(!format!("{k:?}").contains(hex_text.as_str()));
    }

    #[test]
    fn a_keyring_opens_records_of_the_previous_key_during_rotation() {
        let old = MasterKey::generate().sealer(b"store");
        let new = MasterKey::generate().sealer(b"store");
        let rec = old.seal(b"ad", b"x");
        let ring = Keyring {
            current: new.clone(),
            previous: Some(old),
        };
        assert!(!ring.is_current(&rec));
        assert_eq!(&ring.open(b"ad", &rec).unwrap()[..], b"x");
        let resealed = ring.seal(b"ad", b"x");
        assert!(ring.is_current(&resealed));
        assert_eq!(&new.open(b"ad", &resealed).unwrap()[..], b"x");
    }
}
