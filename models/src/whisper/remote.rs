//! Transcription by an OpenAI-compatible server: `POST {base_url}/v1/audio/transcriptions`
//! (vLLM, speaches / faster-whisper-server, llama.cpp's whisper server, OpenAI itself), so
//! voice notes can be heard by a pool of inference servers behind a load balancer.
//!
//! The audio goes out as a WAV built in memory from the PCM Sandra already decoded (16 kHz
//! mono, 16-bit), never from a file: the note's bytes are never written to disk, the duration
//! cap (`max_audio_seconds`) is applied before anything leaves the machine, and every server
//! takes WAV (whisper.cpp's takes nothing else without `--convert`). The request is multipart:
//! `file`, `model`, `response_format = json` and, when configured, `language`; the answer is
//! `{"text": ..., "language"?: ...}`. The API key goes only in the `Authorization` header and
//! is never logged or shown.

use std::time::Duration;

use serde::Deserialize;

use super::{Transcript, WhisperError};
use crate::chat::error_chain;

/// Where and how to reach the server.
#[derive(Clone)]
pub struct RemoteWhisperConfig {
    /// The server root, e.g. `http://127.0.0.1:8000` (a trailing `/v1` is accepted).
    pub base_url: String,
    /// The served model's name (`Systran/faster-whisper-small`, `whisper-1`...).
    pub model: String,
    pub api_key: Option<String>,
    /// A forced language ("es"); `None` lets the server detect it.
    pub language: Option<String>,
    /// Whole-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for RemoteWhisperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWhisperConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("language", &self.language)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A client for one transcription server (or a load balancer in front of several).
#[derive(Debug)]
pub struct RemoteWhisper {
    http: reqwest::Client,
    url: String,
    cfg: RemoteWhisperConfig,
}

#[derive(Deserialize)]
struct Answer {
    text: String,
    #[serde(default)]
    language: Option<String>,
}

impl RemoteWhisper {
    pub fn new(cfg: RemoteWhisperConfig) -> Result<Self, WhisperError> {
        let base = cfg.base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| WhisperError::Options(format!("transcription base_url `{base}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(WhisperError::Options(format!(
                "transcription base_url `{base}` must be http or https"
            )));
        }
        if cfg.model.trim().is_empty() {
            return Err(WhisperError::Options(
                "the remote transcription model name is empty".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout.max(Duration::from_secs(1)))
            .build()
            .map_err(|e| WhisperError::Options(format!("HTTP client: {e}")))?;
        let url = format!("{base}/v1/audio/transcriptions");
        Ok(Self { http, url, cfg })
    }

    pub fn describe(&self) -> String {
        format!("{} (remote, {})", self.cfg.model, self.url)
    }

    /// Sends 16 kHz mono PCM as a WAV and returns what the server heard.
    pub async fn transcribe(&self, pcm: &[f32]) -> Result<Transcript, WhisperError> {
        let audio_seconds = pcm.len() as f32 / 16_000.0;
        let wav = wav16(pcm);
        let url = &self.url;
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                WhisperError::Remote(format!(
                    "{url}: no answer within {} s",
                    self.cfg.timeout.as_secs()
                ))
            } else {
                WhisperError::Remote(format!("{url}: {}", error_chain(&e)))
            }
        };
        // A form is consumed by its request: each try (a busy server is asked again) builds
        // its own.
        let make = || {
            let mut form = reqwest::multipart::Form::new()
                .text("model", self.cfg.model.clone())
                .text("response_format", "json");
            if let Some(l) = &self.cfg.language {
                form = form.text("language", l.clone());
            }
            let file = reqwest::multipart::Part::bytes(wav.clone())
                .file_name("voice.wav")
                .mime_str("audio/wav")
                .expect("a valid MIME type");
            let req = self.http.post(url).multipart(form.part("file", file));
            match &self.cfg.api_key {
                Some(key) => req.bearer_auth(key),
                None => req,
            }
        };
        let resp = crate::busy::send("transcription", make)
            .await
            .map_err(failed)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(failed)?;
        if !status.is_success() {
            let said: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
            return Err(WhisperError::Remote(format!(
                "{url} answered {status}: {said}"
            )));
        }
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|e| {
            WhisperError::Remote(format!(
                "{url}: not a transcription (`{{\"text\": ...}}`): {e}"
            ))
        })?;
        // Servers name the language as a code ("en") or, some, in words ("english"): only a
        // code is kept, so that canned texts can follow it.
        let language = answer
            .language
            .filter(|l| l.len() == 2 && l.chars().all(|c| c.is_ascii_lowercase()))
            .or_else(|| self.cfg.language.clone());
        Ok(Transcript {
            text: answer.text.trim().to_string(),
            language,
            audio_seconds,
        })
    }
}

/// 16 kHz mono PCM as a 16-bit WAV file, in memory.
pub fn wav16(pcm: &[f32]) -> Vec<u8> {
    let data_len = (pcm.len() * 2) as u32;
    let mut w = Vec::with_capacity(44 + data_len as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&16_000u32.to_le_bytes()); // sample rate
    w.extend_from_slice(&32_000u32.to_le_bytes()); // byte rate
    w.extend_from_slice(&2u16.to_le_bytes()); // block align
    w.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    for s in pcm {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        w.extend_from_slice(&v.to_le_bytes());
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_header_and_samples() {
        let w = wav16(&[0.0, 1.0, -1.0, 2.0]);
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(&w[8..16], b"WAVEfmt ");
        assert_eq!(u32::from_le_bytes(w[24..28].try_into().unwrap()), 16_000);
        assert_eq!(&w[36..40], b"data");
        assert_eq!(u32::from_le_bytes(w[40..44].try_into().unwrap()), 8);
        let s: Vec<i16> = w[44..]
            .chunks(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(s, [0, 32767, -32767, 32767], "clamped, not wrapped");
    }

    #[test]
    fn bad_urls_and_empty_models_are_refused_and_the_key_is_never_shown() {
        let cfg = |url: &str, model: &str| RemoteWhisperConfig {
            base_url: url.into(),
            model: model.into(),
            api_key: Some("sk-hidden-123".into()),
            language: None,
            timeout: Duration::from_secs(5),
        };
        assert!(RemoteWhisper::new(cfg("ftp://x", "m")).is_err());
        assert!(RemoteWhisper::new(cfg("not a url", "m")).is_err());
        assert!(RemoteWhisper::new(cfg("http://x", " ")).is_err());
        let r = RemoteWhisper::new(cfg("http://127.0.0.1:9/v1/", "m")).unwrap();
        assert_eq!(r.url, "http://127.0.0.1:9/v1/audio/transcriptions");
        assert!(!format!("{r:?}").contains("sk-hidden"));
    }
}
