//! Chat templates: how a conversation becomes the prompt text a model was trained on.
//!
//! A GGUF carries its own Jinja `tokenizer.chat_template`; [`PromptFormat::resolve`] compiles it
//! once at load ([`JinjaTemplate`]) and then checks it against the hand-written formats here
//! ([`ChatTemplate`]). When one renders the probe conversations byte for byte as the GGUF's
//! template does, the hand-written one is used: the same prompt, without running Jinja each
//! turn. Any other template is rendered with Jinja, so an unknown model gets its own format. A
//! GGUF without a template, or one that does not compile, gets the format recognised from its
//! architecture and vocabulary ([`ChatTemplate::detect`]; ChatML when nothing is recognised),
//! which is what every model got before templates were read.
//!
//! A prompt is rendered as [`Segment`]s, markup apart from message text, because the two are
//! tokenized differently: only markup may produce control tokens (see `super::encode_chat`).

use std::borrow::Cow;
use std::sync::Arc;

use super::jinja::{self, JinjaTemplate};
use super::{ChatMessage, Role};

/// One piece of a rendered prompt.
///
/// The split is what makes prompts safe from their own text: markup is tokenized with the
/// model's control tokens recognised (`<|im_start|>` becomes one control token), content as plain
/// text (a user who types `<|im_end|>` gets the characters `<|im_end|>`, never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Role headers, turn ends, generation prompt: written by the template, never by a user.
    Markup(Cow<'a, str>),
    /// The text of a message (any role: it may quote a user, and models echo users).
    Content(&'a str),
}

/// A hand-written prompt format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// ChatML (`<|im_start|>role\n…<|im_end|>\n`): Qwen2/2.5, SmolLM2.
    ChatMl,
    /// ChatML with Qwen3's "thinking off" generation prompt (an empty `<think></think>` block).
    ChatMlNoThink,
    /// Llama 3 header-id format (`<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>`).
    Llama3,
    /// Llama 3.2's (and 3.1's given `strftime_now`): Llama 3 with a system turn that always
    /// opens with the knowledge cutoff and today's date.
    Llama3Dated,
    /// Gemma 2/3 (`<start_of_turn>user\n…<end_of_turn>\n`, the assistant is `model`): no system
    /// turn, the system prompt opens the first user turn.
    Gemma,
    /// Phi-3/3.5 (`<|user|>\n…<|end|>\n`).
    Phi3,
}

impl ChatTemplate {
    /// Every hand-written format, in the order the load-time check tries them.
    pub const ALL: [ChatTemplate; 6] = [
        Self::ChatMl,
        Self::ChatMlNoThink,
        Self::Llama3,
        Self::Llama3Dated,
        Self::Gemma,
        Self::Phi3,
    ];

