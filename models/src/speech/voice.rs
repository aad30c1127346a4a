//! A Piper voice's description (its `.onnx.json`) and the phoneme → id mapping it defines.
//!
//! Piper voices are trained on espeak-ng's IPA output, one id sequence per sentence:
//! `^` (begin), then every phoneme followed by the pad `_`, then `$` (end). Each phoneme is one
//! Unicode scalar after NFD decomposition (stress marks and length marks are phonemes of their
//! own); phonemes the voice was not trained on are left out, as Piper does.

use std::collections::HashMap;

use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

use super::SpeechError;

/// The parts of a Piper `.onnx.json` Sandra uses.
#[derive(Debug, Clone, Deserialize)]
pub struct VoiceConfig {
    pub audio: AudioConfig,
    pub espeak: EspeakConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    pub num_speakers: u32,
    #[serde(default)]
    pub language: Option<LanguageConfig>,
    #[serde(default)]
    pub phoneme_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    pub sample_rate: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EspeakConfig {
    /// espeak-ng's voice name for the phonemiser (`en-us`).
    pub voice: String,
}

/// VITS's sampling knobs: `noise_scale` (variation of the sound), `length_scale` (slower above
/// 1), `noise_w` (variation of the phoneme durations).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct InferenceConfig {
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
}

impl Default for InferenceConfig {
    /// Piper's own defaults.
    fn default() -> Self {
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct LanguageConfig {
    /// `en_US`, `es_ES`.
    pub code: String,
    #[serde(default)]
    pub family: Option<String>,
}

/// Symbols Piper's id sequence is built with.
const BOS: &str = "^";
const EOS: &str = "$";
const PAD: &str = "_";

impl VoiceConfig {
    /// Parses and checks a `.onnx.json`: espeak phonemes, and ids for begin, end and pad.
    pub fn parse(json: &[u8]) -> Result<Self, SpeechError> {
        let cfg: VoiceConfig = serde_json::from_slice(json)
            .map_err(|e| SpeechError::Voice(format!("voice config: {e}")))?;
        if let Some(t) = &cfg.phoneme_type
            && t != "espeak"
        {
            return Err(SpeechError::Voice(format!(
                "phoneme_type {t:?}: only espeak voices are supported"
            )));
        }
        for sym in [BOS, EOS, PAD] {
            if cfg.phoneme_id_map.get(sym).is_none_or(Vec::is_empty) {
                return Err(SpeechError::Voice(format!(
                    "voice config: phoneme_id_map has no id for {sym:?}"
                )));
            }
        }
        if !(8_000..=48_000).contains(&cfg.audio.sample_rate) {
            return Err(SpeechError::Voice(format!(
                "voice config: sample rate {} Hz",
                cfg.audio.sample_rate
            )));
        }
        Ok(cfg)
    }

    /// ISO 639-1 language of the voice (`en`), from `language.family`, else `language.code`,
    /// else the espeak voice name.
    pub fn language(&self) -> String {
        let from_code = |c: &str| c.split(['_', '-']).next().unwrap_or(c).to_ascii_lowercase();
        match &self.language {
            Some(LanguageConfig {
                family: Some(f), ..
            }) if !f.is_empty() => f.to_ascii_lowercase(),
            Some(l) => from_code(&l.code),
            None => from_code(&self.espeak.voice),
        }
    }

    /// Piper's id sequence for one sentence's phonemes; phonemes the voice does not know are
    /// dropped (counted in the second value, for a log line).
    pub fn phoneme_ids(&self, phonemes: &str) -> (Vec<i64>, usize) {
        let map = &self.phoneme_id_map;
        let pad = &map[PAD];
        let mut ids = Vec::with_capacity(phonemes.len() * 2 + 3);
        ids.extend_from_slice(&map[BOS]);
        ids.extend_from_slice(pad);
        let mut unknown = 0;
        let mut buf = [0u8; 4];
        for ch in phonemes.nfd() {
            match map.get(&*ch.encode_utf8(&mut buf)) {
                Some(id) => {
                    ids.extend_from_slice(id);
                    ids.extend_from_slice(pad);
                }
                None => unknown += 1,
            }
        }
        ids.extend_from_slice(&map[EOS]);
        (ids, unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> VoiceConfig {
        VoiceConfig::parse(
            r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},
                "inference":{"noise_scale":0.5,"length_scale":1.1,"noise_w":0.7},
                "phoneme_type":"espeak","num_speakers":1,
                "language":{"code":"en_US","family":"en"},
                "phoneme_id_map":{"_":[0],"^":[1],"$":[2]," ":[3],",":[8],".":[10],
                  "h":[20],"ə":[59],"l":[24],"ˈ":[120],"o":[27],"ʊ":[100],"e":[18],"\u0303":[141]}}"#
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn ids_are_begin_pad_then_each_phoneme_padded_then_end() {
        let (ids, unknown) = tiny().phoneme_ids("həlˈoʊ.");
        assert_eq!(
            ids,
            vec![1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 10, 0, 2]
        );
        assert_eq!(unknown, 0);
    }

    #[test]
    fn unknown_phonemes_are_dropped_and_counted() {
        let (ids, unknown) = tiny().phoneme_ids("hX l");
        assert_eq!(ids, vec![1, 0, 20, 0, 3, 0, 24, 0, 2]);
        assert_eq!(unknown, 1);
    }

    #[test]
    fn composed_characters_are_decomposed_first() {
        // "ẽ" (U+1EBD) is "e" + combining tilde after NFD, both in the map.
        let (ids, unknown) = tiny().phoneme_ids("\u{1EBD}");
        assert_eq!(ids, vec![1, 0, 18, 0, 141, 0, 2]);
        assert_eq!(unknown, 0);
    }

    #[test]
    fn config_keeps_the_voices_sampling_and_language() {
        let c = tiny();
        assert_eq!(c.audio.sample_rate, 22050);
        assert_eq!(c.inference.length_scale, 1.1);
        assert_eq!(c.language(), "en");
        assert_eq!(c.espeak.voice, "en-us");
    }

    #[test]
    fn a_config_without_the_sequence_symbols_is_refused() {
        let e = VoiceConfig::parse(
            br#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},
                "phoneme_id_map":{"_":[0],"^":[1]}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"$\""), "{e}");
        let e = VoiceConfig::parse(
            br#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},"phoneme_type":"text",
                "phoneme_id_map":{"_":[0],"^":[1],"$":[2]}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("only espeak"), "{e}");
    }
}
