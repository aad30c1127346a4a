//! The Hugging Face `config.json` fields this Whisper implementation reads.

use serde::{Deserialize, Serialize};

/// Model shape and decoding constants (a subset of Hugging Face's `WhisperConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub num_mel_bins: usize,
    pub max_source_positions: usize,
    pub d_model: usize,
    pub encoder_attention_heads: usize,
    pub encoder_layers: usize,
    #[serde(default = "default_ffn")]
    pub encoder_ffn_dim: usize,
    pub vocab_size: usize,
    pub max_target_positions: usize,
    pub decoder_attention_heads: usize,
    pub decoder_layers: usize,
    #[serde(default = "default_ffn")]
    pub decoder_ffn_dim: usize,
    /// Tokens never sampled (non-speech symbols).
    #[serde(default)]
    pub suppress_tokens: Vec<u32>,
    /// Tokens not sampled as the first token of a transcript (a blank, end-of-text).
    #[serde(default)]
    pub begin_suppress_tokens: Vec<u32>,
}

fn default_ffn() -> usize {
    0
}

impl Config {
    /// Width of the feed-forward layers (4 × d_model in every released Whisper).
    pub fn encoder_ffn(&self) -> usize {
        if self.encoder_ffn_dim == 0 {
            4 * self.d_model
        } else {
            self.encoder_ffn_dim
        }
    }

    pub fn decoder_ffn(&self) -> usize {
        if self.decoder_ffn_dim == 0 {
            4 * self.d_model
        } else {
            self.decoder_ffn_dim
        }
    }

    /// English-only checkpoints (`*.en`) have 51,864 tokens; every multilingual one more.
    pub fn is_multilingual(&self) -> bool {
        self.vocab_size != 51_864
    }
}
