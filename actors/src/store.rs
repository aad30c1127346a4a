//! The store: Sandra's only door to sled.
//!
//! Trees:
//! - `dedup`: `m:<wamid>` → first-seen unix seconds and the message's inbox seq (both big-endian;
//!   older databases hold the seconds alone), `s:<wamid>:<status>` → first-seen unix seconds.
//!   Kept for at least the configured retention (≥ 7 days, Meta's retry horizon), then swept.
//! - `inbox`: big-endian seq → [`InboxRecord`]. An accepted message lives here until the turn that
//!   answers it commits; after a crash everything still here is replayed. `inbox_by_key`:
//!   conversation key, NUL, big-endian seq → nothing: the same records by conversation, kept in
//!   the same transactions (rebuilt on open for databases that predate it).
//! - `sessions`: conversation key → [`SessionState`].
//! - `outbox`: big-endian id → [`OutboxRecord`]; `outbox_queue`: ids still to send;
//!   `wamid_index`: wamid Meta gave a sent message → outbox id (for status webhooks).
//! - `windows`: conversation key → unix seconds at which Meta told us (131047) that the
//!   customer-service window is closed.
//! - `held`: conversation key, NUL, big-endian outbox id → nothing: replies held because the
//!   window closed, released into the queue when the user writes again. The id `u64::MAX` marks
//!   that the reopen template was queued for this closed window (cleared with the release).
//! - `links`: identity key (`whatsapp:<number>`) → [`NumberRecord`]: the email it is linked to,
//!   the linking flow in progress (so it survives a restart), its own profile, its code sends.
//! - `accounts`: verified email → [`Account`] (profile, notes, linked identities).
//! - `email_codes`: email → unix ms of the codes sent to it in the last hour (rate limit); the
//!   hourly sweep drops counters older than an hour.
//! - `dead_letter`: big-endian id → [`DeadLetter`]: bodies we accepted but could not use (not
//!   JSON, corrupt inbox records, poison messages), with the reason.
//!
//! Encryption at rest: the values of every tree that holds what users said or who they are
//! (`inbox`, `sessions`, `outbox`, `dead_letter`, `links`, `accounts`, `email_codes`) go through
//! one [`Codec`]: JSON, sealed with XChaCha20-Poly1305 under the store key (derived from the
//! master key, [`crate::at_rest`]) with the tree's name and the record's key as associated data,
//! so a value moved to another key or tree does not open. Keys stay plain (phone numbers, group
//! ids, emails, wamids, sequence numbers): every lookup and prefix scan needs them. The other
//! trees hold only ids and timestamps. The `meta` tree's `codec` entry says how the values are
//! written (`plain` or `sealed:<key id>`); when it differs from what was asked for (a database
//! from before encryption, a new key after `sandra secrets rotate-key`, encryption turned off),
//! [`Store::open_with`] rewrites every value that is not yet in the wanted form, one atomic
//! insert each, and only then records the new form. An interrupted migration is simply done
//! again on the next open: values already rewritten are recognised by their header and skipped,
//! and nothing is readable in a mixed state except through the migration itself.
//!
//! Every durable state change is one sled transaction. sled commits transactions to memory and
//! writes them out in the background, so callers that promise durability (the webhook 200, a
//! finished turn, a send about to start) call [`Store::sync`], which shares one `fsync` among
//! concurrent callers (group commit).
//!
//! Exactly-once invariants (the crash tests rely on these):
//! - A message is in the inbox from the webhook's 200 until the transaction that stores its
//!   reply (or its dead-letter record and apology) removes it; it is answered at most once.
//! - Each attempt at a turn first increments its records' `attempts` durably
//!   ([`Store::begin_attempt`]); a record that already had `max_attempts` attempts — crashes of
//!   the whole process included — is dead-lettered with one apology instead of being tried again.
//! - A write is counted as unsynced *before* it can be seen by anyone (see [`Store::sync`]), so
//!   a duplicate delivery is acknowledged only once its first copy is durable.
//! - An outbox record carries `sending_since_ms`, made durable before its Graph call starts and
//!   cleared with the call's outcome; a record found with it after a crash waits for the status
//!   webhook (`reconcile_wait`) before it is sent again.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::accounts::{Account, IdentityChange, Lookup, NumberRecord};
use crate::at_rest::{self, Keyring, SealError};
use crate::session::SessionState;
use crate::whatsapp::{
    ConversationKey, DeliveryStatus, InboundMessage, ReplyTarget, StatusError, StatusUpdate,
    WebhookBatch,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("cannot open the data directory {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("stored record cannot be decrypted: {0}")]
    Sealed(#[from] SealError),
    #[error("stored record is encrypted, but no master key was given to open it")]
    NoKey,
    #[error(
        "stored record is not encrypted in an encrypted database (written by an older Sandra and not migrated, or planted)"
    )]
    Unsealed,
    #[error(
        "the database was encrypted with master key {db}, but the key in use is {key}: start with the key that was in use (SANDRA_MASTER_KEY, the credential or the key file)"
    )]
    WrongKey { db: String, key: String },
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

// The trees whose values go through the [`Codec`] (their names are part of the associated data).
const INBOX: &str = "inbox";
const SESSIONS: &str = "sessions";
const OUTBOX: &str = "outbox";
const DEAD_LETTER: &str = "dead_letter";
const LINKS: &str = "links";
const ACCOUNTS: &str = "accounts";
const EMAIL_CODES: &str = "email_codes";
const SEALED_TREES: [&str; 7] = [
    INBOX,
    SESSIONS,
    OUTBOX,
    DEAD_LETTER,
    LINKS,
    ACCOUNTS,
    EMAIL_CODES,
];

/// How the values of the trees that hold personal data are written: sealed JSON (the default in
/// production, `storage.encrypt`) or plain JSON.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    keyring: Option<Keyring>,
    seal: bool,
}

impl Codec {
    /// Plain JSON (tests; `storage.encrypt = false` with no encrypted data to read).
    pub fn plain() -> Self {
        Self::default()
    }

    /// Sealed with the keyring's current key (its previous key, during a rotation, still opens
    /// what it sealed, until the migration on open has resealed it).
    pub fn sealed(keyring: Keyring) -> Self {
        Self {
            keyring: Some(keyring),
            seal: true,
        }
    }

    /// Plain JSON, but a database sealed with the keyring is read and migrated back to plain
    /// (`storage.encrypt` turned off).
    pub fn unsealing(keyring: Keyring) -> Self {
        Self {
            keyring: Some(keyring),
            seal: false,
        }
    }

    /// What the `meta` tree's `codec` entry says once every value is written this way.
    fn form(&self) -> String {
        match (&self.keyring, self.seal) {
            (Some(k), true) => format!("sealed:{}", k.current.key_id()),
            _ => "plain".into(),
        }
    }

    fn ad(tree: &str, key: &[u8]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(tree.len() + 1 + key.len());
        ad.extend_from_slice(tree.as_bytes());
        ad.push(0);
        ad.extend_from_slice(key);
        ad
    }

    fn enc<T: Serialize>(&self, tree: &str, key: &[u8], v: &T) -> Vec<u8> {
        let plain = json(v);
        match &self.keyring {
            Some(k) if self.seal => k.seal(&Self::ad(tree, key), &plain),
            _ => plain,
        }
    }

    /// The JSON of a stored value, sealed or not.
    fn open_any(&self, tree: &str, key: &[u8], raw: &[u8]) -> Result<Vec<u8>, StoreError> {
        if at_rest::is_sealed(raw) {
            let k = self.keyring.as_ref().ok_or(StoreError::NoKey)?;
            Ok(k.open(&Self::ad(tree, key), raw)?.to_vec())
        } else {
            Ok(raw.to_vec())
        }
    }

    fn dec<T: DeserializeOwned>(
        &self,
        tree: &str,
        key: &[u8],
        raw: &[u8],
    ) -> Result<T, StoreError> {
        if at_rest::is_sealed(raw) {
            let k = self.keyring.as_ref().ok_or(StoreError::NoKey)?;
            Ok(serde_json::from_slice(&k.open(&Self::ad(tree, key), raw)?)?)
        } else if self.seal {
            Err(StoreError::Unsealed)
        } else {
            Ok(serde_json::from_slice(raw)?)
        }
    }

    /// Whether a stored value is not yet in the wanted form.
    fn needs_rewrite(&self, raw: &[u8]) -> bool {
        match &self.keyring {
            Some(k) if self.seal => !k.is_current(raw),
            _ => at_rest::is_sealed(raw),
        }
    }
}

/// One conversation as the Admin Portal lists it ([`Store::conversations`]): never its messages.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationMeta {
    pub key: ConversationKey,
    pub is_group: bool,
    /// Unix seconds of the last user message (the 24 h window opens there).
    pub last_inbound_at: Option<i64>,
    pub turns: u64,
    /// When Meta said the window was closed (131047), if it did.
    pub window_closed_at: Option<i64>,
}

/// What closing a conversation did ([`Store::close_conversation`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClosedConversation {
    /// Unanswered messages dropped from the inbox.
    pub dropped_messages: usize,
    /// Replies that were waiting to be sent, now failed with the reason.
    pub cancelled_replies: usize,
}

/// An accepted inbound message waiting for its turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxRecord {
    pub seq: u64,
    pub key: ConversationKey,
    pub message: InboundMessage,
    /// Unix milliseconds at which the webhook was accepted.
    pub received_at_ms: i64,
    /// Turns started for this message (counted durably before each starts, so crashes of the
    /// whole process count too).
    #[serde(default)]
    pub attempts: u32,
    /// A "got it, answering in a moment" notice for this message is in the outbox: a replayed
    /// turn does not send another.
    #[serde(default)]
    pub noticed: bool,
}

/// What a reply says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutboundBody {
    Text {
        body: String,
    },
    /// An approved template without parameters (the reopen invitation), allowed outside the
    /// 24-hour window.
    Template {
        name: String,
        language: String,
    },
    /// A voice note saying `text` (one part of a reply whose text goes as its own record), in
    /// `language` (ISO 639-1). Only the words are stored: the audio is spoken when the record
    /// is sent and lives in memory until it is uploaded, so sending is one step (speak, upload,
    /// send the audio message), done again whole if it must be retried.
    Voice {
        text: String,
        language: String,
    },
}

/// Where an outbound message stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting to be sent (or to be retried at `next_attempt_at_ms`).
    Pending,
    /// Accepted by the Graph API; `status` follows the status webhooks.
    Sent,
    /// Will never be sent; the reason says why (permanent error, window closed, ...).
    Failed { code: Option<i64>, reason: String },
    /// Not sent because the 24-hour window is closed; back to `Pending` when the user writes
    /// again ([`Store::release_held`]).
    Held { reason: String, since_ms: i64 },
}

/// What the portal shows of a held reply: metadata, never the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldReply {
    pub id: u64,
    pub key: ConversationKey,
    /// `p:<number>`, `u:<user id>` or `g:<group>`.
    pub recipient: String,
    pub since_ms: i64,
    pub reason: String,
    /// Whether the reopen template went out for this closed window.
    pub template_queued: bool,
}

/// One outbound message in the durable outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub id: u64,
    pub key: ConversationKey,
    pub target: ReplyTarget,
    pub body: OutboundBody,
    /// Quote this inbound message (a "reply" bubble).
    pub context_message_id: Option<String>,
    /// Sent as `biz_opaque_callback_data` so status webhooks can be tied back to this record.
    pub idempotency_key: String,
    /// When the 24 h customer-service window closes (unix seconds) as the conversation knew it.
    pub window_expires_at: Option<i64>,
    pub state: OutboxState,
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub created_at_ms: i64,
    pub wamid: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub last_error: Option<String>,
    /// Set (durably) just before a Graph call for this record starts and cleared with its
    /// outcome. Found set after a crash, it means Meta may have the message: the sender waits
    /// `reconcile_wait` from this time for the status webhook before sending again.
    #[serde(default)]
    pub sending_since_ms: Option<i64>,
}

/// A reply to put in the outbox (the store assigns the id).
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutbound {
    pub target: ReplyTarget,
    pub body: OutboundBody,
    pub context_message_id: Option<String>,
    pub window_expires_at: Option<i64>,
}

