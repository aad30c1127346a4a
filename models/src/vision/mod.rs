//! Vision: what Sandra can see in photos and documents, locally.
//!
//! - [`image`]: decoding JPEG/PNG/WebP in memory, EXIF orientation, a pixel cap checked before
//!   any pixel buffer is allocated (decompression bombs).
//! - [`document`]: PDFs (text layer, scanned pages as images) and plain-text documents.
//! - [`ocr`]: PP-OCR text detection, orientation and recognition (ONNX graphs run by tract).
//! - [`scene`]: captions and visual questions from a vision-language model (local candle, or a
//!   remote OpenAI-compatible server).
//!
//! The facade, [`Vision`], puts the OCR and the optional local scene model on ONE model thread
//! behind a bounded queue ([`ModelWorker`], below the runtime's priority): both are CPU-bound
//! and would only fight over the same cores if they had a thread each. A remote scene server is
//! asked from the async side instead (no thread to hold while it answers), at the same time as
//! the OCR runs. The vision actor (in `sandra-actors`) is its only user.

pub mod document;
pub mod image;
pub mod ocr;
pub mod scene;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use ::image::RgbImage;

use crate::worker::{ModelWorker, WorkerError};
use ocr::{Ocr, OcrText};
use scene::{LocalScene, SceneError};

/// A scene model served elsewhere, asked without a thread of ours (an OpenAI-compatible server
/// that takes image parts: [`scene::RemoteScene`]). A trait so the facade does not depend on
/// how the remote client is built, and so tests can stand in for one.
pub trait SceneServer: Send + Sync {
    /// Describes the image, or answers `question` about it, in at most `max_tokens` tokens.
    fn answer<'a>(
        &'a self,
        image: &'a RgbImage,
        question: Option<&'a str>,
        max_tokens: usize,
    ) -> Pin<Box<dyn Future<Output = Result<String, SceneError>> + Send + 'a>>;
}

/// How to start a [`Vision`]. Every value is explicit: defaults live in the app's config.
#[derive(Clone)]
pub struct VisionOptions {
    /// The installed PP-OCR directory.
    pub ocr_dir: PathBuf,
    /// A local vision-language model directory, loaded on the model thread beside the OCR.
    pub scene_dir: Option<PathBuf>,
    /// A remote scene server (used only when there is no local scene model).
    pub remote: Option<Arc<dyn SceneServer>>,
    /// Jobs waiting behind the one in progress before new ones are refused as busy.
    pub queue: usize,
    /// Longest scene answer, in tokens.
    pub scene_max_tokens: usize,
}

/// What the scene model made of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SceneOutcome {
    /// A description, or the answer to the question asked.
    Answered(String),
    /// No scene model is configured: only text can be read.
    NoModel,
    /// The scene model failed on this image (the text read is still good).
    Failed(String),
}

/// Everything seen in one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sight {
    pub text: OcrText,
    pub scene: SceneOutcome,
}

/// Why nothing could be seen.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VisionError {
    /// The model queue is full: shed the job, the user may send it again later.
    #[error("the vision models are busy")]
    Busy,
    /// The model thread has stopped.
    #[error("the vision model thread has stopped")]
    Stopped,
    /// The job panicked in model code (the thread survives and serves the next one).
    #[error("a vision job panicked: {0}")]
    Panicked(String),
    /// A model failed to load (start-up only).
    #[error("loading the vision models: {0}")]
    Load(String),
    /// The OCR failed on this image.
    #[error("OCR: {0}")]
    Ocr(String),
}

impl From<WorkerError> for VisionError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Busy(_) => Self::Busy,
            WorkerError::Stopped(_) => Self::Stopped,
            WorkerError::Panicked(_, why) => Self::Panicked(why),
        }
    }
}

/// The models that live on the vision thread.
struct Models {
    ocr: Ocr,
    scene: Option<LocalScene>,
}

/// What a job on the vision thread produces (one worker, one output type).
enum Output {
    Look {
        text: Result<OcrText, String>,
        /// `None` when no local scene model was asked.
        scene: Option<Result<String, String>>,
    },
    Pages(Result<Vec<OcrText>, String>),
}

/// Cloneable handle to the vision models.
#[derive(Clone)]
pub struct Vision {
    worker: ModelWorker<Models, Output>,
    local_scene: bool,
    remote: Option<Arc<dyn SceneServer>>,
    scene_max_tokens: usize,
}