    /// Picks the template for a GGUF `general.architecture` and a vocabulary probe
    /// (`has_token("<|im_start|>")`), for GGUFs without a usable `tokenizer.chat_template`.
    /// Unknown combinations fall back to ChatML.
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
            Self::Llama3Dated => "llama3-dated",
            Self::Gemma => "gemma",
            Self::Phi3 => "phi3",
        }
    }

    /// Renders the conversation and the prompt for the assistant's next turn as one string (for
    /// logs, tests and benchmarks). Never tokenize this string with special-token matching on: a
    /// message that contains `<|im_end|>` would end its turn. The local model tokenizes
    /// [`segments`](Self::segments) instead (see [`super::encode_chat`]).
    pub fn render(self, messages: &[ChatMessage]) -> String {
        join(&self.segments(messages))
    }

    /// The prompt as a sequence of template markup (written here, never by a user) and message
    /// text. Concatenated, the pieces are [`render`](Self::render)'s string. A conversation that
    /// grows by a reply and a new message yields the same pieces up to the previous generation
    /// prompt, which is what lets the local model reuse its cached prompt.
    pub fn segments(self, messages: &[ChatMessage]) -> Vec<Segment<'_>> {
        let mut out = Vec::with_capacity(messages.len() * 3 + 2);
        let m = |s: &'static str| Segment::Markup(Cow::Borrowed(s));
        match self {
            Self::ChatMl | Self::ChatMlNoThink => {
                for msg in messages {
                    out.push(m(match msg.role {
                        Role::System => "<|im_start|>system\n",
                        Role::User => "<|im_start|>user\n",
                        Role::Assistant => "<|im_start|>assistant\n",
                    }));
                    out.push(Segment::Content(&msg.content));
                    out.push(m("<|im_end|>\n"));
                }
                out.push(m("<|im_start|>assistant\n"));
                if self == Self::ChatMlNoThink {
                    out.push(m("<think>\n\n</think>\n\n"));
                }
            }
            Self::Llama3 | Self::Llama3Dated => {
                out.push(m("<|begin_of_text|>"));
                let mut rest = messages;
                if self == Self::Llama3Dated {
                    // The template takes a leading system message into its own system turn
                    // (trimmed), which it writes even when there is none.
                    out.push(Segment::Markup(Cow::Owned(format!(
                        "<|start_header_id|>system<|end_header_id|>\n\n\
                         Cutting Knowledge Date: December 2023\nToday Date: {}\n\n",
                        jinja::strftime_now("%d %b %Y").unwrap_or_default()
                    ))));
                    if let Some((first, tail)) = messages.split_first()
                        && first.role == Role::System
                    {
                        out.push(Segment::Content(first.content.trim()));
                        rest = tail;
                    }
                    out.push(m("<|eot_id|>"));
                }
                for msg in rest {
                    out.push(m(match msg.role {
                        Role::System => "<|start_header_id|>system<|end_header_id|>\n\n",
                        Role::User => "<|start_header_id|>user<|end_header_id|>\n\n",
                        Role::Assistant => "<|start_header_id|>assistant<|end_header_id|>\n\n",
                    }));
                    out.push(Segment::Content(msg.content.trim()));
                    out.push(m("<|eot_id|>"));
                }
                out.push(m("<|start_header_id|>assistant<|end_header_id|>\n\n"));
            }
            Self::Gemma => {
                out.push(m("<bos>"));
                // Gemma has no system turn: its template (Gemma 3's; Gemma 2's refuses system
                // messages) opens the first turn with the system prompt as written and a blank
                // line.
                let (prefix, rest) = match messages.split_first() {
                    Some((first, tail)) if first.role == Role::System => {
                        (Some(first.content.as_str()), tail)
                    }
                    _ => (None, messages),
                };
                for (i, msg) in rest.iter().enumerate() {
                    out.push(m(match msg.role {
                        Role::System => "<start_of_turn>system\n",
                        Role::User => "<start_of_turn>user\n",
                        Role::Assistant => "<start_of_turn>model\n",
                    }));
                    if i == 0
                        && let Some(p) = prefix
                    {
                        out.push(Segment::Content(p));
                        out.push(m("\n\n"));
                    }
                    out.push(Segment::Content(msg.content.trim()));
                    out.push(m("<end_of_turn>\n"));
                }
                out.push(m("<start_of_turn>model\n"));
            }
            Self::Phi3 => {
                for msg in messages {
                    // Phi-3.5's template writes no system turn for an empty system prompt.
                    if msg.role == Role::System && msg.content.is_empty() {
                        continue;
                    }
                    out.push(m(match msg.role {
                        Role::System => "<|system|>\n",
                        Role::User => "<|user|>\n",
                        Role::Assistant => "<|assistant|>\n",
                    }));
                    out.push(Segment::Content(&msg.content));
                    out.push(m("<|end|>\n"));
                }
                out.push(m("<|assistant|>\n"));
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
            Self::Llama3 | Self::Llama3Dated => &["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"],
            Self::Gemma => &["<end_of_turn>", "<eos>"],
            Self::Phi3 => &["<|end|>", "<|endoftext|>"],
        }
    }
}

/// The pieces concatenated.
fn join(segments: &[Segment<'_>]) -> String {
    segments
        .iter()
        .map(|s| match s {
            Segment::Markup(m) => m.as_ref(),
            Segment::Content(c) => c,
        })
        .collect()
}

/// How a loaded model turns a conversation into its prompt: a hand-written format, or the
/// GGUF's own Jinja template. Cheap to clone.
#[derive(Debug, Clone)]
pub enum PromptFormat {
    Builtin(ChatTemplate),
    Jinja(Arc<JinjaTemplate>),
}

impl From<ChatTemplate> for PromptFormat {
    fn from(t: ChatTemplate) -> Self {
        Self::Builtin(t)
    }
}

impl From<&PromptFormat> for PromptFormat {
    fn from(f: &PromptFormat) -> Self {
        f.clone()
    }
}

/// How a hand-written format fared against the GGUF's template on the probe conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Identical wherever the GGUF's template renders (and it renders at least one probe).
    All,
    /// Identical on every conversation that starts with a system prompt, not on the others
    /// (Qwen2.5's template adds its default system prompt when there is none).
    WithSystem,
    No,
}

