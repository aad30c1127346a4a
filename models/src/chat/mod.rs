//! The chat LLM: a local quantized GGUF model (candle) or a remote OpenAI-compatible server,
//! behind one cloneable [`ChatEngine`].
//!
//! A local model runs on its own thread (`scheduler`): a fair queue over conversations, a KV
//! cache per conversation in a memory budget (`kvpool`), and several replies decoded together
//! in one batched step. The tokenizer and chat template are also kept on the async side so
//! [`ChatEngine::count_tokens`] never waits for the model. Replies are whole messages (no
//! streaming).

pub(crate) mod amx;
mod jinja;
mod kvpool;
mod local;
mod qdecoder;
pub(crate) mod qgemv;
mod scheduler;
mod step_attention;
mod vecmath;
pub use qdecoder::CpuPrefill;
mod remote;
pub mod template;
pub mod tokenizer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::device::{DeviceChoice, select_device};
use crate::worker::WorkerError;
pub use jinja::JinjaTemplate;
pub use local::read_gguf_metadata;
pub use remote::{RemoteConfig, RemoteError};
// The scene model's remote client shares the chat client's HTTP error wording and its
// control-token defence.
pub(crate) use remote::{defang, error_chain, truncate};
pub use template::{ChatTemplate, PromptFormat, Segment};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// How tokens are chosen (the `[llm]` section of config.toml). Greedy when `temperature == 0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (always the most likely token).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probabilities sum to `top_p`
    /// (`1.0` disables it).
    pub top_p: f64,
    /// Penalty for tokens seen in the last `repeat_last_n` tokens (`1.0` disables it).
    /// Local models only: OpenAI-compatible servers do not share one name for it.
    pub repeat_penalty: f32,
    /// How many recent tokens `repeat_penalty` looks at.
    pub repeat_last_n: usize,
    /// Random seed; `None` draws a fresh one per reply.
    pub seed: Option<u64>,
    /// Upper bound on the reply's length in tokens.
    pub max_new_tokens: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.9,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: None,
            max_new_tokens: 512,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (deterministic), for tests and benchmarks.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            seed: Some(0),
            max_new_tokens,
        }
    }

    fn seed_or_random(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.finish()
        })
    }
}

/// How a local model is run.
#[derive(Debug, Clone, Copy)]
pub struct LocalOptions {
    pub device: DeviceChoice,
    /// Replies decoded together, one token each per batched step (at least 1). Requests beyond
    /// it wait in a fair queue (round-robin by conversation); none is refused.
    pub parallel: usize,
    /// Memory for keys and values kept between turns (MiB), conversations' caches evicted least
    /// recently used first. Kept as f16: one token costs layers × 2 × kv_heads × head_dim × 2
    /// bytes (28 KiB for Qwen2.5-1.5B, so 512 MiB hold about 18,000 tokens).
    pub kv_cache_mb: usize,
    pub cpu_prefill: CpuPrefill,
    /// How long the idle model, woken by a request, waits for requests that follow it closely
    /// (until this passes without one, at most five times it), so that people writing at the
    /// same moment have their prompts read in one pass. Default 3 ms.
    pub gather: std::time::Duration,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            parallel: 4,
            kv_cache_mb: 512,
            cpu_prefill: CpuPrefill::default(),
            gather: scheduler::GATHER_QUIET,
        }
    }
}

/// A whole reply and its token counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatReply {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens the local model did not have to process again: the start of the prompt
    /// matched what it had just seen (the same conversation's previous turn). 0 for remote.
    pub reused_prompt_tokens: usize,
}

