//! `config.toml` and the environment: the only place Sandra reads its settings.
//!
//! Every default value is written here, once: the library option types it converts into
//! (`LimitsPolicy`, `Pacing`, `RemoteConfig`) have none of their own. The one exception is
//! `[llm.sampling]`, which takes its defaults from `sandra_models::chat::SamplingParams`.
//!
//! Layers, later wins: built-in defaults → the TOML file → environment variables
//! (`WHATSAPP_*`, `SANDRA_BIND`, `SANDRA_DATA_DIR`, `SANDRA_LLM_API_KEY`,
//! `SANDRA_VISION_API_KEY`, `SANDRA_SMTP_URL`, `SANDRA_EMAIL_FROM`). Secrets stored with
//! `sandra secrets set` sit between the file and the environment ([`Config::apply_stored`]:
//! the environment still wins). Unknown keys and bad values fail start-up
//! with an error naming the key (or variable). Secrets are `secrecy` [`SecretString`]s: never
//! printed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandra_actors::secret::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A configuration problem, always naming the key or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path} is not valid TOML: {reason}")]
    Syntax { path: String, reason: String },
    #[error("config key `{key}`: {reason}")]
    Key { key: String, reason: String },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub whatsapp: WhatsAppConfig,
    pub conversation: ConversationConfig,
    pub sender: SenderConfig,
    pub llm: LlmConfig,
    pub transcription: TranscriptionConfig,
    /// `[vision]`: photos, stickers and documents.
    pub vision: VisionConfig,
    /// `[voice]`: replies spoken as voice notes.
    pub voice: VoiceConfig,
    /// `[limits]`: who may talk to Sandra, how fast, and how much one turn takes in.
    pub limits: LimitsConfig,
    /// `[email]`: the SMTP server that mails verification codes for linking.
    pub email: EmailConfig,
    pub log: LogConfig,
    /// The keys of [`STORABLE_KEYS`] that an environment variable set: stored values never
    /// replace them.
    #[serde(skip)]
    pub set_by_env: std::collections::BTreeSet<&'static str>,
}

/// The config keys `sandra secrets set` (and the Admin Portal) may store, each with the
/// environment variable that overrides it: the secrets, plus the two non-secret WhatsApp values
/// so that all five WhatsApp settings can be stored together.
pub const STORABLE_KEYS: &[(&str, &str)] = &[
    ("whatsapp.access_token", "WHATSAPP_ACCESS_TOKEN"),
    ("whatsapp.app_secret", "WHATSAPP_APP_SECRET"),
    ("whatsapp.verify_token", "WHATSAPP_VERIFY_TOKEN"),
    ("whatsapp.phone_number_id", "WHATSAPP_PHONE_NUMBER_ID"),
    ("whatsapp.api_version", "WHATSAPP_API_VERSION"),
    ("email.smtp_url", "SANDRA_SMTP_URL"),
    ("llm.openai.api_key", "SANDRA_LLM_API_KEY"),
    ("vision.remote_api_key", "SANDRA_VISION_API_KEY"),
    ("transcription.api_key", "SANDRA_TRANSCRIPTION_API_KEY"),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TranscriptionConfig {
    /// Answer voice notes by transcribing them with a local Whisper model.
    pub enabled: bool,
    /// A Whisper model directory (config.json, model.safetensors, tokenizer.json). Empty: the
    /// transcription model installed by `sandra models fetch` (manifest), if any.
    pub model_dir: PathBuf,
    /// Force a language ("es"); empty detects it per voice note.
    pub language: String,
    /// CPU threads for Whisper; 0 = all cores.
    pub threads: usize,
    /// Voice notes waiting for the local model's thread; more wait their turn in Sandra.
    pub queue: usize,
    /// Start replies to voice notes with what Sandra heard.
    pub echo_transcript: bool,
    /// Hold the decoder's per-token matrices as q8_0 (about 2x faster decoding, same words on
    /// the benchmark clips); false keeps every weight f32.
    pub decoder_q8: bool,
    /// Longest part of a voice note decoded and transcribed, in seconds; a longer note is cut
    /// there and the user is told. Bounds the decode's memory (57 MB of PCM at 900 s) whatever
    /// the file declares. In (0, 3600].
    pub max_audio_seconds: f32,
    /// Voice notes in progress at once (download, decode, transcription) across all chats; a
    /// note over the cap waits for a slot. At least 1.
    pub max_jobs: usize,
    /// "local" (Whisper in-process) or "openai" (an OpenAI-compatible server's
    /// `/v1/audio/transcriptions`).
    pub backend: TranscriptionBackend,
    /// `backend = "openai"`: the server root, e.g. `http://127.0.0.1:8000`.
    pub base_url: String,
    /// `backend = "openai"`: the served model's name.
    pub model: String,
    /// `backend = "openai"`: the server's API key, if it needs one. Prefer the environment
    /// (`SANDRA_TRANSCRIPTION_API_KEY`) or `sandra secrets set`.
    pub api_key: SecretString,
    /// `backend = "openai"`: timeout for one request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// Where voice notes are heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TranscriptionBackend {
    /// A Whisper model run in-process with candle.
    #[default]
    Local,
    /// An OpenAI-compatible server (vLLM, speaches, llama.cpp's whisper server...).
    Openai,
}

impl Default for TranscriptionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model_dir: PathBuf::new(),
            language: String::new(),
            threads: 0,
            queue: 8,
            echo_transcript: true,
            decoder_q8: true,
            max_audio_seconds: 900.0,
            max_jobs: 32,
            backend: TranscriptionBackend::Local,
            base_url: String::new(),
            model: String::new(),
            api_key: SecretString::default(),
            timeout: Duration::from_secs(120),
        }
    }
}

/// `[voice]`: voice replies, spoken with a local Piper voice and sent as a voice note with the
/// text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceConfig {
    /// "mirror" (a voice reply when the user sent a voice note), "always" or "never".
    pub reply: VoiceReplyMode,
    /// Piper voices (`.onnx`, each with its `.onnx.json` beside it), one per language. Empty:
    /// every voice in `<data_dir>/models/piper/`. No voice: replies are text only.
    pub voices: Vec<PathBuf>,
    /// CPU threads for speech; 0 = all cores.
    pub threads: usize,
    /// Replies waiting for the voice's thread; more wait their turn in Sandra. At least 1.
    pub queue: usize,
    /// Replies being spoken at once; more wait for a slot. At least 1.
    pub max_jobs: usize,
    /// After the first sentence (its own note, sent as soon as it is spoken), the rest of a
    /// reply goes in notes of at most this many characters. In [100, 4000].
    pub note_chars: usize,
    /// How long one voice note may take to be spoken (queue included) before the try counts as
    /// failed and is retried later. More than 0.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// When replies are spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VoiceReplyMode {
    #[default]
    Mirror,
    Always,
    Never,
}