impl PromptFormat {
    /// The format for a model: `source` is its GGUF `tokenizer.chat_template`, `bos`/`eos` the
    /// texts of its BOS/EOS tokens, `add_bos` its `tokenizer.ggml.add_bos_token`, `detected`
    /// what [`ChatTemplate::detect`] recognised.
    ///
    /// The known families are found by rendering, not by hashing the template text: GGUF
    /// converters and fine-tunes ship many textual variants of one family's template (whitespace,
    /// tool-calling sections, a changed default system prompt), and a render comparison accepts
    /// exactly those that produce the same prompts, while a hash would accept only the variants
    /// listed and could not tell when a changed one still fits.
    pub fn resolve(
        source: Option<&str>,
        bos: &str,
        eos: &str,
        add_bos: bool,
        detected: ChatTemplate,
    ) -> Self {
        let Some(source) = source.filter(|s| !s.trim().is_empty()) else {
            return Self::Builtin(detected);
        };
        let mut jinja = match JinjaTemplate::compile(source, bos, eos, add_bos, detected) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(
                    error = %e, fallback = detected.name(),
                    "the model's chat template does not compile; using the fallback format"
                );
                return Self::Builtin(detected);
            }
        };
        let probes = jinja::probe_conversations();
        let rendered: Vec<Option<String>> = probes.iter().map(|p| jinja.render(p).ok()).collect();
        // Sandra's conversations start with a system prompt; a template that cannot render the
        // simplest of them (nor anything else) is of no use.
        if rendered.iter().all(Option::is_none) {
            tracing::warn!(
                fallback = detected.name(),
                "the model's chat template renders no test conversation; using the fallback format"
            );
            return Self::Builtin(detected);
        }
        let fit = |t: ChatTemplate| -> Fit {
            // (rendered, all equal) for the probes with a system prompt, and for the others.
            let (mut system, mut others) = ((false, true), (false, true));
            for (p, r) in probes.iter().zip(&rendered) {
                let Some(r) = r else { continue };
                let side = if p.first().is_some_and(|m| m.role == Role::System) {
                    &mut system
                } else {
                    &mut others
                };
                side.0 = true;
                side.1 &= *r == t.render(p);
            }
            match (system, others) {
                ((_, true), (_, true)) => Fit::All,
                ((true, true), (_, false)) => Fit::WithSystem,
                _ => Fit::No,
            }
        };
        let order = std::iter::once(detected)
            .chain(ChatTemplate::ALL.into_iter().filter(|t| *t != detected));
        let fits: Vec<(ChatTemplate, Fit)> = order.map(|t| (t, fit(t))).collect();
        if let Some((t, _)) = fits.iter().find(|(_, f)| *f == Fit::All) {
            tracing::info!(
                template = t.name(),
                "the model's chat template matches a hand-written one"
            );
            return Self::Builtin(*t);
        }
        let with_system = fits
            .iter()
            .find(|(_, f)| *f == Fit::WithSystem)
            .map(|(t, _)| *t);
        jinja.set_with_system(with_system);
        tracing::info!(
            with_system = with_system.map(ChatTemplate::name),
            "using the model's own chat template"
        );
        Self::Jinja(Arc::new(jinja))
    }

    /// The hand-written format, when this is one.
    pub fn builtin(&self) -> Option<ChatTemplate> {
        match self {
            Self::Builtin(t) => Some(*t),
            Self::Jinja(_) => None,
        }
    }

    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Builtin(t) => t.name(),
            Self::Jinja(_) => "gguf-jinja",
        }
    }

    /// See [`ChatTemplate::segments`]; a Jinja template that fails on this conversation gives
    /// its fallback format's segments (see [`JinjaTemplate::segments`]).
    pub fn segments<'a>(&self, messages: &'a [ChatMessage]) -> Vec<Segment<'a>> {
        match self {
            Self::Builtin(t) => t.segments(messages),
            Self::Jinja(j) => j.segments(messages),
        }
    }

    /// The segments concatenated (logs, tests, benchmarks; never tokenize it whole).
    pub fn render(&self, messages: &[ChatMessage]) -> String {
        join(&self.segments(messages))
    }

    /// Tokens (as text) that may end the assistant's turn.
    pub fn end_tokens(&self) -> Vec<&'static str> {
        match self {
            Self::Builtin(t) => t.end_tokens().to_vec(),
            Self::Jinja(j) => j.end_tokens(),
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
pub(crate) mod tests {
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

    // Real templates, as published in each model's tokenizer_config.json / GGUF metadata:
    // Qwen2.5: Qwen2.5-Coder-1.5B-Instruct-GGUF (q4_k_m), read from the file's
    // tokenizer.chat_template. Llama 3: Meta-Llama-3-8B-Instruct. Llama 3.2: Llama-3.2-1B-Instruct.
    // Gemma 3: ggml-org/gemma-3-1b-it-GGUF. Gemma 2: google/gemma-2-2b-it. Phi-3.5:
    // microsoft/Phi-3.5-mini-instruct. Mistral: Mistral-7B-Instruct-v0.2 (mistralai's "v1"
    // template with a system prompt).
    pub(crate) const QWEN25: &str = include_str!("templates/qwen2.5.jinja");
    pub(crate) const LLAMA3: &str = include_str!("templates/llama3.jinja");
    pub(crate) const LLAMA32: &str = include_str!("templates/llama3.2.jinja");
    pub(crate) const GEMMA3: &str = include_str!("templates/gemma3.jinja");
    pub(crate) const GEMMA2: &str = include_str!("templates/gemma2.jinja");
    pub(crate) const PHI35: &str = include_str!("templates/phi3.5.jinja");
    pub(crate) const MISTRAL: &str = include_str!("templates/mistral-v1.jinja");

    /// A fixture with its model's BOS/EOS texts and `add_bos_token`, and the hand-written
    /// template that must render like it.
    pub(crate) struct Fixture {
        pub name: &'static str,
        pub source: &'static str,
        pub bos: &'static str,
        pub eos: &'static str,
        pub add_bos: bool,
        pub hand_written: ChatTemplate,
        /// The template refuses system messages (Gemma 2).
        pub no_system: bool,
    }

    pub(crate) fn fixtures() -> Vec<Fixture> {
        let f = |name, source, bos, eos, add_bos, hand_written, no_system| Fixture {
            name,
            source,
            bos,
            eos,
            add_bos,
            hand_written,
            no_system,
        };
        vec![
            f(
                "qwen2.5",
                QWEN25,
                "<|endoftext|>",
                "<|im_end|>",
                false,
                ChatTemplate::ChatMl,
                false,
            ),
            f(
                "llama3",
                LLAMA3,
                "<|begin_of_text|>",
                "<|eot_id|>",
                true,
                ChatTemplate::Llama3,
                false,
            ),
            f(
                "llama3.2",
                LLAMA32,
                "<|begin_of_text|>",
                "<|eot_id|>",
                true,
                ChatTemplate::Llama3Dated,
                false,
            ),
            f(
                "gemma3",
                GEMMA3,
                "<bos>",
                "<eos>",
                true,
                ChatTemplate::Gemma,
                false,
            ),
            f(
                "gemma2",
                GEMMA2,
                "<bos>",
                "<eos>",
                true,
                ChatTemplate::Gemma,
                true,
            ),
            f(
                "phi3.5",
                PHI35,
                "<s>",
                "<|endoftext|>",
                false,
                ChatTemplate::Phi3,
                false,
            ),
        ]
    }

    /// Conversations as Sandra sends them: a system prompt, several turns, the user last; text
    /// with surrounding whitespace, newlines, non-ASCII, and a long one of 20 turns.
    pub(crate) fn conversations() -> Vec<Vec<ChatMessage>> {
        let mut long = vec![ChatMessage::system("You are Sandra. Reply briefly.")];
        for i in 0..10 {
            long.push(ChatMessage::user(format!(
                "Question {i}: what is {i} + {i}?"
            )));
            long.push(ChatMessage::assistant(format!(" It is {}. ", i + i)));
        }
        long.push(ChatMessage::user("Thanks!"));
        vec![
            vec![ChatMessage::system("Be brief."), ChatMessage::user("Hi")],
            vec![
                ChatMessage::system(" You are Sandra.\nAnswer in the user's language. "),
                ChatMessage::user("¿Qué tal?  "),
                ChatMessage::assistant("\nBien, ¿y tú?\n"),
                ChatMessage::user("中文 😀\n\nline two"),
            ],
            long,
        ]
    }

    /// The system prompt folded away, for templates that refuse one.
    fn without_system(c: &[ChatMessage]) -> &[ChatMessage] {
        match c.split_first() {
            Some((first, rest)) if first.role == Role::System => rest,
            _ => c,
        }
    }

    fn compile(fx: &Fixture) -> JinjaTemplate {
        JinjaTemplate::compile(fx.source, fx.bos, fx.eos, fx.add_bos, ChatTemplate::ChatMl)
            .unwrap_or_else(|e| panic!("{}: {e}", fx.name))
    }

    #[test]
    fn hand_written_templates_render_byte_identically_to_the_models_own() {
        for fx in fixtures() {
            let jinja = compile(&fx);
            for conv in conversations() {
                let conv = if fx.no_system {
                    without_system(&conv)
                } else {
                    &conv
                };
                assert_eq!(
                    jinja.render(conv).unwrap(),
                    fx.hand_written.render(conv),
                    "{}",
                    fx.name
                );
            }
        }
    }

    #[test]
    fn the_fast_path_is_chosen_by_render_at_load() {
        for fx in fixtures() {
            let f = PromptFormat::resolve(
                Some(fx.source),
                fx.bos,
                fx.eos,
                fx.add_bos,
                ChatTemplate::ChatMl,
            );
            match fx.name {
                // Qwen2.5 adds its own default system prompt when there is none; Sandra always
                // sends one, and those conversations take the hand-written path.
                "qwen2.5" => {
                    let PromptFormat::Jinja(j) = &f else {
                        panic!("qwen2.5: {f:?}")
                    };
                    assert_eq!(j.with_system(), Some(ChatTemplate::ChatMl));
                    let bare = [ChatMessage::user("Hi")];
                    assert!(f.render(&bare).starts_with(
                        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud."
                    ));
                }
                _ => assert_eq!(f.builtin(), Some(fx.hand_written), "{}", fx.name),
            }
            for conv in conversations() {
                assert_eq!(
                    f.render(&conv),
                    fx.hand_written.render(&conv),
                    "{}",
                    fx.name
                );
            }
        }
        // No template in the GGUF: what the vocabulary says, as before.
        let none = PromptFormat::resolve(None, "", "", false, ChatTemplate::Llama3);
        assert_eq!(none.builtin(), Some(ChatTemplate::Llama3));
    }

    #[test]
    fn an_unknown_template_renders_its_own_format() {
        let f = PromptFormat::resolve(Some(MISTRAL), "<s>", "</s>", true, ChatTemplate::Llama3);
        assert!(matches!(f, PromptFormat::Jinja(_)), "{f:?}");
        let conv = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello!"),
            ChatMessage::user("Bye"),
        ];
        assert_eq!(
            f.render(&conv),
            "<s> [INST] Be brief.\n\nHi [/INST] Hello!</s> [INST] Bye [/INST]"
        );
        // Its end-of-turn string stops generation, and so do the fallback's.
        assert!(f.end_tokens().contains(&"</s>"), "{:?}", f.end_tokens());
        assert!(f.end_tokens().contains(&"<|eot_id|>"));
    }

    #[test]
    fn a_template_that_fails_falls_back_without_crashing() {
        // Does not compile.
        let f = PromptFormat::resolve(Some("{% for %}"), "", "", false, ChatTemplate::ChatMl);
        assert_eq!(f.builtin(), Some(ChatTemplate::ChatMl));
        // Compiles, renders nothing Sandra sends.
        let f = PromptFormat::resolve(
            Some("{{ raise_exception('no') }}"),
            "",
            "",
            false,
            ChatTemplate::ChatMl,
        );
        assert_eq!(f.builtin(), Some(ChatTemplate::ChatMl));
        // Renders short conversations only: a long one gets ChatML (one warning, see
        // `JinjaTemplate::segments`), and the next short one its own format again.
        let picky = "{% if messages|length > 3 %}{{ raise_exception('too long') }}{% endif %}\
                     {% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] ";
        let f = PromptFormat::resolve(Some(picky), "", "", false, ChatTemplate::ChatMl);
        assert!(matches!(f, PromptFormat::Jinja(_)), "{f:?}");
        let long = &conversations()[2];
        assert_eq!(f.render(long), ChatTemplate::ChatMl.render(long));
        assert_eq!(f.render(long), ChatTemplate::ChatMl.render(long));
        let short = [ChatMessage::system("S"), ChatMessage::user("U")];
        assert_eq!(f.render(&short), "[system] S\n[user] U\n[assistant] ");
    }

    #[test]
    fn think_block_is_stripped() {
        assert_eq!(strip_think("<think>\nhmm\n</think>\n\nParis."), "Paris.");
        assert_eq!(strip_think("  Paris. "), "Paris.");
    }
}