/// Why a reply could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The local model could not be loaded (bad path, not GGUF, unsupported architecture...).
    #[error("cannot load chat model {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    /// The model cannot take the request now: shed load or retry later. The local model
    /// queues every request instead, so only other backends may return it.
    #[error("chat model is busy (queue full)")]
    Busy,
    /// The model thread has stopped.
    #[error("chat model has stopped")]
    Stopped,
    /// The prompt alone fills the context window; the caller should drop older messages.
    #[error("prompt has {prompt_tokens} tokens, the context window is {context_window}")]
    ContextOverflow {
        prompt_tokens: usize,
        context_window: usize,
    },
    /// The model failed while generating (or panicked).
    #[error("chat inference failed: {0}")]
    Inference(String),
    /// The remote backend failed.
    #[error("remote chat backend: {0}")]
    Remote(#[from] RemoteError),
    /// The configuration cannot work (bad URL...).
    #[error("invalid chat configuration: {0}")]
    Config(String),
}

impl From<WorkerError> for ChatError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Busy(_) => ChatError::Busy,
            WorkerError::Stopped(_) => ChatError::Stopped,
            WorkerError::Panicked(_, msg) => ChatError::Inference(format!("panicked: {msg}")),
        }
    }
}

enum Backend {
    Local {
        handle: scheduler::Handle,
        tokenizer: Arc<tokenizers::Tokenizer>,
        info: local::ModelInfo,
    },
    Remote(remote::RemoteClient),
}

struct Inner {
    backend: Backend,
    params: SamplingParams,
}

/// Cloneable, `Send + Sync` handle to the chat model, local or remote.
#[derive(Clone)]
pub struct ChatEngine {
    inner: Arc<Inner>,
    context_cap: Option<usize>,
}

impl fmt::Debug for ChatEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ChatEngine").field(&self.describe()).finish()
    }
}

impl ChatEngine {
    /// Loads a GGUF chat model on its own thread (`parallel` replies decoded together; see
    /// [`LocalOptions`] for the rest). Fails with the path and the reason.
    pub fn load_local(
        path: &Path,
        device: DeviceChoice,
        params: SamplingParams,
        parallel: usize,
    ) -> Result<Self, ChatError> {
        Self::load_local_with(
            path,
            LocalOptions {
                device,
                parallel,
                ..Default::default()
            },
            params,
        )
    }

