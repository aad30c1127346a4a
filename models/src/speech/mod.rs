//! Local text to speech: a Piper voice (VITS, ONNX) run with `rten`, in memory, to a voice note.
//!
//! The pipeline for one reply, all on the voice's model thread:
//! [`text::speakable`] (Markdown, emoji, URLs and code made fit for speaking) →
//! [`text::sentences`] → [`espeak::phonemize`] (libespeak-ng in process) →
//! [`VoiceConfig::phoneme_ids`] (the voice's `.onnx.json` map) → [`PiperVoice::synthesize`]
//! (22.05 kHz PCM) → resampled to 16 kHz ([`crate::audio::resample`]) →
//! [`ogg_opus::encode_voice_note`] (Ogg/Opus as WhatsApp's own voice notes). Nothing touches
//! the disk; only the voice's files are read, once, at load.
//!
//! - [`Speaker`]: the cloneable async handle the application holds. It owns a
//!   [`crate::worker::ModelWorker`] thread holding every installed voice (one per language),
//!   serving one reply at a time behind a bounded queue; the thread runs rten inside its own
//!   pool of [`SpeechOptions::threads`] threads, below the runtime's priority.
//! - [`chunks`]: how a long answer is cut into several voice notes, the first a single
//!   sentence so it can go out while the rest is still being spoken.
//!
//! Why rten: it ran the Piper graph with output equal to onnxruntime's (max difference 2e-5
//! with the noise scales at 0); tract failed shape inference on it and candle has no ONNX
//! importer (see `docs` and README's benchmark row for the speed beside onnxruntime).

pub mod espeak;
pub mod ogg_opus;
pub mod text;
pub mod voice;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rten_tensor::{NdTensor, Tensor};

pub use ogg_opus::VoiceNote;
pub use voice::{InferenceConfig, VoiceConfig};

use crate::worker::{ModelWorker, WorkerError};

/// Why a voice could not be loaded or a reply not spoken. Never a panic.
#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    /// A voice file is missing or unreadable, or the graph is not a Piper voice.
    #[error("cannot load voice {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    /// The voice's `.onnx.json` is malformed or unsupported.
    #[error("{0}")]
    Voice(String),
    /// libespeak-ng is missing its data or the voice's language.
    #[error("phonemes: {0}")]
    Phonemes(String),
    /// No installed voice speaks this language.
    #[error("no voice installed for language {0:?}")]
    NoVoice(String),
    /// The text has nothing to say once cleaned (only emoji, code or punctuation).
    #[error("nothing to speak")]
    Nothing,
    /// The model failed while running.
    #[error("speech inference failed: {0}")]
    Inference(String),
    /// libopus or the Ogg writer failed.
    #[error("voice note encoding: {0}")]
    Encode(String),
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// Silence between sentences (seconds): Piper speaks each sentence alone, and joined without a
/// gap they run into each other.
pub const SENTENCE_GAP_SECONDS: f32 = 0.25;

/// A loaded Piper voice: the rten graph and its `.onnx.json`.
pub struct PiperVoice {
    model: rten::Model,
    config: VoiceConfig,
    input: rten::NodeId,
    input_lengths: rten::NodeId,
    scales: rten::NodeId,
    sid: Option<rten::NodeId>,
    output: rten::NodeId,
    path: PathBuf,
}

impl PiperVoice {
    /// Loads `<name>.onnx` and the `<name>.onnx.json` beside it.
    pub fn load(onnx: &Path) -> Result<Self, SpeechError> {
        let load_err = |reason: String| SpeechError::Load {
            path: onnx.to_path_buf(),
            reason,
        };
        let json_path = PathBuf::from(format!("{}.json", onnx.display()));
        let json = std::fs::read(&json_path)
            .map_err(|e| load_err(format!("{}: {e}", json_path.display())))?;
        let config = VoiceConfig::parse(&json)?;
        let model = rten::Model::load_file(onnx).map_err(|e| load_err(e.to_string()))?;
        let node = |name: &str| {
            model
                .find_node(name)
                .ok_or_else(|| load_err(format!("the graph has no {name:?} (not a Piper voice?)")))
        };
        let input = node("input")?;
        let input_lengths = node("input_lengths")?;
        let scales = node("scales")?;
        let output = node("output")?;
        let sid = model.find_node("sid");
        Ok(Self {
            model,
            config,
            input,
            input_lengths,
            scales,
            sid,
            output,
            path: onnx.to_path_buf(),
        })
    }

    pub fn config(&self) -> &VoiceConfig {
        &self.config
    }

