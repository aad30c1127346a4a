//! The vision actor: the one place photos, stickers and documents are looked at.
//!
//! - Owns: the [`Vision`] models (OCR and an optional scene model, on their model thread behind
//!   a bounded queue), the media client that downloads files, the decode slots, and the count
//!   of jobs in progress.
//! - Takes: [`VisionMsg::Look`] from conversations (each waits for the answer with its own
//!   timeout), [`VisionMsg::JobPanicked`] from its own job tasks.
//! - Supervised by: the root supervisor, which re-creates it from its arguments when it fails.
//! - Never: blocks (each job runs as a task: download → decode or read on the blocking pool →
//!   the vision thread), writes a file anywhere (bytes, pixels and text live in memory only), or
//!   runs more than `max_jobs` at once: a file over the cap waits for a free slot (first come,
//!   first served), never refused for load; its turn's patience bounds the wait.
//!
//! The same pattern as the transcription actor: a job whose caller stopped waiting (its turn
//! timed out) is dropped at its next step, and with it the model job's caller, so the vision
//! thread skips it or stops between pages.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sandra_models::vision::document::{DocError, DocLimits};
use sandra_models::vision::image::{ImageError, ImageLimits};
use sandra_models::vision::{SceneOutcome, Vision, VisionError};
use tokio::sync::{Semaphore, oneshot};

use crate::media::{MediaClient, MediaError};
use crate::metrics::Metrics;
pub use crate::texts::SightProblem;
use crate::whatsapp::{MediaKind, MediaRef};

pub type VisionRef = ActorRef<VisionMsg>;

/// What a conversation gets back for one photo or document.
pub type Outcome = Result<Seen, SightProblem>;

/// What was found in a photo (or sticker) or a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Photo {
        /// The text read, paragraphs separated by blank lines; empty when there was none.
        text: String,
        scene: SceneOutcome,
    },
    Document {
        /// The text layer and the text read from scanned pages, in page order.
        text: String,
        /// Pages in the document.
        pages: usize,
        /// Pages or characters were left out (over `max_pages`, `max_ocr_pages`, `max_chars`).
        truncated: bool,
    },
}

pub enum VisionMsg {
    /// Look at one photo, sticker or document; `question` (the caption) goes to a scene model.
    /// The answer goes to `reply` (dropped unanswered if the caller left).
    Look {
        media: MediaRef,
        question: Option<String>,
        reply: oneshot::Sender<Outcome>,
    },
    /// A job task panicked: a bug, so the actor fails and is re-created from its arguments.
    JobPanicked(String),
}

#[derive(Clone)]
pub struct VisionArgs {
    pub vision: Vision,
    pub media: MediaClient,
    /// Pixel cap on photos and stickers (`vision.max_pixels`).
    pub image: ImageLimits,
    /// Page, OCR-page and character caps on documents (`vision.max_pages`, ...).
    pub document: DocLimits,
    /// Jobs (download, decode, OCR) in progress at once; more wait for a slot.
    pub max_jobs: usize,
    pub metrics: Arc<Metrics>,
}

#[derive(Clone, Copy)]
pub struct VisionActor;

pub struct VisionState {
    args: VisionArgs,
    /// `max_jobs` permits: a job holds one from its start to its end; the rest wait in order.
    job_slots: Arc<Semaphore>,
    /// Decodes running at once: one per core, so a burst of photos cannot take every blocking
    /// thread or multiply the pixel buffers by the burst's size.
    decode_slots: Arc<Semaphore>,
}

