//! Greedy transcription with the cached decoder: one loaded model, used from one thread.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use super::config::Config;
use super::mel::{HOP, MelExtractor, WINDOW_FRAMES, WINDOW_SAMPLES};
use super::model::{Weights, Whisper};
use super::{Transcript, WhisperError, WhisperOptions};

/// Whisper's language codes in token order (`<|en|>` first).
pub const LANGUAGES: &[&str] = &[
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it",
    "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur",
    "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn",
    "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si",
    "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo",
    "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su", "yue",
];

/// Whisper never writes more than half its text context per window.
const MAX_NEW_TOKENS: usize = 224;
/// RMS below which a window is not transcribed at all (-60 dBFS).
const SILENCE_RMS: f32 = 1e-3;
/// Whisper's defaults for judging a window silent.
const NO_SPEECH_THRESHOLD: f32 = 0.6;
const LOGPROB_THRESHOLD: f64 = -1.0;
/// A trailing window shorter than this (after at least one full window) is not transcribed:
/// a fraction of a second of tail invites hallucinated words.
const MIN_TAIL_SAMPLES: usize = 16_000 / 5;

/// How the decoder is driven; the no-cache mode exists as a reference for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeMode {
    /// Self-attention K/V cache and cross-attention K/V computed once per window.
    Cached,
    /// Recompute the whole token sequence for every new token (the stock candle way).
    NoCacheReference,
}

struct Specials {
    sot: u32,
    eot: u32,
    transcribe: u32,
    no_timestamps: u32,
    /// `<|nospeech|>` (`<|nocaptions|>` in older vocabularies), when the tokenizer has it.
    no_speech: Option<u32>,
    languages: Vec<(String, u32)>,
}

fn token(tok: &Tokenizer, s: &str, dir: &Path) -> Result<u32, WhisperError> {
    tok.token_to_id(s).ok_or_else(|| WhisperError::Load {
        path: dir.join("tokenizer.json"),
        reason: format!("token {s} missing"),
    })
}

/// A loaded Whisper with its tokenizer and mel front end.
pub struct WhisperModel {
    model: Whisper,
    tokenizer: Tokenizer,
    mel: MelExtractor,
    specials: Specials,
    /// Additive logit mask applied at every step (suppressed tokens are −∞).
    mask: Vec<f32>,
    /// Extra mask for the first sampled token.
    begin_mask: Vec<u32>,
    language: Option<u32>,
    max_new_tokens: usize,
    /// `Some(margin)`: encode only the audio's frames plus `margin` frames of padding.
    trim_margin_frames: Option<usize>,
}

