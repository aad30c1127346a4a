//! The brain: what composes Sandra's reply to a user turn.
//!
//! The conversation actor hands a [`TurnInput`] (remembered history plus the new messages, already
//! rendered to text) to a [`Brain`] and stores whatever comes back. The brain runs off the actor
//! (in a spawned task), so a slow model never blocks a mailbox.
//!
//! [`PlaceholderBrain`] is the simplest honest brain: it runs no model and tells the user so. The
//! chat-LLM brain (local candle model or a remote OpenAI-compatible server) replaces it when a
//! model is configured.

use std::future::Future;
use std::pin::Pin;

use crate::session::Turn;

/// One new user message, rendered for the brain.
#[derive(Debug, Clone, PartialEq)]
pub struct UserInput {
    pub wamid: String,
    /// Display name of who wrote it (useful in groups).
    pub author: Option<String>,
    /// What the user said, or a bracketed description of what they shared.
    pub text: String,
}

/// Everything a brain needs to answer one turn.
#[derive(Debug, Clone)]
pub struct TurnInput {
    /// The conversation's key ([`crate::whatsapp::ConversationKey`] as a string): stable across
    /// turns, so a local model can keep this conversation's cached keys and values and queue
    /// its turns fairly beside other conversations'.
    pub conversation: String,
    pub history: Vec<Turn>,
    pub summary: Option<String>,
    pub inputs: Vec<UserInput>,
    pub contact_name: Option<String>,
    pub is_group: bool,
    /// The instant of this turn: the prompt gives it as local date and time ([`crate::clock`]).
    pub now: jiff::Timestamp,
    /// The user's IANA time zone from their profile; `None` until they set one.
    pub time_zone: Option<String>,
    /// The number (E.164 digits) of whoever asked (in a group, the author of the newest message
    /// addressed to Sandra): their time zone is guessed from it when no profile gives one.
    pub asker_number: Option<String>,
    /// The user's profile (name, preferences, notes), when there is one: quoted as data.
    pub profile: Option<crate::accounts::Profile>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrainError {
    /// No reply: the user gets an apology. There is no "busy": a turn waits for the model
    /// (its messages are safe in the inbox), it is never refused for load.
    #[error("the model failed: {0}")]
    Failed(String),
}

/// What a brain answers: the reply, and optionally a new running summary that replaces the
/// oldest `folded_turns` turns of history (so old turns are summarised, not silently dropped).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BrainReply {
    pub text: String,
    pub summary: Option<SummaryUpdate>,
    /// The date-and-time note the prompt gave after the new messages, if any: kept with the
    /// last of them in history ([`crate::session::Turn::clock`]).
    pub clock: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryUpdate {
    pub summary: String,
    pub folded_turns: usize,
}

impl From<String> for BrainReply {
    fn from(text: String) -> Self {
        Self {
            text,
            summary: None,
            clock: None,
        }
    }
}

pub type BrainFuture = Pin<Box<dyn Future<Output = Result<BrainReply, BrainError>> + Send>>;

/// Composes replies. Implementations are cheap to share (`Arc<dyn Brain>`).
pub trait Brain: Send + Sync + 'static {
    fn reply(&self, input: TurnInput) -> BrainFuture;
    /// One line for logs and `sandra models list`.
    fn describe(&self) -> String;
}

/// A brain without a model: it says, honestly, that no language model is installed, and shows
/// the user what it received so they know the message arrived.
#[derive(Debug, Default, Clone)]
pub struct PlaceholderBrain;

impl Brain for PlaceholderBrain {
    fn reply(&self, input: TurnInput) -> BrainFuture {
        Box::pin(async move {
            let greeting = match &input.contact_name {
                Some(n) if !input.is_group => format!("Hi {n}! "),
                _ => String::new(),
            };
            let heard: Vec<String> = input
                .inputs
                .iter()
                .map(|i| format!("“{}”", i.text))
                .collect();
            Ok(format!(
                "{greeting}I received {}. My language model is not installed yet, so I can't \
                 answer properly; the operator can install one with `sandra models fetch`.",
                heard.join(", ")
            )
            .into())
        })
    }

    fn describe(&self) -> String {
        "placeholder (no language model installed)".into()
    }
}
