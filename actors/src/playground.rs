//! The playground: a local channel into the very same conversations, brain, memory and
//! photo/voice pipeline, without WhatsApp (`sandra chat`, the portal's "Try Sandra" box).
//!
//! - **Keys.** A local chat `c` is the sender `local:c` of business number `local`, so its
//!   conversation key is `local/p:local:c`. No E.164 number or Meta id contains a letter or a
//!   colon, so nothing WhatsApp delivers can ever land in (or read) a local conversation.
//! - **In.** [`Playground::say`] builds an [`InboundMessage`] and stores it through the same
//!   durable path a webhook takes ([`Store::accept`]: dedup + inbox, then `sync`), then routes it.
//!   No signature check: the caller is inside the process.
//! - **Out.** The conversation commits its replies to the outbox as usual; the sender sees a
//!   local recipient and hands the text to the [`LocalHub`] instead of the Graph API (no pacing,
//!   no 24-hour window, no read receipts or typing indicator).
//! - **Media.** Photo and voice bytes are held in memory under a `local:media:…` id that the
//!   media client serves in place of Graph's two hops; they are never written to disk and are
//!   dropped when the turn ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;

use crate::router::RouterMsg;
use crate::slot::ActorSlot;
use crate::store::{Store, StoreError, now_ms};
use crate::whatsapp::{
    ChatId, Content, ConversationKey, InboundMessage, MediaKind, MediaRef, ReplyTarget,
    WebhookBatch,
};

/// What every local id starts with: senders, message ids, media ids.
pub const LOCAL_PREFIX: &str = "local:";
/// The "business number" local chats belong to.
pub const LOCAL_PHONE_NUMBER_ID: &str = "local";
/// Replies kept per chat for a caller that is not waiting (a turn that outlived `say`'s
/// timeout): enough for any one late answer, bounded so an abandoned chat cannot grow.
const MAX_BUFFERED: usize = 64;

/// Whether a message or media id belongs to the playground.
pub fn is_local_id(id: &str) -> bool {
    id.starts_with(LOCAL_PREFIX)
}

/// Whether replies to `target` go to the playground rather than WhatsApp.
pub fn is_local_target(target: &ReplyTarget) -> bool {
    target.group_id.is_none() && target.phone.as_deref().is_some_and(is_local_id)
}

/// The conversation key of local chat `chat`.
pub fn local_key(chat: &str) -> ConversationKey {
    ConversationKey::new(
        LOCAL_PHONE_NUMBER_ID,
        &ChatId::Phone(format!("{LOCAL_PREFIX}{chat}")),
    )
}

/// What a playground user sends.
#[derive(Debug, Clone)]
pub enum PlaygroundInput {
    Text(String),
    Image {
        bytes: Vec<u8>,
        mime: String,
        caption: Option<String>,
    },
    Voice {
        bytes: Vec<u8>,
        mime: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PlaygroundError {
    #[error("a chat name is 1 to 64 letters, digits, '-', '_' or '.'")]
    BadChat,
    #[error("the message is empty")]
    Empty,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Playground media: the bytes and their MIME type.
pub type LocalMedia = (Arc<[u8]>, String);

/// In-process mailbox between the sender and playground callers, and the local media shelf.
/// Shared by clones; one per Graph client (see [`crate::graph::GraphClient::local`]).
#[derive(Clone)]
pub struct LocalHub(Arc<HubInner>);

struct HubInner {
    /// Replies delivered per local recipient (`local:<chat>`), oldest first.
    replies: Mutex<HashMap<String, Vec<String>>>,
    media: Mutex<HashMap<String, LocalMedia>>,
    /// Bumped on every delivery, so waiters wake without polling the outbox.
    delivered: tokio::sync::watch::Sender<u64>,
}

impl Default for LocalHub {
    fn default() -> Self {
        Self(Arc::new(HubInner {
            replies: Mutex::default(),
            media: Mutex::default(),
            delivered: tokio::sync::watch::Sender::new(0),
        }))
    }
}

impl std::fmt::Debug for LocalHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalHub")
    }
}

impl LocalHub {
    /// Called by the sender for a reply to a local recipient.
    pub fn deliver(&self, recipient: &str, text: String) {
        {
            let mut r = self
                .0
                .replies
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let q = r.entry(recipient.to_string()).or_default();
            if q.len() >= MAX_BUFFERED {
                q.remove(0);
            }
            q.push(text);
        }
        self.0.delivered.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn take(&self, recipient: &str) -> Vec<String> {
        self.0
            .replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(recipient)
            .unwrap_or_default()
    }

    fn put_media(&self, bytes: Vec<u8>, mime: String) -> String {
        let id = format!("{LOCAL_PREFIX}media:{:016x}", rand::rng().random::<u64>());
        self.0
            .media
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), (bytes.into(), mime));
        id
    }

