//! Running a planned turn: hear the voice notes, then ask the brain, in one task off the actor.
//!
//! The actor never waits: [`spawn`] starts one task that reports back as messages:
//! [`ConversationMsg::Heard`] once the voice notes are resolved (so a turn that times out later
//! still remembers what was said), then [`ConversationMsg::TurnDone`].
//!
//! Cancellation is real: on timeout the turn's future is dropped, not left running. That drops
//! the brain's call (its model job is skipped or stopped between tokens, see `ModelWorker`) and
//! the wait on the transcription actor (whose job then stops at its next step). A panic in the
//! turn is caught and reported as `TurnDone(None)`, which fails the conversation so the router
//! restarts it from the store.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::ActorRef;
use tokio::sync::oneshot;

use crate::brain::{Brain, BrainError, BrainReply, TurnInput, UserInput};
use crate::sender::SenderMsg;
use crate::slot::ActorSlot;
use crate::texts::{self, Lang, VoiceProblem};
use crate::transcription::{Outcome, TranscriptionMsg};
use crate::whatsapp::MediaRef;

use super::ConversationMsg;

/// What a turn needs from outside the conversation; shared by every conversation.
#[derive(Clone)]
pub struct RunDeps {
    pub brain: Arc<dyn Brain>,
    pub sender: ActorSlot<SenderMsg>,
    /// The transcription actor, when voice notes can be heard.
    pub transcription: Option<ActorSlot<TranscriptionMsg>>,
    /// Start the reply with what Sandra heard, so the user can tell a mishearing.
    pub echo_transcript: bool,
    /// `transcription.max_audio_seconds`, to tell the user how much of a long note was heard.
    pub max_audio_seconds: f32,
}

/// One turn to run.
pub struct TurnJob {
    pub input: TurnInput,
    /// Voice notes to hear first: (index into `input.inputs`, media).
    pub voice: Vec<(usize, MediaRef)>,
    /// Refresh the typing indicator on this message while the turn runs.
    pub typing_for: Option<String>,
    pub lang: Lang,
    pub timeout: Duration,
}

/// The typing indicator lasts about 25 s: it is refreshed this often while the brain works.
const TYPING_REFRESH: Duration = Duration::from_secs(20);

/// Runs `job` in a task that reports to `me`.
pub fn spawn(me: ActorRef<ConversationMsg>, job: TurnJob, deps: RunDeps) {
    tokio::spawn(async move {
        let typing_for = job.typing_for.clone();
        let timeout = job.timeout;
        let sender = deps.sender.clone();
        let outcome = {
            let turn = std::panic::AssertUnwindSafe(turn(job, deps, me.clone())).catch_unwind();
            let mut work = std::pin::pin!(tokio::time::timeout(timeout, turn));
            // The first tick is immediate: the user sees "typing" as soon as the turn starts.
            let mut refresh = tokio::time::interval(TYPING_REFRESH);
            loop {
                tokio::select! {
                    res = &mut work => break res,
                    _ = refresh.tick() => {
                        if let Some(w) = &typing_for
                            && let Some(s) = sender.try_get()
                        {
                            let _ = s.cast(SenderMsg::Typing { wamid: w.clone() });
                        }
                    }
                }
            }
            // `work` is dropped here, before the actor hears of the outcome: a timed-out turn
            // has stopped by the time the next one starts.
        };
        let done = match outcome {
            Ok(Ok(reply)) => Some(reply),
            Ok(Err(_panic)) => {
                tracing::error!("turn task panicked");
                None
            }
            Err(_elapsed) => Some(Err(BrainError::Failed("timed out".into()))),
        };
        let _ = me.cast(ConversationMsg::TurnDone(done));
    });
}

async fn turn(
    job: TurnJob,
    deps: RunDeps,
    me: ActorRef<ConversationMsg>,
) -> Result<BrainReply, BrainError> {
    let TurnJob {
        mut input,
        voice,
        lang,
        timeout,
        ..
    } = job;
    let mut heard = Vec::new();
    let mut failed = Vec::new();
    if !voice.is_empty() {
        let mut notes = Vec::new();
        for (idx, media) in &voice {
            match hear(&deps, media, timeout).await {
                Ok(h) => {
                    // Notes about a voice note are in the language it was spoken in.
                    let l = h
                        .language
                        .as_deref()
                        .and_then(Lang::from_code)
                        .unwrap_or(lang);
                    if h.truncated {
                        notes.push(texts::voice_truncated(l, deps.max_audio_seconds));
                    }
                    heard.push(h.text.clone());
                    input.inputs[*idx].text = h.text;
                }
                Err(problem) => {
                    notes.push(texts::voice_problem(lang, problem));
                    failed.push(*idx);
                }
            }
        }
        let _ = me.cast(ConversationMsg::Heard {
            inputs: input.inputs.clone(),
            notes,
        });
    }
    // History keeps every input (an unheard voice note as its marker); the brain gets only
    // what it can answer: the user already got a note about the rest.
    let inputs: Vec<UserInput> = input
        .inputs
        .iter()
        .enumerate()
        .filter(|(i, _)| !failed.contains(i))
        .map(|(_, u)| u.clone())
        .collect();
    if inputs.is_empty() {
        return Ok(BrainReply::default());
    }
    input.inputs = inputs;
    let mut reply = deps.brain.reply(input).await?;
    if deps.echo_transcript && !heard.is_empty() {
        let quoted: Vec<String> = heard.iter().map(|h| format!("🎙️ _\"{h}\"_")).collect();
        reply.text = format!("{}\n\n{}", quoted.join("\n"), reply.text);
    }
    Ok(reply)
}

/// Asks the transcription actor to hear one voice note, waiting at most `timeout`.
async fn hear(deps: &RunDeps, media: &MediaRef, timeout: Duration) -> Outcome {
    let Some(actor) = deps.transcription.as_ref().and_then(ActorSlot::try_get) else {
        return Err(VoiceProblem::Transcription);
    };
    let (reply, answer) = oneshot::channel();
    if actor
        .cast(TranscriptionMsg::Transcribe {
            media: media.clone(),
            reply,
        })
        .is_err()
    {
        tracing::warn!(media = %media.id, "transcription actor not running");
        return Err(VoiceProblem::Transcription);
    }
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(outcome)) => outcome,
        // The actor failed with the job (the root re-creates it), or took too long.
        Ok(Err(_)) | Err(_) => Err(VoiceProblem::Transcription),
    }
}