impl Default for VoiceConfig {
    fn default() -> Self {
        Self {
            reply: VoiceReplyMode::Mirror,
            voices: Vec::new(),
            threads: 0,
            queue: 4,
            max_jobs: 4,
            note_chars: 600,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Where scene descriptions (what a photo shows, beyond its text) come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SceneBackend {
    /// The vision-language model installed by `sandra models fetch`, if any; else none.
    #[default]
    Auto,
    /// Read text only; say so plainly when a photo has none.
    None,
    /// An OpenAI-compatible server that takes images (`remote_url`, `remote_model`).
    Remote,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VisionConfig {
    /// Look at photos, stickers and documents. Needs the OCR model (`sandra models fetch`);
    /// without it vision is off (one log line at start) and files get a polite "can't open".
    pub enabled: bool,
    /// Largest photo decoded, in pixels (width × height), checked from the header before any
    /// pixel is allocated: a decompression bomb is refused, not decoded. At least 1.
    pub max_pixels: u64,
    /// Photos and documents in progress at once (download, decode, OCR) across all chats; one
    /// over the cap waits for a slot. At least 1.
    pub max_jobs: usize,
    /// Jobs waiting for the vision models' thread; more wait their turn in Sandra. At least 1.
    pub queue: usize,
    /// Pages of a document read at most (the rest is left out, and the model told). At least 1.
    pub max_pages: usize,
    /// Scanned pages (no text layer) of a document read by OCR at most.
    pub max_ocr_pages: usize,
    /// Characters of a document's (or photo's) text given to the model at most. At least 1.
    pub max_chars: usize,
    /// "auto" | "none" | "remote": where descriptions of what a photo shows come from.
    pub scene: SceneBackend,
    /// `scene = "remote"`: the server root, e.g. `http://127.0.0.1:8081`.
    pub remote_url: String,
    /// `scene = "remote"`: the served vision-language model's name.
    pub remote_model: String,
    /// `scene = "remote"`: the server's API key, if it needs one. Prefer the environment
    /// (`SANDRA_VISION_API_KEY`).
    pub remote_api_key: SecretString,
    /// `scene = "remote"`: timeout for one request.
    #[serde(with = "humantime_serde")]
    pub remote_timeout: Duration,
    /// Longest description or answer from a scene model, in tokens.
    pub scene_max_tokens: usize,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_pixels: 40_000_000,
            max_jobs: 8,
            queue: 8,
            max_pages: 50,
            max_ocr_pages: 5,
            max_chars: 20_000,
            scene: SceneBackend::Auto,
            remote_url: String::new(),
            remote_model: String::new(),
            remote_api_key: SecretString::default(),
            remote_timeout: Duration::from_secs(60),
            scene_max_tokens: 256,
        }
    }
}

impl VisionConfig {
    /// The pixel cap as the image decoder takes it.
    pub fn image_limits(&self) -> sandra_models::vision::image::ImageLimits {
        sandra_models::vision::image::ImageLimits {
            max_pixels: self.max_pixels,
        }
    }

    /// The document caps as the document reader takes them.
    pub fn doc_limits(&self) -> sandra_models::vision::document::DocLimits {
        sandra_models::vision::document::DocLimits {
            max_pages: self.max_pages,
            max_ocr_pages: self.max_ocr_pages,
            max_chars: self.max_chars,
            image: self.image_limits(),
        }
    }
}

impl std::fmt::Debug for VisionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            enabled,
            max_pixels,
            max_jobs,
            queue,
            max_pages,
            max_ocr_pages,
            max_chars,
            scene,
            remote_url,
            remote_model,
            remote_api_key,
            remote_timeout,
            scene_max_tokens,
        } = self;
        f.debug_struct("VisionConfig")
            .field("enabled", enabled)
            .field("max_pixels", max_pixels)
            .field("max_jobs", max_jobs)
            .field("queue", queue)
            .field("max_pages", max_pages)
            .field("max_ocr_pages", max_ocr_pages)
            .field("max_chars", max_chars)
            .field("scene", scene)
            .field("remote_url", remote_url)
            .field("remote_model", remote_model)
            .field("remote_api_key", &Shown(remote_api_key))
            .field("remote_timeout", remote_timeout)
            .field("scene_max_tokens", scene_max_tokens)
            .finish()
    }
}

/// Which brain composes replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LlmBackend {
    /// A GGUF model run in-process with candle.
    #[default]
    Local,
    /// An OpenAI-compatible server (llama.cpp, vLLM, Ollama...).
    Openai,
    /// No model: the placeholder brain.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    pub backend: LlmBackend,
    /// GGUF file for `backend = "local"`; empty means the chat model installed by
    /// `sandra models fetch` (recorded in `<data_dir>/models/manifest.json`).
    pub model: PathBuf,
    pub device: sandra_models::chat::DeviceChoice,
    /// CPU kernels for prompts: "repacked" (fast, about +1 GB for a 1.5B model), "compact"
    /// (weights held once; prompts about 2.5× slower without AMX) or "auto" (the default:
    /// "compact" on CPUs with AMX, where prompts of 32 positions and more take Sandra's AMX
    /// kernel in either mode and compact measured faster, else "repacked").
    pub cpu_prefill: sandra_models::chat::CpuPrefill,
    /// Upper bound on the prompt + reply tokens (the model's own window may be smaller).
    pub context_tokens: usize,
    /// No longer used: the local model queues every turn fairly (round-robin by conversation)
    /// and refuses none. Still accepted so that older config files load.
    pub queue: usize,
    /// Replies the local model decodes together, one token each per batched step.
    pub parallel: usize,
    /// Memory for the local model's keys and values kept between turns, in MiB (one cache per
    /// conversation, least recently used evicted first; 0 keeps none but the shared system
    /// prompt).
    pub kv_cache_mb: usize,
    pub system_prompt: String,
    pub sampling: SamplingConfig,
    pub openai: OpenAiConfig,
}

/// `[llm.sampling]`: how tokens are chosen (see `sandra_models::chat::SamplingParams`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    pub temperature: f64,
    pub top_p: f64,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: Option<u64>,
    pub max_new_tokens: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        sandra_models::chat::SamplingParams::default().into()
    }
}

impl From<sandra_models::chat::SamplingParams> for SamplingConfig {
    fn from(p: sandra_models::chat::SamplingParams) -> Self {
        Self {
            temperature: p.temperature,
            top_p: p.top_p,
            repeat_penalty: p.repeat_penalty,
            repeat_last_n: p.repeat_last_n,
            seed: p.seed,
            max_new_tokens: p.max_new_tokens,
        }
    }
}

impl SamplingConfig {
    pub fn params(&self) -> sandra_models::chat::SamplingParams {
        sandra_models::chat::SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
            max_new_tokens: self.max_new_tokens,
        }
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            backend: LlmBackend::Local,
            model: PathBuf::new(),
            device: Default::default(),
            cpu_prefill: Default::default(),
            context_tokens: 4096,
            queue: 16,
            parallel: sandra_models::chat::LocalOptions::default().parallel,
            kv_cache_mb: sandra_models::chat::LocalOptions::default().kv_cache_mb,
            system_prompt: sandra_actors::llm_brain::DEFAULT_SYSTEM_PROMPT.into(),
            sampling: Default::default(),
            openai: OpenAiConfig::default(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// Server root, e.g. `http://127.0.0.1:8081` (llama-server) or `http://127.0.0.1:11434` (Ollama).
    pub base_url: String,
    pub model: String,
    pub api_key: SecretString,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The served model's context window in tokens.
    pub context_tokens: usize,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            model: String::new(),
            api_key: SecretString::default(),
            timeout: Duration::from_secs(120),
            context_tokens: 8192,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    /// Webhook requests processed at once; more are answered 503 (Meta retries them).
    pub max_in_flight: usize,
    /// Largest webhook body accepted, in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// A connection whose request head (line and headers) has not fully arrived this long
    /// after the connection opened, or after its previous response, is closed. Frees the slots
    /// of idle and slow-loris connections.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request not answered this long after its head arrived, body upload included, gets
    /// 408. Also the longest shutdown waits for requests in progress.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Open connections at most; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// The public https:// address Meta calls (the proxy in front of `bind`), without the
    /// webhook path. Empty: not known, `sandra doctor` skips the end-to-end handshake.
    pub public_url: String,
    /// Believe the reverse proxy's `X-Forwarded-For` (the Admin Portal's per-client login
    /// limit) and `X-Forwarded-Proto` (its `Secure` cookie). Only when a proxy that sets them is
    /// the only way in: otherwise any client could claim any address.
    pub trust_proxy: bool,
    /// How model threads give way to the webhook runtime: `"idle"` (`SCHED_IDLE`, default)
    /// or `"nice"` (nice +10 only). See [`sandra_models::priority::ModelThreads`].
    pub model_threads: sandra_models::priority::ModelThreads,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".parse().expect("valid default"),
            max_in_flight: 256,
            max_body_bytes: 3 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            public_url: String::new(),
            trust_proxy: false,
            model_threads: sandra_models::priority::ModelThreads::Idle,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// How long message ids are remembered for de-duplication (at least 7 days).
    #[serde(with = "humantime_serde")]
    pub dedup_retention: Duration,
    /// How long sent or failed replies are kept (at least 1 day: late status webhooks need them).
    #[serde(with = "humantime_serde")]
    pub outbox_retention: Duration,
    /// How long dead-lettered bodies are kept for a human to look at (at least 1 day).
    #[serde(with = "humantime_serde")]
    pub dead_letter_retention: Duration,
    /// How long an idle conversation's memory is kept; zero keeps it forever (else at least
    /// 1 day).
    #[serde(with = "humantime_serde")]
    pub session_retention: Duration,
    /// Encrypt personal data in the database (message bodies, transcripts, history, summaries,
    /// accounts, replies) with a key derived from the master key.
    pub encrypt: bool,
    /// The master key file, created (0600) on first start when no key is given by
    /// `SANDRA_MASTER_KEY` or the systemd credential `master_key`. Empty: `<data_dir>/master.key`.
    pub master_key_file: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            dedup_retention: Duration::from_secs(8 * 24 * 3600),
            outbox_retention: Duration::from_secs(30 * 24 * 3600),
            dead_letter_retention: Duration::from_secs(30 * 24 * 3600),
            session_retention: Duration::from_secs(365 * 24 * 3600),
            encrypt: true,
            master_key_file: PathBuf::new(),
        }
    }
}

