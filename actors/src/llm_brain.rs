//! The language-model brain: Sandra's persona and memory on top of a [`ChatEngine`] (a local
//! candle model or an OpenAI-compatible server).
//!
//! The prompt is: system prompt (persona, the user's name, "answer in the user's language"),
//! the running summary of older turns, then as many recent turns as fit the model's real token
//! budget (counted with the model's tokenizer and chat template, never guessed from characters),
//! then the new messages. When older turns no longer fit, they are folded into the running
//! summary by the model itself and the conversation drops them from its history.

use std::sync::Arc;

use sandra_models::chat::{ChatEngine, ChatError, ChatMessage, SamplingParams};

use crate::brain::{Brain, BrainError, BrainFuture, BrainReply, SummaryUpdate, TurnInput};
use crate::session::{Speaker, Turn};

/// The default persona.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are Sandra, a friendly and helpful assistant that people talk to on WhatsApp. \
Answer in the language the user writes in. Be concise: a few short paragraphs at most, plain text \
(WhatsApp shows *bold* and _italic_ but no headings or tables). If you do not know something, say so.";

#[derive(Clone)]
pub struct LlmBrain {
    engine: ChatEngine,
    system_prompt: Arc<str>,
}

impl LlmBrain {
    pub fn new(engine: ChatEngine, system_prompt: impl Into<Arc<str>>) -> Self {
        Self {
            engine,
            system_prompt: system_prompt.into(),
        }
    }

    fn system(&self, input: &TurnInput, summary: Option<&str>) -> ChatMessage {
        let mut s = self.system_prompt.to_string();
        if input.is_group {
            s.push_str(" You are in a WhatsApp group: messages are prefixed with the author's name; answer the person who addressed you.");
        } else if let Some(name) = &input.contact_name {
            s.push_str(&format!(" The user's WhatsApp name is {name}."));
        }
        if let Some(sum) = summary.filter(|s| !s.is_empty()) {
            s.push_str("\n\nSummary of the earlier conversation: ");
            s.push_str(sum);
        }
        ChatMessage::system(s)
    }
}

fn turn_message(t: &Turn) -> ChatMessage {
    match t.speaker {
        Speaker::User => ChatMessage::user(t.text.clone()),
        Speaker::Assistant => ChatMessage::assistant(t.text.clone()),
    }
}

fn new_user_message(input: &TurnInput) -> ChatMessage {
    let lines: Vec<String> = input
        .inputs
        .iter()
        .map(|i| match (&i.author, input.is_group) {
            (Some(a), true) => format!("{a}: {}", i.text),
            _ => i.text.clone(),
        })
        .collect();
    ChatMessage::user(lines.join("\n"))
}

/// Builds the prompt from the newest history that fits `budget` tokens; returns it and how
/// many of the oldest turns did not fit.
fn fit(
    engine: &ChatEngine,
    system: ChatMessage,
    history: &[Turn],
    new: ChatMessage,
    budget: usize,
) -> (Vec<ChatMessage>, usize) {
    let mut skip = 0;
    loop {
        let mut msgs = vec![system.clone()];
        msgs.extend(history[skip..].iter().map(turn_message));
        msgs.push(new.clone());
        if skip >= history.len() || engine.count_tokens(&msgs) <= budget {
            return (msgs, skip);
        }
        // Drop whole exchanges where possible, so the prompt never starts with an answer.
        skip += if history.get(skip).map(|t| t.speaker) == Some(Speaker::User) {
            2
        } else {
            1
        };
        skip = skip.min(history.len());
    }
}

fn to_brain_error(e: ChatError) -> BrainError {
    match e {
        ChatError::Busy => BrainError::Busy,
        other => BrainError::Failed(other.to_string()),
    }
}

impl Brain for LlmBrain {
    fn reply(&self, input: TurnInput) -> BrainFuture {
        let this = self.clone();
        Box::pin(async move {
            let engine = &this.engine;
            let reply_tokens = engine.params().max_new_tokens;
            let budget = engine
                .context_window()
                .saturating_sub(reply_tokens + 16)
                .max(64);
            let new = new_user_message(&input);
            let system = this.system(&input, input.summary.as_deref());
            let (msgs, overflow) = fit(engine, system, &input.history, new.clone(), budget);

            // Fold what no longer fits into the running summary before answering.
            let mut summary = None;
            if overflow > 0 {
                let mut text = String::new();
                if let Some(old) = &input.summary {
                    text.push_str(&format!("Earlier summary: {old}\n"));
                }
                for t in &input.history[..overflow] {
                    let who = if t.speaker == Speaker::User {
                        "User"
                    } else {
                        "Sandra"
                    };
                    text.push_str(&format!("{who}: {}\n", t.text));
                }
                let ask = vec![
                    ChatMessage::system(
                        "You summarise conversations. Keep facts about the user, their requests and anything promised. At most five sentences.",
                    ),
                    ChatMessage::user(format!("Summarise this conversation:\n\n{text}")),
                ];
                let params = SamplingParams {
                    max_new_tokens: 200,
                    ..SamplingParams::greedy(200)
                };
                match engine.chat_with(ask, params).await {
                    Ok(r) if !r.text.trim().is_empty() => {
                        summary = Some(SummaryUpdate {
                            summary: r.text.trim().to_string(),
                            folded_turns: overflow,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "summarising old turns failed; they are left out of this prompt")
                    }
                }
            }
            let msgs = match &summary {
                Some(s) => {
                    let system = this.system(&input, Some(&s.summary));
                    fit(engine, system, &input.history[overflow..], new, budget).0
                }
                None => msgs,
            };
            let reply = engine.chat(msgs).await.map_err(to_brain_error)?;
            let text = reply.text.trim().to_string();
            if text.is_empty() {
                return Err(BrainError::Failed(
                    "the model produced an empty reply".into(),
                ));
            }
            Ok(BrainReply { text, summary })
        })
    }

    fn describe(&self) -> String {
        self.engine.describe()
    }
}