/// The outcome of [`Store::accept`].
#[derive(Debug, Default)]
pub struct Accepted {
    /// Messages seen for the first time, now durable in the inbox (after [`Store::sync`]).
    pub new_messages: Vec<InboxRecord>,
    /// Duplicates whose first copy is still unanswered in the inbox: route them again, in case
    /// the first routing was lost (conversations ignore a seq they already hold).
    pub redelivered: Vec<InboxRecord>,
    pub duplicate_messages: usize,
    pub statuses_applied: usize,
    pub duplicate_statuses: usize,
    /// Statuses for messages Sandra has no record of (sent by another system, or ignored).
    pub statuses_unmatched: usize,
    /// Conversations whose window Meta closed (131047) in this batch.
    pub windows_closed: Vec<ConversationKey>,
    /// New messages of closed conversations ([`Store::close_conversation`]): recorded as seen,
    /// never queued, so nothing is thought about or sent for a group Sandra has left.
    pub to_closed: usize,
}

/// What [`Store::begin_attempt`] did with a turn's records.
#[derive(Debug, Default)]
pub struct Attempt {
    /// Records to answer now, with `attempts` already incremented durably (after a sync).
    pub records: Vec<InboxRecord>,
    /// Records that had used up their attempts: moved to dead-letter, with one apology each in
    /// the outbox.
    pub dead_lettered: Vec<InboxRecord>,
}

/// A dead-letter record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub at_ms: i64,
    pub reason: String,
    /// The body as text (lossy if it was not UTF-8).
    pub body: String,
    /// The exact bytes in hex, when they were not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_hex: Option<String>,
}

impl DeadLetter {
    fn new(body: &[u8], reason: &str) -> Self {
        let body_hex = std::str::from_utf8(body)
            .is_err()
            .then(|| body.iter().map(|b| format!("{b:02x}")).collect());
        Self {
            at_ms: now_ms(),
            reason: reason.to_string(),
            body: String::from_utf8_lossy(body).into_owned(),
            body_hex,
        }
    }
}

/// How long finished data is kept (from `[storage]` in config.toml).
#[derive(Debug, Clone)]
pub struct Retention {
    /// Dedup entries (≥ 7 days: Meta retries webhooks that long).
    pub dedup: std::time::Duration,
    /// Outbox records in a final state (sent or failed), by creation time.
    pub outbox: std::time::Duration,
    pub dead_letter: std::time::Duration,
    /// Sessions whose last inbound message is older than this; `None` keeps them forever.
    pub session: Option<std::time::Duration>,
}

/// What one [`Store::sweep`] removed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SweepReport {
    pub dedup: usize,
    pub outbox: usize,
    pub dead_letters: usize,
    pub sessions: usize,
    /// Closed-conversation marks older than the dedup retention.
    pub closed: usize,
}

pub struct Store {
    db: sled::Db,
    dedup: sled::Tree,
    inbox: sled::Tree,
    inbox_by_key: sled::Tree,
    sessions: sled::Tree,
    outbox: sled::Tree,
    outbox_queue: sled::Tree,
    wamid_index: sled::Tree,
    windows: sled::Tree,
    held: sled::Tree,
    dead_letter: sled::Tree,
    /// Conversations ended for good (group deleted, Sandra removed): key → unix seconds.
    /// A turn committed for one of them stores nothing and sends nothing.
    closed: sled::Tree,
    links: sled::Tree,
    accounts: sled::Tree,
    email_codes: sled::Tree,
    /// How the values of [`SEALED_TREES`] are written and read.
    codec: Codec,
    /// Bumped when a write starts, before it can become visible; see [`Store::sync`].
    written: AtomicU64,
    /// The highest `written` value known to be on disk.
    synced: AtomicU64,
    /// Writes hold it shared while they run; `sync` takes it exclusively for an instant so that
    /// every write it counts has finished committing before the flush starts.
    gate: std::sync::RwLock<()>,
    sync_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializing a store record cannot fail")
}

/// The `inbox_by_key` entry of one inbox record. Keys never contain NUL, so the prefix of one
/// key is never the prefix of another.
fn index_key(key: &ConversationKey, seq: u64) -> Vec<u8> {
    let mut k = index_prefix(key);
    k.extend_from_slice(&be(seq));
    k
}

fn index_prefix(key: &ConversationKey) -> Vec<u8> {
    let mut k = key.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

/// The seq at the end of an `inbox_by_key` entry.
fn index_seq(k: &[u8]) -> Option<u64> {
    let tail = k.len().checked_sub(8).map(|at| &k[at..])?;
    tail.try_into().ok().map(u64::from_be_bytes)
}

/// The first 8 bytes of a dedup value: first-seen unix seconds.
fn dedup_seen_s(v: &[u8]) -> i64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0) as i64
}