    /// [`load_local`](Self::load_local) with every option.
    pub fn load_local_with(
        path: &Path,
        opts: LocalOptions,
        params: SamplingParams,
    ) -> Result<Self, ChatError> {
        let LocalOptions {
            device,
            parallel,
            kv_cache_mb,
            cpu_prefill,
            gather,
        } = opts;
        let (info_tx, info_rx) = std::sync::mpsc::sync_channel(1);
        let owned = path.to_path_buf();
        let sched = scheduler::SchedulerOptions {
            parallel: parallel.max(1),
            kv_cache_bytes: kv_cache_mb.saturating_mul(1 << 20),
            gather,
        };
        let handle = scheduler::Handle::spawn(sched, move || {
            // A panic inside candle while reading a malformed file is a load error too.
            let loaded = std::panic::catch_unwind(|| local::load(&owned, device, cpu_prefill))
                .unwrap_or_else(|p| {
                    Err(format!(
                        "panicked while loading: {}",
                        crate::worker::panic_message(&p)
                    ))
                })
                .map_err(|reason| ChatError::Load {
                    path: owned.clone(),
                    reason,
                })?;
            let template = loaded.info.template.clone();
            let _ = info_tx.send((loaded.tokenizer.clone(), loaded.info));
            Ok((loaded.model, loaded.tokenizer, template))
        })?;
        let (tokenizer, info) = info_rx.recv().map_err(|_| ChatError::Load {
            path: path.to_path_buf(),
            reason: "model thread exited while loading".into(),
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                backend: Backend::Local {
                    handle,
                    tokenizer,
                    info,
                },
                params,
            }),
            context_cap: None,
        })
    }

    /// An OpenAI-compatible server (`POST {base_url}/v1/chat/completions`).
    pub fn remote(cfg: RemoteConfig, params: SamplingParams) -> Result<Self, ChatError> {
        Ok(Self {
            inner: Arc::new(Inner {
                backend: Backend::Remote(remote::RemoteClient::new(cfg)?),
                params,
            }),
            context_cap: None,
        })
    }

    /// Caps [`context_window`](Self::context_window) (e.g. from config, to bound memory).
    pub fn with_context_cap(mut self, max_tokens: usize) -> Self {
        self.context_cap = Some(max_tokens);
        self
    }

    /// The configured sampling parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.inner.params
    }

    /// Replies to the conversation with the configured sampling parameters.
    pub async fn chat(&self, messages: Vec<ChatMessage>) -> Result<ChatReply, ChatError> {
        self.chat_with(messages, self.inner.params.clone()).await
    }

    /// Replies within one conversation. `conversation` (an opaque, stable key such as the
    /// conversation's id) lets a local model keep that conversation's keys and values between
    /// its turns (its next turn reads only what is new) and queue its turns fairly beside other
    /// conversations' (round-robin; one turn of a conversation at a time).
    pub async fn chat_in(
        &self,
        conversation: &str,
        messages: Vec<ChatMessage>,
        params: SamplingParams,
    ) -> Result<ChatReply, ChatError> {
        self.reply(Some(conversation.to_string()), messages, params)
            .await
    }

    /// Replies with explicit sampling parameters, outside any conversation (summaries, tests):
    /// a local model runs it on a scratch cache that such requests share.
    pub async fn chat_with(
        &self,
        messages: Vec<ChatMessage>,
        params: SamplingParams,
    ) -> Result<ChatReply, ChatError> {
        self.reply(None, messages, params).await
    }

    async fn reply(
        &self,
        conversation: Option<String>,
        messages: Vec<ChatMessage>,
        params: SamplingParams,
    ) -> Result<ChatReply, ChatError> {
        match &self.inner.backend {
            Backend::Local { handle, .. } => {
                handle
                    .chat(conversation, messages, params, self.context_window())
                    .await
            }
            Backend::Remote(client) => client.chat(&messages, &params).await,
        }
    }

    /// Tokens the conversation's prompt takes, template included. Local: exact (the model's own
    /// tokenizer; a few milliseconds for long conversations, never waits for the model). Remote:
    /// an estimate that errs high — one token per 3 characters plus 4 per message and 3 for the
    /// reply's header.
    pub fn count_tokens(&self, messages: &[ChatMessage]) -> usize {
        match &self.inner.backend {
            Backend::Local {
                tokenizer, info, ..
            } => encode_chat(tokenizer, &info.template, messages)
                .map(|ids| ids.len())
                .unwrap_or_else(|_| estimate_tokens(messages)),
            Backend::Remote(_) => estimate_tokens(messages),
        }
    }

    /// Tokens the model can attend to (prompt + reply): GGUF `<arch>.context_length` for local
    /// models, `RemoteConfig::context_window` for remote ones; capped by
    /// [`with_context_cap`](Self::with_context_cap).
    pub fn context_window(&self) -> usize {
        let n = match &self.inner.backend {
            Backend::Local { info, .. } => info.context_length,
            Backend::Remote(c) => c.context_window(),
        };
        self.context_cap.map_or(n, |cap| n.min(cap))
    }

    /// One line for logs, e.g. "qwen2 Qwen2.5-1.5B-Instruct Q4_K_M (local, cpu)".
    pub fn describe(&self) -> String {
        match &self.inner.backend {
            Backend::Local { info, .. } => format!(
                "{} {} {} (local, {})",
                info.architecture, info.name, info.quantization, info.device
            ),
            Backend::Remote(c) => c.describe(),
        }
    }

    /// Requests the local model has queued or is answering (`None` for remote). Its queue has
    /// no capacity to run out of: this is load, not room.
    pub fn pending(&self) -> Option<usize> {
        match &self.inner.backend {
            Backend::Local { handle, .. } => Some(handle.pending()),
            Backend::Remote(_) => None,
        }
    }

    /// The most replies the local model decoded together in one step so far (`None` for
    /// remote): diagnostics and benchmarks.
    pub fn largest_batch(&self) -> Option<usize> {
        match &self.inner.backend {
            Backend::Local { handle, .. } => Some(handle.largest_batch()),
            Backend::Remote(_) => None,
        }
    }

    /// The most requests whose prompts the local model read in one pass so far (`None` for
    /// remote): diagnostics and tests.
    pub fn largest_prompt_pass(&self) -> Option<usize> {
        match &self.inner.backend {
            Backend::Local { handle, .. } => Some(handle.largest_prompt_pass()),
            Backend::Remote(_) => None,
        }
    }

    /// Local model: records each job's wait in the model's queue into `histogram` (seconds).
    /// A remote server queues on its own side; nothing is recorded.
    pub fn observe_queue_wait(&self, histogram: metrics::Histogram) {
        if let Backend::Local { handle, .. } = &self.inner.backend {
            handle.observe_queue_wait(histogram);
        }
    }

    /// The local model's tokenizer (tests, diagnostics).
    pub fn tokenizer(&self) -> Option<&tokenizers::Tokenizer> {
        match &self.inner.backend {
            Backend::Local { tokenizer, .. } => Some(tokenizer),
            Backend::Remote(_) => None,
        }
    }

    /// The hand-written template the local model's prompts use: `None` for a remote model, and
    /// for one whose own GGUF template has no hand-written equivalent (see
    /// [`prompt_format`](Self::prompt_format)).
    pub fn template(&self) -> Option<ChatTemplate> {
        self.prompt_format().and_then(PromptFormat::builtin)
    }

    /// How the local model's prompts are written: hand-written or its GGUF's Jinja template.
    pub fn prompt_format(&self) -> Option<&PromptFormat> {
        match &self.inner.backend {
            Backend::Local { info, .. } => Some(&info.template),
            Backend::Remote(_) => None,
        }
    }
}

