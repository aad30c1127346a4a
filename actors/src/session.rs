//! Per-conversation session state: what a conversation actor remembers between turns and across
//! restarts. Persisted in the `sessions` tree after every turn (see [`crate::store`]).

use serde::{Deserialize, Serialize};

use crate::whatsapp::{ConversationKey, ReplyTarget};

/// Who said a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    User,
    Assistant,
}

/// One remembered turn of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub speaker: Speaker,
    pub text: String,
    /// Unix seconds.
    pub at: i64,
    /// The WhatsApp message ids this turn answers or came from.
    #[serde(default)]
    pub wamids: Vec<String>,
    /// The date-and-time note the model read after this message when it answered it (the last
    /// message of a turn the model answered: `[It is now …]`), shown after it again in later
    /// prompts. The prompt that answered it is then the start of every later one, so a local
    /// model reuses that prompt's cached keys and values instead of reading the previous reply
    /// again; and the model sees when earlier messages were sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<String>,
}

/// The state of one conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    pub key: ConversationKey,
    pub target: ReplyTarget,
    pub is_group: bool,
    pub contact_name: Option<String>,
    /// Remembered turns, oldest first, trimmed by the brain's budget.
    pub history: Vec<Turn>,
    /// A running summary of turns that no longer fit in `history`.
    pub summary: Option<String>,
    /// Unix seconds of the last inbound user message: opens the 24 h customer-service window.
    pub last_inbound_at: Option<i64>,
    /// Number of completed turns.
    pub turns: u64,
}

impl SessionState {
    pub fn new(key: ConversationKey, target: ReplyTarget) -> Self {
        let is_group = target.group_id.is_some();
        Self {
            key,
            target,
            is_group,
            contact_name: None,
            history: Vec::new(),
            summary: None,
            last_inbound_at: None,
            turns: 0,
        }
    }

    /// When the 24-hour customer-service window closes (unix seconds), if it ever opened.
    pub fn window_expires_at(&self) -> Option<i64> {
        self.last_inbound_at.map(|t| t + 24 * 3600)
    }
}
