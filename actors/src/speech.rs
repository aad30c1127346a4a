//! The speech actor: the one place replies are spoken (voice replies, `[voice]`).
//!
//! - Owns: the [`Speaker`] (the installed Piper voices on their model thread, behind a bounded
//!   queue) and the cap on jobs in progress.
//! - Takes: [`SpeechMsg::Speak`] from the sender (which uploads and sends the note; it waits for
//!   the answer with its own timeout), [`SpeechMsg::JobPanicked`] from its own job tasks.
//! - Supervised by: the root supervisor, which re-creates it from its arguments when it fails
//!   (the voices stay loaded: the model thread survives a failed job; see `ModelWorker`).
//! - Never: blocks (each job is a task awaiting the model thread), writes audio anywhere (the
//!   voice note lives in memory until it is uploaded), or runs more than `max_jobs` at once: a
//!   reply over the cap waits for a slot, first come, first served. A caller that stopped
//!   waiting gives up its job at its next step, and the model skips or stops it.
//!
//! Same pattern as the transcription actor: args with the model handle, a typed job answered on
//! a oneshot, a cap on jobs, a slot in the root supervisor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sandra_models::speech::{Speaker, SpeechError, VoiceNote};
use sandra_models::worker::WorkerError;
use tokio::sync::{Semaphore, oneshot};

use crate::metrics::Metrics;

pub type SpeechRef = ActorRef<SpeechMsg>;

/// What the sender gets back for one text.
pub type Outcome = Result<VoiceNote, Unspoken>;

/// Why a text was not spoken. `retry` says whether trying again later can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unspoken {
    pub reason: String,
    pub retry: bool,
}

pub enum SpeechMsg {
    /// Speak `text` in `language` (ISO 639-1); the answer goes to `reply` (dropped unanswered if
    /// the caller left).
    Speak {
        text: String,
        language: String,
        reply: oneshot::Sender<Outcome>,
    },
    /// A job task panicked: a bug, so the actor fails and is re-created from its arguments.
    JobPanicked(String),
}

#[derive(Clone)]
pub struct SpeechArgs {
    pub speaker: Speaker,
    /// Replies being spoken at once; more wait for a slot.
    pub max_jobs: usize,
    pub metrics: Arc<Metrics>,
}

#[derive(Clone, Copy)]
pub struct Speech;

pub struct SpeechState {
    args: SpeechArgs,
    job_slots: Arc<Semaphore>,
}

impl Actor for Speech {
    type Msg = SpeechMsg;
    type State = SpeechState;
    type Arguments = SpeechArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SpeechMsg>,
        args: SpeechArgs,
    ) -> Result<SpeechState, ActorProcessingErr> {
        Ok(SpeechState {
            job_slots: Arc::new(Semaphore::new(args.max_jobs.max(1))),
            args,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SpeechMsg>,
        msg: SpeechMsg,
        state: &mut SpeechState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SpeechMsg::Speak {
                text,
                language,
                reply,
            } => {
                let speaker = state.args.speaker.clone();
                let slots = state.job_slots.clone();
                let metrics = state.args.metrics.clone();
                tokio::spawn(async move {
                    let work = std::panic::AssertUnwindSafe(run(
                        speaker, slots, metrics, text, language, reply,
                    ))
                    .catch_unwind();
                    if let Err(panic) = work.await {
                        let why = sandra_models::worker::panic_message(&panic);
                        let _ = myself.cast(SpeechMsg::JobPanicked(why));
                    }
                });
            }
            SpeechMsg::JobPanicked(why) => {
                return Err(format!("a speech job panicked: {why}").into());
            }
        }
        Ok(())
    }
}

/// Answers `reply`, or gives up as soon as nobody waits for the answer anymore.
async fn run(
    speaker: Speaker,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    text: String,
    language: String,
    mut reply: oneshot::Sender<Outcome>,
) {
    let outcome = tokio::select! {
        outcome = async {
            // Never closed, so this cannot fail; held until the job ends.
            let _slot = slots.acquire_owned().await.ok();
            let started = Instant::now();
            let out = when_admitted(|| speaker.speak(text.clone(), &language)).await;
            match &out {
                Ok(note) if note.seconds > 0.0 => {
                    metrics
                        .speech_rtf
                        .record(started.elapsed().as_secs_f64() / f64::from(note.seconds));
                }
                Ok(_) => {}
                // The text is never logged: it is the user's conversation.
                Err(e) => tracing::warn!(%language, error = %e, "speaking a reply failed"),
            }
            out.map_err(unspoken)
        } => outcome,
        () = reply.closed() => {
            tracing::debug!("voice reply abandoned by its caller");
            return;
        }
    };
    let _ = reply.send(outcome);
}

fn unspoken(e: SpeechError) -> Unspoken {
    // A stopped model thread or a job that died may work again after the actor is re-created;
    // a missing voice, an empty text or a failing model will fail the same way every time.
    let retry = matches!(
        e,
        SpeechError::Worker(WorkerError::Stopped(_) | WorkerError::Panicked(..))
    );
    Unspoken {
        reason: e.to_string(),
        retry,
    }
}

/// Calls `call` until the model's queue takes the job: a full queue means "wait", not "refuse".
async fn when_admitted<T, F, Fut>(mut call: F) -> Result<T, SpeechError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SpeechError>>,
{
    let mut pause = Duration::from_millis(50);
    loop {
        match call().await {
            Err(SpeechError::Worker(WorkerError::Busy(_))) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}