impl Vision {
    /// Starts the model thread and loads the models on it. Blocks until they are loaded (call it
    /// off the async runtime); a model that fails to load is reported here.
    pub fn start(opts: VisionOptions) -> Result<Self, VisionError> {
        let VisionOptions {
            ocr_dir,
            scene_dir,
            remote,
            queue,
            scene_max_tokens,
        } = opts;
        let local_scene = scene_dir.is_some();
        let worker = ModelWorker::spawn("vision", queue, move || {
            let ocr = Ocr::load(&ocr_dir).map_err(|e| VisionError::Load(e.to_string()))?;
            let scene = scene_dir
                .map(|d| LocalScene::load(&d))
                .transpose()
                .map_err(|e| VisionError::Load(e.to_string()))?;
            Ok::<_, VisionError>(Models { ocr, scene })
        })?;
        Ok(Self {
            worker,
            local_scene,
            // A local model answers on the thread; a remote one would only be a second opinion.
            remote: if local_scene { None } else { remote },
            scene_max_tokens,
        })
    }

    /// True when scenes can be described (a local or remote scene model), not only text read.
    pub fn describes_scenes(&self) -> bool {
        self.local_scene || self.remote.is_some()
    }

    /// Records how long each job waits in the model queue (seconds).
    pub fn observe_queue_wait(&self, histogram: metrics::Histogram) {
        self.worker.observe_queue_wait(histogram);
    }

    /// Reads the text in `image` and, when a scene model exists, describes it or answers
    /// `question` about it. A scene model's failure is reported in [`Sight::scene`], not as an
    /// error: the text read still stands.
    pub async fn look(
        &self,
        image: RgbImage,
        question: Option<String>,
    ) -> Result<Sight, VisionError> {
        let image = Arc::new(image);
        let max_tokens = self.scene_max_tokens;
        let on_thread = {
            let image = image.clone();
            let question = question.clone();
            let local = self.local_scene;
            self.worker.run(move |m| {
                let text = m.ocr.read(&image).map_err(|e| e.to_string());
                let scene = (local && !crate::worker::cancelled()).then(|| {
                    m.scene
                        .as_mut()
                        .map_or(Err("no local scene model".into()), |s| {
                            s.answer(&image, question.as_deref(), max_tokens)
                                .map_err(|e| e.to_string())
                        })
                });
                Output::Look { text, scene }
            })
        };
        let remote = async {
            match &self.remote {
                Some(r) => Some(
                    r.answer(&image, question.as_deref(), max_tokens)
                        .await
                        .map_err(|e| e.to_string()),
                ),
                None => None,
            }
        };
        let (out, remote) = tokio::join!(on_thread, remote);
        let Output::Look { text, scene } = out? else {
            unreachable!("a look job answers with Output::Look")
        };
        let text = text.map_err(VisionError::Ocr)?;
        let scene = match scene.or(remote) {
            Some(Ok(a)) if !a.trim().is_empty() => SceneOutcome::Answered(a.trim().to_string()),
            Some(Ok(_)) => SceneOutcome::Failed("the scene model said nothing".into()),
            Some(Err(e)) => SceneOutcome::Failed(e),
            None => SceneOutcome::NoModel,
        };
        Ok(Sight { text, scene })
    }

    /// Reads the text of scanned pages, in order, in one job (the pages of one document are
    /// one unit of work: a queue slot each would let one PDF crowd out every photo).
    pub async fn read_pages(&self, pages: Vec<RgbImage>) -> Result<Vec<OcrText>, VisionError> {
        let out = self
            .worker
            .run(move |m| {
                let mut texts = Vec::with_capacity(pages.len());
                for p in &pages {
                    // Nobody waits for the rest: stop between pages.
                    if crate::worker::cancelled() {
                        break;
                    }
                    match m.ocr.read(p) {
                        Ok(t) => texts.push(t),
                        Err(e) => return Output::Pages(Err(e.to_string())),
                    }
                }
                Output::Pages(Ok(texts))
            })
            .await?;
        let Output::Pages(texts) = out else {
            unreachable!("a pages job answers with Output::Pages")
        };
        texts.map_err(VisionError::Ocr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: PathBuf) -> VisionOptions {
        VisionOptions {
            ocr_dir: dir,
            scene_dir: None,
            remote: None,
            queue: 2,
            scene_max_tokens: 64,
        }
    }

    /// A missing OCR model fails start-up with the reason, instead of a vision actor that can
    /// never answer.
    #[test]
    fn a_missing_ocr_model_fails_start() {
        let dir = tempfile::tempdir().unwrap();
        let err = Vision::start(opts(dir.path().join("nope"))).err().unwrap();
        assert!(matches!(err, VisionError::Load(_)), "{err}");
    }
}
