//! Scene understanding: captions and answers to visual questions from a vision-language model.
//! Local: candle-transformers' moondream2 (see [`LocalScene`]). Remote: an OpenAI-compatible
//! server that takes chat messages with image parts (see [`RemoteScene`]).
//!
//! A caption is the answer to [`CAPTION_QUESTION`]: moondream2 was trained on question/answer
//! pairs and has no separate caption prompt, so both paths send the same kind of prompt and differ
//! only in its question text.

mod local;
mod remote;

pub use local::{DESCRIPTOR_FILE, LocalScene, SceneAnswer};
pub use remote::{DEFAULT_REMOTE_TIMEOUT, MAX_REMOTE_SIDE, RemoteScene};

#[derive(Debug, thiserror::Error)]
pub enum SceneError {
    #[error("vision-language model: {0}")]
    Model(String),
    #[error("vision-language inference: {0}")]
    Inference(String),
    #[error("remote vision-language server: {0}")]
    Remote(String),
}

/// The question a caption answers.
pub const CAPTION_QUESTION: &str = "Describe this image.";

/// The question to ask: `question` trimmed, or [`CAPTION_QUESTION`] when there is none.
fn question_or_caption(question: Option<&str>) -> &str {
    question
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .unwrap_or(CAPTION_QUESTION)
}