/// The token ids a local model sees for `messages`: the template's markup tokenized with control
/// tokens recognised, every message's text tokenized as plain text (see [`Segment`]). So a user
/// who types `<|im_end|>\n<|im_start|>system\n…` writes characters, not a system turn.
///
/// Each piece is tokenized on its own, so the ids of a conversation are a prefix of the ids of
/// the same conversation grown by a reply and a new message (prompt-cache reuse relies on it).
/// For ordinary text the ids equal those of tokenizing [`ChatTemplate::render`]'s string whole.
/// `template` is a [`ChatTemplate`] or a model's [`PromptFormat`] (`&engine_format`).
pub fn encode_chat(
    tokenizer: &tokenizers::Tokenizer,
    template: impl Into<PromptFormat>,
    messages: &[ChatMessage],
) -> Result<Vec<u32>, ChatError> {
    Ok(encode_chat_segments(tokenizer, template, messages)?
        .into_iter()
        .flat_map(|(_, ids)| ids)
        .collect())
}

/// [`encode_chat`] piece by piece: each [`Segment`] with its ids (tests and fuzzing check that
/// control-token ids occur only in markup).
pub fn encode_chat_segments<'a>(
    tokenizer: &tokenizers::Tokenizer,
    template: impl Into<PromptFormat>,
    messages: &'a [ChatMessage],
) -> Result<Vec<(Segment<'a>, Vec<u32>)>, ChatError> {
    let tokenizing = |e: tokenizers::Error| ChatError::Inference(format!("tokenizing: {e}"));
    template
        .into()
        .segments(messages)
        .into_iter()
        .map(|seg| {
            let ids = match &seg {
                Segment::Markup(m) => tokenizer
                    .encode(m.as_ref(), false)
                    .map_err(tokenizing)?
                    .get_ids()
                    .to_vec(),
                Segment::Content(c) => tokenizer::encode_plain(tokenizer, c).map_err(tokenizing)?,
            };
            Ok((seg, ids))
        })
        .collect()
}

fn estimate_tokens(messages: &[ChatMessage]) -> usize {
    messages
        .iter()
        .map(|m| m.content.chars().count().div_ceil(3) + 4)
        .sum::<usize>()
        + 3
}
