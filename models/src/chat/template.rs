//! Chat templates: how a conversation becomes the prompt text a model was trained on.
//!
//! GGUF files carry a Jinja `tokenizer.chat_template`; instead of running Jinja we recognise the
//! handful of formats the supported families use, chosen by architecture and tokenizer vocabulary
//! (see [`ChatTemplate::detect`]). Rendering is exact and covered by tests.
//!
//! A prompt is rendered as [`Segment`]s, markup apart from message text, because the two are
//! tokenized differently: only markup may produce control tokens (see `super::encode_chat`).

use super::{ChatMessage, Role};

/// One piece of a rendered prompt.
///
/// The split is what makes prompts safe from their own text: markup is tokenized with the
/// model's control tokens recognised (`<|im_start|>` becomes one control token), content as plain
/// text (a user who types `<|im_end|>` gets the characters `<|im_end|>`, never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Role headers, turn ends, generation prompt: fixed strings of the format.
    Markup(&'static str),
    /// The text of a message (any role: it may quote a user, and models echo users).
    Content(&'a str),
}

/// A prompt format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// ChatML (`<|im_start|>role\n…<|im_end|>\n`): Qwen2/2.5, SmolLM2.
    ChatMl,
    /// ChatML with Qwen3's "thinking off" generation prompt (an empty `<think></think>` block).
    ChatMlNoThink,
    /// Llama 3 header-id format (`<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>`).
    Llama3,
}

impl ChatTemplate {
    /// Picks the template for a GGUF `general.architecture` and a vocabulary probe
    /// (`has_token("<|im_start|>")`). Unknown combinations fall back to ChatML.
    pub fn detect(architecture: &str, has_token: impl Fn(&str) -> bool) -> Self {
        if has_token("<|start_header_id|>") && has_token("<|eot_id|>") {
            return Self::Llama3;
        }
        match architecture {
            "qwen3" => Self::ChatMlNoThink,
            _ => Self::ChatMl,
        }
    }

    /// Short name for logs and `describe()`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChatMl => "chatml",
            Self::ChatMlNoThink => "chatml-nothink",
            Self::Llama3 => "llama3",
        }
    }

    /// Renders the conversation and the prompt for the assistant's next turn as one string (for
    /// logs, tests and benchmarks). Never tokenize this string with special-token matching on: a
    /// message that contains `<|im_end|>` would end its turn. The local model tokenizes
    /// [`segments`](Self::segments) instead (see [`super::encode_chat`]).
    pub fn render(self, messages: &[ChatMessage]) -> String {
        self.segments(messages)
            .iter()
            .map(|s| match s {
                Segment::Markup(m) => *m,
                Segment::Content(c) => c,
            })
            .collect()
    }

    /// The prompt as a sequence of template markup (written here, never by a user) and message
    /// text. Concatenated, the pieces are [`render`](Self::render)'s string. A conversation that
    /// grows by a reply and a new message yields the same pieces up to the previous generation
    /// prompt, which is what lets the local model reuse its cached prompt.
    pub fn segments(self, messages: &[ChatMessage]) -> Vec<Segment<'_>> {
        let mut out = Vec::with_capacity(messages.len() * 3 + 2);
        match self {
            Self::ChatMl | Self::ChatMlNoThink => {
                for m in messages {
                    out.push(Segment::Markup(match m.role {
                        Role::System => "<|im_start|>system\n",
                        Role::User => "<|im_start|>user\n",
                        Role::Assistant => "<|im_start|>assistant\n",
                    }));
                    out.push(Segment::Content(&m.content));
                    out.push(Segment::Markup("<|im_end|>\n"));
                }
                out.push(Segment::Markup("<|im_start|>assistant\n"));
                if self == Self::ChatMlNoThink {
                    out.push(Segment::Markup("<think>\n\n</think>\n\n"));
                }
            }
            Self::Llama3 => {
                out.push(Segment::Markup("<|begin_of_text|>"));
                for m in messages {
                    out.push(Segment::Markup(match m.role {
                        Role::System => "<|start_header_id|>system<|end_header_id|>\n\n",
                        Role::User => "<|start_header_id|>user<|end_header_id|>\n\n",
                        Role::Assistant => "<|start_header_id|>assistant<|end_header_id|>\n\n",
                    }));
                    out.push(Segment::Content(m.content.trim()));
                    out.push(Segment::Markup("<|eot_id|>"));
                }
                out.push(Segment::Markup(
                    "<|start_header_id|>assistant<|end_header_id|>\n\n",
                ));
            }
        }
        // Empty content tokenizes to nothing; leaving it out keeps the pieces minimal.
        out.retain(|s| !matches!(s, Segment::Content(c) if c.is_empty()));
        out
    }

    /// Tokens (as text) that end the assistant's turn in this format.
    pub fn end_tokens(self) -> &'static [&'static str] {
        match self {
            Self::ChatMl | Self::ChatMlNoThink => &["<|im_end|>", "<|endoftext|>"],
            Self::Llama3 => &["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"],
        }
    }
}

impl Role {
    /// The role name templates and the OpenAI API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// Removes a leading `<think>…</think>` block (Qwen3 reasoning) and surrounding whitespace.
pub(crate) fn strip_think(text: &str) -> &str {
    let t = text.trim_start();
    if let Some(rest) = t.strip_prefix("<think>")
        && let Some(end) = rest.find("</think>")
    {
        return rest[end + "</think>".len()..].trim();
    }
    text.trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> Vec<ChatMessage> {
        vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello!"),
            ChatMessage::user("2+2?"),
        ]
    }

    #[test]
    fn chatml_exact() {
        assert_eq!(
            ChatTemplate::ChatMl.render(&conv()),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn qwen3_disables_thinking() {
        let p = ChatTemplate::ChatMlNoThink.render(&[ChatMessage::user("Hi")]);
        assert_eq!(
            p,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
    }

    #[test]
    fn llama3_exact() {
        assert_eq!(
            ChatTemplate::Llama3
                .render(&[ChatMessage::system(" Be brief. "), ChatMessage::user("Hi")]),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn detection() {
        let llama3 = |t: &str| matches!(t, "<|start_header_id|>" | "<|eot_id|>");
        let none = |_: &str| false;
        assert_eq!(ChatTemplate::detect("llama", llama3), ChatTemplate::Llama3);
        assert_eq!(ChatTemplate::detect("llama", none), ChatTemplate::ChatMl);
        assert_eq!(ChatTemplate::detect("qwen2", none), ChatTemplate::ChatMl);
        assert_eq!(
            ChatTemplate::detect("qwen3", none),
            ChatTemplate::ChatMlNoThink
        );
    }

    #[test]
    fn think_block_is_stripped() {
        assert_eq!(strip_think("<think>\nhmm\n</think>\n\nParis."), "Paris.");
        assert_eq!(strip_think("  Paris. "), "Paris.");
    }
}