    /// The voice's own sample rate (22050 for Piper's "medium" voices).
    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    /// Runs the graph on one sentence's phoneme ids: mono PCM at [`Self::sample_rate`].
    pub fn synthesize(
        &self,
        ids: &[i64],
        scales: InferenceConfig,
        pool: Option<&Arc<rten::ThreadPool>>,
    ) -> Result<Vec<f32>, SpeechError> {
        let n = ids.len();
        // rten runs ONNX int64 tensors as i32 (ids and lengths are far below 2^31).
        let ids32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let mut inputs: Vec<(rten::NodeId, rten::ValueOrView<'_>)> = vec![
            (self.input, NdTensor::from_data([1, n], ids32).into()),
            (
                self.input_lengths,
                NdTensor::from_data([1], vec![n as i32]).into(),
            ),
            (
                self.scales,
                NdTensor::from_data(
                    [3],
                    vec![scales.noise_scale, scales.length_scale, scales.noise_w],
                )
                .into(),
            ),
        ];
        if let Some(sid) = self.sid {
            // Multi-speaker voices: the first speaker.
            inputs.push((sid, NdTensor::from_data([1], vec![0i32]).into()));
        }
        let mut opts = rten::RunOptions::default();
        opts.thread_pool = pool.cloned();
        let [out] = self
            .model
            .run_n(inputs, [self.output], Some(opts))
            .map_err(|e| SpeechError::Inference(e.to_string()))?;
        let audio: Tensor<f32> = out
            .try_into()
            .map_err(|e: rten::TryFromValueError| SpeechError::Inference(e.to_string()))?;
        Ok(audio.into_data())
    }

    /// Speaks already-cleaned sentences: PCM at the voice's rate with a short gap between
    /// sentences. Stops early (with what it has) when the caller has gone.
    pub fn speak_sentences(
        &self,
        sentences: &[String],
        pool: Option<&Arc<rten::ThreadPool>>,
    ) -> Result<Vec<f32>, SpeechError> {
        let gap = (SENTENCE_GAP_SECONDS * self.sample_rate() as f32) as usize;
        let mut pcm = Vec::new();
        for s in sentences {
            if crate::worker::cancelled() {
                break;
            }
            let ipa = espeak::phonemize(s, &self.config.espeak.voice)?;
            let (ids, unknown) = self.config.phoneme_ids(&ipa);
            if unknown > 0 {
                tracing::debug!(unknown, voice = %self.path.display(), "phonemes the voice does not know were left out");
            }
            // `^`, `_`, `$` alone: nothing the voice can say.
            if ids.len() <= 3 {
                continue;
            }
            if !pcm.is_empty() {
                pcm.resize(pcm.len() + gap, 0.0);
            }
            pcm.extend(self.synthesize(&ids, self.config.inference, pool)?);
        }
        Ok(pcm)
    }

    /// A reply's text → a voice note: cleaned, split, spoken, resampled, encoded.
    pub fn voice_note(
        &self,
        reply: &str,
        pool: Option<&Arc<rten::ThreadPool>>,
    ) -> Result<VoiceNote, SpeechError> {
        let sentences = text::sentences(&text::speakable(reply));
        if sentences.is_empty() {
            return Err(SpeechError::Nothing);
        }
        let pcm = self.speak_sentences(&sentences, pool)?;
        if pcm.is_empty() {
            return Err(SpeechError::Nothing);
        }
        let pcm16 =
            crate::audio::resample::resample(&pcm, self.sample_rate(), ogg_opus::VOICE_NOTE_RATE);
        ogg_opus::encode_voice_note(&pcm16)
    }
}

