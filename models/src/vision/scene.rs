//! Scene understanding: captions and answers to visual questions from a vision-language model.
//! Local: candle-transformers (see [`LocalScene`]). Remote: an OpenAI-compatible server that
//! takes chat messages with image parts (see [`RemoteScene`]).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SceneError {
    #[error("vision-language model: {0}")]
    Model(String),
    #[error("vision-language inference: {0}")]
    Inference(String),
    #[error("remote vision-language server: {0}")]
    Remote(String),
}

/// A local vision-language model. Not `Sync`: it lives on its model thread.
pub struct LocalScene {
    _private: (),
}

impl LocalScene {
    /// Loads an installed model directory.
    pub fn load(dir: &Path) -> Result<Self, SceneError> {
        Err(SceneError::Model(format!(
            "not built yet: {}",
            dir.display()
        )))
    }

    /// Describes the image, or answers `question` about it, in at most `max_tokens` tokens.
    pub fn answer(
        &mut self,
        image: &::image::RgbImage,
        question: Option<&str>,
        max_tokens: usize,
    ) -> Result<String, SceneError> {
        let _ = (image, question, max_tokens);
        Err(SceneError::Inference("not built yet".into()))
    }
}

/// A vision-language model behind an OpenAI-compatible `/v1/chat/completions`.
#[derive(Clone)]
pub struct RemoteScene {
    _private: (),
}
