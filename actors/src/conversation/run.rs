//! Running a planned turn: hear the voice notes and look at the photos and documents, then ask
//! the brain, in one task off the actor.
//!
//! The actor never waits: [`spawn`] starts one task that reports back as messages:
//! [`ConversationMsg::Heard`] once the voice notes and files are resolved (so a turn that times
//! out later still remembers what was said and seen), then [`ConversationMsg::TurnDone`].
//!
//! What the vision actor found replaces the file's input text ([`seen_text`]): the text read and
//! what a scene model said, marked as read by a tool, with the caption. A file in which nothing
//! was found is not sent to the brain at all (the user gets a canned, honest answer): a model
//! given only a caption would answer as if it had seen the file.
//!
//! Cancellation is real: on timeout the turn's future is dropped, not left running. That drops
//! the brain's call (its model job is skipped or stopped between tokens, see `ModelWorker`) and
//! the wait on the transcription actor (whose job then stops at its next step). A panic in the
//! turn is caught and reported as `TurnDone(None)`, which fails the conversation so the router
//! restarts it from the store.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use ractor::ActorRef;
use tokio::sync::oneshot;

use crate::accounts::MailJob;
use crate::brain::{Brain, BrainError, BrainReply, TurnInput, UserInput};
use crate::mailer::{MailError, Mailer};
use crate::sender::SenderMsg;
use crate::slot::ActorSlot;
use crate::texts::{self, Lang, VoiceProblem};
use crate::transcription::{Outcome, TranscriptionMsg};
use crate::vision::{Seen, SightProblem, VisionMsg};
use crate::whatsapp::{MediaKind, MediaRef};
use sandra_models::vision::SceneOutcome;

use super::plan::media_word;

use super::ConversationMsg;

/// What a turn needs from outside the conversation; shared by every conversation.
#[derive(Clone)]
pub struct RunDeps {
    pub brain: Arc<dyn Brain>,
    pub sender: ActorSlot<SenderMsg>,
    /// The transcription actor, when voice notes can be heard.
    pub transcription: Option<ActorSlot<TranscriptionMsg>>,
    /// The vision actor, when photos and documents can be looked at.
    pub vision: Option<ActorSlot<VisionMsg>>,
    /// Start the reply with what Sandra heard, so the user can tell a mishearing.
    pub echo_transcript: bool,
    /// `transcription.max_audio_seconds`, to tell the user how much of a long note was heard.
    pub max_audio_seconds: f32,
    /// Sends verification codes; `None` when `[email] smtp_url` is not set.
    pub mailer: Option<Arc<Mailer>>,
    /// When model work last finished, for every conversation: a turn waiting in a long queue
    /// is not stuck while others are being answered (see [`Patience`]).
    pub progress: Arc<ModelProgress>,
}

/// When any model work (a reply, a voice note heard, a file read) last finished, shared by
/// every conversation. A turn waiting its turn behind others sees progress; a stuck model
/// shows none.
#[derive(Debug)]
pub struct ModelProgress {
    epoch: tokio::time::Instant,
    /// Milliseconds from `epoch` to the last finished piece of work.
    last_ms: AtomicU64,
}