    fn drop_media(&self, id: &str) {
        self.0
            .media
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// The bytes and MIME type of local media, while its turn lasts.
    pub fn media(&self, id: &str) -> Option<LocalMedia> {
        self.0
            .media
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

/// Talks to Sandra without WhatsApp. Cheap to clone; reach it as
/// [`crate::System::playground`].
#[derive(Clone)]
pub struct Playground {
    hub: LocalHub,
    store: Arc<Store>,
    router: ActorSlot<RouterMsg>,
    timeout: Duration,
    /// One `say` at a time per chat, so each call gets the replies to its own message.
    chats: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Playground {
    pub fn new(
        hub: LocalHub,
        store: Arc<Store>,
        router: ActorSlot<RouterMsg>,
        timeout: Duration,
    ) -> Self {
        Self {
            hub,
            store,
            router,
            timeout,
            chats: Arc::default(),
        }
    }

    /// How long [`Self::say`] waits for a turn.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one message from local chat `chat` and returns Sandra's replies to it, once the
    /// turn has finished (every reply delivered), or [`PlaygroundError::Timeout`].
    pub async fn say(
        &self,
        chat: &str,
        input: PlaygroundInput,
    ) -> Result<Vec<String>, PlaygroundError> {
        let valid = (1..=64).contains(&chat.len())
            && chat
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(PlaygroundError::BadChat);
        }
        let lock = self
            .chats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(chat.to_string())
            .or_default()
            .clone();
        let _turn = lock.lock().await;
        let sender = format!("{LOCAL_PREFIX}{chat}");
        let mut media_id = None;
        let content = match input {
            PlaygroundInput::Text(body) => {
                if body.trim().is_empty() {
                    return Err(PlaygroundError::Empty);
                }
                Content::Text { body }
            }
            PlaygroundInput::Image {
                bytes,
                mime,
                caption,
            } => {
                let id = self.hub.put_media(bytes, mime.clone());
                media_id = Some(id.clone());
                Content::Media(media_ref(MediaKind::Image, id, mime, caption, false))
            }
            PlaygroundInput::Voice { bytes, mime } => {
                let id = self.hub.put_media(bytes, mime.clone());
                media_id = Some(id.clone());
                Content::Media(media_ref(MediaKind::Audio, id, mime, None, true))
            }
        };
        let result = self.turn(&sender, content).await;
        if let Some(id) = media_id {
            self.hub.drop_media(&id);
        }
        result
    }

    async fn turn(&self, sender: &str, content: Content) -> Result<Vec<String>, PlaygroundError> {
        let now = now_ms();
        let message = InboundMessage {
            // Unique across restarts: the dedup tree remembers ids for days.
            wamid: format!("{LOCAL_PREFIX}{now:x}{:016x}", rand::rng().random::<u64>()),
            phone_number_id: LOCAL_PHONE_NUMBER_ID.into(),
            display_phone_number: LOCAL_PHONE_NUMBER_ID.into(),
            from: Some(sender.to_string()),
            from_user_id: None,
            group_id: None,
            contact_name: None,
            timestamp: now / 1000,
            context: None,
            content,
        };
        let key = message
            .conversation_key()
            .expect("a local message has a sender");
        let batch = WebhookBatch {
            messages: vec![message],
            ..WebhookBatch::default()
        };
        // Replies a timed-out earlier turn delivered late are part of this answer.
        let mut delivered = self.hub.0.delivered.subscribe();
        let accepted = self.store.accept(&batch, now)?;
        self.store.sync().await?;
        let Some(rec) = accepted.new_messages.into_iter().next() else {
            return Ok(self.hub.take(sender));
        };
        let seq = rec.seq;
        if let Some(router) = self.router.try_get() {
            // A restarting router replays it from the inbox.
            let _ = router.cast(RouterMsg::Route(Box::new(rec)));
        }
        let wait = async {
            loop {
                if self.finished(seq, &key)? {
                    return Ok::<_, PlaygroundError>(());
                }
                // A delivery wakes us at once; a turn that ends without a reply (or whose
                // replies were all delivered) leaves the inbox without a signal, so look again
                // shortly.
                let _ = tokio::time::timeout(Duration::from_millis(100), delivered.changed()).await;
            }
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(r) => r?,
            Err(_) => return Err(PlaygroundError::Timeout(self.timeout)),
        }
        Ok(self.hub.take(sender))
    }

    /// The message has left the inbox (its turn committed) and nothing for the chat waits in
    /// the outbox.
    fn finished(&self, seq: u64, key: &ConversationKey) -> Result<bool, StoreError> {
        if self.store.is_unfinished(seq)? {
            return Ok(false);
        }
        Ok(!self
            .store
            .outbox_pending(4096)?
            .iter()
            .any(|r| &r.key == key))
    }
}

fn media_ref(
    kind: MediaKind,
    id: String,
    mime: String,
    caption: Option<String>,
    voice: bool,
) -> MediaRef {
    MediaRef {
        kind,
        id,
        mime_type: Some(mime),
        sha256: None,
        caption,
        filename: None,
        voice,
        animated: false,
        url: None,
    }
}
