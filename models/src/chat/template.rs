//! Chat templates: how a conversation becomes the prompt text a model was trained on.
//!
//! GGUF files carry a Jinja `tokenizer.chat_template`; instead of running Jinja we recognise the
//! handful of formats the supported families use, chosen by architecture and tokenizer vocabulary
//! (see [`ChatTemplate::detect`]). Rendering is exact and covered by tests.

use super::{ChatMessage, Role};

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

    /// Renders the conversation and the prompt for the assistant's next turn.
    pub fn render(self, messages: &[ChatMessage]) -> String {
        let mut out = String::new();
        match self {
            Self::ChatMl | Self::ChatMlNoThink => {
                for m in messages {
                    out.push_str("<|im_start|>");
                    out.push_str(m.role.as_str());
                    out.push('\n');
                    out.push_str(&m.content);
                    out.push_str("<|im_end|>\n");
                }
                out.push_str("<|im_start|>assistant\n");
                if self == Self::ChatMlNoThink {
                    out.push_str("<think>\n\n</think>\n\n");
                }
            }
            Self::Llama3 => {
                out.push_str("<|begin_of_text|>");
                for m in messages {
                    out.push_str("<|start_header_id|>");
                    out.push_str(m.role.as_str());
                    out.push_str("<|end_header_id|>\n\n");
                    out.push_str(m.content.trim());
                    out.push_str("<|eot_id|>");
                }
                out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
            }
        }
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
