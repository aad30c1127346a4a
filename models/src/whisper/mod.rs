//! Local speech-to-text with Whisper on candle.
//!
//! - [`Transcriber`]: the cloneable async handle the application holds. It owns a
//!   [`crate::worker::ModelWorker`] thread that loads a [`WhisperModel`] and serves one
//!   transcription at a time; the thread runs candle inside its own rayon pool sized by
//!   [`WhisperOptions::threads`]. Or it sends the audio to an OpenAI-compatible server
//!   ([`remote`]).
//! - [`model`]: the encoder/decoder with a self-attention KV cache and cached cross-attention
//!   keys/values (the speed-up over candle-transformers' stock decoder).
//! - [`decode`]: greedy decoding, timestamps suppressed, `suppress_tokens` / begin suppression,
//!   language detection (multilingual models), 30 s windows.
//! - [`mel`]: the log-mel front end and its filter bank, computed in code.
//! - [`ct2`]: CTranslate2 `model.bin` → `model.safetensors` + `config.json` (the installer,
//!   `crate::install`, runs it for `sandra models fetch`); [`gguf`]: quantized GGUF from
//!   converted weights.

pub mod config;
pub mod ct2;
pub mod decode;
mod fastops;
pub mod gguf;
pub mod mel;
pub mod model;
pub mod remote;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use config::Config;
pub use decode::{DecodeMode, WhisperModel};

use crate::worker::{ModelWorker, WorkerError};

/// Why loading or transcribing failed.
#[derive(Debug, thiserror::Error)]
pub enum WhisperError {
    /// A model file is missing or unreadable; `path` names it.
    #[error("cannot load whisper model from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    /// An option cannot be honoured (e.g. a CUDA device in a CPU-only build).
    #[error("invalid whisper options: {0}")]
    Options(String),
    /// candle failed during a forward pass.
    #[error("whisper inference failed: {0}")]
    Inference(String),
    /// Conversion of foreign weights failed.
    #[error("whisper conversion failed: {0}")]
    Convert(String),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The remote transcription server failed (unreachable, timed out, refused, or answered
    /// something that is not a transcription).
    #[error("remote transcription: {0}")]
    Remote(String),
}

pub use crate::device::DeviceChoice;

/// Whisper's device: only its CPU path exists today, so `auto` picks the CPU and an explicit
/// `cuda` is refused rather than silently ignored.
pub(crate) fn resolve_device(choice: DeviceChoice) -> Result<candle_core::Device, WhisperError> {
    match choice {
        DeviceChoice::Auto | DeviceChoice::Cpu => Ok(candle_core::Device::Cpu),
        DeviceChoice::Cuda => Err(WhisperError::Options(format!(
            "device {choice:?} is not compiled into this build"
        ))),
    }
}

/// Transcriber settings (the `[whisper]` section of the config, say).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhisperOptions {
    /// Force a language (`"es"`); `None` or `"auto"` detects it per note (multilingual models).
    pub language: Option<String>,
    /// CPU threads for this model's compute; `None`: all available cores.
    pub threads: Option<usize>,
    pub device: DeviceChoice,
    /// Use `model.gguf` (quantized) when the directory has both it and `model.safetensors`.
    /// Off by default: the encoder's products over 1500 positions run faster in f32, and
    /// [`WhisperOptions::decoder_q8`] already gives the decoder quantized matrices.
    pub prefer_gguf: bool,
    /// Hold the decoder's per-token matrices (self-attention, MLP, output projection) as
    /// `q8_0`, quantized on load. Each generated token reads a quarter of the bytes, which is
    /// what a one-token step is bound by: about 2× faster decoding for Whisper base on a 2-core
    /// CPU. Default on; the encoder and cross-attention keys/values stay f32 either way.
    pub decoder_q8: bool,
    /// Cap on text tokens per 30 s window (default 224).
    pub max_new_tokens: Option<usize>,
    /// Speed/accuracy trade: encode only the note's own frames plus this much trailing
    /// padding (milliseconds) instead of the full 30 s window Whisper was trained on. A 10 s
    /// note then costs about a third of the encoder time. `None` (default): full window.
    pub encoder_trim_margin_ms: Option<u32>,
}