/// The inbox seq stored with a message's dedup entry, if it has one.
fn dedup_seq(v: &[u8]) -> Option<u64> {
    v.get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

fn new_outbox_record(id: u64, key: &ConversationKey, r: &NewOutbound, now: i64) -> OutboxRecord {
    OutboxRecord {
        id,
        key: key.clone(),
        target: r.target.clone(),
        body: r.body.clone(),
        context_message_id: r.context_message_id.clone(),
        idempotency_key: format!("sandra:{id}"),
        window_expires_at: r.window_expires_at,
        state: OutboxState::Pending,
        attempts: 0,
        next_attempt_at_ms: now,
        created_at_ms: now,
        wamid: None,
        status: None,
        last_error: None,
        sending_since_ms: None,
    }
}

fn is_final(state: &OutboxState) -> bool {
    !matches!(state, OutboxState::Pending)
}

/// How many keys a sweep removes per write, so a big sweep never holds up a webhook's sync.
const SWEEP_CHUNK: usize = 512;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the database under `dir`, values in plain JSON (tests). Fails if
    /// another process holds it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, Codec::plain())
    }

    /// Opens (or creates) the database under `dir`, its personal data written with `codec`;
    /// first migrates every value not yet in that form (see the module notes). Fails if another
    /// process holds it, or if the database is sealed with a key `codec` does not have.
    pub fn open_with(dir: &Path, codec: Codec) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let config = sled::Config::new()
            .path(dir.join("sandra.sled"))
            .flush_every_ms(Some(500));
        // sled's file lock outlives a dropped `Db` for a moment (its background threads let go
        // of the file after the handle), so a store closed and at once reopened in the same
        // process (a key rotation, a restart) can find it still held: wait for it briefly. A
        // lock held by another process is still refused, after this second.
        let mut tries = 0;
        let db = loop {
            match config.open() {
                // sled reports it as an `Other` I/O error with this text (sled 0.34, config.rs).
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && tries < 20 =>
                {
                    tries += 1;
                    // Opening is start-up work (the app's build, the CLI) that blocks on file
                    // I/O anyway (sled's recovery, the migration); no actor handler opens a store.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => {
                    break other.map_err(|e| StoreError::Open {
                        path: dir.display().to_string(),
                        reason: e.to_string(),
                    })?;
                }
            }
        };
        let store = Self {
            dedup: db.open_tree("dedup")?,
            inbox: db.open_tree("inbox")?,
            inbox_by_key: db.open_tree("inbox_by_key")?,
            sessions: db.open_tree("sessions")?,
            outbox: db.open_tree("outbox")?,
            outbox_queue: db.open_tree("outbox_queue")?,
            wamid_index: db.open_tree("wamid_index")?,
            windows: db.open_tree("windows")?,
            held: db.open_tree("held")?,
            dead_letter: db.open_tree("dead_letter")?,
            closed: db.open_tree("closed")?,
            links: db.open_tree("links")?,
            accounts: db.open_tree("accounts")?,
            email_codes: db.open_tree("email_codes")?,
            codec,
            db,
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            gate: std::sync::RwLock::new(()),
            sync_lock: tokio::sync::Mutex::new(()),
        };
        store.migrate_codec()?;
        store.build_inbox_index()?;
        Ok(store)
    }

    /// Brings every value of [`SEALED_TREES`] into the codec's form, then records that form in
    /// `meta`. Runs before anything else reads the database; crash-safe because each value is
    /// replaced by one atomic insert, values already in the wanted form are skipped, and the
    /// form is recorded (and flushed) only after all of them.
    fn migrate_codec(&self) -> Result<(), StoreError> {
        let meta = self.db.open_tree("meta")?;
        let want = self.codec.form();
        let have = meta.get("codec")?;
        if have.as_deref() == Some(want.as_bytes()) {
            return Ok(());
        }
        if let Some(have) = have.as_deref().and_then(|h| h.strip_prefix(b"sealed:")) {
            let known = self.codec.keyring.iter().any(|k| {
                k.current.key_id().as_bytes() == have
                    || k.previous
                        .as_ref()
                        .is_some_and(|p| p.key_id().as_bytes() == have)
            });
            if !known {
                return Err(StoreError::WrongKey {
                    db: String::from_utf8_lossy(have).into_owned(),
                    key: self
                        .codec
                        .keyring
                        .as_ref()
                        .map(|k| k.current.key_id())
                        .unwrap_or_else(|| "none".into()),
                });
            }
        }
        let (mut rewritten, mut unreadable) = (0usize, 0usize);
        for name in SEALED_TREES {
            let tree = self.db.open_tree(name)?;
            for kv in tree.iter() {
                let (k, v) = kv?;
                if !self.codec.needs_rewrite(&v) {
                    continue;
                }
                let plain = match self.codec.open_any(name, &k, &v) {
                    Ok(p) => p,
                    Err(e) => {
                        // Left as it is: reading it later fails like any corrupt record
                        // (an inbox record goes to dead-letter), instead of stopping start-up.
                        tracing::error!(tree = name, error = %e, "a stored value could not be migrated");
                        unreadable += 1;
                        continue;
                    }
                };
                let new = match &self.codec.keyring {
                    Some(ring) if self.codec.seal => ring.seal(&Codec::ad(name, &k), &plain),
                    _ => plain,
                };
                tree.insert(k, new)?;
                rewritten += 1;
            }
        }
        self.db.flush()?;
        meta.insert("codec", want.as_bytes())?;
        self.db.flush()?;
        if rewritten > 0 || unreadable > 0 {
            tracing::info!(form = %want, rewritten, unreadable, "stored personal data migrated");
        }
        Ok(())
    }

    /// Databases written before `inbox_by_key` existed: index their inbox once.
    fn build_inbox_index(&self) -> Result<(), StoreError> {
        if !self.inbox_by_key.is_empty() || self.inbox.is_empty() {
            return Ok(());
        }
        let mut n = 0;
        self.write(|| {
            for kv in self.inbox.iter() {
                let (k, v) = kv?;
                // Corrupt records stay unindexed; `unfinished` dead-letters them.
                if let Ok(rec) = self.codec.dec::<InboxRecord>(INBOX, &k, &v) {
                    self.inbox_by_key
                        .insert(index_key(&rec.key, rec.seq), &[])?;
                    n += 1;
                }
            }
            Ok(())
        })?;
        tracing::info!(records = n, "indexed the inbox by conversation");
        Ok(())
    }

    /// Runs one write. It is counted as unsynced before it starts, so anyone who sees its effect
    /// (a duplicate delivery finding the first copy) and then calls [`Store::sync`] waits for a
    /// flush that covers it.
    fn write<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _shared = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.written.fetch_add(1, Ordering::SeqCst);
        f()
    }

    /// Removes `keys` from `tree` in batches of [`SWEEP_CHUNK`], so a large sweep never holds
    /// one huge batch or the write gate for long. Returns how many keys were given.
    fn remove_in_chunks(
        &self,
        tree: &sled::Tree,
        keys: &[sled::IVec],
    ) -> Result<usize, StoreError> {
        for chunk in keys.chunks(SWEEP_CHUNK) {
            let mut batch = sled::Batch::default();
            for k in chunk {
                batch.remove(k.clone());
            }
            self.write(|| Ok(tree.apply_batch(batch)?))?;
        }
        Ok(keys.len())
    }

    /// Whether some write may not be on disk yet.
    pub fn unsynced(&self) -> bool {
        self.synced.load(Ordering::SeqCst) < self.written.load(Ordering::SeqCst)
    }

    /// Makes every write that anyone could see before this call durable. Concurrent callers
    /// share one flush: whoever holds the lock flushes everything written so far, and callers
    /// whose writes that flush covered return without flushing again.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let mine = self.written.load(Ordering::SeqCst);
        if self.synced.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let _guard = self.sync_lock.lock().await;
        if self.synced.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        // Writes count themselves before they start, so `upto` may include one still running;
        // taking the gate exclusively waits for those (in-memory commits, microseconds) so the
        // flush really covers everything up to `upto`.
        let upto = {
            let _exclusive = self.gate.write().unwrap_or_else(|e| e.into_inner());
            self.written.load(Ordering::SeqCst)
        };
        self.db.flush_async().await?;
        self.synced.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    /// Checks the database answers (for `/readyz`).
    pub fn healthy(&self) -> bool {
        self.db.size_on_disk().is_ok()
    }

    // === inbound ===

    /// Records a webhook batch in one transaction: each message not seen before goes into the
    /// dedup tree and the inbox together, and each status not seen before moves its outbox record
    /// forward. Call [`Store::sync`] before acknowledging.
    pub fn accept(
        &self,
        batch: &WebhookBatch,
        received_at_ms: i64,
    ) -> Result<Accepted, StoreError> {
        let now_s = received_at_ms / 1000;
        // Even a batch of duplicates counts as a write: the first copies it found may be
        // committed but not yet flushed, and its caller's sync must cover them.
        self.write(|| self.accept_txn(batch, received_at_ms, now_s))
    }

    fn accept_txn(
        &self,
        batch: &WebhookBatch,
        received_at_ms: i64,
        now_s: i64,
    ) -> Result<Accepted, StoreError> {
        let out = (
            &self.dedup,
            &self.inbox,
            &self.outbox,
            &self.wamid_index,
            &self.windows,
            &self.outbox_queue,
            &self.inbox_by_key,
            &self.closed,
        )
            .transaction(
                |(dedup, inbox, outbox, wamid_index, windows, queue, by_key, closed)| {
                    let mut acc = Accepted::default();
                    for m in &batch.messages {
                        let Some(key) = m.conversation_key() else {
                            continue;
                        };
                        let dkey = format!("m:{}", m.wamid);
                        if let Some(seen) = dedup.get(dkey.as_bytes())? {
                            acc.duplicate_messages += 1;
                            if let Some(seq) = dedup_seq(&seen)
                                && let Some(raw) = inbox.get(be(seq))?
                                && let Ok(rec) =
                                    self.codec.dec::<InboxRecord>(INBOX, &be(seq), &raw)
                            {
                                acc.redelivered.push(rec);
                            }
                            continue;
                        }
                        let seq = inbox.generate_id()?;
                        let mut seen = be(now_s as u64).to_vec();
                        seen.extend_from_slice(&be(seq));
                        dedup.insert(dkey.as_bytes(), seen)?;
                        if closed.get(key.as_str().as_bytes())?.is_some() {
                            // Seen (a redelivery is a duplicate), never queued: its seq is
                            // not in the inbox, so a duplicate is not routed either.
                            acc.to_closed += 1;
                            continue;
                        }
                        let rec = InboxRecord {
                            seq,
                            key,
                            message: m.clone(),
                            received_at_ms,
                            attempts: 0,
                            noticed: false,
                        };
                        inbox.insert(&be(seq), self.codec.enc(INBOX, &be(seq), &rec))?;
                        by_key.insert(index_key(&rec.key, seq), &[])?;
                        acc.new_messages.push(rec);
                    }
                    for s in &batch.statuses {
                        let dkey = format!("s:{}:{}", s.wamid, s.status.as_str());
                        if dedup.get(dkey.as_bytes())?.is_some() {
                            acc.duplicate_statuses += 1;
                            continue;
                        }
                        dedup.insert(dkey.as_bytes(), &be(now_s as u64))?;
                        match apply_status(&self.codec, outbox, wamid_index, windows, queue, s)? {
                            StatusOutcome::Applied(closed) => {
                                acc.statuses_applied += 1;
                                acc.windows_closed.extend(closed);
                            }
                            StatusOutcome::Unmatched => acc.statuses_unmatched += 1,
                        }
                    }
                    Ok(acc)
                },
            )?;
        Ok(out)
    }

    /// Keeps a body we accepted but cannot use, with the reason.
    pub fn dead_letter(&self, body: &[u8], reason: &str) -> Result<u64, StoreError> {
        self.write(|| {
            let id = self.db.generate_id()?;
            self.dead_letter.insert(
                be(id),
                self.codec
                    .enc(DEAD_LETTER, &be(id), &DeadLetter::new(body, reason)),
            )?;
            Ok(id)
        })
    }

    pub fn dead_letter_count(&self) -> usize {
        self.dead_letter.len()
    }

    /// Every dead-letter record, oldest first (admin and tests).
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.dead_letter
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                self.codec.dec(DEAD_LETTER, &k, &v)
            })
            .collect()
    }

    /// Moves one inbox record, exactly as stored, to the dead-letter tree in one transaction.
    /// Returns whether it was still in the inbox.
    pub fn dead_letter_inbox(&self, seq: u64, reason: &str) -> Result<bool, StoreError> {
        self.write(|| {
            Ok(
                (&self.inbox, &self.inbox_by_key, &self.dead_letter).transaction(
                    |(inbox, by_key, dead)| {
                        let Some(raw) = inbox.remove(&be(seq))? else {
                            return Ok(false);
                        };
                        // The record as its JSON (sealed bytes would tell a human nothing); the
                        // raw bytes when even that cannot be had.
                        let plain = self.codec.open_any(INBOX, &be(seq), &raw);
                        let body: &[u8] = plain.as_deref().unwrap_or(&raw);
                        if let Ok(rec) = serde_json::from_slice::<InboxRecord>(body) {
                            by_key.remove(index_key(&rec.key, seq))?;
                        }
                        let id = dead.generate_id()?;
                        dead.insert(
                            &be(id),
                            self.codec
                                .enc(DEAD_LETTER, &be(id), &DeadLetter::new(body, reason)),
                        )?;
                        Ok(true)
                    },
                )?,
            )
        })
    }

    /// A stored inbox record, or `None` after dead-lettering it if it is not readable (a corrupt
    /// record must not stop the conversation or the router from starting).
    fn read_inbox(&self, seq: u64, raw: &[u8]) -> Result<Option<InboxRecord>, StoreError> {
        match self.codec.dec::<InboxRecord>(INBOX, &be(seq), raw) {
            Ok(rec) => Ok(Some(rec)),
            Err(e) => {
                tracing::error!(seq, error = %e, "corrupt inbox record; moved to dead-letter");
                self.dead_letter_inbox(seq, &format!("corrupt inbox record: {e}"))?;
                Ok(None)
            }
        }
    }

    /// Every message accepted but not yet answered, in arrival order. Corrupt records are moved
    /// to dead-letter and left out.
    pub fn unfinished(&self) -> Result<Vec<InboxRecord>, StoreError> {
        let raw: Vec<(sled::IVec, sled::IVec)> = self.inbox.iter().collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for (k, v) in raw {
            let seq = k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            out.extend(self.read_inbox(seq, &v)?);
        }
        Ok(out)
    }

    /// The unfinished messages of one conversation, in arrival order (a prefix scan of
    /// `inbox_by_key`). Corrupt records are moved to dead-letter and left out.
    pub fn unfinished_for(&self, key: &ConversationKey) -> Result<Vec<InboxRecord>, StoreError> {
        let mut out = Vec::new();
        let entries: Vec<sled::IVec> = self
            .inbox_by_key
            .scan_prefix(index_prefix(key))
            .keys()
            .collect::<Result<_, _>>()?;
        for ik in entries {
            let Some(seq) = index_seq(&ik) else { continue };
            let rec = match self.inbox.get(be(seq))? {
                Some(raw) => self.read_inbox(seq, &raw)?,
                None => None,
            };
            match rec {
                Some(rec) if &rec.key == key => out.push(rec),
                // Answered or dead-lettered meanwhile, or written by a bug: drop the entry.
                _ => {
                    self.write(|| Ok(self.inbox_by_key.remove(&ik)?))?;
                }
            }
        }
        Ok(out)
    }

    /// Starts an attempt at answering `seqs` (all of conversation `key`), in one transaction:
    /// each record still in the inbox gets its `attempts` incremented, except records that
    /// already had `max_attempts`, which move to dead-letter with `apology(record)` in the
    /// outbox instead. Records no longer in the inbox (already answered) are left out. Call
    /// [`Store::sync`] before starting the work, so a crash during it counts.
    pub fn begin_attempt(
        &self,
        key: &ConversationKey,
        seqs: &[u64],
        max_attempts: u32,
        apology: impl Fn(&InboxRecord) -> NewOutbound,
    ) -> Result<Attempt, StoreError> {
        let now = now_ms();
        self.write(|| {
            Ok((
                &self.inbox,
                &self.inbox_by_key,
                &self.dead_letter,
                &self.outbox,
                &self.outbox_queue,
            )
                .transaction(|(inbox, by_key, dead, outbox, queue)| {
                    let mut out = Attempt::default();
                    for &seq in seqs {
                        let Some(raw) = inbox.get(be(seq))? else {
                            continue;
                        };
                        let plain = self.codec.open_any(INBOX, &be(seq), &raw);
                        let body: &[u8] = plain.as_deref().unwrap_or(&raw);
                        let Ok(mut rec) = self.codec.dec::<InboxRecord>(INBOX, &be(seq), &raw)
                        else {
                            // Unreadable: keep the bytes for a human, answer nothing.
                            inbox.remove(&be(seq))?;
                            by_key.remove(index_key(key, seq))?;
                            let id = dead.generate_id()?;
                            dead.insert(
                                &be(id),
                                self.codec.enc(
                                    DEAD_LETTER,
                                    &be(id),
                                    &DeadLetter::new(body, "corrupt inbox record"),
                                ),
                            )?;
                            continue;
                        };
                        if rec.attempts >= max_attempts {
                            inbox.remove(&be(seq))?;
                            by_key.remove(index_key(key, seq))?;
                            let reason = format!(
                                "gave up after {} attempts (it crashed or stalled every turn)",
                                rec.attempts
                            );
                            let id = dead.generate_id()?;
                            dead.insert(
                                &be(id),
                                self.codec.enc(
                                    DEAD_LETTER,
                                    &be(id),
                                    &DeadLetter::new(body, &reason),
                                ),
                            )?;
                            let id = outbox.generate_id()?;
                            let sorry = new_outbox_record(id, key, &apology(&rec), now);
                            outbox.insert(&be(id), self.codec.enc(OUTBOX, &be(id), &sorry))?;
                            queue.insert(&be(id), &[])?;
                            out.dead_lettered.push(rec);
                        } else {
                            rec.attempts += 1;
                            inbox.insert(&be(seq), self.codec.enc(INBOX, &be(seq), &rec))?;
                            out.records.push(rec);
                        }
                    }
                    Ok(out)
                })?)
        })
    }

    /// Queues `notice` (a "got it" while the answer is being composed) for the messages
    /// `seqs` and marks them noticed, in one transaction: once for those messages, ever, even
    /// across crashes and replays. Returns `false`, queueing nothing, when any of them was
    /// already noticed or is no longer unanswered.
    pub fn commit_notice(
        &self,
        key: &ConversationKey,
        seqs: &[u64],
        notice: &NewOutbound,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        self.write(|| {
            Ok((&self.inbox, &self.outbox, &self.outbox_queue).transaction(
                |(inbox, outbox, queue)| {
                    let mut recs = Vec::with_capacity(seqs.len());
                    for &seq in seqs {
                        let Some(raw) = inbox.get(be(seq))? else {
                            return Ok(false);
                        };
                        let Ok(rec) = self.codec.dec::<InboxRecord>(INBOX, &be(seq), &raw) else {
                            return Ok(false);
                        };
                        if rec.noticed {
                            return Ok(false);
                        }
                        recs.push(rec);
                    }
                    for mut rec in recs {
                        rec.noticed = true;
                        let seq = rec.seq;
                        inbox.insert(&be(seq), self.codec.enc(INBOX, &be(seq), &rec))?;
                    }
                    let id = outbox.generate_id()?;
                    let r = new_outbox_record(id, key, notice, now);
                    outbox.insert(&be(id), self.codec.enc(OUTBOX, &be(id), &r))?;
                    queue.insert(&be(id), &[])?;
                    Ok(true)
                },
            )?)
        })
    }

    pub fn is_unfinished(&self, seq: u64) -> Result<bool, StoreError> {
        Ok(self.inbox.contains_key(be(seq))?)
    }

    /// Deletes dedup entries first seen before `older_than_s` (unix seconds). Returns how many.
    pub fn sweep_dedup(&self, older_than_s: i64) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for kv in self.dedup.iter() {
            let (k, v) = kv?;
            if dedup_seen_s(&v) < older_than_s {
                old.push(k);
            }
        }
        self.remove_in_chunks(&self.dedup, &old)
    }

    /// Deletes closed-conversation marks set before `older_than_s`. They live as long as dedup
    /// entries: until then Meta may still redeliver a message of the group (which the mark
    /// keeps from being queued); after that nothing more comes for a deleted group or one
    /// Sandra left.
    pub fn sweep_closed(&self, older_than_s: i64) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for kv in self.closed.iter() {
            let (k, v) = kv?;
            if dedup_seen_s(&v) < older_than_s {
                old.push(k);
            }
        }
        self.remove_in_chunks(&self.closed, &old)
    }

    /// Deletes outbox records in a final state (sent or failed) created before `before_ms`,
    /// with their wamid index entries. Pending records are never deleted.
    pub fn sweep_outbox(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for kv in self.outbox.iter() {
            let (k, v) = kv?;
            // An unreadable record is kept for a human rather than guessed about.
            if let Ok(rec) = self.codec.dec::<OutboxRecord>(OUTBOX, &k, &v)
                && is_final(&rec.state)
                && rec.created_at_ms < before_ms
            {
                old.push(k);
            }
        }
        let mut n = 0;
        for chunk in old.chunks(SWEEP_CHUNK) {
            n += self.write(|| {
                Ok(
                    (&self.outbox, &self.wamid_index, &self.outbox_queue).transaction(
                        |(outbox, index, queue)| {
                            let mut n = 0;
                            for k in chunk {
                                // Re-read inside the transaction: only what is still final goes.
                                let Some(v) = outbox.get(k)? else { continue };
                                let Ok(rec) = self.codec.dec::<OutboxRecord>(OUTBOX, k, &v) else {
                                    continue;
                                };
                                if !is_final(&rec.state) {
                                    continue;
                                }
                                outbox.remove(k.clone())?;
                                queue.remove(k.clone())?;
                                if let Some(w) = &rec.wamid
                                    && index.get(w.as_bytes())?.as_deref() == Some(&k[..])
                                {
                                    index.remove(w.as_bytes())?;
                                }
                                n += 1;
                            }
                            Ok(n)
                        },
                    )?,
                )
            })?;
        }
        Ok(n)
    }

    /// Deletes dead-letter records kept since before `before_ms`.
    pub fn sweep_dead_letters(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for kv in self.dead_letter.iter() {
            let (k, v) = kv?;
            if self
                .codec
                .dec::<DeadLetter>(DEAD_LETTER, &k, &v)
                .is_ok_and(|d| d.at_ms < before_ms)
            {
                old.push(k);
            }
        }
        self.remove_in_chunks(&self.dead_letter, &old)
    }

    /// Deletes sessions (conversation memory) whose last inbound message is older than
    /// `idle_before_s` (unix seconds), with their closed-window marks. A session with unanswered
    /// messages, or one written meanwhile, is kept.
    pub fn sweep_sessions(&self, idle_before_s: i64) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            let Ok(s) = self.codec.dec::<SessionState>(SESSIONS, &k, &v) else {
                continue;
            };
            if s.last_inbound_at.is_none_or(|t| t >= idle_before_s) {
                continue;
            }
            if self
                .inbox_by_key
                .scan_prefix(index_prefix(&s.key))
                .next()
                .is_some()
            {
                continue;
            }
            // Compare-and-swap: a turn that committed since we read it keeps its session.
            let removed = self.write(|| {
                let r = self
                    .sessions
                    .compare_and_swap(&k, Some(&v), None::<&[u8]>)?;
                if r.is_ok() {
                    self.windows.remove(&k)?;
                }
                Ok(r.is_ok())
            })?;
            n += usize::from(removed);
        }
        Ok(n)
    }

    /// Deletes the code counters of addresses with no code sent since `before_ms`. A counter
    /// written meanwhile is kept.
    pub fn sweep_email_codes(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.email_codes.iter() {
            let (k, v) = kv?;
            let recent = self
                .codec
                .dec::<Vec<i64>>(EMAIL_CODES, &k, &v)
                .is_ok_and(|t| t.iter().any(|t| *t >= before_ms));
            if recent {
                continue;
            }
            let removed = self.write(|| {
                Ok(self
                    .email_codes
                    .compare_and_swap(&k, Some(&v), None::<&[u8]>)?
                    .is_ok())
            })?;
            n += usize::from(removed);
        }
        Ok(n)
    }

    /// Runs every retention sweep as of `now_ms`.
    pub fn sweep(&self, r: &Retention, now_ms: i64) -> Result<SweepReport, StoreError> {
        let ms = |d: std::time::Duration| now_ms - d.as_millis() as i64;
        // An address's code counter only matters for an hour; after that it is just an email
        // address kept for nothing.
        self.sweep_email_codes(now_ms - 3_600_000)?;
        Ok(SweepReport {
            dedup: self.sweep_dedup(ms(r.dedup) / 1000)?,
            closed: self.sweep_closed(ms(r.dedup) / 1000)?,
            outbox: self.sweep_outbox(ms(r.outbox))?,
            dead_letters: self.sweep_dead_letters(ms(r.dead_letter))?,
            sessions: match r.session {
                Some(d) => self.sweep_sessions(ms(d) / 1000)?,
                None => 0,
            },
        })
    }

    // === conversations ===

    pub fn load_session(&self, key: &ConversationKey) -> Result<Option<SessionState>, StoreError> {
        let k = key.as_str().as_bytes();
        self.sessions
            .get(k)?
            .map(|v| self.codec.dec(SESSIONS, k, &v))
            .transpose()
    }

    /// Commits a finished turn in one transaction: the new session state, the replies into the
    /// outbox, and the answered messages out of the inbox. Returns the new outbox ids.
    pub fn commit_turn(
        &self,
        session: &SessionState,
        answered: &[u64],
        replies: &[NewOutbound],
    ) -> Result<Vec<u64>, StoreError> {
        self.commit_turn_with(session, answered, replies, None)
    }

    /// [`Store::commit_turn`], with what the turn changed in accounts and links in the same
    /// transaction: a code is waited for, a link or a note exists, exactly when the turn that
    /// answered it is committed.
    pub fn commit_turn_with(
        &self,
        session: &SessionState,
        answered: &[u64],
        replies: &[NewOutbound],
        identity: Option<&IdentityChange>,
    ) -> Result<Vec<u64>, StoreError> {
        let now = now_ms();
        self.write(|| {
            Ok((
                &self.sessions,
                &self.inbox,
                &self.outbox,
                &self.outbox_queue,
                &self.inbox_by_key,
                &self.closed,
                &self.links,
                &self.accounts,
                &self.email_codes,
            )
                .transaction(
                    |(sessions, inbox, outbox, queue, by_key, closed, links, accounts, codes)| {
                        for seq in answered {
                            inbox.remove(&be(*seq))?;
                            by_key.remove(index_key(&session.key, *seq))?;
                        }
                        if closed.get(session.key.as_str().as_bytes())?.is_some() {
                            // Closed while this turn ran: the messages are done with, and
                            // nothing is remembered or sent.
                            return Ok(Vec::new());
                        }
                        let sk = session.key.as_str().as_bytes();
                        sessions.insert(sk, self.codec.enc(SESSIONS, sk, session))?;
                        if let Some(c) = identity {
                            let lk = c.key.as_bytes();
                            match &c.number {
                                Some(n) => links.insert(lk, self.codec.enc(LINKS, lk, n))?,
                                None => links.remove(c.key.as_bytes())?,
                            };
                            for (email, ours) in &c.accounts {
                                // Read again inside the transaction: another number of the
                                // same account may have committed since this turn read it.
                                let ek = email.as_bytes();
                                let current: Option<Account> = accounts
                                    .get(ek)?
                                    .map(|v| self.codec.dec(ACCOUNTS, ek, &v))
                                    .transpose()
                                    .map_err(abort)?;
                                let base = c.account_bases.get(email).and_then(Option::as_ref);
                                let merged = crate::accounts::merge_account(
                                    &c.key,
                                    base,
                                    ours.as_ref(),
                                    current.as_ref(),
                                );
                                match merged {
                                    Some(a) => {
                                        accounts.insert(ek, self.codec.enc(ACCOUNTS, ek, &a))?
                                    }
                                    None => accounts.remove(email.as_bytes())?,
                                };
                            }
                            for (email, sends) in &c.email_sends {
                                // Sends counted by another number's turn meanwhile still count.
                                let ek = email.as_bytes();
                                let mut all: Vec<i64> = codes
                                    .get(ek)?
                                    .map(|v| self.codec.dec(EMAIL_CODES, ek, &v))
                                    .transpose()
                                    .map_err(abort)?
                                    .unwrap_or_default();
                                all.extend(sends);
                                all.sort_unstable();
                                all.dedup();
                                codes.insert(ek, self.codec.enc(EMAIL_CODES, ek, &all))?;
                            }
                        }
                        let mut ids = Vec::new();
                        for r in replies {
                            let id = outbox.generate_id()?;
                            let rec = new_outbox_record(id, &session.key, r, now);
                            outbox.insert(&be(id), self.codec.enc(OUTBOX, &be(id), &rec))?;
                            queue.insert(&be(id), &[])?;
                            ids.push(id);
                        }
                        Ok(ids)
                    },
                )?)
        })
    }

    // === accounts ===

    /// What is stored about an identity ([`crate::accounts::link_key`]).
    pub fn number_record(&self, key: &str) -> Result<Option<NumberRecord>, StoreError> {
        let k = key.as_bytes();
        self.links
            .get(k)?
            .map(|v| self.codec.dec(LINKS, k, &v))
            .transpose()
    }

    pub fn account(&self, email: &str) -> Result<Option<Account>, StoreError> {
        let k = email.as_bytes();
        self.accounts
            .get(k)?
            .map(|v| self.codec.dec(ACCOUNTS, k, &v))
            .transpose()
    }

    /// When codes were sent to `email` (unix ms; old ones are pruned by the next send).
    pub fn email_code_sends(&self, email: &str) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .email_codes
            .get(email.as_bytes())?
            .map(|v| self.codec.dec(EMAIL_CODES, email.as_bytes(), &v))
            .transpose()?
            .unwrap_or_default())
    }

    // === the Admin Portal: metadata listings and the operator's own actions ===

    /// What the portal shows of every stored conversation: metadata only (the session is
    /// decoded, its turns are never returned).
    pub fn conversations(&self) -> Result<Vec<ConversationMeta>, StoreError> {
        let mut out = Vec::new();
        for item in self.sessions.iter() {
            let (k, v) = item?;
            let s: SessionState = self.codec.dec(SESSIONS, &k, &v)?;
            let window_closed_at = self.window_closed_at(&s.key)?;
            out.push(ConversationMeta {
                is_group: s.is_group,
                last_inbound_at: s.last_inbound_at,
                turns: s.turns,
                window_closed_at,
                key: s.key,
            });
        }
        Ok(out)
    }

    /// Every account, in email order.
    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.accounts
            .iter()
            .map(|item| {
                let (k, v) = item?;
                self.codec.dec(ACCOUNTS, &k, &v)
            })
            .collect()
    }

    /// Unlinks identity `key` ([`crate::accounts::link_key`]) from its account, as `/unlink`
    /// does (the number keeps its record; the account loses the link), in one transaction.
    /// Returns the email it was linked to, `None` when it was not linked.
    pub fn unlink(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.write(|| {
            Ok(
                (&self.links, &self.accounts).transaction(|(links, accounts)| {
                    let Some(raw) = links.get(key.as_bytes())? else {
                        return Ok(None);
                    };
                    let k = key.as_bytes();
                    let mut number: NumberRecord = self.codec.dec(LINKS, k, &raw).map_err(abort)?;
                    let Some(email) = number.linked.take() else {
                        return Ok(None);
                    };
                    links.insert(k, self.codec.enc(LINKS, k, &number))?;
                    let e = email.as_bytes();
                    if let Some(raw) = accounts.get(e)? {
                        let mut a: Account = self.codec.dec(ACCOUNTS, e, &raw).map_err(abort)?;
                        a.links.retain(|l| l != key);
                        accounts.insert(e, self.codec.enc(ACCOUNTS, e, &a))?;
                    }
                    Ok(Some(email))
                })?,
            )
        })
    }

    /// Puts one message into the outbox outside a turn (the portal's test message); the
    /// caller kicks the sender. Returns its id.
    pub fn enqueue(&self, key: &ConversationKey, r: &NewOutbound) -> Result<u64, StoreError> {
        let now = now_ms();
        self.write(|| {
            Ok(
                (&self.outbox, &self.outbox_queue).transaction(|(outbox, queue)| {
                    let id = outbox.generate_id()?;
                    let rec = new_outbox_record(id, key, r, now);
                    outbox.insert(&be(id), self.codec.enc(OUTBOX, &be(id), &rec))?;
                    queue.insert(&be(id), &[])?;
                    Ok(id)
                })?,
            )
        })
    }

    /// Messages first seen at or after `since_s` (unix seconds), from the de-duplication
    /// record (each message is counted once, however often Meta delivered it).
    pub fn messages_seen_since(&self, since_s: i64) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.dedup.scan_prefix(b"m:") {
            let (_, v) = item?;
            if dedup_seen_s(&v) >= since_s {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Replaces an identity's record outside a turn (tests make a code expire with it).
    pub fn put_number_record(&self, key: &str, rec: &NumberRecord) -> Result<(), StoreError> {
        self.write(|| {
            self.links
                .insert(key.as_bytes(), self.codec.enc(LINKS, key.as_bytes(), rec))?;
            Ok(())
        })
    }

    /// Ends conversation `key` for good (its group was deleted, or Sandra was removed from it):
    /// marks it closed, deletes its session and closed-window mark, drops its unanswered
    /// messages, and cancels its replies still waiting to be sent (they become
    /// [`OutboxState::Failed`], so the record says why it was never sent and the retention
    /// sweep removes it; a send already in flight cannot be called back). From then on a turn
    /// committed for `key` stores and sends nothing ([`Store::commit_turn`]). Idempotent. Call
    /// [`Store::sync`] before acknowledging the webhook that asked for it.
    pub fn close_conversation(
        &self,
        key: &ConversationKey,
        reason: &str,
        at_s: i64,
    ) -> Result<ClosedConversation, StoreError> {
        let k = key.as_str().as_bytes();
        // The mark first, on its own: a turn committing after it adds nothing, so the scan of
        // the outbox below cannot miss a reply.
        self.write(|| {
            self.closed.insert(k, &at_s.to_be_bytes())?;
            Ok(())
        })?;
        let seqs: Vec<u64> = self
            .inbox_by_key
            .scan_prefix(index_prefix(key))
            .keys()
            .filter_map(|ik| ik.ok().and_then(|ik| index_seq(&ik)))
            .collect();
        let mut waiting = Vec::new();
        for id in self.outbox_queue.iter().keys() {
            let id = id?;
            if let Some(v) = self.outbox.get(&id)?
                && self
                    .codec
                    .dec::<OutboxRecord>(OUTBOX, &id, &v)
                    .is_ok_and(|r| &r.key == key)
            {
                waiting.push(id);
            }
        }
        let reason = format!("not sent: conversation closed ({reason})");
        self.write(|| {
            Ok((
                &self.sessions,
                &self.windows,
                &self.inbox,
                &self.inbox_by_key,
                &self.outbox,
                &self.outbox_queue,
            )
                .transaction(|(sessions, windows, inbox, by_key, outbox, queue)| {
                    sessions.remove(k)?;
                    windows.remove(k)?;
                    let mut out = ClosedConversation::default();
                    for seq in &seqs {
                        out.dropped_messages += usize::from(inbox.remove(&be(*seq))?.is_some());
                        by_key.remove(index_key(key, *seq))?;
                    }
                    for id in &waiting {
                        let Some(raw) = outbox.get(id)? else { continue };
                        let mut rec: OutboxRecord =
                            self.codec.dec(OUTBOX, id, &raw).map_err(abort)?;
                        if rec.state != OutboxState::Pending {
                            continue;
                        }
                        rec.state = OutboxState::Failed {
                            code: None,
                            reason: reason.clone(),
                        };
                        rec.last_error = Some(reason.clone());
                        outbox.insert(id.clone(), self.codec.enc(OUTBOX, id, &rec))?;
                        queue.remove(id.clone())?;
                        out.cancelled_replies += 1;
                    }
                    Ok(out)
                })?)
        })
    }

    /// Whether conversation `key` was closed ([`Store::close_conversation`]).
    pub fn is_closed(&self, key: &ConversationKey) -> Result<bool, StoreError> {
        Ok(self.closed.get(key.as_str().as_bytes())?.is_some())
    }

    /// Unix seconds at which Meta said the window of `key` is closed, if it did.
    pub fn window_closed_at(&self, key: &ConversationKey) -> Result<Option<i64>, StoreError> {
        Ok(self
            .windows
            .get(key.as_str().as_bytes())?
            .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes)))
    }

    /// Records that Meta refused a free-form message because the window is closed.
    pub fn close_window(&self, key: &ConversationKey, at_s: i64) -> Result<(), StoreError> {
        self.write(|| {
            self.windows
                .insert(key.as_str().as_bytes(), &at_s.to_be_bytes())?;
            Ok(())
        })
    }

    // === held replies (the 24-hour window) ===

    /// How the held-reply code writes an outbox record (one place for an at-rest codec).
    fn outbox_value(&self, rec: &OutboxRecord) -> Vec<u8> {
        self.codec.enc(OUTBOX, &be(rec.id), rec)
    }

    /// How the held-reply code reads outbox record `id` (one place for an at-rest codec).
    fn outbox_decode(&self, id: u64, raw: &[u8]) -> Result<OutboxRecord, StoreError> {
        self.codec.dec(OUTBOX, &be(id), raw)
    }

    /// Holds `rec` (whose state is [`OutboxState::Held`]): out of the send queue, indexed by
    /// conversation. With `reopen`, also queues that template unless one was already queued for
    /// this closed window; returns its outbox id when it did. One transaction.
    pub fn hold_reply(
        &self,
        rec: &OutboxRecord,
        reopen: Option<&NewOutbound>,
    ) -> Result<Option<u64>, StoreError> {
        let now = now_ms();
        self.write(|| {
            Ok((&self.outbox, &self.outbox_queue, &self.held).transaction(
                |(outbox, queue, held)| {
                    outbox.insert(&be(rec.id), self.outbox_value(rec))?;
                    queue.remove(&be(rec.id))?;
                    held.insert(index_key(&rec.key, rec.id), &[])?;
                    let Some(r) = reopen else { return Ok(None) };
                    let marker = index_key(&rec.key, u64::MAX);
                    if held.get(&marker)?.is_some() {
                        return Ok(None);
                    }
                    let id = outbox.generate_id()?;
                    let t = new_outbox_record(id, &rec.key, r, now);
                    outbox.insert(&be(id), self.outbox_value(&t))?;
                    queue.insert(&be(id), &[])?;
                    held.insert(marker, &be(id))?;
                    Ok(Some(id))
                },
            )?)
        })
    }

    /// The user wrote again: the window is open, and the replies held for `key` go back into the
    /// send queue (oldest first, ahead of anything newer), valid until `window_expires_at`; the
    /// next closed window may get a template again. Returns how many were released.
    pub fn release_held(
        &self,
        key: &ConversationKey,
        window_expires_at: i64,
    ) -> Result<usize, StoreError> {
        // Whatever Meta said about the old window, the user's message opened a new one (Meta's
        // timestamps and our clock may disagree by seconds: trust the message, not the clock).
        if self.windows.contains_key(key.as_str().as_bytes())? {
            self.write(|| {
                self.windows.remove(key.as_str().as_bytes())?;
                Ok(())
            })?;
        }
        let entries: Vec<sled::IVec> = self
            .held
            .scan_prefix(index_prefix(key))
            .keys()
            .collect::<Result<_, _>>()?;
        if entries.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        self.write(|| {
            Ok((&self.outbox, &self.outbox_queue, &self.held).transaction(
                |(outbox, queue, held)| {
                    let mut n = 0;
                    for k in &entries {
                        held.remove(k.clone())?;
                        let Some(id) = index_seq(k).filter(|id| *id != u64::MAX) else {
                            continue;
                        };
                        let Some(raw) = outbox.get(be(id))? else {
                            continue;
                        };
                        let mut rec = self
                            .outbox_decode(id, &raw)
                            .map_err(ConflictableTransactionError::Abort)?;
                        if !matches!(rec.state, OutboxState::Held { .. }) {
                            continue;
                        }
                        rec.state = OutboxState::Pending;
                        rec.window_expires_at = Some(window_expires_at);
                        rec.next_attempt_at_ms = now;
                        outbox.insert(&be(id), self.outbox_value(&rec))?;
                        queue.insert(&be(id), &[])?;
                        n += 1;
                    }
                    Ok(n)
                },
            )?)
        })
    }

    /// Every reply held because a window closed, oldest conversation key first (metadata only).
    pub fn held_replies(&self) -> Result<Vec<HeldReply>, StoreError> {
        let mut out = Vec::new();
        let mut templates = std::collections::HashSet::new();
        for k in self.held.iter().keys() {
            let k = k?;
            let Some(id) = index_seq(&k) else { continue };
            if id == u64::MAX {
                templates.insert(k[..k.len() - 8].to_vec());
                continue;
            }
            let Some(rec) = self.outbox_record(id)? else {
                continue;
            };
            if let OutboxState::Held { reason, since_ms } = rec.state {
                out.push(HeldReply {
                    id,
                    recipient: rec.target.recipient_key(),
                    key: rec.key,
                    since_ms,
                    reason,
                    template_queued: false,
                });
            }
        }
        for h in &mut out {
            h.template_queued = templates.contains(&index_prefix(&h.key));
        }
        Ok(out)
    }

    // === outbox ===

    pub fn outbox_record(&self, id: u64) -> Result<Option<OutboxRecord>, StoreError> {
        self.outbox
            .get(be(id))?
            .map(|v| self.codec.dec(OUTBOX, &be(id), &v))
            .transpose()
    }

    /// The text of a message Sandra sent, by the wamid Meta gave it: what a tapped button or
    /// list row answers. `None` for messages Sandra did not send or whose record was swept.
    pub fn sent_text(&self, wamid: &str) -> Result<Option<String>, StoreError> {
        let Some(id) = self.wamid_index.get(wamid.as_bytes())? else {
            return Ok(None);
        };
        let Some(v) = self.outbox.get(&id)? else {
            return Ok(None);
        };
        let rec: OutboxRecord = self.codec.dec(OUTBOX, &id, &v)?;
        Ok(match rec.body {
            OutboundBody::Text { body } => Some(body),
            // What a voice note said, for a user who quotes it.
            OutboundBody::Voice { text, .. } => Some(text),
            OutboundBody::Template { .. } => None,
        })
    }

    /// Every outbox record, oldest first (for tests, admin and metrics).
    pub fn outbox_all(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        self.outbox
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                self.codec.dec(OUTBOX, &k, &v)
            })
            .collect()
    }

    /// Outbox records still to send, oldest first.
    pub fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        let mut out = Vec::new();
        for k in self.outbox_queue.iter().keys().take(limit) {
            let k = k?;
            if let Some(v) = self.outbox.get(&k)? {
                out.push(self.codec.dec(OUTBOX, &k, &v)?);
            }
        }
        Ok(out)
    }

    pub fn outbox_pending_count(&self) -> usize {
        self.outbox_queue.len()
    }

    /// Writes an updated outbox record; drops it from the send queue unless it is still pending,
    /// and indexes its wamid once it has one.
    pub fn update_outbox(&self, rec: &OutboxRecord) -> Result<(), StoreError> {
        self.write(|| {
            (&self.outbox, &self.outbox_queue, &self.wamid_index).transaction(
                |(outbox, queue, index)| {
                    outbox.insert(&be(rec.id), self.codec.enc(OUTBOX, &be(rec.id), rec))?;
                    if rec.state != OutboxState::Pending {
                        queue.remove(&be(rec.id))?;
                    }
                    if let Some(w) = &rec.wamid {
                        index.insert(w.as_bytes(), &be(rec.id))?;
                    }
                    Ok(())
                },
            )?;
            Ok(())
        })
    }

    /// Marks a record as being sent since `at_ms` (one small transaction; call [`Store::sync`]
    /// before the Graph call). Returns the marked record, or `None` if it is no longer pending
    /// (a status webhook settled it).
    pub fn mark_sending(&self, id: u64, at_ms: i64) -> Result<Option<OutboxRecord>, StoreError> {
        self.write(|| {
            Ok(self.outbox.transaction(|outbox| {
                let Some(raw) = outbox.get(be(id))? else {
                    return Ok(None);
                };
                let mut rec: OutboxRecord = self.codec.dec(OUTBOX, &be(id), &raw).map_err(abort)?;
                if rec.state != OutboxState::Pending {
                    return Ok(None);
                }
                rec.sending_since_ms = Some(at_ms);
                outbox.insert(&be(id), self.codec.enc(OUTBOX, &be(id), &rec))?;
                Ok(Some(rec))
            })?)
        })
    }

    /// Flushes and closes the database (graceful shutdown).
    pub async fn close(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

enum StatusOutcome {
    Applied(Option<ConversationKey>),
    Unmatched,
}

/// The store as the accounts desk reads it. A read error is logged and read as "nothing":
/// the worst outcome is a code limit counted from zero or a fresh account in place of one that
/// could not be read, and the turn's commit fails on the same broken store anyway.
impl Lookup for Store {
    fn account(&self, email: &str) -> Option<Account> {
        Store::account(self, email).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading an account failed");
            None
        })
    }

    fn email_sends(&self, email: &str) -> Vec<i64> {
        self.email_code_sends(email).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the code counter of an address failed");
            Vec::new()
        })
    }
}

