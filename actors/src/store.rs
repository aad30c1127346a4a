//! The store: Sandra's only door to sled.
//!
//! Trees:
//! - `dedup`: `m:<wamid>` / `s:<wamid>:<status>` → first-seen unix seconds. Kept for at least the
//!   configured retention (≥ 7 days, Meta's retry horizon), then swept.
//! - `inbox`: big-endian seq → [`InboxRecord`]. An accepted message lives here until the turn that
//!   answers it commits; after a crash everything still here is replayed.
//! - `sessions`: conversation key → [`SessionState`].
//! - `outbox`: big-endian id → [`OutboxRecord`]; `outbox_queue`: ids still to send;
//!   `wamid_index`: wamid Meta gave a sent message → outbox id (for status webhooks).
//! - `windows`: conversation key → unix seconds at which Meta told us (131047) that the
//!   customer-service window is closed.
//! - `dead_letter`: big-endian id → bodies we accepted but could not use (not JSON, poison
//!   messages), with the reason.
//!
//! Every durable state change is one sled transaction. sled commits transactions to memory and
//! writes them out in the background, so callers that promise durability (the webhook 200, a
//! finished turn) call [`Store::sync`], which shares one `fsync` among concurrent callers (group
//! commit).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::session::SessionState;
use crate::whatsapp::{
    ConversationKey, DeliveryStatus, InboundMessage, ReplyTarget, StatusUpdate, WebhookBatch,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("cannot open the data directory {path}: {reason}")]
    Open { path: String, reason: String },
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

fn abort(e: serde_json::Error) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(StoreError::Corrupt(e))
}

/// An accepted inbound message waiting for its turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxRecord {
    pub seq: u64,
    pub key: ConversationKey,
    pub message: InboundMessage,
    /// Unix milliseconds at which the webhook was accepted.
    pub received_at_ms: i64,
}

/// What a reply says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutboundBody {
    Text { body: String },
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
    pub duplicate_messages: usize,
    pub statuses_applied: usize,
    pub duplicate_statuses: usize,
    /// Statuses for messages Sandra has no record of (sent by another system, or ignored).
    pub statuses_unmatched: usize,
    /// Conversations whose window Meta closed (131047) in this batch.
    pub windows_closed: Vec<ConversationKey>,
}