impl Actor for VisionActor {
    type Msg = VisionMsg;
    type State = VisionState;
    type Arguments = VisionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<VisionMsg>,
        args: VisionArgs,
    ) -> Result<VisionState, ActorProcessingErr> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(VisionState {
            job_slots: Arc::new(Semaphore::new(args.max_jobs.max(1))),
            args,
            decode_slots: Arc::new(Semaphore::new(cores)),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<VisionMsg>,
        msg: VisionMsg,
        state: &mut VisionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            VisionMsg::Look {
                media,
                question,
                reply,
            } => {
                if state.job_slots.available_permits() == 0 {
                    Metrics::inc(&state.args.metrics.vision_busy);
                    tracing::info!(media = %media.id, "vision busy; file waits for a slot");
                }
                let job = Job {
                    args: state.args.clone(),
                    decode_slots: state.decode_slots.clone(),
                    job_slots: state.job_slots.clone(),
                };
                tokio::spawn(async move {
                    let work = std::panic::AssertUnwindSafe(job.run(media, question, reply))
                        .catch_unwind();
                    let result = work.await;
                    if let Err(panic) = result {
                        let why = sandra_models::worker::panic_message(&panic);
                        let _ = myself.cast(VisionMsg::JobPanicked(why));
                    }
                });
            }
            VisionMsg::JobPanicked(why) => {
                return Err(format!("a vision job panicked: {why}").into());
            }
        }
        Ok(())
    }
}

/// One file's way through download, decode and the models, in memory only.
struct Job {
    args: VisionArgs,
    decode_slots: Arc<Semaphore>,
    job_slots: Arc<Semaphore>,
}

/// Counts a job in `vision_jobs` while it holds its slot.
struct InProgress(Arc<Metrics>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.vision_jobs.decrement(1.0);
    }
}