fn load_err(path: &Path, reason: impl std::fmt::Display) -> WhisperError {
    WhisperError::Load {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The weights file a model directory provides: `model.safetensors` or `model.gguf`, in the
/// preferred order.
pub fn weights_file(dir: &Path, prefer_gguf: bool) -> Result<PathBuf, WhisperError> {
    let gguf = dir.join("model.gguf");
    let st = dir.join("model.safetensors");
    let order = if prefer_gguf {
        [&gguf, &st]
    } else {
        [&st, &gguf]
    };
    order
        .into_iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| load_err(dir, "no model.safetensors or model.gguf in the directory"))
}

impl WhisperModel {
    /// Loads `config.json`, `tokenizer.json` and `model.gguf` or `model.safetensors` from `dir`.
    pub fn load(dir: &Path, opts: &WhisperOptions) -> Result<Self, WhisperError> {
        let device = super::resolve_device(opts.device)?;
        let cfg_path = dir.join("config.json");
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| load_err(&cfg_path, e))?;
        let config: Config = serde_json::from_str(&cfg_text).map_err(|e| load_err(&cfg_path, e))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| load_err(&tok_path, e))?;
        let wpath = weights_file(dir, opts.prefer_gguf)?;
        let weights = if wpath.extension().is_some_and(|e| e == "gguf") {
            Weights::gguf(&wpath, &device)
        } else {
            Weights::safetensors(&wpath, &device)
        }
        .map_err(|e| load_err(&wpath, e))?;
        let model = Whisper::load(&weights, config.clone(), &device, opts.decoder_q8)
            .map_err(|e| load_err(&wpath, e))?;
        drop(weights);

        let specials = Specials {
            sot: token(&tokenizer, "<|startoftranscript|>", dir)?,
            eot: token(&tokenizer, "<|endoftext|>", dir)?,
            transcribe: token(&tokenizer, "<|transcribe|>", dir)?,
            no_timestamps: token(&tokenizer, "<|notimestamps|>", dir)?,
            no_speech: tokenizer
                .token_to_id("<|nospeech|>")
                .or_else(|| tokenizer.token_to_id("<|nocaptions|>")),
            languages: LANGUAGES
                .iter()
                .filter_map(|l| {
                    tokenizer
                        .token_to_id(&format!("<|{l}|>"))
                        .filter(|&id| (id as usize) < config.vocab_size)
                        .map(|id| (l.to_string(), id))
                })
                .collect(),
        };
        let language = match &opts.language {
            None => None,
            Some(l) if l == "auto" => None,
            Some(l) => Some(
                specials
                    .languages
                    .iter()
                    .find(|(code, _)| code == l)
                    .map(|(_, id)| *id)
                    .ok_or_else(|| load_err(&tok_path, format!("unknown language {l:?}")))?,
            ),
        };
        let mut mask = vec![0f32; config.vocab_size];
        for &t in &config.suppress_tokens {
            if let Some(m) = mask.get_mut(t as usize) {
                *m = f32::NEG_INFINITY;
            }
        }
        // Timestamps are not wanted and special tokens are never text: everything after
        // <|endoftext|> in Whisper's vocabulary is special.
        for (id, m) in mask.iter_mut().enumerate() {
            if id as u32 > specials.eot {
                *m = f32::NEG_INFINITY;
            }
        }
        let mut begin_mask = config.begin_suppress_tokens.clone();
        if !begin_mask.contains(&specials.eot) {
            begin_mask.push(specials.eot);
        }
        let max_new_tokens = opts
            .max_new_tokens
            .unwrap_or(MAX_NEW_TOKENS)
            .min(config.max_target_positions.saturating_sub(8).max(1));
        Ok(Self {
            mel: MelExtractor::new(config.num_mel_bins),
            model,
            tokenizer,
            specials,
            mask,
            begin_mask,
            language,
            max_new_tokens,
            trim_margin_frames: opts
                .encoder_trim_margin_ms
                .map(|ms| (ms as usize).div_ceil(10)),
        })
    }

    /// The network itself (tests drive the decoder directly).
    pub fn whisper(&self) -> &Whisper {
        &self.model
    }

    /// The normalised log-mel window the encoder sees, as a tensor `[1, n_mels, 3000]`.
    pub fn mel_tensor(&self, samples: &[f32]) -> Result<Tensor, WhisperError> {
        let mel = self.mel.window(samples);
        Tensor::from_vec(mel, (1, self.mel.n_mels(), WINDOW_FRAMES), self.device())
            .map_err(|e| WhisperError::Inference(e.to_string()))
    }

    pub fn config(&self) -> &Config {
        &self.model.config
    }

    pub fn device(&self) -> &Device {
        &self.model.device
    }

    /// Transcribes 16 kHz mono PCM, in consecutive 30 s windows.
    pub fn transcribe(&mut self, pcm: &[f32]) -> Result<Transcript, WhisperError> {
        let audio_seconds = pcm.len() as f32 / 16_000.0;
        let mut texts = Vec::new();
        let mut language = self.language;
        for (i, chunk) in pcm.chunks(WINDOW_SAMPLES).enumerate() {
            if i > 0 && chunk.len() < MIN_TAIL_SAMPLES {
                break;
            }
            // Digital silence (below -60 dBFS): Whisper would answer with an invented "you".
            let rms = (chunk.iter().map(|x| x * x).sum::<f32>() / chunk.len() as f32).sqrt();
            if rms < SILENCE_RMS {
                continue;
            }
            let (tokens, lang) = self.window_tokens(chunk, language, DecodeMode::Cached)?;
            language = language.or(lang);
            let text = self
                .tokenizer
                .decode(&tokens, true)
                .map_err(|e| WhisperError::Inference(e.to_string()))?;
            let text = text.trim();
            if !text.is_empty() {
                texts.push(text.to_string());
            }
        }
        let language = language.and_then(|id| {
            self.specials
                .languages
                .iter()
                .find(|(_, t)| *t == id)
                .map(|(c, _)| c.clone())
        });
        Ok(Transcript {
            text: texts.join(" "),
            language: if self.model.config.is_multilingual() {
                language
            } else {
                Some("en".into())
            },
            audio_seconds,
        })
    }

    /// Greedy tokens (text only, no prompt) for one ≤30 s window, and the language token used.
    pub fn window_tokens(
        &self,
        samples: &[f32],
        language: Option<u32>,
        mode: DecodeMode,
    ) -> Result<(Vec<u32>, Option<u32>), WhisperError> {
        let inf = |e: candle_core::Error| WhisperError::Inference(e.to_string());
        let n_mels = self.mel.n_mels();
        let mel = self.mel.window(samples);
        let mel = Tensor::from_vec(mel, (1, n_mels, WINDOW_FRAMES), self.device()).map_err(inf)?;
        let mel = match self.encoder_frames(samples.len()) {
            Some(frames) => mel.narrow(2, 0, frames).map_err(inf)?,
            None => mel,
        };
        let audio = self.model.encoder.forward(&mel).map_err(inf)?;
        let dec = &self.model.decoder;
        let sp = &self.specials;
        let multilingual = self.model.config.is_multilingual() && !sp.languages.is_empty();

        let mut state = dec.start(&audio).map_err(inf)?;
        // The logits after <|startoftranscript|> alone give the language and the no-speech
        // probability; the rest of the prompt follows in a second step.
        let mut seq: Vec<u32> = vec![sp.sot];
        let first = match mode {
            DecodeMode::Cached => dec.step(&mut state, &seq),
            DecodeMode::NoCacheReference => dec.logits_no_cache(&audio, &seq),
        }
        .and_then(|l| l.to_vec1::<f32>())
        .map_err(inf)?;
        let no_speech = sp.no_speech.map(|t| softmax_at(&first, t as usize));
        let mut lang = None;
        let rest: Vec<u32> = if multilingual {
            let lang_id = language.unwrap_or_else(|| {
                sp.languages
                    .iter()
                    .map(|(_, id)| *id)
                    .max_by(|a, b| first[*a as usize].total_cmp(&first[*b as usize]))
                    .expect("languages is not empty")
            });
            lang = Some(lang_id);
            vec![lang_id, sp.transcribe, sp.no_timestamps]
        } else {
            vec![sp.no_timestamps]
        };
        seq.extend_from_slice(&rest);
        let mut logits = match mode {
            DecodeMode::Cached => dec.step(&mut state, &rest),
            DecodeMode::NoCacheReference => dec.logits_no_cache(&audio, &seq),
        }
        .map_err(inf)?;

        let mut out = Vec::new();
        let mut sum_logprob = 0f64;
        for i in 0..self.max_new_tokens {
            let mut l = logits.to_vec1::<f32>().map_err(inf)?;
            for (x, m) in l.iter_mut().zip(&self.mask) {
                *x += m;
            }
            if i == 0 {
                for &t in &self.begin_mask {
                    if let Some(x) = l.get_mut(t as usize) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            let next = argmax(&l);
            sum_logprob += (l[next as usize] - log_sum_exp(&l)) as f64;
            if next == sp.eot || seq.len() + 1 >= self.model.config.max_target_positions {
                break;
            }
            out.push(next);
            seq.push(next);
            logits = match mode {
                DecodeMode::Cached => dec.step(&mut state, &[next]),
                DecodeMode::NoCacheReference => dec.logits_no_cache(&audio, &seq),
            }
            .map_err(inf)?;
        }
        // Whisper's silence rule: a confident "no speech" and an unconfident transcript mean
        // the window is silence or noise, not the stock phrase ("you", "Thank you.") the
        // decoder invents for it.
        let avg_logprob = sum_logprob / (out.len() + 1) as f64;
        if let Some(p) = no_speech
            && p > NO_SPEECH_THRESHOLD
            && avg_logprob < LOGPROB_THRESHOLD
        {
            tracing::debug!(no_speech = p, avg_logprob, "window judged silent");
            out.clear();
        }
        Ok((out, lang))
    }

    /// Mel frames to encode when the encoder context is trimmed to the audio (plus a margin of
    /// silence); `None` encodes the full 30 s window as Whisper was trained to.
    fn encoder_frames(&self, samples: usize) -> Option<usize> {
        let margin = self.trim_margin_frames?;
        let frames = (samples.div_ceil(HOP) + margin).next_multiple_of(2);
        (frames < WINDOW_FRAMES).then_some(frames)
    }
}

fn log_sum_exp(l: &[f32]) -> f32 {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + l.iter().map(|x| (x - max).exp()).sum::<f32>().ln()
}

/// Softmax probability of index `i`.
fn softmax_at(l: &[f32], i: usize) -> f32 {
    l.get(i).map_or(0.0, |x| (x - log_sum_exp(l)).exp())
}

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    best as u32
}