pub struct Store {
    db: sled::Db,
    dedup: sled::Tree,
    inbox: sled::Tree,
    sessions: sled::Tree,
    outbox: sled::Tree,
    outbox_queue: sled::Tree,
    wamid_index: sled::Tree,
    windows: sled::Tree,
    dead_letter: sled::Tree,
    /// Bumped after every committed write; see [`Store::sync`].
    written: AtomicU64,
    /// The highest `written` value known to be on disk.
    synced: AtomicU64,
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

fn from_json<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(b)?)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the database under `dir`. Fails if another process holds it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let db = sled::Config::new()
            .path(dir.join("sandra.sled"))
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| StoreError::Open {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            dedup: db.open_tree("dedup")?,
            inbox: db.open_tree("inbox")?,
            sessions: db.open_tree("sessions")?,
            outbox: db.open_tree("outbox")?,
            outbox_queue: db.open_tree("outbox_queue")?,
            wamid_index: db.open_tree("wamid_index")?,
            windows: db.open_tree("windows")?,
            dead_letter: db.open_tree("dead_letter")?,
            db,
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            sync_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn wrote(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
    }

    /// Makes every write committed before this call durable. Concurrent callers share one flush:
    /// whoever holds the lock flushes everything written so far, and callers whose writes that
    /// flush covered return without flushing again.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let mine = self.written.load(Ordering::SeqCst);
        if self.synced.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let _guard = self.sync_lock.lock().await;
        if self.synced.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let upto = self.written.load(Ordering::SeqCst);
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
        let out = (
            &self.dedup,
            &self.inbox,
            &self.outbox,
            &self.wamid_index,
            &self.windows,
            &self.outbox_queue,
        )
            .transaction(|(dedup, inbox, outbox, wamid_index, windows, queue)| {
                let mut acc = Accepted::default();
                for m in &batch.messages {
                    let Some(key) = m.conversation_key() else {
                        continue;
                    };
                    let dkey = format!("m:{}", m.wamid);
                    if dedup.get(dkey.as_bytes())?.is_some() {
                        acc.duplicate_messages += 1;
                        continue;
                    }
                    dedup.insert(dkey.as_bytes(), &be(now_s as u64))?;
                    let seq = inbox.generate_id()?;
                    let rec = InboxRecord {
                        seq,
                        key,
                        message: m.clone(),
                        received_at_ms,
                    };
                    inbox.insert(&be(seq), json(&rec))?;
                    acc.new_messages.push(rec);
                }
                for s in &batch.statuses {
                    let dkey = format!("s:{}:{}", s.wamid, s.status);
                    if dedup.get(dkey.as_bytes())?.is_some() {
                        acc.duplicate_statuses += 1;
                        continue;
                    }
                    dedup.insert(dkey.as_bytes(), &be(now_s as u64))?;
                    match apply_status(outbox, wamid_index, windows, queue, s)? {
                        StatusOutcome::Applied(closed) => {
                            acc.statuses_applied += 1;
                            acc.windows_closed.extend(closed);
                        }
                        StatusOutcome::Unmatched => acc.statuses_unmatched += 1,
                    }
                }
                Ok(acc)
            })?;
        if !out.new_messages.is_empty() || out.statuses_applied + out.statuses_unmatched > 0 {
            self.wrote();
        }
        Ok(out)
    }

    /// Keeps a body we accepted but cannot use, with the reason.
    pub fn dead_letter(&self, body: &[u8], reason: &str) -> Result<u64, StoreError> {
        let id = self.db.generate_id()?;
        #[derive(Serialize)]
        struct Dead<'a> {
            at_ms: i64,
            reason: &'a str,
            body: String,
        }
        let rec = Dead {
            at_ms: now_ms(),
            reason,
            body: String::from_utf8_lossy(body).into_owned(),
        };
        self.dead_letter.insert(be(id), json(&rec))?;
        self.wrote();
        Ok(id)
    }

    pub fn dead_letter_count(&self) -> usize {
        self.dead_letter.len()
    }

    /// Moves one inbox record to the dead-letter tree (a poison message that keeps crashing its
    /// conversation).
    pub fn dead_letter_inbox(&self, seq: u64, reason: &str) -> Result<(), StoreError> {
        if let Some(v) = self.inbox.remove(be(seq))? {
            self.dead_letter(&v, reason)?;
        }
        Ok(())
    }

    /// Every message accepted but not yet answered, in arrival order.
    pub fn unfinished(&self) -> Result<Vec<InboxRecord>, StoreError> {
        self.inbox.iter().values().map(|v| from_json(&v?)).collect()
    }

    /// The unfinished messages of one conversation, in arrival order.
    pub fn unfinished_for(&self, key: &ConversationKey) -> Result<Vec<InboxRecord>, StoreError> {
        let mut out = Vec::new();
        for v in self.inbox.iter().values() {
            let rec: InboxRecord = from_json(&v?)?;
            if &rec.key == key {
                out.push(rec);
            }
        }
        Ok(out)
    }

    pub fn is_unfinished(&self, seq: u64) -> Result<bool, StoreError> {
        Ok(self.inbox.contains_key(be(seq))?)
    }

    /// Deletes dedup entries first seen before `older_than_s` (unix seconds). Returns how many.
    pub fn sweep_dedup(&self, older_than_s: i64) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.dedup.iter() {
            let (k, v) = kv?;
            let seen = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0) as i64;
            if seen < older_than_s {
                self.dedup.remove(k)?;
                n += 1;
            }
        }
        if n > 0 {
            self.wrote();
        }
        Ok(n)
    }

    // === conversations ===

    pub fn load_session(&self, key: &ConversationKey) -> Result<Option<SessionState>, StoreError> {
        self.sessions
            .get(key.as_str().as_bytes())?
            .map(|v| from_json(&v))
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
        let now = now_ms();
        let ids = (
            &self.sessions,
            &self.inbox,
            &self.outbox,
            &self.outbox_queue,
        )
            .transaction(|(sessions, inbox, outbox, queue)| {
                sessions.insert(session.key.as_str().as_bytes(), json(session))?;
                for seq in answered {
                    inbox.remove(&be(*seq))?;
                }
                let mut ids = Vec::new();
                for r in replies {
                    let id = outbox.generate_id()?;
                    let rec = OutboxRecord {
                        id,
                        key: session.key.clone(),
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
                    };
                    outbox.insert(&be(id), json(&rec))?;
                    queue.insert(&be(id), &[])?;
                    ids.push(id);
                }
                Ok(ids)
            })?;
        self.wrote();
        Ok(ids)
    }

    /// Forgets a conversation's history (`/reset`), keeping its identity and window.
    pub fn save_session(&self, session: &SessionState) -> Result<(), StoreError> {
        self.sessions
            .insert(session.key.as_str().as_bytes(), json(session))?;
        self.wrote();
        Ok(())
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
        self.windows
            .insert(key.as_str().as_bytes(), &at_s.to_be_bytes())?;
        self.wrote();
        Ok(())
    }

    // === outbox ===

    pub fn outbox_record(&self, id: u64) -> Result<Option<OutboxRecord>, StoreError> {
        self.outbox.get(be(id))?.map(|v| from_json(&v)).transpose()
    }

    /// Every outbox record, oldest first (for tests, admin and metrics).
    pub fn outbox_all(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        self.outbox
            .iter()
            .values()
            .map(|v| from_json(&v?))
            .collect()
    }

    /// Outbox records still to send, oldest first.
    pub fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        let mut out = Vec::new();
        for k in self.outbox_queue.iter().keys().take(limit) {
            let k = k?;
            if let Some(v) = self.outbox.get(&k)? {
                out.push(from_json(&v)?);
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
        (&self.outbox, &self.outbox_queue, &self.wamid_index).transaction(
            |(outbox, queue, index)| {
                outbox.insert(&be(rec.id), json(rec))?;
                if rec.state != OutboxState::Pending {
                    queue.remove(&be(rec.id))?;
                }
                if let Some(w) = &rec.wamid {
                    index.insert(w.as_bytes(), &be(rec.id))?;
                }
                Ok(())
            },
        )?;
        self.wrote();
        Ok(())
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

fn apply_status(
    outbox: &sled::transaction::TransactionalTree,
    wamid_index: &sled::transaction::TransactionalTree,
    windows: &sled::transaction::TransactionalTree,
    queue: &sled::transaction::TransactionalTree,
    s: &StatusUpdate,
) -> TxResult<StatusOutcome> {
    let Some(new) = DeliveryStatus::parse(&s.status) else {
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
    let mut rec: OutboxRecord = serde_json::from_slice(&raw).map_err(abort)?;
    let mut closed = None;
    if new == DeliveryStatus::Failed {
        let window = s.errors.iter().any(|(c, _)| *c == 131047);
        if window {
            windows.insert(rec.key.as_str().as_bytes(), &s.timestamp.to_be_bytes())?;
            closed = Some(rec.key.clone());
        }
        // A failure is final unless a later status already proved delivery.
        if rec.status.is_none_or(|st| st < DeliveryStatus::Delivered) {
            let (code, reason) = s
                .errors
                .first()
                .cloned()
                .map(|(c, m)| (Some(c), m))
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
    }
    outbox.insert(&id, json(&rec))?;
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