/// Calls `call` until the vision thread's queue takes the job: a full queue means "wait", not
/// "refuse" (the caller's patience bounds the wait).
async fn when_admitted<T, F, Fut>(mut call: F) -> Result<T, VisionError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, VisionError>>,
{
    let mut pause = Duration::from_millis(50);
    loop {
        match call().await {
            Err(VisionError::Busy) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Keeps at most `max` characters (whole characters, never a split code point).
fn cap_chars(text: String, max: usize) -> (String, bool) {
    match text.char_indices().nth(max) {
        Some((at, _)) => (text[..at].to_string(), true),
        None => (text, false),
    }
}

fn model_problem(media: &MediaRef, e: VisionError) -> SightProblem {
    tracing::warn!(media = %media.id, error = %e, "vision models failed");
    SightProblem::Failed
}

impl Job {
    /// Answers `reply`, or gives up as soon as nobody waits for the answer anymore.
    async fn run(
        self,
        media: MediaRef,
        question: Option<String>,
        mut reply: oneshot::Sender<Outcome>,
    ) {
        let outcome = tokio::select! {
            outcome = async {
                // Never closed, so this cannot fail; held until the job ends.
                let _slot = self.job_slots.clone().acquire_owned().await.ok();
                self.args.metrics.vision_jobs.increment(1.0);
                let _counted = InProgress(self.args.metrics.clone());
                self.look(&media, question).await
            } => outcome,
            () = reply.closed() => {
                tracing::debug!(media = %media.id, "file abandoned by its turn");
                return;
            }
        };
        let _ = reply.send(outcome);
    }

    /// One call to the vision models, timed into `vision_ocr_seconds`, its failure worded for
    /// the user.
    async fn timed<T>(
        &self,
        media: &MediaRef,
        call: impl Future<Output = Result<T, VisionError>>,
    ) -> Result<T, SightProblem> {
        let started = Instant::now();
        let out = call.await.map_err(|e| model_problem(media, e))?;
        self.args
            .metrics
            .vision_ocr_seconds
            .record(started.elapsed().as_secs_f64());
        Ok(out)
    }

    async fn look(&self, media: &MediaRef, question: Option<String>) -> Outcome {
        let fetched = self.args.media.fetch(media).await.map_err(|e| {
            tracing::warn!(media = %media.id, error = %e, "file download failed");
            match e {
                MediaError::Gone => SightProblem::Gone,
                MediaError::TooLarge { .. } => SightProblem::TooLarge,
                _ => SightProblem::Download,
            }
        })?;
        match media.kind {
            MediaKind::Image | MediaKind::Sticker => self.photo(media, fetched, question).await,
            MediaKind::Document => self.document(media, fetched).await,
            MediaKind::Audio | MediaKind::Video => Err(SightProblem::Unsupported),
        }
    }

    /// Runs `work` on the blocking pool while holding a decode slot.
    async fn decode<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SightProblem> {
        // Held until the decode ends; the semaphore is never closed, so this cannot fail.
        let slot = self.decode_slots.clone().acquire_owned().await.ok();
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(slot);
            out
        })
        .await
        .map_err(|_| SightProblem::Undecodable)
    }

    async fn photo(
        &self,
        media: &MediaRef,
        fetched: crate::media::Media,
        question: Option<String>,
    ) -> Outcome {
        let limits = self.args.image;
        let mime = fetched.mime;
        let bytes = fetched.bytes;
        let image = self
            .decode(move || sandra_models::vision::image::decode(&bytes, &mime, &limits))
            .await?
            .map_err(|e| {
                tracing::warn!(media = %media.id, error = %e, "photo decoding failed");
                match e {
                    ImageError::TooLarge { .. } => SightProblem::TooLarge,
                    ImageError::Unsupported { .. } => SightProblem::Unsupported,
                    ImageError::Corrupt(_) => SightProblem::Undecodable,
                }
            })?;
        let sight = self
            .timed(
                media,
                // A clone per call, so that a full queue can be retried: bounded by the pixel
                // cap, and cheap beside the OCR it feeds.
                when_admitted(|| self.args.vision.look(image.clone(), question.clone())),
            )
            .await?;
        if let SceneOutcome::Failed(why) = &sight.scene {
            tracing::warn!(media = %media.id, error = %why, "scene model failed; the text read still stands");
        }
        let (text, _) = cap_chars(sight.text.text(), self.args.document.max_chars);
        Ok(Seen::Photo {
            text: text.trim().to_string(),
            scene: sight.scene,
        })
    }

    async fn document(&self, media: &MediaRef, fetched: crate::media::Media) -> Outcome {
        let limits = self.args.document;
        let filename = media.filename.clone();
        let crate::media::Media { bytes, mime } = fetched;
        let doc = self
            .decode(move || {
                sandra_models::vision::document::read(&bytes, &mime, filename.as_deref(), &limits)
            })
            .await?
            .map_err(|e| {
                tracing::warn!(media = %media.id, error = %e, "document reading failed");
                match e {
                    DocError::Unsupported { .. } => SightProblem::Unsupported,
                    DocError::Encrypted => SightProblem::Encrypted,
                    DocError::Corrupt(_) => SightProblem::Undecodable,
                }
            })?;
        let mut truncated = doc.truncated;
        // Pages by number: the text layer's pages, then the scanned ones OCR reads, merged in
        // page order so the model reads the document as it is laid out.
        let mut pages: Vec<(usize, String)> = doc
            .pages
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.trim().is_empty())
            .map(|(i, t)| (i + 1, t.clone()))
            .collect();
        if !doc.scanned.is_empty() {
            let mut scanned = doc.scanned;
            if scanned.len() > limits.max_ocr_pages {
                scanned.truncate(limits.max_ocr_pages);
                truncated = true;
            }
            let numbers: Vec<usize> = scanned.iter().map(|(n, _)| *n).collect();
            let images: Vec<_> = scanned.into_iter().map(|(_, img)| img).collect();
            let texts = self
                .timed(
                    media,
                    when_admitted(|| self.args.vision.read_pages(images.clone())),
                )
                .await?;
            for (n, t) in numbers.into_iter().zip(texts) {
                // A scanned page's number may coincide with an empty text-layer page: replace.
                pages.retain(|(p, _)| *p != n);
                pages.push((n, t.text()));
            }
            pages.sort_by_key(|(n, _)| *n);
        }
        let joined = pages
            .into_iter()
            .map(|(_, t)| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n\n");
        let (text, cut) = cap_chars(joined, limits.max_chars);
        Ok(Seen::Document {
            text,
            pages: doc.page_count,
            truncated: truncated || cut,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_capped_at_whole_characters() {
        assert_eq!(cap_chars("¿Qué?".into(), 3), ("¿Qu".into(), true));
        assert_eq!(cap_chars("abc".into(), 3), ("abc".into(), false));
        assert_eq!(cap_chars("".into(), 0), ("".into(), false));
    }
}