/// Cuts a reply into the texts of successive voice notes: the first sentence alone (it is
/// ready soonest, so the user hears something while the rest is spoken), then the remaining
/// sentences in notes of at most `max_chars` characters each (a sentence longer than that is a
/// note of its own). Works on the raw reply; each piece is cleaned again when spoken.
pub fn chunks(reply: &str, max_chars: usize) -> Vec<String> {
    let sentences = text::sentences(&text::speakable(reply));
    let mut out: Vec<String> = Vec::new();
    let mut iter = sentences.into_iter();
    if let Some(first) = iter.next() {
        out.push(first);
    }
    let mut cur = String::new();
    for s in iter {
        if !cur.is_empty() && cur.chars().count() + 1 + s.chars().count() > max_chars {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&s);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Speaker settings.
#[derive(Debug, Clone)]
pub struct SpeechOptions {
    /// The voices' `.onnx` files (each with its `.onnx.json` beside it); one per language, the
    /// first wins when two speak the same language.
    pub voices: Vec<PathBuf>,
    /// Threads for the model's compute.
    pub threads: usize,
}

/// The voices plus the pool their compute runs in; lives on the worker thread.
struct Loaded {
    voices: Vec<(String, PiperVoice)>,
    pool: Arc<rten::ThreadPool>,
}

type Outcome = Result<VoiceNote, SpeechError>;

/// Cloneable, `Send + Sync` handle to the installed voices on their own thread.
#[derive(Clone)]
pub struct Speaker {
    worker: ModelWorker<Loaded, Outcome>,
    languages: Arc<Vec<String>>,
}

impl Speaker {
    /// Loads every voice on a new thread; `queue` bounds the replies waiting behind the one in
    /// progress (more are refused with [`WorkerError::Busy`]).
    pub fn load(opts: SpeechOptions, queue: usize) -> Result<Self, SpeechError> {
        if opts.voices.is_empty() {
            return Err(SpeechError::Voice("no voice configured".into()));
        }
        let threads = opts.threads.max(1);
        let (lang_tx, lang_rx) = std::sync::mpsc::channel();
        let worker = ModelWorker::spawn("speech", queue, move || {
            // Built on the model thread, which has already lowered its priority: Linux threads
            // inherit their creator's nice value, so rten's pool runs below the runtime too.
            let pool = Arc::new(rten::ThreadPool::with_num_threads(threads));
            let mut voices: Vec<(String, PiperVoice)> = Vec::new();
            for path in &opts.voices {
                let v = PiperVoice::load(path)?;
                let lang = v.config().language();
                if voices.iter().any(|(l, _)| *l == lang) {
                    tracing::warn!(voice = %path.display(), %lang, "a voice for this language is already loaded; ignored");
                    continue;
                }
                // Fail at start-up, not at the first reply, when espeak lacks the language.
                espeak::phonemize("a", &v.config().espeak.voice)?;
                tracing::info!(voice = %path.display(), %lang, rate = v.sample_rate(), "voice loaded");
                voices.push((lang, v));
            }
            let _ = lang_tx.send(voices.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>());
            Ok::<_, SpeechError>(Loaded { voices, pool })
        })?;
        let languages = lang_rx.recv().unwrap_or_default();
        Ok(Self {
            worker,
            languages: Arc::new(languages),
        })
    }

    /// ISO 639-1 codes of the languages a voice is installed for.
    pub fn languages(&self) -> &[String] {
        &self.languages
    }

    /// Whether a voice speaks `language` (`en`, or `en_US`/`en-US`: the part before `_`/`-`).
    pub fn speaks(&self, language: &str) -> bool {
        let l = base_language(language);
        self.languages.contains(&l)
    }

    /// Speaks `reply` in `language` into a voice note, on the voice's thread.
    pub async fn speak(&self, reply: String, language: &str) -> Result<VoiceNote, SpeechError> {
        let lang = base_language(language);
        if !self.speaks(&lang) {
            return Err(SpeechError::NoVoice(lang));
        }
        self.worker
            .run(move |m: &mut Loaded| {
                let Loaded { voices, pool } = m;
                let voice = voices
                    .iter()
                    .find(|(l, _)| *l == lang)
                    .map(|(_, v)| v)
                    .ok_or_else(|| SpeechError::NoVoice(lang.clone()))?;
                voice.voice_note(&reply, Some(pool))
            })
            .await?
    }

    /// Free slots in the queue.
    pub fn free_slots(&self) -> usize {
        self.worker.free_slots()
    }

    /// Records each job's wait in the queue into `histogram` (seconds).
    pub fn observe_queue_wait(&self, histogram: metrics::Histogram) {
        self.worker.observe_queue_wait(histogram);
    }
}

fn base_language(code: &str) -> String {
    code.split(['_', '-'])
        .next()
        .unwrap_or(code)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_note_is_the_first_sentence_and_the_rest_fill_notes_up_to_the_limit() {
        let reply = "**Sure!** Here is the plan. First we cook. Then we eat. Finally we rest.";
        assert_eq!(
            chunks(reply, 35),
            vec![
                "Sure!",
                "Here is the plan. First we cook.",
                "Then we eat. Finally we rest."
            ]
        );
        assert_eq!(chunks("One.", 100), vec!["One."]);
        assert!(chunks("🙂\n```\ncode\n```", 100).is_empty());
    }

    #[test]
    fn language_codes_match_on_their_base() {
        assert_eq!(base_language("en_US"), "en");
        assert_eq!(base_language("pt-BR"), "pt");
        assert_eq!(base_language("ES"), "es");
    }
}
