//! The transcription actor: the one place voice notes are heard.
//!
//! - Owns: the Whisper [`Transcriber`] (its model thread and bounded queue), the media client
//!   that downloads notes, the decode slots, and the count of jobs in progress.
//! - Takes: [`TranscriptionMsg::Transcribe`] from conversations (each waits for the answer
//!   with its own timeout), [`TranscriptionMsg::JobPanicked`] from its own job tasks.
//! - Supervised by: the root supervisor, which re-creates it from its arguments when it fails.
//! - Never: blocks (each job runs as a task: download → decode on the blocking pool → Whisper
//!   thread), writes audio anywhere (bytes and samples live in memory only), or runs more than
//!   `max_jobs` at once: a note over the cap waits for a free slot (first come, first served)
//!   instead of being refused, since its message is safe in the inbox and the user must never
//!   be asked to send it again. Its turn's patience bounds the wait.
//!
//! A job whose caller stopped waiting (its turn timed out) is dropped at its next step, and with
//! it the Whisper job's caller, so the model skips or stops it (see `ModelWorker`).
//! The vision actor follows the same pattern: args with the model handle, a typed job message
//! answered on a oneshot, a cap on jobs, and a slot in the root supervisor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sandra_models::whisper::{Transcriber, WhisperError};
use sandra_models::worker::WorkerError;
use tokio::sync::{Semaphore, oneshot};

use crate::media::{MediaClient, MediaError};
use crate::metrics::Metrics;
use crate::texts::VoiceProblem;
use crate::whatsapp::MediaRef;

pub type TranscriptionRef = ActorRef<TranscriptionMsg>;

/// What a conversation gets back for one voice note.
pub type Outcome = Result<Heard, Unheard>;

/// A voice note, heard.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    pub text: String,
    /// ISO 639-1 code of the language Whisper heard, when it says.
    pub language: Option<String>,
    /// Only the first `max_audio_seconds` were heard (the rest was not decoded).
    pub truncated: bool,
}

/// Why a voice note could not be heard; the conversation tells the user in words.
pub type Unheard = VoiceProblem;

pub enum TranscriptionMsg {
    /// Hear one voice note; the answer goes to `reply` (dropped unanswered if the caller left).
    Transcribe {
        media: MediaRef,
        reply: oneshot::Sender<Outcome>,
    },
    /// A job task panicked: a bug, so the actor fails and is re-created from its arguments.
    JobPanicked(String),
}

#[derive(Clone)]
pub struct TranscriptionArgs {
    pub transcriber: Transcriber,
    pub media: MediaClient,
    /// Longest stretch of a voice note decoded and transcribed (`transcription.max_audio_seconds`).
    pub max_audio_seconds: f32,
    /// Jobs (download, decode, transcription) in progress at once; more wait for a slot.
    pub max_jobs: usize,
    pub metrics: Arc<Metrics>,
}

#[derive(Clone, Copy)]
pub struct Transcription;

pub struct TranscriptionState {
    args: TranscriptionArgs,
    /// `max_jobs` permits: a job holds one from its start to its end; the rest wait in order.
    job_slots: Arc<Semaphore>,
    /// Decodes running at once: one per core, so a burst of voice notes cannot take every
    /// blocking thread or multiply the decode buffers by the burst's size.
    decode_slots: Arc<Semaphore>,
}

impl Actor for Transcription {
    type Msg = TranscriptionMsg;
    type State = TranscriptionState;
    type Arguments = TranscriptionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<TranscriptionMsg>,
        args: TranscriptionArgs,
    ) -> Result<TranscriptionState, ActorProcessingErr> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(TranscriptionState {
            job_slots: Arc::new(Semaphore::new(args.max_jobs.max(1))),
            args,
            decode_slots: Arc::new(Semaphore::new(cores)),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TranscriptionMsg>,
        msg: TranscriptionMsg,
        state: &mut TranscriptionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TranscriptionMsg::Transcribe { media, reply } => {
                if state.job_slots.available_permits() == 0 {
                    Metrics::inc(&state.args.metrics.transcriptions_busy);
                    tracing::info!(media = %media.id, "transcription busy; voice note waits for a slot");
                }
                let job = Job {
                    args: state.args.clone(),
                    decode_slots: state.decode_slots.clone(),
                    job_slots: state.job_slots.clone(),
                };
                tokio::spawn(async move {
                    let work = std::panic::AssertUnwindSafe(job.run(media, reply)).catch_unwind();
                    let result = work.await;
                    if let Err(panic) = result {
                        let why = sandra_models::worker::panic_message(&panic);
                        let _ = myself.cast(TranscriptionMsg::JobPanicked(why));
                    }
                });
            }
            TranscriptionMsg::JobPanicked(why) => {
                return Err(format!("a transcription job panicked: {why}").into());
            }
        }
        Ok(())
    }
}