impl Default for WhisperOptions {
    fn default() -> Self {
        Self {
            language: None,
            threads: None,
            device: DeviceChoice::Auto,
            prefer_gguf: false,
            decoder_q8: true,
            max_new_tokens: None,
            encoder_trim_margin_ms: None,
        }
    }
}

/// What was said.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// ISO 639-1 code of the spoken (or configured) language.
    pub language: Option<String>,
    pub audio_seconds: f32,
}

/// The model plus the thread pool its compute runs in; lives on the worker thread.
struct Loaded {
    model: WhisperModel,
    pool: rayon::ThreadPool,
}

type Outcome = Result<Transcript, WhisperError>;

/// Cloneable, `Send + Sync` handle to a Whisper model on its own thread, or to a remote
/// OpenAI-compatible transcription server ([`remote`]).
#[derive(Clone)]
pub struct Transcriber {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Local {
        worker: ModelWorker<Loaded, Outcome>,
        info: Arc<ModelInfo>,
    },
    Remote(Arc<remote::RemoteWhisper>),
}

/// What was loaded, for logs and health output.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub dir: PathBuf,
    pub weights: PathBuf,
    pub threads: usize,
}

/// Threads to use when not configured: every core the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Transcriber {
    /// Loads the model in `model_dir` (`config.json`, `tokenizer.json`, and `model.gguf` or
    /// `model.safetensors`) on a new thread; `queue` bounds the notes waiting behind the one in
    /// progress (more are refused with [`WorkerError::Busy`]).
    pub fn load(
        model_dir: &Path,
        opts: WhisperOptions,
        queue: usize,
    ) -> Result<Self, WhisperError> {
        let threads = opts.threads.unwrap_or_else(default_threads).max(1);
        let weights = decode::weights_file(model_dir, opts.prefer_gguf)?;
        let dir = model_dir.to_path_buf();
        let info = ModelInfo {
            dir: dir.clone(),
            weights,
            threads,
        };
        let worker = ModelWorker::spawn("whisper", queue, move || {
            let pool = crate::priority::model_pool_builder()
                .num_threads(threads)
                .thread_name(|i| format!("whisper-{i}"))
                .build()
                .map_err(|e| WhisperError::Options(e.to_string()))?;
            let model = pool.install(|| WhisperModel::load(&dir, &opts))?;
            Ok::<_, WhisperError>(Loaded { model, pool })
        })?;
        tracing::info!(dir = %info.dir.display(), weights = %info.weights.display(), threads, "whisper loaded");
        Ok(Self {
            backend: Backend::Local {
                worker,
                info: Arc::new(info),
            },
        })
    }

    /// A transcriber that sends voice notes to an OpenAI-compatible server.
    pub fn remote(cfg: remote::RemoteWhisperConfig) -> Result<Self, WhisperError> {
        let client = remote::RemoteWhisper::new(cfg)?;
        tracing::info!(server = %client.describe(), "remote transcription");
        Ok(Self {
            backend: Backend::Remote(Arc::new(client)),
        })
    }

    /// Transcribes 16 kHz mono PCM (see [`crate::audio::decode_to_pcm16k`]).
    pub async fn transcribe(&self, pcm: Vec<f32>) -> Result<Transcript, WhisperError> {
        match &self.backend {
            Backend::Local { worker, .. } => {
                worker
                    .run(move |m: &mut Loaded| {
                        let Loaded { model, pool } = m;
                        pool.install(|| model.transcribe(&pcm))
                    })
                    .await?
            }
            Backend::Remote(client) => client.transcribe(&pcm).await,
        }
    }

    /// The local model loaded; `None` for a remote server.
    pub fn info(&self) -> Option<&ModelInfo> {
        match &self.backend {
            Backend::Local { info, .. } => Some(info),
            Backend::Remote(_) => None,
        }
    }

    /// Free slots in the local model's queue; a remote server has no queue here.
    pub fn free_slots(&self) -> Option<usize> {
        match &self.backend {
            Backend::Local { worker, .. } => Some(worker.free_slots()),
            Backend::Remote(_) => None,
        }
    }

    /// Records each job's wait in the local model's queue into `histogram` (seconds).
    pub fn observe_queue_wait(&self, histogram: metrics::Histogram) {
        if let Backend::Local { worker, .. } = &self.backend {
            worker.observe_queue_wait(histogram);
        }
    }
}