impl StorageConfig {
    /// Where the master key file is (`master_key_file`, else `<data_dir>/master.key`).
    pub fn master_key_path(&self) -> PathBuf {
        if self.master_key_file.as_os_str().is_empty() {
            self.data_dir.join("master.key")
        } else {
            self.master_key_file.clone()
        }
    }

    /// The retention policy the store's sweeper applies.
    pub fn retention(&self) -> sandra_actors::store::Retention {
        sandra_actors::store::Retention {
            dedup: self.dedup_retention,
            outbox: self.outbox_retention,
            dead_letter: self.dead_letter_retention,
            session: (!self.session_retention.is_zero()).then_some(self.session_retention),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhatsAppConfig {
    pub phone_number_id: String,
    pub access_token: SecretString,
    pub verify_token: SecretString,
    pub app_secret: SecretString,
    pub api_version: String,
    pub graph_base_url: String,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The WhatsApp Business Account id; `sandra doctor` checks the app's webhook subscription
    /// on it when set.
    pub business_account_id: String,
    /// The approved template sent once when a reply is held because the 24-hour window closed.
    pub reopen_template: ReopenTemplate,
}

/// `[whatsapp.reopen_template]`: an approved template (no parameters) inviting the user to
/// write again. An empty name: no template; held replies wait for the user's next message.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ReopenTemplate {
    pub name: String,
    /// The template's language code, e.g. `en_US`.
    pub language: String,
}

impl Default for ReopenTemplate {
    fn default() -> Self {
        Self {
            name: String::new(),
            language: "en_US".into(),
        }
    }
}

/// `sandra check-config` prints the config with `Debug`: a secret shows as `[redacted]`, or `""`
/// when it is not set, so the operator sees which ones are missing.
struct Shown<'a>(&'a SecretString);

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.expose_secret().is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            base_url,
            model,
            api_key,
            timeout,
            context_tokens,
        } = self;
        f.debug_struct("OpenAiConfig")
            .field("base_url", base_url)
            .field("model", model)
            .field("api_key", &Shown(api_key))
            .field("timeout", timeout)
            .field("context_tokens", context_tokens)
            .finish()
    }
}

impl std::fmt::Debug for WhatsAppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a new field cannot be left out of the output by accident.
        let Self {
            phone_number_id,
            access_token,
            verify_token,
            app_secret,
            api_version,
            graph_base_url,
            request_timeout,
            business_account_id,
            reopen_template,
        } = self;
        f.debug_struct("WhatsAppConfig")
            .field("phone_number_id", phone_number_id)
            .field("access_token", &Shown(access_token))
            .field("verify_token", &Shown(verify_token))
            .field("app_secret", &Shown(app_secret))
            .field("api_version", api_version)
            .field("graph_base_url", graph_base_url)
            .field("request_timeout", request_timeout)
            .field("business_account_id", business_account_id)
            .field("reopen_template", reopen_template)
            .finish()
    }
}

impl Default for WhatsAppConfig {
    fn default() -> Self {
        Self {
            phone_number_id: String::new(),
            access_token: SecretString::default(),
            verify_token: SecretString::default(),
            app_secret: SecretString::default(),
            api_version: "v26.0".into(),
            graph_base_url: "https://graph.facebook.com".into(),
            request_timeout: Duration::from_secs(20),
            business_account_id: String::new(),
            reopen_template: ReopenTemplate::default(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS), `smtps://user:pass@host:465`
    /// (implicit TLS), `smtp://host:25` (plain, a local relay). Empty: linking is off. Holds the
    /// password: prefer the environment (`SANDRA_SMTP_URL`).
    pub smtp_url: SecretString,
    /// The sender of code mails, e.g. `Sandra <sandra@example.org>` (`SANDRA_EMAIL_FROM`).
    pub from: String,
    /// Tries per code mail when the server is unreachable or answers 4xx; at least 1.
    pub send_attempts: u32,
    /// Pause before the second try, doubled for each next one.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// One SMTP conversation at most this long; at least 1s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_url: SecretString::default(),
            from: String::new(),
            send_attempts: 3,
            retry_delay: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
        }
    }
}

impl EmailConfig {
    pub fn enabled(&self) -> bool {
        !self.smtp_url.expose_secret().is_empty()
    }
}

impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            smtp_url,
            from,
            send_attempts,
            retry_delay,
            timeout,
        } = self;
        f.debug_struct("EmailConfig")
            .field("smtp_url", &Shown(smtp_url))
            .field("from", from)
            .field("send_attempts", send_attempts)
            .field("retry_delay", retry_delay)
            .field("timeout", timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationConfig {
    pub bot_name: String,
    pub max_history_turns: usize,
    pub typing_indicator: bool,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A turn is given up (with an apology) when no model work finished anywhere for this
    /// long: the model is stuck. Waiting behind other conversations does not count.
    #[serde(with = "humantime_serde")]
    pub brain_timeout: Duration,
    /// And when it waited this long in all, however busy the models are.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// 1:1 chats: a turn not answered after this long gets one "got it, answering in a
    /// moment" first. Zero: never.
    #[serde(with = "humantime_serde")]
    pub wait_notice_after: Duration,
    /// Groups: turns of history kept and shown to the brain (chatter included).
    pub group_context_messages: usize,
    /// Groups: characters of history kept and shown to the brain, all turns together.
    pub group_context_chars: usize,
    /// Offer linking by email once, in the first reply to a new 1:1 chat (needs `[email]`).
    pub offer_linking: bool,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        Self {
            bot_name: "Sandra".into(),
            max_history_turns: 40,
            typing_indicator: true,
            idle_timeout: Duration::from_secs(600),
            brain_timeout: Duration::from_secs(300),
            max_wait: Duration::from_secs(1200),
            wait_notice_after: Duration::from_secs(10),
            group_context_messages: 30,
            group_context_chars: 12_000,
            offer_linking: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    pub rate_per_second: u32,
    pub recipient_burst: u32,
    #[serde(with = "humantime_serde")]
    pub recipient_window: Duration,
    pub max_in_flight: usize,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub reconcile_wait: Duration,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            rate_per_second: 80,
            recipient_burst: 3,
            recipient_window: Duration::from_secs(18),
            max_in_flight: 32,
            max_attempts: 12,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(600),
            reconcile_wait: Duration::from_secs(30),
        }
    }
}

impl SenderConfig {
    pub fn pacing(&self) -> sandra_actors::sender::Pacing {
        sandra_actors::sender::Pacing {
            rate_per_second: self.rate_per_second,
            recipient_burst: self.recipient_burst,
            recipient_window: self.recipient_window,
            max_in_flight: self.max_in_flight,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            max_attempts: self.max_attempts,
            reconcile_wait: self.reconcile_wait,
        }
    }
}