impl Default for ModelProgress {
    fn default() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl ModelProgress {
    /// Some model work just finished.
    pub fn bump(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// How long a turn may wait for the models. Turns wait their turn in fair queues instead of
/// being refused, so a turn's own age says little: twenty people writing at once make the last
/// one wait twenty replies long, and nothing is wrong. What says the model is stuck is that
/// nothing finished anywhere for `stall` (`conversation.brain_timeout`); `max_wait`
/// (`conversation.max_wait`) still bounds a turn in all, against a queue that never drains.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub stall: Duration,
    pub max_wait: Duration,
}

/// The turn (or one of its model calls) ran out of [`Patience`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfPatience;

/// Runs `work` until it finishes, or until no model work finished anywhere for
/// `patience.stall` since it started, or `patience.max_wait` passed; then drops it.
pub async fn patiently<F: Future>(
    progress: &ModelProgress,
    patience: Patience,
    work: F,
) -> Result<F::Output, OutOfPatience> {
    let start = tokio::time::Instant::now();
    let give_up_at =
        || (progress.last().max(start) + patience.stall).min(start + patience.max_wait);
    let mut work = std::pin::pin!(work);
    loop {
        match tokio::time::timeout_at(give_up_at(), &mut work).await {
            Ok(out) => return Ok(out),
            // Something finished meanwhile: the deadline moved on.
            Err(_) if give_up_at() > tokio::time::Instant::now() => {}
            Err(_) => return Err(OutOfPatience),
        }
    }
}

/// One turn to run.
pub struct TurnJob {
    pub input: TurnInput,
    /// Voice notes to hear first: (index into `input.inputs`, media).
    pub voice: Vec<(usize, MediaRef)>,
    /// Photos, stickers and documents to look at first: (index into `input.inputs`, media).
    pub look: Vec<(usize, MediaRef)>,
    /// Mark this message read as soon as the turn starts (1:1 chats: groups have no read
    /// receipts).
    pub read_for: Option<String>,
    /// And show the typing indicator on it, refreshed while the turn waits and runs.
    pub typing: bool,
    pub lang: Lang,
    pub patience: Patience,
    /// A verification code to mail first.
    pub mail: Option<MailJob>,
}

/// The typing indicator lasts about 25 s: it is refreshed this often while the brain works.
const TYPING_REFRESH: Duration = Duration::from_secs(20);

/// Runs `job` in a task that reports to `me`.
pub fn spawn(me: ActorRef<ConversationMsg>, job: TurnJob, deps: RunDeps) {
    tokio::spawn(async move {
        let read_for = job.read_for.clone();
        let typing = job.typing;
        let patience = job.patience;
        let sender = deps.sender.clone();
        let progress = deps.progress.clone();
        let mark = |typing: bool| {
            if let Some(w) = &read_for
                && let Some(s) = sender.try_get()
            {
                let _ = s.cast(SenderMsg::Typing {
                    wamid: w.clone(),
                    typing,
                });
            }
        };
        // Read (and typing) at once, before the turn is first polled. This used to be the
        // refresh timer's first tick, raced in `select!` against the turn: `select!` polls its
        // branches in random order, so a turn ready at its first poll (a fast reply) won half
        // the time and the user's message was never marked read.
        mark(typing);
        let outcome = {
            let turn = std::panic::AssertUnwindSafe(turn(job, deps, me.clone())).catch_unwind();
            let mut work = std::pin::pin!(patiently(&progress, patience, turn));
            let first = tokio::time::Instant::now() + TYPING_REFRESH;
            let mut refresh = tokio::time::interval_at(first, TYPING_REFRESH);
            loop {
                tokio::select! {
                    res = &mut work => break res,
                    _ = refresh.tick(), if typing => mark(true),
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
            Err(OutOfPatience) => Some(Err(BrainError::Failed("timed out".into()))),
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
        look,
        lang,
        patience,
        mail,
        ..
    } = job;
    if let Some(job) = mail {
        let outcome = match deps.mailer.as_ref() {
            Some(m) => match m.send_code(&job.to, &job.code, lang).await {
                Ok(()) => Ok(()),
                Err(e) => Err(matches!(e, MailError::Refused(_))),
            },
            None => Err(false),
        };
        let _ = me.cast(ConversationMsg::Mailed(outcome));
    }
    let mut heard = Vec::new();
    // The language Whisper heard in the turn's first note that had one: a voice reply speaks it.
    let mut heard_language: Option<String> = None;
    let mut failed = Vec::new();
    let mut notes = Vec::new();
    if !voice.is_empty() {
        for (idx, media) in &voice {
            match hear(&deps, media, patience).await {
                Ok(h) => {
                    if heard_language.is_none() {
                        heard_language.clone_from(&h.language);
                    }
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
    }
    for (idx, media) in &look {
        let what = media_word(media);
        let question = media.caption.clone().filter(|c| !c.trim().is_empty());
        match see(&deps, media, question, patience).await {
            Ok(seen) => match seen_text(media, &seen) {
                Some(text) => input.inputs[*idx].text = text,
                None => {
                    // Nothing to answer from: said plainly instead of letting the model guess.
                    // A sticker with nothing on it needs no answer at all.
                    match media.kind {
                        MediaKind::Document => notes.push(texts::document_empty(lang)),
                        MediaKind::Sticker => {}
                        _ => notes.push(texts::nothing_seen(lang, what)),
                    }
                    input.inputs[*idx].text = nothing_found_text(media);
                    failed.push(*idx);
                }
            },
            Err(problem) => {
                notes.push(texts::sight_problem(lang, &problem, what));
                failed.push(*idx);
            }
        }
    }
    if !voice.is_empty() || !look.is_empty() {
        let _ = me.cast(ConversationMsg::Heard {
            inputs: input.inputs.clone(),
            notes,
            language: heard_language,
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
    let reply = deps.brain.reply(input).await;
    deps.progress.bump();
    let mut reply = reply?;
    if deps.echo_transcript && !heard.is_empty() {
        let quoted: Vec<String> = heard
            .iter()
            .map(|h| format!("{TRANSCRIPT_ECHO}_\"{h}\"_"))
            .collect();
        reply.text = format!("{}\n\n{}", quoted.join("\n"), reply.text);
    }
    Ok(reply)
}

/// How each line of the transcript echo (`transcription.echo_transcript`) starts.
const TRANSCRIPT_ECHO: &str = "🎙️ ";

/// A reply without the transcript echo at its head: what a voice reply says (reading the user's
/// own words back to them would only delay the answer).
pub fn without_transcript_echo(reply: &str) -> &str {
    let mut rest = reply;
    while let Some(after) = rest.strip_prefix(TRANSCRIPT_ECHO) {
        rest = after.split_once('\n').map_or("", |(_, r)| r);
    }
    rest.trim_start()
}

/// Asks the transcription actor to hear one voice note, waiting as `patience` allows.
async fn hear(deps: &RunDeps, media: &MediaRef, patience: Patience) -> Outcome {
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
    let outcome = patiently(&deps.progress, patience, answer).await;
    deps.progress.bump();
    match outcome {
        Ok(Ok(outcome)) => outcome,
        // The actor failed with the job (the root re-creates it), or took too long.
        Ok(Err(_)) | Err(_) => Err(VoiceProblem::Transcription),
    }
}

/// Asks the vision actor to look at one file, waiting as `patience` allows.
async fn see(
    deps: &RunDeps,
    media: &MediaRef,
    question: Option<String>,
    patience: Patience,
) -> Result<Seen, SightProblem> {
    let Some(actor) = deps.vision.as_ref().and_then(ActorSlot::try_get) else {
        return Err(SightProblem::Failed);
    };
    let (reply, answer) = oneshot::channel();
    if actor
        .cast(VisionMsg::Look {
            media: media.clone(),
            question,
            reply,
        })
        .is_err()
    {
        tracing::warn!(media = %media.id, "vision actor not running");
        return Err(SightProblem::Failed);
    }
    let outcome = patiently(&deps.progress, patience, answer).await;
    deps.progress.bump();
    match outcome {
        Ok(Ok(outcome)) => outcome,
        // The actor failed with the job (the root re-creates it), or took too long.
        Ok(Err(_)) | Err(_) => Err(SightProblem::Failed),
    }
}

/// The caption, as the model reads it after what was found.
fn caption_line(media: &MediaRef) -> Option<String> {
    media
        .caption
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| format!("\nMy caption: {c}"))
}

/// What the model reads in place of a file once the vision actor has looked at it, or `None`
/// when nothing was found (no text, no description): then there is nothing to answer from.
/// Pure, so the exact wording the model gets is tested.
pub fn seen_text(media: &MediaRef, seen: &Seen) -> Option<String> {
    let what = media_word(media).english();
    match seen {
        Seen::Photo { text, scene } => {
            let described = matches!(scene, SceneOutcome::Answered(_));
            if text.trim().is_empty() && !described {
                return None;
            }
            let mut s = format!("[I sent a {what}. You cannot see it; a tool read it for you.]");
            if text.trim().is_empty() {
                s.push_str(&format!("\nThere is no text in the {what}."));
            } else {
                s.push_str(&format!("\nText in the {what}:\n«{}»", text.trim()));
            }
            match scene {
                SceneOutcome::Answered(a) if media.caption.is_some() => s.push_str(&format!(
                    "\nA vision model, asked my caption about the {what}, answered: {a}"
                )),
                SceneOutcome::Answered(a) => {
                    s.push_str(&format!("\nWhat the {what} shows, per a vision model: {a}"));
                }
                SceneOutcome::NoModel | SceneOutcome::Failed(_) => s.push_str(&format!(
                    "\nNothing could describe the rest of the {what}: do not describe anything \
                     beyond the text above."
                )),
            }
            if let Some(c) = caption_line(media) {
                s.push_str(&c);
            }
            Some(s)
        }
        Seen::Document {
            text,
            pages,
            truncated,
        } => {
            if text.trim().is_empty() {
                return None;
            }
            let name = media
                .filename
                .as_deref()
                .map(|f| format!(" \"{f}\""))
                .unwrap_or_default();
            let pages = match pages {
                1 => "1 page".to_string(),
                n => format!("{n} pages"),
            };
            let cut = if *truncated {
                "; only its beginning was read"
            } else {
                ""
            };
            let mut s = format!(
                "[I sent a document{name} ({pages}{cut}). You cannot see it; a tool read its text \
                 for you.]\nText of the document:\n«{}»",
                text.trim()
            );
            match caption_line(media) {
                Some(c) => s.push_str(&c),
                None => s.push_str("\nI sent it without a caption: summarise it for me."),
            }
            Some(s)
        }
    }
}

/// A file in which nothing was found, as history remembers it.
fn nothing_found_text(media: &MediaRef) -> String {
    let what = media_word(media).english();
    let mut s = format!("[I sent a {what}; a tool found no text in it and nothing described it.]");
    if let Some(c) = caption_line(media) {
        s.push_str(&c);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_media as media;

    // Real time, short bounds: these tests check what is given up and what is not, never how
    // fast anything runs (tokio's paused clock needs its test-util feature, not built here).
    const PATIENCE: Patience = Patience {
        stall: Duration::from_millis(300),
        max_wait: Duration::from_secs(2),
    };

    /// A turn far back in a queue that keeps moving is waited for, however long it takes in
    /// all (up to `max_wait`): its own age does not make it a stuck model.
    #[tokio::test]
    async fn a_turn_waits_as_long_as_the_models_make_progress() {
        let progress = Arc::new(ModelProgress::default());
        let others = progress.clone();
        // Others' replies finish every 50 ms while this turn waits 1 s, over three stalls.
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                others.bump();
            }
        });
        let late = tokio::time::sleep(Duration::from_secs(1));
        assert_eq!(patiently(&progress, PATIENCE, late).await, Ok(()));
        // But not past `max_wait`, however busy the models are.
        let never = std::future::pending::<()>();
        let started = tokio::time::Instant::now();
        assert_eq!(
            patiently(&progress, PATIENCE, never).await,
            Err(OutOfPatience)
        );
        assert!(
            started.elapsed() >= PATIENCE.max_wait,
            "not before max_wait"
        );
        ticker.abort();
    }

    /// A model that finishes nothing for `stall` is stuck: the turn gives up then, counting
    /// from its own start when the last progress was earlier.
    #[tokio::test]
    async fn a_turn_gives_up_when_nothing_finishes_for_the_stall_bound() {
        let progress = ModelProgress::default();
        progress.bump();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = tokio::time::Instant::now();
        let stuck = std::future::pending::<()>();
        assert_eq!(
            patiently(&progress, PATIENCE, stuck).await,
            Err(OutOfPatience)
        );
        assert!(
            started.elapsed() >= PATIENCE.stall,
            "a whole stall from its start"
        );
    }

    #[test]
    fn a_photo_read_without_a_scene_model_gives_the_text_and_forbids_describing_more() {
        let m = media(MediaKind::Image, Some("What is the invoice total?"));
        let seen = Seen::Photo {
            text: "Invoice #A-2291\nTotal: $1,234.56".into(),
            scene: SceneOutcome::NoModel,
        };
        assert_eq!(
            seen_text(&m, &seen).unwrap(),
            "[I sent a photo. You cannot see it; a tool read it for you.]\nText in the photo:\n\
             «Invoice #A-2291\nTotal: $1,234.56»\nNothing could describe the rest of the photo: \
             do not describe anything beyond the text above.\nMy caption: What is the invoice total?"
        );
    }

    #[test]
    fn a_described_photo_without_text_still_goes_to_the_model() {
        let m = media(MediaKind::Image, None);
        let seen = Seen::Photo {
            text: String::new(),
            scene: SceneOutcome::Answered("A dog on a beach.".into()),
        };
        let t = seen_text(&m, &seen).unwrap();
        assert!(t.contains("There is no text in the photo."), "{t}");
        assert!(t.contains("per a vision model: A dog on a beach."), "{t}");
        assert!(!t.contains("My caption"), "{t}");
    }

    /// No text and nothing that describes scenes: nothing for the model, so it cannot invent.
    #[test]
    fn nothing_found_is_not_given_to_the_model() {
        for scene in [SceneOutcome::NoModel, SceneOutcome::Failed("x".into())] {
            let seen = Seen::Photo {
                text: "  ".into(),
                scene,
            };
            assert_eq!(seen_text(&media(MediaKind::Image, Some("hi")), &seen), None);
        }
        let doc = Seen::Document {
            text: String::new(),
            pages: 3,
            truncated: false,
        };
        assert_eq!(seen_text(&media(MediaKind::Document, None), &doc), None);
    }

    #[test]
    fn a_document_is_answered_about_or_summarised() {
        let mut m = media(MediaKind::Document, Some("How much do I have to pay?"));
        m.filename = Some("bill.pdf".into());
        let doc = Seen::Document {
            text: "Amount due: 88.20 EUR".into(),
            pages: 2,
            truncated: true,
        };
        assert_eq!(
            seen_text(&m, &doc).unwrap(),
            "[I sent a document \"bill.pdf\" (2 pages; only its beginning was read). You cannot \
             see it; a tool read its text for you.]\nText of the document:\n«Amount due: 88.20 \
             EUR»\nMy caption: How much do I have to pay?"
        );
        m.caption = None;
        let t = seen_text(&m, &doc).unwrap();
        assert!(
            t.ends_with("\nI sent it without a caption: summarise it for me."),
            "{t}"
        );
    }
}