/// One voice note's way through download, decode and Whisper, in memory only.
struct Job {
    args: TranscriptionArgs,
    decode_slots: Arc<Semaphore>,
    job_slots: Arc<Semaphore>,
}

/// Counts a job in `transcription_jobs` while it holds its slot.
struct InProgress(Arc<Metrics>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.transcription_jobs.decrement(1.0);
    }
}

impl Job {
    /// Answers `reply`, or gives up as soon as nobody waits for the answer anymore (while
    /// waiting for a slot, too).
    async fn run(self, media: MediaRef, mut reply: oneshot::Sender<Outcome>) {
        let outcome = tokio::select! {
            outcome = async {
                // Never closed, so this cannot fail; held until the job ends.
                let _slot = self.job_slots.clone().acquire_owned().await.ok();
                self.args.metrics.transcription_jobs.increment(1.0);
                let _counted = InProgress(self.args.metrics.clone());
                self.hear(&media).await
            } => outcome,
            () = reply.closed() => {
                tracing::debug!(media = %media.id, "voice note abandoned by its turn");
                return;
            }
        };
        let _ = reply.send(outcome);
    }

    async fn hear(&self, media: &MediaRef) -> Outcome {
        let fetched = self.args.media.fetch(media).await.map_err(|e| {
            tracing::warn!(media = %media.id, error = %e, "voice note download failed");
            match e {
                MediaError::Gone => VoiceProblem::Gone,
                MediaError::TooLarge { .. } => VoiceProblem::TooLarge,
                _ => VoiceProblem::Download,
            }
        })?;
        let mime = fetched.mime.clone();
        let max_seconds = self.args.max_audio_seconds;
        // Held until the decode ends; the semaphore is never closed, so this cannot fail.
        let slot = self.decode_slots.clone().acquire_owned().await.ok();
        let pcm = tokio::task::spawn_blocking(move || {
            let pcm = sandra_models::audio::decode_to_pcm16k(&fetched.bytes, &mime, max_seconds);
            drop(slot);
            pcm
        })
        .await
        .map_err(|_| VoiceProblem::Undecodable)?
        .map_err(|e| {
            tracing::warn!(media = %media.id, error = %e, "voice note decoding failed");
            match e {
                sandra_models::audio::AudioError::Unsupported { .. } => {
                    VoiceProblem::UnsupportedFormat
                }
                _ => VoiceProblem::Undecodable,
            }
        })?;
        if pcm.truncated {
            tracing::info!(media = %media.id, max_seconds, "voice note longer than the cap, truncated");
        }
        let audio_seconds = pcm.samples.len() as f64 / 16_000.0;
        let started = Instant::now();
        let t = when_admitted(|| self.args.transcriber.transcribe(pcm.samples.clone()))
            .await
            .map_err(|e| {
                tracing::warn!(media = %media.id, error = %e, "transcription failed");
                VoiceProblem::Transcription
            })?;
        if audio_seconds > 0.0 {
            self.args
                .metrics
                .transcription_rtf
                .record(started.elapsed().as_secs_f64() / audio_seconds);
        }
        let text = t.text.trim().to_string();
        if text.is_empty() {
            return Err(VoiceProblem::Silent);
        }
        Ok(Heard {
            text,
            language: t.language,
            truncated: pcm.truncated,
        })
    }
}

/// Calls `call` until the model's queue takes the job: a full queue means "wait", not "refuse"
/// (the caller's patience bounds the wait).
async fn when_admitted<T, F, Fut>(mut call: F) -> Result<T, WhisperError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, WhisperError>>,
{
    let mut pause = Duration::from_millis(50);
    loop {
        match call().await {
            Err(WhisperError::Worker(WorkerError::Busy(_))) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}