fn apply_status(
    codec: &Codec,
    outbox: &sled::transaction::TransactionalTree,
    wamid_index: &sled::transaction::TransactionalTree,
    windows: &sled::transaction::TransactionalTree,
    queue: &sled::transaction::TransactionalTree,
    s: &StatusUpdate,
) -> TxResult<StatusOutcome> {
    let Some(new) = s.status.known() else {
        return Ok(StatusOutcome::Unmatched);
    };
    let id = match wamid_index.get(s.wamid.as_bytes())? {
        Some(id) => id,
        None => match s
            .callback_data
            .as_deref()
            .and_then(|c| c.strip_prefix("sandra:"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            // A status for a send whose response we never saw (timeout): reconcile by the key.
            Some(n) => sled::IVec::from(&be(n)),
            None => return Ok(StatusOutcome::Unmatched),
        },
    };
    let Some(raw) = outbox.get(&id)? else {
        return Ok(StatusOutcome::Unmatched);
    };
    let mut rec: OutboxRecord = codec.dec(OUTBOX, &id, &raw).map_err(abort)?;
    let mut closed = None;
    if new == DeliveryStatus::Failed {
        if s.errors.iter().any(StatusError::closes_window) {
            windows.insert(rec.key.as_str().as_bytes(), &s.timestamp.to_be_bytes())?;
            closed = Some(rec.key.clone());
        }
        // A failure is final unless a later status already proved delivery.
        if rec.status.is_none_or(|st| st < DeliveryStatus::Delivered) {
            let (code, reason) = s
                .errors
                .first()
                .map(|e| (Some(e.code), e.description().to_string()))
                .unwrap_or((None, "failed".into()));
            rec.state = OutboxState::Failed { code, reason };
            rec.status = Some(DeliveryStatus::Failed);
        }
    } else if rec
        .status
        .is_none_or(|st| st < new && st != DeliveryStatus::Failed)
    {
        rec.status = Some(new);
        if rec.state == OutboxState::Pending {
            // We timed out on the send but Meta took it: reconcile instead of sending twice.
            rec.state = OutboxState::Sent;
        }
    }
    if rec.wamid.is_none() {
        rec.wamid = Some(s.wamid.clone());
        wamid_index.insert(s.wamid.as_bytes(), &id)?;
    }
    if rec.state != OutboxState::Pending {
        queue.remove(&id)?;
        rec.sending_since_ms = None;
    }
    outbox.insert(&id, codec.enc(OUTBOX, &id, &rec))?;
    Ok(StatusOutcome::Applied(closed))
}

/// A session's reply target, with whatever is freshest from its latest message.
pub fn refresh_target(target: &mut ReplyTarget, m: &InboundMessage) {
    let fresh = m.reply_target();
    if fresh.phone.is_some() {
        target.phone = fresh.phone;
    }
    if fresh.user_id.is_some() {
        target.user_id = fresh.user_id;
    }
    if fresh.group_id.is_some() {
        target.group_id = fresh.group_id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whatsapp::{Content, parse_webhook};

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn text(wamid: &str, from: &str) -> WebhookBatch {
        let body = serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": "42"},
                "contacts": [{"profile": {"name": "T"}, "wa_id": from}],
                "messages": [{"from": from, "id": wamid, "timestamp": "1750000000",
                              "type": "text", "text": {"body": "hi"}}]
            }}]}]
        });
        parse_webhook(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn portal_unlink_removes_the_link_on_both_sides_and_keeps_the_rest() {
        let (_d, store) = open();
        let key = crate::accounts::link_key("15550001");
        let other = crate::accounts::link_key("15550002");
        let number = NumberRecord {
            linked: Some("ana@example.org".into()),
            offered: true,
            ..Default::default()
        };
        store.put_number_record(&key, &number).unwrap();
        let account = Account {
            email: "ana@example.org".into(),
            profile: Default::default(),
            links: vec![key.clone(), other.clone()],
            created_at: 1,
        };
        store
            .accounts
            .insert(
                "ana@example.org".as_bytes(),
                store
                    .codec
                    .enc(ACCOUNTS, "ana@example.org".as_bytes(), &account),
            )
            .unwrap();
        assert_eq!(
            store.unlink(&key).unwrap().as_deref(),
            Some("ana@example.org")
        );
        let n = store.number_record(&key).unwrap().unwrap();
        assert_eq!(n.linked, None);
        assert!(n.offered, "the rest of the number's record is kept");
        assert_eq!(store.accounts().unwrap()[0].links, vec![other]);
        // Twice, or a number never linked: nothing to do.
        assert_eq!(store.unlink(&key).unwrap(), None);
        assert_eq!(store.unlink("nobody").unwrap(), None);
    }

    #[test]
    fn portal_listings_and_enqueue() {
        let (_d, store) = open();
        let rec = accept_one(&store, "wamid.p1", "15550003");
        assert_eq!(store.messages_seen_since(0).unwrap(), 1);
        assert_eq!(store.messages_seen_since(i64::MAX).unwrap(), 0);
        let mut s = SessionState::new(rec.key.clone(), reply("x").target);
        s.last_inbound_at = Some(100);
        s.turns = 3;
        store.commit_turn(&s, &[rec.seq], &[]).unwrap();
        let convs = store.conversations().unwrap();
        assert_eq!(convs.len(), 1);
        assert_eq!((convs[0].turns, convs[0].last_inbound_at), (3, Some(100)));
        let id = store.enqueue(&rec.key, &reply("test")).unwrap();
        assert_eq!(store.outbox_pending(10).unwrap()[0].id, id);
    }

    /// The "got it" notice is queued once per message, ever: a replayed turn (same records,
    /// read back from the inbox) cannot queue a second one, and an answered message none.
    #[test]
    fn a_wait_notice_is_queued_once_per_message() {
        let (_d, store) = open();
        let a = accept_one(&store, "wamid.n1", "15550004");
        let b = accept_one(&store, "wamid.n2", "15550004");
        let notice = reply("got it");
        assert!(
            store
                .commit_notice(&a.key, &[a.seq, b.seq], &notice)
                .unwrap()
        );
        assert_eq!(store.outbox_pending(10).unwrap().len(), 1);
        // What a replay reads back: the records remember the notice.
        let back = store.unfinished_for(&a.key).unwrap();
        assert!(back.iter().all(|r| r.noticed), "{back:?}");
        assert!(!store.commit_notice(&a.key, &[a.seq], &notice).unwrap());
        assert!(!store.commit_notice(&a.key, &[b.seq], &notice).unwrap());
        // Answered: nothing to notice any more.
        let c = accept_one(&store, "wamid.n3", "15550004");
        store
            .commit_turn(
                &SessionState::new(c.key.clone(), notice.target.clone()),
                &[c.seq],
                &[],
            )
            .unwrap();
        assert!(!store.commit_notice(&c.key, &[c.seq], &notice).unwrap());
        assert_eq!(store.outbox_pending(10).unwrap().len(), 1);
    }

    fn accept_one(store: &Store, wamid: &str, from: &str) -> InboxRecord {
        let mut acc = store.accept(&text(wamid, from), now_ms()).unwrap();
        assert_eq!(acc.new_messages.len(), 1);
        acc.new_messages.remove(0)
    }

    fn reply(text: &str) -> NewOutbound {
        NewOutbound {
            target: ReplyTarget {
                group_id: None,
                phone: Some("1555".into()),
                user_id: None,
            },
            body: OutboundBody::Text { body: text.into() },
            context_message_id: None,
            window_expires_at: None,
        }
    }

    fn session(key: &ConversationKey, last_inbound_at: Option<i64>) -> SessionState {
        let mut s = SessionState::new(key.clone(), reply("").target);
        s.last_inbound_at = last_inbound_at;
        s
    }

    fn keyring() -> Keyring {
        Keyring::new(at_rest::MasterKey::generate().sealer(b"store"))
    }

    fn saying(wamid: &str, from: &str, body: &str) -> WebhookBatch {
        let v = serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": "42"},
                "contacts": [{"profile": {"name": "T"}, "wa_id": from}],
                "messages": [{"from": from, "id": wamid, "timestamp": "1750000000",
                              "type": "text", "text": {"body": body}}]
            }}]}]
        });
        parse_webhook(v.to_string().as_bytes()).unwrap()
    }

    /// Every file under `dir`, concatenated.
    fn all_bytes(dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.extend(std::fs::read(p).unwrap());
                }
            }
        }
        out
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    /// A message, a turn with a summary and a reply, and a dead letter, as any store holds.
    fn fill(store: &Store) -> ConversationKey {
        let acc = store
            .accept(&saying("w1", "15550001111", "my diary entry one"), now_ms())
            .unwrap();
        let rec = &acc.new_messages[0];
        store
            .accept(&saying("w2", "15550001111", "my diary entry two"), now_ms())
            .unwrap();
        let mut s = session(&rec.key, Some(1));
        s.summary = Some("summary of private things".into());
        store
            .commit_turn(&s, &[rec.seq], &[reply("a reply about the diary")])
            .unwrap();
        store.dead_letter(b"an unusable body", "test").unwrap();
        rec.key.clone()
    }

    fn check_filled(store: &Store, key: &ConversationKey) {
        let s = store.load_session(key).unwrap().unwrap();
        assert_eq!(s.summary.as_deref(), Some("summary of private things"));
        let out = store.outbox_all().unwrap();
        assert_eq!(
            out[0].body,
            OutboundBody::Text {
                body: "a reply about the diary".into()
            }
        );
        let waiting = store.unfinished().unwrap();
        assert_eq!(waiting.len(), 1);
        assert!(
            matches!(&waiting[0].message.content, Content::Text { body } if body == "my diary entry two")
        );
        assert_eq!(store.dead_letters().unwrap()[0].body, "an unusable body");
    }

    #[tokio::test]
    async fn personal_data_is_sealed_on_disk_and_bound_to_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let ring = keyring();
        let key = {
            let store = Store::open_with(dir.path(), Codec::sealed(ring.clone())).unwrap();
            let key = fill(&store);
            store.close().await.unwrap();
            key
        };
        let disk = all_bytes(dir.path());
        for plain in [
            "my diary entry",
            "summary of private things",
            "a reply about the diary",
            "an unusable body",
        ] {
            assert!(!contains(&disk, plain), "{plain:?} is on disk in plain");
        }
        let store = Store::open_with(dir.path(), Codec::sealed(ring.clone())).unwrap();
        check_filled(&store, &key);
        // A sealed value moved under another key does not open.
        let first = store.outbox.iter().next().unwrap().unwrap();
        store.outbox.insert(be(999), first.1).unwrap();
        assert!(matches!(
            store.outbox_record(999),
            Err(StoreError::Sealed(SealError::Tampered))
        ));
        store.outbox.remove(be(999)).unwrap();
        store.close().await.unwrap();
        drop(store);
        // Without the key, or with another, the database does not open at all.
        for codec in [Codec::plain(), Codec::sealed(keyring())] {
            let e = Store::open_with(dir.path(), codec).unwrap_err();
            assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
        }
    }

    #[tokio::test]
    async fn a_plain_database_is_migrated_on_open_even_after_an_interrupted_migration() {
        let dir = tempfile::tempdir().unwrap();
        let ring = keyring();
        let key = {
            let store = Store::open(dir.path()).unwrap();
            let key = fill(&store);
            store.close().await.unwrap();
            key
        };
        assert!(contains(
            &all_bytes(dir.path()),
            "summary of private things"
        ));
        {
            let store = Store::open_with(dir.path(), Codec::sealed(ring.clone())).unwrap();
            check_filled(&store, &key);
            // As if the migration had stopped half-way: one value still plain, no mark.
            let (k, v) = store.sessions.iter().next().unwrap().unwrap();
            let plain = store.codec.open_any(SESSIONS, &k, &v).unwrap();
            store.sessions.insert(k, plain).unwrap();
            store.db.open_tree("meta").unwrap().remove("codec").unwrap();
            store.close().await.unwrap();
        }
        let store = Store::open_with(dir.path(), Codec::sealed(ring.clone())).unwrap();
        check_filled(&store, &key);
        for name in SEALED_TREES {
            for kv in store.db.open_tree(name).unwrap().iter() {
                assert!(
                    at_rest::is_sealed(&kv.unwrap().1),
                    "a plain value left in {name}"
                );
            }
        }
        store.close().await.unwrap();
        drop(store);
        // Turning encryption off migrates back to plain.
        let store = Store::open_with(dir.path(), Codec::unsealing(ring)).unwrap();
        check_filled(&store, &key);
        let (_, v) = store.sessions.iter().next().unwrap().unwrap();
        assert!(!at_rest::is_sealed(&v));
    }

    #[test]
    fn a_linking_flow_is_committed_with_its_turn_and_survives_a_restart() {
        use crate::accounts::{Flow, link_key};
        let dir = tempfile::tempdir().unwrap();
        let key = link_key("15550001111");
        {
            let store = Store::open(dir.path()).unwrap();
            let rec = accept_one(&store, "w1", "15550001111");
            let s = session(&rec.key, Some(1));
            let mut accounts = std::collections::BTreeMap::new();
            accounts.insert(
                "ana@example.org".to_string(),
                Some(Account {
                    email: "ana@example.org".into(),
                    profile: Default::default(),
                    links: vec![key.clone()],
                    created_at: 1,
                }),
            );
            let change = IdentityChange {
                key: key.clone(),
                number: Some(NumberRecord {
                    flow: Flow::AwaitingEmail,
                    ..Default::default()
                }),
                accounts,
                account_bases: Default::default(),
                email_sends: [("ana@example.org".to_string(), vec![5])].into(),
            };
            store
                .commit_turn_with(&s, &[rec.seq], &[], Some(&change))
                .unwrap();
            assert!(!store.is_unfinished(rec.seq).unwrap());
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.number_record(&key).unwrap().unwrap().flow,
            Flow::AwaitingEmail
        );
        assert_eq!(
            store.account("ana@example.org").unwrap().unwrap().links,
            vec![key.clone()]
        );
        assert_eq!(store.email_code_sends("ana@example.org").unwrap(), vec![5]);
        // The hourly sweep forgets counters older than an hour, and only those.
        assert_eq!(store.sweep_email_codes(5).unwrap(), 0);
        assert_eq!(store.sweep_email_codes(6).unwrap(), 1);
        assert!(
            store
                .email_code_sends("ana@example.org")
                .unwrap()
                .is_empty()
        );
        // Erasing an identity and its account.
        let change = IdentityChange {
            key: key.clone(),
            number: None,
            accounts: [("ana@example.org".to_string(), None)].into(),
            account_bases: Default::default(),
            email_sends: Default::default(),
        };
        let rec = accept_one(&store, "w2", "15550001111");
        let s = session(&rec.key, Some(2));
        store
            .commit_turn_with(&s, &[rec.seq], &[], Some(&change))
            .unwrap();
        assert!(store.number_record(&key).unwrap().is_none());
        assert!(store.account("ana@example.org").unwrap().is_none());
    }

    /// Two numbers of one account, each in a turn that read the account before the other
    /// committed: both edits survive (the second is merged into the first, not written over it).
    #[test]
    fn concurrent_turns_of_one_account_both_keep_their_edits() {
        use crate::accounts::{Note, Profile, link_key};
        let (_d, store) = open();
        let (ka, kb) = (link_key("15550001111"), link_key("15550002222"));
        let email = "ana@example.org".to_string();
        let account = |notes: &[&str], links: &[&String]| Account {
            email: email.clone(),
            profile: Profile {
                notes: notes
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Note {
                        text: t.to_string(),
                        at: i as i64,
                    })
                    .collect(),
                ..Default::default()
            },
            links: links.iter().map(|l| l.to_string()).collect(),
            created_at: 1,
        };
        let base = account(&["tea"], &[&ka, &kb]);
        let turn = |key: &String, wamid: &str, from: &str, ours: Account| {
            let rec = accept_one(&store, wamid, from);
            let change = IdentityChange {
                key: key.clone(),
                number: Some(NumberRecord::default()),
                accounts: [(email.clone(), Some(ours))].into(),
                account_bases: [(email.clone(), Some(base.clone()))].into(),
                email_sends: Default::default(),
            };
            store
                .commit_turn_with(&session(&rec.key, Some(1)), &[rec.seq], &[], Some(&change))
                .unwrap();
        };
        store
            .write(|| {
                store.accounts.insert(email.as_bytes(), json(&base))?;
                Ok(())
            })
            .unwrap();
        // Both read `base`; the first adds a note, the second adds another and sets a name.
        turn(
            &ka,
            "w1",
            "15550001111",
            account(&["tea", "vegetarian"], &[&ka, &kb]),
        );
        let mut theirs = account(&["tea", "lives in Porto"], &[&ka, &kb]);
        theirs.profile.name = Some("Ana".into());
        turn(&kb, "w2", "15550002222", theirs);
        let stored = store.account(&email).unwrap().unwrap();
        let notes: Vec<&str> = stored
            .profile
            .notes
            .iter()
            .map(|n| n.text.as_str())
            .collect();
        assert_eq!(notes, vec!["tea", "vegetarian", "lives in Porto"]);
        assert_eq!(stored.profile.name.as_deref(), Some("Ana"));
        assert_eq!(stored.links, vec![ka.clone(), kb.clone()]);
        // The first number forgets (its turn read the account before the second linked a
        // third number): the account stays for the others, without the first's link.
        let kc = link_key("15550003333");
        let mut with_c = store.account(&email).unwrap().unwrap();
        with_c.links.push(kc.clone());
        store
            .write(|| {
                store.accounts.insert(email.as_bytes(), json(&with_c))?;
                Ok(())
            })
            .unwrap();
        let rec = accept_one(&store, "w3", "15550001111");
        let forget = IdentityChange {
            key: ka.clone(),
            number: None,
            accounts: [(email.clone(), None)].into(),
            account_bases: [(email.clone(), Some(stored.clone()))].into(),
            email_sends: Default::default(),
        };
        store
            .commit_turn_with(&session(&rec.key, Some(2)), &[rec.seq], &[], Some(&forget))
            .unwrap();
        assert_eq!(store.account(&email).unwrap().unwrap().links, vec![kb, kc]);
    }

    /// Records written before `attempts` / `sending_since_ms` existed still load.
    #[test]
    fn records_from_older_versions_still_load() {
        let (_d, store) = open();
        let rec = accept_one(&store, "wamid.old", "1555");
        let mut v = serde_json::to_value(&rec).unwrap();
        v.as_object_mut().unwrap().remove("attempts");
        let back: InboxRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back.attempts, 0);
        let ids = store
            .commit_turn(&session(&rec.key, None), &[rec.seq], &[reply("x")])
            .unwrap();
        let mut v = serde_json::to_value(store.outbox_record(ids[0]).unwrap().unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("sending_since_ms");
        let back: OutboxRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back.sending_since_ms, None);
    }

    /// A write is unsynced from before anyone can see it, so a caller that sees it (a duplicate
    /// delivery) and syncs always waits for a flush covering it; duplicates count as writes.
    #[tokio::test]
    async fn writes_count_as_unsynced_before_they_are_visible() {
        let (_d, store) = open();
        store.sync().await.unwrap();
        assert!(!store.unsynced());
        store
            .write(|| {
                // Inside the write, before its commit is visible to anyone.
                assert!(store.unsynced(), "counted only after the commit");
                Ok(())
            })
            .unwrap();
        store.sync().await.unwrap();
        accept_one(&store, "wamid.d1", "1555");
        store.sync().await.unwrap();
        assert!(!store.unsynced());
        let dup = store.accept(&text("wamid.d1", "1555"), now_ms()).unwrap();
        assert_eq!(dup.duplicate_messages, 1);
        assert!(store.unsynced(), "a duplicate's sync must flush");
        store.sync().await.unwrap();
        assert!(!store.unsynced());
    }

    /// A duplicate of a message still waiting in the inbox is handed back to be routed again;
    /// once answered, a duplicate is just a duplicate.
    #[test]
    fn duplicates_of_unanswered_messages_are_redelivered() {
        let (_d, store) = open();
        let rec = accept_one(&store, "wamid.r1", "1555");
        let dup = store.accept(&text("wamid.r1", "1555"), now_ms()).unwrap();
        assert!(dup.new_messages.is_empty());
        assert_eq!(dup.redelivered.len(), 1);
        assert_eq!(dup.redelivered[0].seq, rec.seq);
        store
            .commit_turn(&session(&rec.key, None), &[rec.seq], &[])
            .unwrap();
        let dup = store.accept(&text("wamid.r1", "1555"), now_ms()).unwrap();
        assert_eq!(dup.duplicate_messages, 1);
        assert!(dup.redelivered.is_empty());
    }

    /// Closing a conversation deletes its session, drops its unanswered messages, cancels its
    /// waiting replies (other chats' stay), and makes a turn that commits afterwards store and
    /// send nothing.
    #[test]
    fn a_closed_conversation_keeps_and_sends_nothing() {
        let (_d, store) = open();
        let done = accept_one(&store, "wamid.c1", "1555");
        let key = done.key.clone();
        store
            .commit_turn(&session(&key, None), &[done.seq], &[reply("first answer")])
            .unwrap();
        let other = accept_one(&store, "wamid.o1", "1666");
        store
            .commit_turn(
                &session(&other.key, None),
                &[other.seq],
                &[reply("other chat")],
            )
            .unwrap();
        let waiting = accept_one(&store, "wamid.c2", "1555");
        let late = accept_one(&store, "wamid.c3", "1555");
        assert!(!store.is_closed(&key).unwrap());

        let c = store.close_conversation(&key, "group deleted", 7).unwrap();
        assert_eq!(
            c,
            ClosedConversation {
                dropped_messages: 2,
                cancelled_replies: 1
            }
        );
        assert!(store.is_closed(&key).unwrap());
        assert!(store.load_session(&key).unwrap().is_none());
        assert!(store.unfinished_for(&key).unwrap().is_empty());
        let pending: Vec<OutboxRecord> = store.outbox_pending(10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].key, other.key, "other chats are untouched");
        let cancelled = store
            .outbox_all()
            .unwrap()
            .into_iter()
            .find(|r| r.key == key)
            .unwrap();
        assert!(
            matches!(&cancelled.state, OutboxState::Failed { reason, .. } if reason.contains("group deleted")),
            "{:?}",
            cancelled.state
        );

        // A new message for it is seen (a redelivery is a duplicate) but never queued.
        let after = store.accept(&text("wamid.c4", "1555"), now_ms()).unwrap();
        assert!(after.new_messages.is_empty());
        assert_eq!(after.to_closed, 1);
        assert!(store.unfinished_for(&key).unwrap().is_empty());
        let again = store.accept(&text("wamid.c4", "1555"), now_ms()).unwrap();
        assert_eq!(again.duplicate_messages, 1);

        // A turn that was running commits after the close: nothing is kept or sent.
        let ids = store
            .commit_turn(
                &session(&key, None),
                &[waiting.seq, late.seq],
                &[reply("too late")],
            )
            .unwrap();
        assert!(ids.is_empty());
        assert!(store.load_session(&key).unwrap().is_none());
        assert_eq!(store.outbox_pending_count(), 1);
        // Idempotent: a redelivered close finds nothing more to do.
        let again = store.close_conversation(&key, "group deleted", 8).unwrap();
        assert_eq!(again, ClosedConversation::default());
        // The mark goes with the dedup retention.
        assert_eq!(store.sweep_closed(8).unwrap(), 0);
        assert_eq!(store.sweep_closed(9).unwrap(), 1);
        assert!(!store.is_closed(&key).unwrap());
    }

    /// Attempts are counted durably (they survive a reopen); a record that used them up is
    /// dead-lettered with one apology in the same transaction, and leaves the inbox and index.
    #[tokio::test]
    async fn attempts_are_durable_and_exhausted_records_are_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let key;
        let seq;
        {
            let store = Store::open(dir.path()).unwrap();
            let rec = accept_one(&store, "wamid.p", "1555");
            (key, seq) = (rec.key, rec.seq);
            let a = store
                .begin_attempt(&key, &[seq], 3, |_| reply("sorry"))
                .unwrap();
            assert_eq!(a.records[0].attempts, 1);
            store.sync().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.unfinished_for(&key).unwrap()[0].attempts, 1);
        for n in 2..=3 {
            let a = store
                .begin_attempt(&key, &[seq], 3, |_| reply("sorry"))
                .unwrap();
            assert_eq!(a.records[0].attempts, n);
        }
        let a = store
            .begin_attempt(&key, &[seq], 3, |_| reply("sorry"))
            .unwrap();
        assert!(a.records.is_empty());
        assert_eq!(a.dead_lettered.len(), 1);
        assert!(store.unfinished_for(&key).unwrap().is_empty());
        assert!(store.unfinished().unwrap().is_empty());
        assert_eq!(store.inbox_by_key.len(), 0);
        let dead = store.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].body.contains("wamid.p"), "{:?}", dead[0]);
        let out = store.outbox_pending(10).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].body,
            OutboundBody::Text {
                body: "sorry".into()
            }
        );
        // Nothing left to attempt: no second apology.
        let a = store
            .begin_attempt(&key, &[seq], 3, |_| reply("sorry"))
            .unwrap();
        assert!(a.records.is_empty() && a.dead_lettered.is_empty());
        assert_eq!(store.outbox_pending_count(), 1);
    }

    /// An unreadable inbox record does not stop the replay: it is dead-lettered with its exact
    /// bytes and the readable records are returned.
    #[test]
    fn corrupt_inbox_records_are_dead_lettered_with_their_bytes() {
        let (_d, store) = open();
        let good = accept_one(&store, "wamid.g", "1555");
        let bad_seq = store.db.generate_id().unwrap();
        store
            .inbox
            .insert(be(bad_seq), &b"{\"seq\":\xff"[..])
            .unwrap();
        store
            .inbox_by_key
            .insert(index_key(&good.key, bad_seq), &[])
            .unwrap();
        let mine = store.unfinished_for(&good.key).unwrap();
        assert_eq!(mine, vec![good.clone()]);
        assert_eq!(store.unfinished().unwrap(), vec![good]);
        let dead = store.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].reason.contains("corrupt"), "{}", dead[0].reason);
        assert_eq!(dead[0].body_hex.as_deref(), Some("7b22736571223aff"));
        assert_eq!(store.inbox.len(), 1);
        assert_eq!(store.inbox_by_key.len(), 1);
    }

    /// Dead-lettering an inbox record moves it whole: out of the inbox and the index, into
    /// dead-letter with the stored JSON.
    #[test]
    fn dead_lettering_an_inbox_record_moves_it() {
        let (_d, store) = open();
        let rec = accept_one(&store, "wamid.dl", "1555");
        assert!(store.dead_letter_inbox(rec.seq, "test").unwrap());
        assert!(!store.dead_letter_inbox(rec.seq, "test").unwrap());
        assert!(!store.is_unfinished(rec.seq).unwrap());
        assert_eq!(store.inbox_by_key.len(), 0);
        let dead = store.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        let kept: InboxRecord = serde_json::from_str(&dead[0].body).unwrap();
        assert_eq!(kept, rec);
    }

    /// The index serves one conversation's records, and a database without it gets it built on
    /// open.
    #[test]
    fn inbox_index_by_conversation_is_kept_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b);
        {
            let store = Store::open(dir.path()).unwrap();
            a = accept_one(&store, "wamid.a", "1111");
            b = accept_one(&store, "wamid.b", "2222");
            let a2 = accept_one(&store, "wamid.a2", "1111");
            assert_eq!(store.unfinished_for(&a.key).unwrap(), vec![a.clone(), a2]);
            store
                .commit_turn(&session(&a.key, None), &[a.seq], &[])
                .unwrap();
            assert_eq!(store.unfinished_for(&a.key).unwrap().len(), 1);
            store.inbox_by_key.clear().unwrap();
            store.db.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.inbox_by_key.len(), 2);
        assert_eq!(store.unfinished_for(&b.key).unwrap(), vec![b]);
        assert_eq!(store.unfinished_for(&a.key).unwrap().len(), 1);
    }

    /// The sending marker is written on pending records only, and cleared when a status
    /// webhook settles the record.
    #[test]
    fn sending_marker_is_set_on_pending_records_only() {
        let (_d, store) = open();
        let rec = accept_one(&store, "wamid.s", "1555");
        let ids = store
            .commit_turn(&session(&rec.key, None), &[rec.seq], &[reply("x")])
            .unwrap();
        let marked = store.mark_sending(ids[0], 1234).unwrap().unwrap();
        assert_eq!(marked.sending_since_ms, Some(1234));
        assert_eq!(
            store
                .outbox_record(ids[0])
                .unwrap()
                .unwrap()
                .sending_since_ms,
            Some(1234)
        );
        let status = parse_webhook(
            serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1",
                "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "1", "phone_number_id": "42"},
                "statuses": [{"id": "wamid.out", "status": "sent", "timestamp": "1",
                    "recipient_id": "1555", "biz_opaque_callback_data": format!("sandra:{}", ids[0])}]
            }}]}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(store.accept(&status, now_ms()).unwrap().statuses_applied, 1);
        let settled = store.outbox_record(ids[0]).unwrap().unwrap();
        assert_eq!(settled.state, OutboxState::Sent);
        assert_eq!(settled.sending_since_ms, None);
        assert!(store.mark_sending(ids[0], 5678).unwrap().is_none());
    }

    /// Final outbox records past retention go with their wamid index entries; pending ones and
    /// recent ones stay.
    #[test]
    fn outbox_sweep_prunes_old_final_records() {
        let (_d, store) = open();
        let rec = accept_one(&store, "wamid.o", "1555");
        let ids = store
            .commit_turn(
                &session(&rec.key, None),
                &[rec.seq],
                &[reply("a"), reply("b"), reply("c")],
            )
            .unwrap();
        let mut sent = store.outbox_record(ids[0]).unwrap().unwrap();
        sent.state = OutboxState::Sent;
        sent.wamid = Some("wamid.sent".into());
        store.update_outbox(&sent).unwrap();
        let mut failed = store.outbox_record(ids[1]).unwrap().unwrap();
        failed.state = OutboxState::Failed {
            code: None,
            reason: "x".into(),
        };
        store.update_outbox(&failed).unwrap();
        let now = now_ms();
        assert_eq!(store.sweep_outbox(now - 60_000).unwrap(), 0, "too recent");
        assert_eq!(store.sweep_outbox(now + 60_000).unwrap(), 2);
        let left = store.outbox_all().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, ids[2], "the pending record stays");
        assert!(store.wamid_index.get("wamid.sent").unwrap().is_none());
    }

    /// Dead letters past retention are swept; recent ones stay.
    #[test]
    fn dead_letter_sweep_prunes_by_age() {
        let (_d, store) = open();
        store.dead_letter(b"not json", "test").unwrap();
        let now = now_ms();
        assert_eq!(store.sweep_dead_letters(now - 60_000).unwrap(), 0);
        assert_eq!(store.dead_letter_count(), 1);
        assert_eq!(store.sweep_dead_letters(now + 60_000).unwrap(), 1);
        assert_eq!(store.dead_letter_count(), 0);
    }

    /// Idle sessions are forgotten after retention, unless they have unanswered messages.
    #[test]
    fn session_sweep_keeps_recent_and_busy_sessions() {
        let (_d, store) = open();
        let old = accept_one(&store, "wamid.s1", "1111");
        let busy = accept_one(&store, "wamid.s2", "2222");
        let recent = accept_one(&store, "wamid.s3", "3333");
        store
            .commit_turn(&session(&old.key, Some(100)), &[old.seq], &[])
            .unwrap();
        store.close_window(&old.key, 100).unwrap();
        store
            .commit_turn(&session(&busy.key, Some(100)), &[], &[])
            .unwrap();
        store
            .commit_turn(&session(&recent.key, Some(10_000)), &[recent.seq], &[])
            .unwrap();
        assert_eq!(store.sweep_sessions(5_000).unwrap(), 1);
        assert!(store.load_session(&old.key).unwrap().is_none());
        assert!(store.window_closed_at(&old.key).unwrap().is_none());
        assert!(store.load_session(&busy.key).unwrap().is_some());
        assert!(store.load_session(&recent.key).unwrap().is_some());
    }

    /// Dedup entries expire by first-seen time, whether written with or without an inbox seq.
    #[test]
    fn dedup_sweep_reads_old_and_new_entries() {
        let (_d, store) = open();
        accept_one(&store, "wamid.n", "1555");
        store.dedup.insert("m:wamid.legacy", &be(100)).unwrap();
        let now_s = now_ms() / 1000;
        assert_eq!(
            store.sweep_dedup(now_s - 60).unwrap(),
            1,
            "only the legacy one"
        );
        assert_eq!(store.sweep_dedup(now_s + 60).unwrap(), 1);
        assert_eq!(store.dedup.len(), 0);
        let r = Retention {
            dedup: std::time::Duration::from_secs(7 * 86400),
            outbox: std::time::Duration::from_secs(86400),
            dead_letter: std::time::Duration::from_secs(86400),
            session: None,
        };
        assert_eq!(store.sweep(&r, now_ms()).unwrap(), SweepReport::default());
    }
}