/// `[limits]` (see `sandra_actors::limits`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sustained messages per minute per sender; 0 turns the rate limit off.
    pub messages_per_minute: u32,
    /// Messages a sender may send back to back before the sustained rate applies.
    pub burst: u32,
    /// Numbers or country prefixes ("+34", "34600111222") that may talk to Sandra; empty =
    /// everyone.
    pub allow: Vec<String>,
    /// Numbers or country prefixes Sandra ignores (wins over `allow`).
    pub block: Vec<String>,
    /// Longer messages are cut to this many characters (and the model is told).
    pub max_message_chars: usize,
    /// At most this many inputs are answered in one turn; the rest wait for the next.
    pub max_batch_inputs: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            messages_per_minute: 20,
            burst: 10,
            allow: Vec::new(),
            block: Vec::new(),
            max_message_chars: 4000,
            max_batch_inputs: 10,
        }
    }
}

impl LimitsConfig {
    pub fn policy(&self) -> sandra_actors::limits::LimitsPolicy {
        sandra_actors::limits::LimitsPolicy {
            messages_per_minute: self.messages_per_minute,
            burst: self.burst,
            allow: self.allow.clone(),
            block: self.block.clone(),
            max_message_chars: self.max_message_chars,
            max_batch_inputs: self.max_batch_inputs,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `sandra=debug,info`. `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

fn key_err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Parses TOML text (`path` is only for messages).
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.into(),
                    reason: e.to_string(),
                })?;
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let reason = e.into_inner().to_string();
            ConfigError::Key { key, reason }
        })
    }

    /// Loads `path` (or the defaults when `None`), applies the environment, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    /// [`Config::load`] with an explicit environment (tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
                Self::from_toml(&text, &p.display().to_string())?
            }
            None => Self::default(),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for (key, var) in STORABLE_KEYS {
            if env(var).is_some() {
                self.set_by_env.insert(key);
            }
        }
        let w = &mut self.whatsapp;
        if let Some(v) = env("WHATSAPP_PHONE_NUMBER_ID") {
            w.phone_number_id = v;
        }
        if let Some(v) = env("WHATSAPP_ACCESS_TOKEN") {
            w.access_token = v.into();
        }
        if let Some(v) = env("WHATSAPP_VERIFY_TOKEN") {
            w.verify_token = v.into();
        }
        if let Some(v) = env("WHATSAPP_APP_SECRET") {
            w.app_secret = v.into();
        }
        if let Some(v) = env("WHATSAPP_API_VERSION") {
            w.api_version = v;
        }
        if let Some(v) = env("WHATSAPP_GRAPH_BASE_URL") {
            w.graph_base_url = v;
        }
        if let Some(v) = env("WHATSAPP_BUSINESS_ACCOUNT_ID") {
            w.business_account_id = v;
        }
        if let Some(v) = env("SANDRA_PUBLIC_URL") {
            self.server.public_url = v;
        }
        if let Some(v) = env("SANDRA_LLM_API_KEY") {
            self.llm.openai.api_key = v.into();
        }
        if let Some(v) = env("SANDRA_VISION_API_KEY") {
            self.vision.remote_api_key = v.into();
        }
        if let Some(v) = env("SANDRA_TRANSCRIPTION_API_KEY") {
            self.transcription.api_key = v.into();
        }
        if let Some(v) = env("SANDRA_SMTP_URL") {
            self.email.smtp_url = v.into();
        }
        if let Some(v) = env("SANDRA_EMAIL_FROM") {
            self.email.from = v;
        }
        if let Some(v) = env("SANDRA_BIND") {
            self.server.bind = v.parse().map_err(|e| ConfigError::Env {
                var: "SANDRA_BIND".into(),
                reason: format!("{e} (expected host:port, e.g. 127.0.0.1:8080)"),
            })?;
        }
        if let Some(v) = env("SANDRA_TRUST_PROXY") {
            self.server.trust_proxy = match v.as_str() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => {
                    return Err(ConfigError::Env {
                        var: "SANDRA_TRUST_PROXY".into(),
                        reason: format!("`{v}` is not a boolean (true, false, 1 or 0)"),
                    });
                }
            };
        }
        if let Some(v) = env("SANDRA_DATA_DIR") {
            if v.is_empty() {
                return Err(ConfigError::Env {
                    var: "SANDRA_DATA_DIR".into(),
                    reason: "must not be empty".into(),
                });
            }
            self.storage.data_dir = PathBuf::from(v);
        }
        Ok(())
    }

    /// Layers stored values (`sandra secrets set`, the portal) over the file: each key of
    /// [`STORABLE_KEYS`] that `stored` has and no environment variable set takes the stored
    /// value. Validates again, naming the stored key at fault.
    pub fn apply_stored(
        &mut self,
        stored: impl Fn(&str) -> Option<SecretString>,
    ) -> Result<(), ConfigError> {
        let mut applied = Vec::new();
        for (key, _) in STORABLE_KEYS {
            if self.set_by_env.contains(key) {
                continue;
            }
            let Some(v) = stored(key) else { continue };
            applied.push(*key);
            match *key {
                "whatsapp.access_token" => self.whatsapp.access_token = v,
                "whatsapp.app_secret" => self.whatsapp.app_secret = v,
                "whatsapp.verify_token" => self.whatsapp.verify_token = v,
                "whatsapp.phone_number_id" => {
                    self.whatsapp.phone_number_id = v.expose_secret().to_string()
                }
                "whatsapp.api_version" => self.whatsapp.api_version = v.expose_secret().to_string(),
                "email.smtp_url" => self.email.smtp_url = v,
                "llm.openai.api_key" => self.llm.openai.api_key = v,
                "vision.remote_api_key" => self.vision.remote_api_key = v,
                "transcription.api_key" => self.transcription.api_key = v,
                _ => unreachable!("every STORABLE_KEYS entry has an arm"),
            }
        }
        self.validate().map_err(|e| match e {
            ConfigError::Key { key, reason } if applied.contains(&key.as_str()) => {
                ConfigError::Key {
                    key,
                    reason: format!("{reason} (a stored value: see `sandra secrets list`)"),
                }
            }
            e => e,
        })
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = &self.whatsapp.api_version;
        let ok_version = v
            .strip_prefix('v')
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.chars().all(|c| c.is_ascii_digit())
                    && b.chars().all(|c| c.is_ascii_digit())
            });
        if !ok_version {
            return Err(key_err(
                "whatsapp.api_version",
                format!("{v:?} is not a Graph API version like \"v26.0\""),
            ));
        }
        let url = &self.whatsapp.graph_base_url;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(key_err(
                "whatsapp.graph_base_url",
                format!("{url:?} must start with https:// (or http:// for a local fake)"),
            ));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(key_err("storage.data_dir", "must not be empty"));
        }
        let public = &self.server.public_url;
        if !public.is_empty()
            && (!(public.starts_with("https://") || public.starts_with("http://"))
                || public.contains(['?', '#']))
        {
            return Err(key_err(
                "server.public_url",
                format!(
                    "{public:?} must be an https:// URL without query, like \"https://sandra.example.org\""
                ),
            ));
        }
        let waba = &self.whatsapp.business_account_id;
        if !waba.chars().all(|c| c.is_ascii_digit()) {
            return Err(key_err(
                "whatsapp.business_account_id",
                format!("{waba:?} is not a WhatsApp Business Account id (digits only)"),
            ));
        }
        let t = &self.whatsapp.reopen_template;
        if !t.name.is_empty() {
            // Meta's template names: lowercase letters, digits and underscores.
            if !t
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(key_err(
                    "whatsapp.reopen_template.name",
                    format!(
                        "{:?}: template names are lowercase letters, digits and _",
                        t.name
                    ),
                ));
            }
            let lang_ok = (2..=8).contains(&t.language.len())
                && t.language
                    .chars()
                    .all(|c| c.is_ascii_alphabetic() || c == '_');
            if !lang_ok {
                return Err(key_err(
                    "whatsapp.reopen_template.language",
                    format!("{:?} is not a language code like \"en_US\"", t.language),
                ));
            }
        }
        let key_file = &self.storage.master_key_file;
        if !key_file.as_os_str().is_empty()
            && (key_file.file_name().is_none() || key_file.to_string_lossy().ends_with('/'))
        {
            return Err(key_err(
                "storage.master_key_file",
                format!("{key_file:?} must name a file (empty: <data_dir>/master.key)"),
            ));
        }
        if self.storage.dedup_retention < Duration::from_secs(7 * 24 * 3600) {
            return Err(key_err(
                "storage.dedup_retention",
                "must be at least 7d: Meta retries webhooks for up to 7 days",
            ));
        }
        let day = Duration::from_secs(24 * 3600);
        if self.storage.outbox_retention < day {
            return Err(key_err(
                "storage.outbox_retention",
                "must be at least 1d: status webhooks for a reply can arrive a day later",
            ));
        }
        if self.storage.dead_letter_retention < day {
            return Err(key_err(
                "storage.dead_letter_retention",
                "must be at least 1d, so someone can look at what was dead-lettered",
            ));
        }
        let s = self.storage.session_retention;
        if !s.is_zero() && s < day {
            return Err(key_err(
                "storage.session_retention",
                "must be 0 (keep forever) or at least 1d: it deletes conversation memory",
            ));
        }
        let e = &self.email;
        if e.enabled() {
            let url = e.smtp_url.expose_secret();
            // The URL is a secret: errors name the key, never its value.
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                return Err(key_err(
                    "email.smtp_url",
                    "must start with smtp:// (plain or STARTTLS, see ?tls=) or smtps:// (TLS)",
                ));
            }
            if !e.from.contains('@') {
                return Err(key_err(
                    "email.from",
                    format!(
                        "{:?} is not a sender address like \"Sandra <sandra@example.org>\" (needed when email.smtp_url is set)",
                        e.from
                    ),
                ));
            }
        }
        if e.send_attempts == 0 {
            return Err(key_err("email.send_attempts", "must be at least 1"));
        }
        if e.timeout < Duration::from_secs(1) {
            return Err(key_err("email.timeout", "must be at least 1s"));
        }
        if self.server.max_in_flight == 0 {
            return Err(key_err("server.max_in_flight", "must be at least 1"));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(key_err("server.max_body_bytes", "must be at least 1024"));
        }
        // Below these, ordinary clients on slow links would be cut off mid-request.
        if self.server.header_timeout < Duration::from_millis(100) {
            return Err(key_err("server.header_timeout", "must be at least 100ms"));
        }
        if self.server.request_timeout < Duration::from_secs(1) {
            return Err(key_err("server.request_timeout", "must be at least 1s"));
        }
        if self.server.max_connections == 0 {
            return Err(key_err("server.max_connections", "must be at least 1"));
        }
        if !(1..=1000).contains(&self.sender.rate_per_second) {
            return Err(key_err(
                "sender.rate_per_second",
                "must be between 1 and 1000 (Meta's limit per number)",
            ));
        }
        if self.sender.recipient_burst == 0 {
            return Err(key_err("sender.recipient_burst", "must be at least 1"));
        }
        if self.sender.max_in_flight == 0 {
            return Err(key_err("sender.max_in_flight", "must be at least 1"));
        }
        if self.sender.max_attempts == 0 {
            return Err(key_err("sender.max_attempts", "must be at least 1"));
        }
        if self.conversation.max_history_turns == 0 {
            return Err(key_err(
                "conversation.max_history_turns",
                "must be at least 1",
            ));
        }
        if self.conversation.brain_timeout.is_zero() {
            return Err(key_err(
                "conversation.brain_timeout",
                "must be more than 0s",
            ));
        }
        if self.conversation.max_wait < self.conversation.brain_timeout {
            return Err(key_err(
                "conversation.max_wait",
                "must be at least conversation.brain_timeout",
            ));
        }
        if self.conversation.group_context_messages == 0 {
            return Err(key_err(
                "conversation.group_context_messages",
                "must be at least 1",
            ));
        }
        if self.conversation.group_context_chars < 200 {
            return Err(key_err(
                "conversation.group_context_chars",
                "must be at least 200",
            ));
        }
        let l = &self.llm;
        if l.context_tokens < 256 {
            return Err(key_err("llm.context_tokens", "must be at least 256"));
        }
        if !(1..=64).contains(&l.parallel) {
            return Err(key_err("llm.parallel", "must be between 1 and 64"));
        }
        if l.kv_cache_mb > 1 << 20 {
            return Err(key_err(
                "llm.kv_cache_mb",
                "must be at most 1048576 (1 TiB)",
            ));
        }
        if l.sampling.max_new_tokens == 0 || l.sampling.max_new_tokens >= l.context_tokens {
            return Err(key_err(
                "llm.sampling.max_new_tokens",
                "must be at least 1 and less than llm.context_tokens",
            ));
        }
        if !(0.0..=5.0).contains(&l.sampling.temperature) {
            return Err(key_err(
                "llm.sampling.temperature",
                "must be between 0 and 5",
            ));
        }
        if !(0.0 < l.sampling.top_p && l.sampling.top_p <= 1.0) {
            return Err(key_err("llm.sampling.top_p", "must be in (0, 1]"));
        }
        if l.backend == LlmBackend::Openai {
            if !(l.openai.base_url.starts_with("http://")
                || l.openai.base_url.starts_with("https://"))
            {
                return Err(key_err(
                    "llm.openai.base_url",
                    "must be an http(s) URL when llm.backend = \"openai\"",
                ));
            }
            if l.openai.model.is_empty() {
                return Err(key_err(
                    "llm.openai.model",
                    "must be set when llm.backend = \"openai\"",
                ));
            }
        }
        let lim = &self.limits;
        if lim.messages_per_minute > 0 && lim.burst == 0 {
            return Err(key_err(
                "limits.burst",
                "must be at least 1 while limits.messages_per_minute is set",
            ));
        }
        for (name, list) in [("limits.allow", &lim.allow), ("limits.block", &lim.block)] {
            for (i, entry) in list.iter().enumerate() {
                if sandra_actors::limits::normalise_number(entry).is_none() {
                    return Err(key_err(
                        &format!("{name}[{i}]"),
                        format!(
                            "{entry:?} is not a phone number or country prefix like \"+34\" or \"34600111222\""
                        ),
                    ));
                }
            }
        }
        if lim.max_message_chars == 0 {
            return Err(key_err("limits.max_message_chars", "must be at least 1"));
        }
        if lim.max_batch_inputs == 0 {
            return Err(key_err("limits.max_batch_inputs", "must be at least 1"));
        }
        if self.transcription.queue == 0 {
            return Err(key_err("transcription.queue", "must be at least 1"));
        }
        if self.transcription.max_jobs == 0 {
            return Err(key_err("transcription.max_jobs", "must be at least 1"));
        }
        let t = &self.transcription;
        if t.enabled && t.backend == TranscriptionBackend::Openai {
            if !(t.base_url.starts_with("http://") || t.base_url.starts_with("https://")) {
                return Err(key_err(
                    "transcription.base_url",
                    "must be an http(s) URL when transcription.backend = \"openai\"",
                ));
            }
            if t.model.trim().is_empty() {
                return Err(key_err(
                    "transcription.model",
                    "must be set when transcription.backend = \"openai\"",
                ));
            }
            if t.timeout.is_zero() {
                return Err(key_err("transcription.timeout", "must be more than 0s"));
            }
        }
        let voice = &self.voice;
        if voice.queue == 0 {
            return Err(key_err("voice.queue", "must be at least 1"));
        }
        if voice.max_jobs == 0 {
            return Err(key_err("voice.max_jobs", "must be at least 1"));
        }
        if !(100..=4000).contains(&voice.note_chars) {
            return Err(key_err("voice.note_chars", "must be between 100 and 4000"));
        }
        if voice.timeout.is_zero() {
            return Err(key_err("voice.timeout", "must be more than 0s"));
        }
        if let Some(p) = voice
            .voices
            .iter()
            .find(|p| p.extension().is_none_or(|e| e != "onnx"))
        {
            return Err(key_err(
                "voice.voices",
                format!("{} is not a Piper voice's .onnx file", p.display()),
            ));
        }
        let max_audio = self.transcription.max_audio_seconds;
        // Written so that NaN fails too.
        if !(max_audio > 0.0 && max_audio <= 3600.0) {
            return Err(key_err(
                "transcription.max_audio_seconds",
                "must be more than 0 and at most 3600",
            ));
        }
        let v = &self.vision;
        for (key, value) in [
            ("vision.max_pixels", v.max_pixels as usize),
            ("vision.max_jobs", v.max_jobs),
            ("vision.queue", v.queue),
            ("vision.max_pages", v.max_pages),
            ("vision.max_chars", v.max_chars),
            ("vision.scene_max_tokens", v.scene_max_tokens),
        ] {
            if value == 0 {
                return Err(key_err(key, "must be at least 1"));
            }
        }
        if v.max_ocr_pages > v.max_pages {
            return Err(key_err(
                "vision.max_ocr_pages",
                "must be at most vision.max_pages",
            ));
        }
        if v.enabled && v.scene == SceneBackend::Remote {
            if !(v.remote_url.starts_with("http://") || v.remote_url.starts_with("https://")) {
                return Err(key_err(
                    "vision.remote_url",
                    "must be an http(s) URL when vision.scene = \"remote\"",
                ));
            }
            if v.remote_model.is_empty() {
                return Err(key_err(
                    "vision.remote_model",
                    "must be set when vision.scene = \"remote\"",
                ));
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(key_err("log.format", "must be \"text\" or \"json\""));
        }
        Ok(())
    }

    /// The system prompt in effect (the built-in persona when the key is empty).
    pub fn system_prompt(&self) -> &str {
        if self.llm.system_prompt.trim().is_empty() {
            sandra_actors::llm_brain::DEFAULT_SYSTEM_PROMPT
        } else {
            &self.llm.system_prompt
        }
    }

    /// What is missing before Sandra can talk to Meta (warned at start-up, shown in /readyz).
    pub fn missing_whatsapp_settings(&self) -> Vec<&'static str> {
        let w = &self.whatsapp;
        let mut missing = Vec::new();
        if w.phone_number_id.is_empty() {
            missing.push("whatsapp.phone_number_id (WHATSAPP_PHONE_NUMBER_ID)");
        }
        if w.access_token.expose_secret().is_empty() {
            missing.push("whatsapp.access_token (WHATSAPP_ACCESS_TOKEN)");
        }
        if w.verify_token.expose_secret().is_empty() {
            missing.push("whatsapp.verify_token (WHATSAPP_VERIFY_TOKEN)");
        }
        if w.app_secret.expose_secret().is_empty() {
            missing.push("whatsapp.app_secret (WHATSAPP_APP_SECRET)");
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[server]\nbnd = \"1.2.3.4:5\"\n", "c.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("server") && s.contains("bnd"), "{s}");
    }

    #[test]
    fn unknown_nested_key_is_named() {
        let e = Config::from_toml("[llm.sampling]\ntemprature = 0.1\n", "c").unwrap_err();
        assert!(
            e.to_string().contains("llm.sampling") && e.to_string().contains("temprature"),
            "{e}"
        );
    }

    #[test]
    fn bad_value_is_named() {
        let e = Config::from_toml("[server]\nbind = \"not an address\"\n", "c").unwrap_err();
        assert!(e.to_string().contains("`server.bind`"), "{e}");
        let e = Config::from_toml("[conversation]\nidle_timeout = \"soon\"\n", "c").unwrap_err();
        assert!(e.to_string().contains("`conversation.idle_timeout`"), "{e}");
        let mut c = Config::default();
        c.sender.rate_per_second = 5000;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("sender.rate_per_second")
        );
    }

    /// The batching and cache keys load, default sensibly, and are named when wrong; the old
    /// `llm.queue` still loads (ignored) so older config files keep working.
    #[test]
    fn llm_parallel_and_kv_cache_keys_are_read_and_validated() {
        let c =
            Config::from_toml("[llm]\nparallel = 6\nkv_cache_mb = 256\nqueue = 3\n", "c").unwrap();
        assert_eq!((c.llm.parallel, c.llm.kv_cache_mb), (6, 256));
        c.validate().unwrap();
        let d = Config::default();
        assert!(d.llm.parallel >= 1 && d.llm.kv_cache_mb >= 64);
        for (toml, key) in [
            ("[llm]\nparallel = 0\n", "llm.parallel"),
            ("[llm]\nparallel = 1000\n", "llm.parallel"),
            ("[llm]\nkv_cache_mb = 99999999\n", "llm.kv_cache_mb"),
        ] {
            let e = Config::from_toml(toml, "c")
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(e.to_string().contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn doctor_and_template_keys_are_read_and_validated() {
        let c = Config::from_toml(
            "[server]\npublic_url = \"https://sandra.example.org\"\n\
             [whatsapp]\nbusiness_account_id = \"102290129340398\"\n\
             [whatsapp.reopen_template]\nname = \"sandra_reopen\"\nlanguage = \"pt_BR\"\n",
            "c",
        )
        .unwrap();
        assert_eq!(c.server.public_url, "https://sandra.example.org");
        assert_eq!(c.whatsapp.reopen_template.language, "pt_BR");
        let named = |tweak: &dyn Fn(&mut Config), key: &str| {
            let mut c = Config::default();
            tweak(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        };
        named(
            &|c| c.server.public_url = "sandra.example.org".into(),
            "server.public_url",
        );
        named(
            &|c| c.whatsapp.business_account_id = "WABA-1".into(),
            "whatsapp.business_account_id",
        );
        named(
            &|c| c.whatsapp.reopen_template.name = "Reopen Chat".into(),
            "whatsapp.reopen_template.name",
        );
        named(
            &|c| {
                c.whatsapp.reopen_template.name = "reopen".into();
                c.whatsapp.reopen_template.language = String::new();
            },
            "whatsapp.reopen_template.language",
        );
        let env = |k: &str| match k {
            "SANDRA_PUBLIC_URL" => Some("https://x.example".to_string()),
            "WHATSAPP_BUSINESS_ACCOUNT_ID" => Some("42".to_string()),
            _ => None,
        };
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(c.server.public_url, "https://x.example");
        assert_eq!(c.whatsapp.business_account_id, "42");
    }

    #[test]
    fn group_context_bounds_are_read_and_validated() {
        let c = Config::from_toml(
            "[conversation]\ngroup_context_messages = 12\ngroup_context_chars = 3000\n",
            "c",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.conversation.group_context_messages, 12);
        assert_eq!(c.conversation.group_context_chars, 3000);
        for (toml, key) in [
            (
                "group_context_messages = 0",
                "conversation.group_context_messages",
            ),
            (
                "group_context_chars = 10",
                "conversation.group_context_chars",
            ),
        ] {
            let c = Config::from_toml(&format!("[conversation]\n{toml}\n"), "c").unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn remote_transcription_is_read_and_validated() {
        let c = Config::from_toml(
            "[transcription]\nbackend = \"openai\"\nbase_url = \"http://10.0.0.5:8000\"\nmodel = \"whisper-small\"\ntimeout = \"30s\"\n",
            "c",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.transcription.backend, TranscriptionBackend::Openai);
        assert_eq!(c.transcription.timeout, Duration::from_secs(30));
        for (toml, key) in [
            (
                "base_url = \"10.0.0.5:8000\"\nmodel = \"m\"",
                "transcription.base_url",
            ),
            ("base_url = \"http://h\"", "transcription.model"),
            (
                "base_url = \"http://h\"\nmodel = \"m\"\ntimeout = \"0s\"",
                "transcription.timeout",
            ),
        ] {
            let c = Config::from_toml(
                &format!("[transcription]\nbackend = \"openai\"\n{toml}\n"),
                "c",
            )
            .unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
        // The key comes from the environment like the LLM's, and is never shown.
        let env =
            |k: &str| (k == "SANDRA_TRANSCRIPTION_API_KEY").then(|| "sk-HEAR-secret".to_string());
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(c.transcription.api_key.expose_secret(), "sk-HEAR-secret");
        assert!(!format!("{c:?}").contains("sk-HEAR-secret"));
    }

    #[test]
    fn turn_waiting_bounds_are_read_and_validated() {
        let c = Config::from_toml(
            "[conversation]\nbrain_timeout = \"1m\"\nmax_wait = \"30m\"\nwait_notice_after = \"0s\"\n",
            "c",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.conversation.brain_timeout, Duration::from_secs(60));
        assert_eq!(c.conversation.max_wait, Duration::from_secs(1800));
        assert!(c.conversation.wait_notice_after.is_zero());
        let d = Config::default().conversation;
        assert_eq!(d.wait_notice_after, Duration::from_secs(10));
        for (toml, key) in [
            ("brain_timeout = \"0s\"", "conversation.brain_timeout"),
            (
                "brain_timeout = \"10m\"\nmax_wait = \"5m\"",
                "conversation.max_wait",
            ),
        ] {
            let c = Config::from_toml(&format!("[conversation]\n{toml}\n"), "c").unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
        let e =
            Config::from_toml("[conversation]\nwait_notice_after = \"soon\"\n", "c").unwrap_err();
        assert!(e.to_string().contains("wait_notice_after"), "{e}");
    }

    #[test]
    fn storage_encryption_keys_are_read_and_validated() {
        let d = Config::default();
        assert!(d.storage.encrypt);
        assert_eq!(
            d.storage.master_key_path(),
            PathBuf::from("data/master.key")
        );
        let c = Config::from_toml(
            "[storage]\nencrypt = false\nmaster_key_file = \"/etc/sandra/master.key\"\n",
            "c",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(!c.storage.encrypt);
        assert_eq!(
            c.storage.master_key_path(),
            PathBuf::from("/etc/sandra/master.key")
        );
        let c = Config::from_toml("[storage]\nmaster_key_file = \"/etc/sandra/\"\n", "c").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("storage.master_key_file"), "{e}");
    }

    #[test]
    fn server_limits_are_validated_and_named() {
        let c = Config::from_toml(
            "[server]\nheader_timeout = \"2s\"\nrequest_timeout = \"1m\"\nmax_connections = 8\n",
            "c",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.header_timeout, Duration::from_secs(2));
        assert_eq!(c.server.request_timeout, Duration::from_secs(60));
        assert_eq!(c.server.max_connections, 8);
        for (toml, key) in [
            ("header_timeout = \"0s\"", "server.header_timeout"),
            ("request_timeout = \"500ms\"", "server.request_timeout"),
            ("max_connections = 0", "server.max_connections"),
        ] {
            let c = Config::from_toml(&format!("[server]\n{toml}\n"), "c").unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn retention_keys_are_validated() {
        let err = |toml: &str| {
            Config::from_toml(toml, "c")
                .and_then(|c| c.validate().map(|()| c))
                .err()
                .map(|e| e.to_string())
        };
        let e = err("[storage]\ndedup_retention = \"3days\"\n").unwrap();
        assert!(e.contains("storage.dedup_retention"), "{e}");
        let e = err("[storage]\noutbox_retention = \"1h\"\n").unwrap();
        assert!(e.contains("storage.outbox_retention"), "{e}");
        let e = err("[storage]\ndead_letter_retention = \"10min\"\n").unwrap();
        assert!(e.contains("storage.dead_letter_retention"), "{e}");
        let e = err("[storage]\nsession_retention = \"2h\"\n").unwrap();
        assert!(e.contains("storage.session_retention"), "{e}");
        let forever = Config::from_toml("[storage]\nsession_retention = \"0s\"\n", "c").unwrap();
        forever.validate().unwrap();
        assert_eq!(forever.storage.retention().session, None);
        let d = Config::default().storage.retention();
        assert_eq!(d.session, Some(Duration::from_secs(365 * 24 * 3600)));
    }

    #[test]
    fn env_overrides_file_and_secrets_stay_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[whatsapp]\nphone_number_id = \"1\"\naccess_token = \"from-file\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "WHATSAPP_ACCESS_TOKEN" => Some("from-env-TOKEN".to_string()),
            "WHATSAPP_API_VERSION" => Some("v25.0".to_string()),
            "SANDRA_BIND" => Some("127.0.0.1:9999".to_string()),
            _ => None,
        };
        let c = Config::load_with_env(Some(&p), env).unwrap();
        assert_eq!(c.whatsapp.access_token.expose_secret(), "from-env-TOKEN");
        assert_eq!(c.whatsapp.api_version, "v25.0");
        assert_eq!(c.whatsapp.phone_number_id, "1");
        assert_eq!(c.server.bind.port(), 9999);
        assert!(!format!("{c:?}").contains("TOKEN"));
        let bad = |k: &str| (k == "SANDRA_BIND").then(|| "nope".to_string());
        assert!(
            Config::load_with_env(None, bad)
                .unwrap_err()
                .to_string()
                .contains("SANDRA_BIND")
        );
    }

    #[test]
    fn max_audio_seconds_must_be_in_range() {
        for ok in ["1", "90.5", "3600"] {
            let text = format!("[transcription]\nmax_audio_seconds = {ok}\n");
            let c = Config::from_toml(&text, "c").unwrap();
            c.validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["0", "-5", "3600.5", "nan", "inf"] {
            let text = format!("[transcription]\nmax_audio_seconds = {bad}\n");
            let e = Config::from_toml(&text, "c")
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(
                e.to_string().contains("transcription.max_audio_seconds"),
                "{bad}: {e}"
            );
        }
        assert_eq!(Config::default().transcription.max_audio_seconds, 900.0);
    }

    #[test]
    fn voice_settings_are_read_and_each_bad_one_is_named() {
        let c = Config::from_toml(
            "[voice]\nreply = \"always\"\nvoices = [\"/v/en_US-joe-medium.onnx\"]\nnote_chars = 300\ntimeout = \"30s\"\n",
            "c",
        )
        .unwrap();
        assert_eq!(c.voice.reply, VoiceReplyMode::Always);
        assert_eq!(
            c.voice.voices,
            vec![PathBuf::from("/v/en_US-joe-medium.onnx")]
        );
        assert_eq!(c.voice.note_chars, 300);
        assert_eq!(c.voice.timeout, Duration::from_secs(30));
        c.validate().unwrap();
        assert_eq!(Config::default().voice.reply, VoiceReplyMode::Mirror);
        for (toml, key) in [
            ("reply = \"sometimes\"", "voice.reply"),
            ("queue = 0", "voice.queue"),
            ("max_jobs = 0", "voice.max_jobs"),
            ("note_chars = 10", "voice.note_chars"),
            ("timeout = \"0s\"", "voice.timeout"),
            ("voices = [\"/v/joe.wav\"]", "voice.voices"),
        ] {
            let e = Config::from_toml(&format!("[voice]\n{toml}\n"), "c")
                .and_then(|c| c.validate())
                .unwrap_err();
            assert!(e.to_string().contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn transcription_max_jobs_must_be_positive() {
        let e = Config::from_toml("[transcription]\nmax_jobs = 0\n", "c")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("transcription.max_jobs"), "{e}");
        let c = Config::from_toml("[transcription]\nmax_jobs = 2\n", "c").unwrap();
        c.validate().unwrap();
        assert_eq!(c.transcription.max_jobs, 2);
    }

    #[test]
    fn limits_are_validated_naming_the_key() {
        let c = Config::from_toml(
            "[limits]\nallow = [\"+34\", \"1 555 000 1111\"]\nblock = [\"+44\"]\n",
            "c",
        )
        .unwrap();
        c.validate().unwrap();
        let bad = |toml: &str| {
            Config::from_toml(toml, "c")
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        let e = bad("[limits]\nallow = [\"+34\", \"friends\"]\n");
        assert!(
            e.contains("`limits.allow[1]`") && e.contains("friends"),
            "{e}"
        );
        let e = bad("[limits]\nblock = [\"+\"]\n");
        assert!(e.contains("`limits.block[0]`"), "{e}");
        assert!(bad("[limits]\nburst = 0\n").contains("`limits.burst`"));
        assert!(bad("[limits]\nmax_batch_inputs = 0\n").contains("`limits.max_batch_inputs`"));
        assert!(bad("[limits]\nmax_message_chars = 0\n").contains("`limits.max_message_chars`"));
        // 0 per minute turns the rate limit off; the burst then does not matter.
        Config::from_toml("[limits]\nmessages_per_minute = 0\nburst = 0\n", "c")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn llm_api_key_comes_from_the_environment_and_never_prints() {
        let env = |k: &str| (k == "SANDRA_LLM_API_KEY").then(|| "sk-from-env-KEY".to_string());
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(c.llm.openai.api_key.expose_secret(), "sk-from-env-KEY");
        assert!(!format!("{c:?}").contains("sk-from-env-KEY"));
        assert!(!format!("{c:#?}").contains("sk-from-env-KEY"));
    }

    #[test]
    fn debug_output_never_contains_a_secret() {
        let toml = "[whatsapp]\naccess_token = \"tok-FILE-1\"\nverify_token = \"verify-FILE-2\"\n\
                    app_secret = \"app-FILE-3\"\n[llm.openai]\napi_key = \"sk-FILE-4\"\n";
        let from_file = Config::from_toml(toml, "c").unwrap();
        let env = |k: &str| match k {
            "WHATSAPP_ACCESS_TOKEN" => Some("tok-ENV-1".to_string()),
            "WHATSAPP_VERIFY_TOKEN" => Some("verify-ENV-2".to_string()),
            "WHATSAPP_APP_SECRET" => Some("app-ENV-3".to_string()),
            "SANDRA_LLM_API_KEY" => Some("sk-ENV-4".to_string()),
            _ => None,
        };
        let from_env = Config::load_with_env(None, env).unwrap();
        assert_eq!(from_file.whatsapp.app_secret.expose_secret(), "app-FILE-3");
        assert_eq!(
            from_env.whatsapp.verify_token.expose_secret(),
            "verify-ENV-2"
        );
        for c in [&from_file, &from_env] {
            for shown in [format!("{c:?}"), format!("{c:#?}")] {
                for value in ["-FILE-", "-ENV-"] {
                    assert!(!shown.contains(value), "{value} in {shown}");
                }
                assert!(shown.contains("app_secret: [redacted]"), "{shown}");
            }
        }
        // `sandra check-config` shows which secrets are not set.
        let unset = format!("{:?}", Config::default());
        assert!(unset.contains("access_token: \"\""), "{unset}");
        assert!(unset.contains("api_key: \"\""), "{unset}");
    }

    #[test]
    fn vision_keys_are_validated_naming_the_key() {
        for (text, key) in [
            ("[vision]\nmax_pixels = 0\n", "vision.max_pixels"),
            ("[vision]\nmax_jobs = 0\n", "vision.max_jobs"),
            ("[vision]\nmax_chars = 0\n", "vision.max_chars"),
            (
                "[vision]\nmax_pages = 2\nmax_ocr_pages = 3\n",
                "vision.max_ocr_pages",
            ),
            ("[vision]\nscene = \"remote\"\n", "vision.remote_url"),
            (
                "[vision]\nscene = \"remote\"\nremote_url = \"http://x\"\n",
                "vision.remote_model",
            ),
            ("[vision]\nscene = \"cloud\"\n", "vision.scene"),
            ("[vision]\nmax_pixels = -1\n", "vision.max_pixels"),
        ] {
            let e = Config::from_toml(text, "c")
                .and_then(|c| c.validate().map(|()| c))
                .err()
                .unwrap_or_else(|| panic!("{text} was accepted"));
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
        let c = Config::from_toml(
            "[vision]\nscene = \"remote\"\nremote_url = \"http://127.0.0.1:9\"\nremote_model = \"m\"\n",
            "c",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.vision.scene, SceneBackend::Remote);
    }

    #[test]
    fn vision_api_key_comes_from_the_environment_and_never_prints() {
        let env = |k: &str| (k == "SANDRA_VISION_API_KEY").then(|| "sk-VISION-secret".to_string());
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(c.vision.remote_api_key.expose_secret(), "sk-VISION-secret");
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk-VISION-secret"), "{shown}");
        assert!(shown.contains("remote_api_key: [redacted]"), "{shown}");
    }

    #[test]
    fn shipped_config_toml_parses_and_matches_defaults() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
        let c = Config::from_toml(&text, "config.toml").unwrap();
        c.validate().unwrap();
        let d = Config::default();
        assert_eq!(c.server.bind, d.server.bind);
        assert_eq!(c.whatsapp.api_version, d.whatsapp.api_version);
        assert_eq!(c.storage.dedup_retention, d.storage.dedup_retention);
        assert_eq!(c.server.header_timeout, d.server.header_timeout);
        assert_eq!(c.server.request_timeout, d.server.request_timeout);
        assert_eq!(c.server.max_connections, d.server.max_connections);
        assert_eq!(c.limits, d.limits);
        assert_eq!(c.storage.outbox_retention, d.storage.outbox_retention);
        assert_eq!(
            c.storage.dead_letter_retention,
            d.storage.dead_letter_retention
        );
        assert_eq!(c.storage.session_retention, d.storage.session_retention);
        assert_eq!(format!("{:?}", c.vision), format!("{:?}", d.vision));
        assert_eq!(format!("{:?}", c.email), format!("{:?}", d.email));
        assert_eq!(c.conversation.offer_linking, d.conversation.offer_linking);
        assert_eq!(c.conversation.brain_timeout, d.conversation.brain_timeout);
        assert_eq!(c.llm.cpu_prefill, d.llm.cpu_prefill);
        assert_eq!(c.conversation.max_wait, d.conversation.max_wait);
        assert_eq!(
            c.conversation.wait_notice_after,
            d.conversation.wait_notice_after
        );
        assert_eq!(
            format!("{:?}", c.transcription),
            format!("{:?}", d.transcription)
        );
        assert_eq!(format!("{:?}", c.voice), format!("{:?}", d.voice));
        let _ = Config::load_with_env(None, no_env).unwrap();
    }

    #[test]
    fn email_settings_come_from_the_environment_are_checked_and_never_shown() {
        let env = |k: &str| match k {
            "SANDRA_SMTP_URL" => {
                Some("smtp://sandra:PASSWORD-9@mail.example:587?tls=required".into())
            }
            "SANDRA_EMAIL_FROM" => Some("Sandra <sandra@example.org>".into()),
            _ => None,
        };
        let c = Config::load_with_env(None, env).unwrap();
        assert!(c.email.enabled());
        assert_eq!(c.email.from, "Sandra <sandra@example.org>");
        let shown = format!("{c:?}");
        assert!(!shown.contains("PASSWORD-9"), "{shown}");
        assert!(shown.contains("smtp_url: [redacted]"), "{shown}");
        assert!(!Config::default().email.enabled(), "off unless set");

        let err = |toml: &str| {
            let c = Config::from_toml(toml, "t.toml").unwrap();
            c.validate().unwrap_err().to_string()
        };
        let e = err("[email]\nsmtp_url = \"http://u:SECRET@h\"\nfrom = \"a@b.org\"");
        assert!(e.contains("email.smtp_url") && !e.contains("SECRET"), "{e}");
        let e = err("[email]\nsmtp_url = \"smtp://h:25\"");
        assert!(e.contains("email.from"), "{e}");
        let e = err("[email]\nsend_attempts = 0");
        assert!(e.contains("email.send_attempts"), "{e}");
    }
}
