//! A vision-language model behind an OpenAI-compatible `POST {base_url}/v1/chat/completions`
//! (llama.cpp server with an mmproj, vLLM, Ollama, hosted APIs): one user message whose content
//! is a text part and an `image_url` part carrying the photo as a `data:image/jpeg;base64,` URL.

use std::fmt;
use std::io::Cursor;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::{SceneError, question_or_caption};
use crate::chat::{error_chain, truncate as excerpt};

/// Longest side of the JPEG sent: vision encoders work at 336–1024 px, and a phone photo at full
/// size would only cost upload time and server memory.
pub const MAX_REMOTE_SIDE: u32 = 1024;
/// Whole-request timeout unless [`RemoteScene::with_timeout`] says otherwise.
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(120);
/// JPEG quality of the image sent: small enough to upload fast, no artefacts a model would read.
const JPEG_QUALITY: u8 = 85;
/// Longest excerpt of an error body kept in an error message.
const MAX_ERROR_BODY: usize = 500;

/// A vision-language model behind an OpenAI-compatible `/v1/chat/completions`.
#[derive(Clone)]
pub struct RemoteScene {
    http: reqwest::Client,
    url: String,
    model: String,
    /// Bearer token; a secret: never shown by `Debug` nor logged.
    api_key: Option<String>,
    timeout: Duration,
}

impl fmt::Debug for RemoteScene {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteScene")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Deserialize)]
struct Response {
    choices: Vec<Choice>,
}
#[derive(Deserialize)]
struct Choice {
    message: Message,
}
#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
}

impl RemoteScene {
    /// A server at `base_url` (e.g. `http://127.0.0.1:8080`; a trailing `/v1` is accepted too)
    /// serving `model`, with an optional bearer token.
    pub fn new(base_url: &str, model: &str, api_key: Option<String>) -> Result<Self, SceneError> {
        let base = base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| SceneError::Remote(format!("base_url `{base}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(SceneError::Remote(format!(
                "base_url `{base}` must be http or https"
            )));
        }
        if model.trim().is_empty() {
            return Err(SceneError::Remote("model name is empty".into()));
        }
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| SceneError::Remote(format!("HTTP client: {e}")))?;
        let url = format!("{base}/v1/chat/completions");
        tracing::info!(url = %url, model = %model, "remote vision-language backend");
        Ok(Self {
            http,
            url,
            model: model.to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
            timeout: DEFAULT_REMOTE_TIMEOUT,
        })
    }

    /// The same server with another whole-request timeout (upload, inference and answer).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What this backend is, for logs (no secret).
    pub fn describe(&self) -> String {
        format!("{} (remote, {})", self.model, self.url)
    }

    /// Describes the image, or answers `question` about it, in at most `max_tokens` tokens.
    pub async fn answer(
        &self,
        image: &::image::RgbImage,
        question: Option<&str>,
        max_tokens: usize,
    ) -> Result<String, SceneError> {
        // Resizing and JPEG-encoding a phone photo takes tens of milliseconds of CPU: off the
        // async workers, so the caller's runtime keeps serving.
        let owned = image.clone();
        let jpeg = tokio::task::spawn_blocking(move || encode_jpeg(&owned))
            .await
            .map_err(|e| SceneError::Remote(format!("encoding the image: {e}")))??;
        let data_url = format!(
            "data:image/jpeg;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&jpeg)
        );
        // The question is a user's text: control-token strings in it are broken, as the chat
        // backend does, so a caption cannot end the user turn on servers that template it.
        let text = crate::chat::defang(question_or_caption(question));
        let body = json!({
            "model": self.model,
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": false,
        });
        let url = &self.url;
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                SceneError::Remote(format!(
                    "{url} did not answer within {} s",
                    self.timeout.as_secs_f32()
                ))
            } else {
                SceneError::Remote(format!("request to {url} failed: {}", error_chain(&e)))
            }
        };
        let mut req = self.http.post(url).timeout(self.timeout).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(SceneError::Remote(format!(
                "{url} answered HTTP {}: {}",
                status.as_u16(),
                excerpt(text.trim(), MAX_ERROR_BODY)
            )));
        }
        let parsed: Response = serde_json::from_slice(&bytes).map_err(|e| {
            SceneError::Remote(format!(
                "malformed answer from {url}: {e}; body starts {:?}",
                excerpt(&String::from_utf8_lossy(&bytes), 200)
            ))
        })?;
        parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .map(|c| c.trim().to_string())
            .ok_or_else(|| {
                SceneError::Remote(format!(
                    "malformed answer from {url}: no choices[0].message.content"
                ))
            })
    }
}

/// The image as a JPEG no larger than [`MAX_REMOTE_SIDE`] on its longest side.
fn encode_jpeg(image: &::image::RgbImage) -> Result<Vec<u8>, SceneError> {
    let (w, h) = image.dimensions();
    let longest = w.max(h);
    let scaled;
    let image = if longest > MAX_REMOTE_SIDE {
        let scale = f64::from(MAX_REMOTE_SIDE) / f64::from(longest);
        let nw = ((f64::from(w) * scale).round() as u32).max(1);
        let nh = ((f64::from(h) * scale).round() as u32).max(1);
        scaled = ::image::imageops::resize(image, nw, nh, ::image::imageops::FilterType::Triangle);
        &scaled
    } else {
        image
    };
    let mut out = Cursor::new(Vec::new());
    ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode_image(image)
        .map_err(|e| SceneError::Remote(format!("encoding the image as JPEG: {e}")))?;
    Ok(out.into_inner())
}

/// The facade asks a remote server through [`crate::vision::SceneServer`].
impl crate::vision::SceneServer for RemoteScene {
    fn answer<'a>(
        &'a self,
        image: &'a ::image::RgbImage,
        question: Option<&'a str>,
        max_tokens: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<String, SceneError>> + Send + 'a>> {
        Box::pin(RemoteScene::answer(self, image, question, max_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_api_key() {
        let r = RemoteScene::new("http://127.0.0.1:1", "m", Some("sk-very-secret".into())).unwrap();
        let shown = format!("{r:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn bad_base_urls_and_empty_models_are_refused() {
        assert!(RemoteScene::new("ftp://x", "m", None).is_err());
        assert!(RemoteScene::new("not a url", "m", None).is_err());
        assert!(RemoteScene::new("http://127.0.0.1:1", " ", None).is_err());
    }

    #[test]
    fn big_images_are_sent_at_most_max_side_keeping_their_shape() {
        let img = ::image::RgbImage::from_pixel(3000, 1500, ::image::Rgb([10, 200, 30]));
        let jpeg = encode_jpeg(&img).unwrap();
        let back = ::image::load_from_memory(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (MAX_REMOTE_SIDE, 512));
        let small = ::image::RgbImage::from_pixel(300, 200, ::image::Rgb([0, 0, 0]));
        let back = ::image::load_from_memory(&encode_jpeg(&small).unwrap()).unwrap();
        assert_eq!((back.width(), back.height()), (300, 200));
    }
}
