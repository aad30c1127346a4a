//! Committing a turn: pure code that builds the next session and the replies, once.
//!
//! The actor stores what this returns in one transaction (session + outbox + inbox removal, see
//! `Store::commit_turn`), so a turn is either entirely remembered and answered or not at all.

use crate::brain::BrainReply;
use crate::llm_brain::author_line;
use crate::sender::{MAX_TEXT_CHARS, split_message};
use crate::session::{SessionState, Speaker, Turn};
use crate::store::{NewOutbound, OutboundBody};
use crate::texts::Lang;
use crate::whatsapp::Content;

use super::mention::mentions_name;

use super::plan::Plan;

/// The next session and the messages to send.
pub struct Committed {
    pub session: SessionState,
    pub replies: Vec<NewOutbound>,
    /// Inbox records this turn answers.
    pub seqs: Vec<u64>,
}

/// Applies a finished turn to `base` (the session before the turn). `now` is unix seconds.
pub fn commit(
    base: &SessionState,
    plan: &Plan,
    reply: Option<&BrainReply>,
    now: i64,
    max_history_turns: usize,
) -> Committed {
    let mut session = base.clone();
    session.target = plan.target.clone();
    session.contact_name = plan.contact_name.clone();
    if plan.forget {
        session.contact_name = None;
    }
    if plan.reset {
        session.history.clear();
        session.summary = None;
    }
    // Every message the user sent opens the 24-hour window, answered or not; Meta's notice that
    // someone joined or left is not a message from anyone.
    for rec in plan
        .records
        .iter()
        .filter(|r| !matches!(r.message.content, Content::Membership { .. }))
    {
        let ts = rec.message.timestamp;
        session.last_inbound_at = Some(session.last_inbound_at.map_or(ts, |t| t.max(ts)));
    }
    session.history.extend(plan.quiet.iter().cloned());
    let clock = reply.and_then(|r| r.clock.clone());
    for (n, i) in plan.inputs.iter().enumerate() {
        let at = plan
            .records
            .iter()
            .find(|r| r.message.wamid == i.wamid)
            .map_or(now, |r| r.message.timestamp);
        session.history.push(Turn {
            speaker: Speaker::User,
            text: author_line(i.author.as_deref(), session.is_group, &i.text),
            at,
            wamids: vec![i.wamid.clone()],
            // The prompt put the clock after the last of the new messages.
            clock: clock.clone().filter(|_| n + 1 == plan.inputs.len()),
        });
    }
    // A new running summary replaces the turns it folded in (counted from the oldest).
    if let Some(update) = reply.and_then(|r| r.summary.as_ref()) {
        let n = update.folded_turns.min(session.history.len());
        session.history.drain(..n);
        session.summary = Some(update.summary.clone());
    }
    let mut texts: Vec<String> = plan.direct.clone();
    if let Some(r) = reply.map(|r| &r.text).filter(|r| !r.trim().is_empty()) {
        let r = if session.is_group {
            address_askers(plan, r)
        } else {
            r.clone()
        };
        texts.push(r.clone());
        session.history.push(Turn {
            speaker: Speaker::Assistant,
            text: r,
            at: now,
            wamids: plan.inputs.iter().map(|i| i.wamid.clone()).collect(),
            clock: None,
        });
    }
    texts.extend(plan.trailing.iter().cloned());
    if session.history.len() > max_history_turns {
        let drop = session.history.len() - max_history_turns;
        session.history.drain(..drop);
    }
    if let Some((turns, chars)) = plan.group_bound {
        bound_context(&mut session.history, turns, chars);
    }
    session.turns += 1;

    // Quote the message answered when the reply covers several messages or a group message.
    let quote = if plan.inputs.len() > 1 || session.is_group {
        plan.inputs.last().map(|i| i.wamid.clone())
    } else {
        None
    };
    // WhatsApp takes at most 4096 characters a message: long replies go out in paced parts.
    let replies = texts
        .iter()
        .flat_map(|t| split_message(t, MAX_TEXT_CHARS))
        .map(|body| NewOutbound {
            target: session.target.clone(),
            body: OutboundBody::Text { body },
            context_message_id: quote.clone(),
            window_expires_at: session.window_expires_at(),
        })
        .collect();
    Committed {
        seqs: plan.records.iter().map(|r| r.seq).collect(),
        session,
        replies,
    }
}

/// When a reply is also spoken (`voice.reply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VoiceReply {
    /// When the user spoke: a turn with a voice note gets a voice reply.
    #[default]
    Mirror,
    /// Every brain reply in a 1:1 chat.
    Always,
    /// Text only.
    Never,
}

/// What conversations know about speaking replies (from `[voice]`).
#[derive(Debug, Clone, Default)]
pub struct VoicePolicy {
    pub reply: VoiceReply,
    /// ISO 639-1 codes of the installed voices; empty: no voice, text only.
    pub languages: Vec<String>,
    /// After the first sentence (a note of its own, sent as soon as it is spoken), the rest of
    /// a reply is cut into notes of at most this many characters (`voice.note_chars`).
    pub note_chars: usize,
}

/// The voice records of a turn: the brain's reply spoken, after its text (which `commit`
/// already queued, so the answer reaches the user even if no voice note ever does). Only 1:1
/// chats: in a group a voice note would be played to everyone for one person's question.
/// The language is what Whisper heard in the turn's voice note, else the reply's own language
/// when it can be told, else the turn's; a language with no installed voice gets text only.
/// The first sentence is a note of its own so it goes out while the rest is still spoken.
pub fn voice_replies(
    committed: &Committed,
    plan: &Plan,
    reply: Option<&BrainReply>,
    heard_language: Option<&str>,
    policy: &VoicePolicy,
) -> Vec<NewOutbound> {
    let wanted = match policy.reply {
        VoiceReply::Never => false,
        VoiceReply::Always => true,
        VoiceReply::Mirror => !plan.voice.is_empty(),
    };
    let Some(text) = reply
        .map(|r| super::run::without_transcript_echo(&r.text).trim())
        .filter(|t| !t.is_empty())
    else {
        return Vec::new();
    };
    if !wanted || committed.session.is_group || policy.languages.is_empty() {
        return Vec::new();
    }
    let language = heard_language
        .map(str::to_string)
        .or_else(|| Lang::detect(text).map(|l| lang_code(l).to_string()))
        .unwrap_or_else(|| lang_code(plan.lang).to_string());
    if !policy.languages.contains(&language) {
        return Vec::new();
    }
    sandra_models::speech::chunks(text, policy.note_chars.max(1))
        .into_iter()
        .map(|text| NewOutbound {
            target: committed.session.target.clone(),
            body: OutboundBody::Voice {
                text,
                language: language.clone(),
            },
            context_message_id: None,
            window_expires_at: committed.session.window_expires_at(),
        })
        .collect()
}

fn lang_code(l: Lang) -> &'static str {
    match l {
        Lang::En => "en",
        Lang::Es => "es",
        Lang::Pt => "pt",
        Lang::Fr => "fr",
        Lang::De => "de",
    }
}

/// Drops the oldest turns until at most `max_turns` remain and their texts hold at most
/// `max_chars` characters together. The newest turn always stays (a turn is already capped by
/// `limits.max_message_chars`), so an addressed message is never lost to the bound. A group's
/// chatter is unbounded input: without this, one busy group would fill the brain's context
/// and the store.
pub fn bound_context(history: &mut Vec<Turn>, max_turns: usize, max_chars: usize) {
    let mut keep = 0;
    let mut chars = 0;
    for t in history.iter().rev() {
        let n = t.text.chars().count();
        if keep > 0 && (keep >= max_turns || chars + n > max_chars) {
            break;
        }
        keep += 1;
        chars += n;
    }
    let drop = history.len() - keep;
    history.drain(..drop);
}

/// A group reply names who asked, as WhatsApp shows a mention ("@Ana ..."), unless it already
/// names them: in a group, a quote alone does not say whom the answer is for when several
/// people asked in one turn, and a notification reads better with the name.
fn address_askers(plan: &Plan, reply: &str) -> String {
    let mut names: Vec<&str> = Vec::new();
    for name in plan.inputs.iter().filter_map(|i| i.author.as_deref()) {
        let name = name.trim();
        if !name.is_empty() && !names.contains(&name) && !mentions_name(reply, name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return reply.to_string();
    }
    let at: Vec<String> = names.iter().map(|n| format!("@{n}")).collect();
    format!("{} {reply}", at.join(" "))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::brain::SummaryUpdate;
    use crate::conversation::plan::tests::{context, in_group, policy, rec, session_for, text};
    use crate::conversation::plan::{Plan, plan};
    use crate::whatsapp::InboundMessage;

    fn planned(session: &SessionState, msgs: Vec<InboundMessage>) -> Plan {
        let policy = policy();
        let answered = HashMap::new();
        let ctx = context(&policy, &answered);
        let records = msgs
            .into_iter()
            .enumerate()
            .map(|(i, m)| rec(i as u64 + 1, m))
            .collect();
        plan(session, records, &[], &ctx)
    }

    fn reply(text: &str) -> BrainReply {
        BrainReply::from(text.to_string())
    }

    /// The clock note the model read after the new messages stays with the last of them, so
    /// the next prompt shows the turn as it was answered.
    #[test]
    fn the_clock_note_is_kept_with_the_last_message_answered() {
        let (a, b) = (text("w1", 100, "Hello"), text("w2", 101, "Are you there?"));
        let s = session_for(&a);
        let p = planned(&s, vec![a, b]);
        let answered = BrainReply {
            clock: Some("[It is now Tuesday 1 December 2026, 14:05 UTC.]".into()),
            ..reply("Yes!")
        };
        let c = commit(&s, &p, Some(&answered), 105, 40);
        let clocks: Vec<_> = c
            .session
            .history
            .iter()
            .map(|t| t.clock.as_deref())
            .collect();
        assert_eq!(
            clocks,
            [
                None,
                Some("[It is now Tuesday 1 December 2026, 14:05 UTC.]"),
                None
            ]
        );
        // Without a reply there is nothing to keep.
        let c = commit(&s, &p, None, 105, 40);
        assert!(c.session.history.iter().all(|t| t.clock.is_none()));
    }

    #[test]
    fn a_turn_is_remembered_and_answered_once() {
        let a = text("w1", 100, "Hello");
        let s = session_for(&a);
        let p = planned(&s, vec![a]);
        let c = commit(&s, &p, Some(&reply("Hi Ana!")), 105, 40);
        assert_eq!(c.seqs, vec![1]);
        assert_eq!(c.session.turns, 1);
        assert_eq!(c.session.last_inbound_at, Some(100));
        assert_eq!(c.session.window_expires_at(), Some(100 + 24 * 3600));
        let h: Vec<(Speaker, &str, i64)> = c
            .session
            .history
            .iter()
            .map(|t| (t.speaker, t.text.as_str(), t.at))
            .collect();
        assert_eq!(
            h,
            vec![
                (Speaker::User, "Hello", 100),
                (Speaker::Assistant, "Hi Ana!", 105)
            ]
        );
        assert_eq!(c.replies.len(), 1);
        assert_eq!(
            c.replies[0].context_message_id, None,
            "one message answered: no quote"
        );
        assert_eq!(c.replies[0].window_expires_at, Some(100 + 24 * 3600));
        // The base is untouched: a failed commit can be retried from it.
        assert!(s.history.is_empty());
    }

    #[test]
    fn direct_answers_come_first_and_several_inputs_are_quoted() {
        let a = text("w1", 1, "/help");
        let s = session_for(&a);
        let p = planned(&s, vec![a, text("w2", 2, "one"), text("w3", 3, "two")]);
        let c = commit(&s, &p, Some(&reply("answer")), 5, 40);
        let bodies: Vec<String> = c
            .replies
            .iter()
            .map(|r| match &r.body {
                OutboundBody::Text { body } => body.clone(),
                OutboundBody::Template { .. } | OutboundBody::Voice { .. } => {
                    unreachable!("turns reply in text")
                }
            })
            .collect();
        assert_eq!(bodies[1], "answer");
        assert!(bodies[0].starts_with("I'm Sandra"));
        assert!(
            c.replies
                .iter()
                .all(|r| r.context_message_id.as_deref() == Some("w3"))
        );
    }

    #[test]
    fn reset_quiet_summary_and_trimming() {
        let a = in_group(text("w1", 1, "chatter"));
        let mut s = session_for(&a);
        for i in 0..5 {
            s.history.push(Turn {
                speaker: Speaker::User,
                text: format!("old {i}"),
                at: i,
                wamids: vec![],
                clock: None,
            });
        }
        // Chatter in a group: history only, no reply, but the window still opens.
        let p = planned(&s, vec![a.clone()]);
        let c = commit(&s, &p, None, 9, 40);
        assert!(c.replies.is_empty());
        assert_eq!(c.session.history.last().unwrap().text, "Ana: chatter");
        assert_eq!(c.session.last_inbound_at, Some(1));

        // A summary folds the oldest turns; the history is trimmed to the cap.
        let p = planned(&s, vec![in_group(text("w2", 2, "Sandra, recap?"))]);
        let mut r = reply("Here it is.");
        r.summary = Some(SummaryUpdate {
            summary: "they talked".into(),
            folded_turns: 3,
        });
        let c = commit(&s, &p, Some(&r), 9, 3);
        assert_eq!(c.session.summary.as_deref(), Some("they talked"));
        let h: Vec<&str> = c.session.history.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(h, vec!["old 4", "Ana: Sandra, recap?", "@Ana Here it is."]);
        assert_eq!(
            c.replies[0].context_message_id.as_deref(),
            Some("w2"),
            "groups quote"
        );

        // /reset forgets what came before, keeps what this turn adds.
        let b = text("w3", 3, "/reset");
        let s1 = session_for(&b);
        let mut s1b = s1.clone();
        s1b.history = s.history.clone();
        s1b.summary = Some("x".into());
        let p = planned(&s1b, vec![b]);
        let c = commit(&s1b, &p, None, 9, 40);
        assert!(c.session.history.is_empty() && c.session.summary.is_none());
        assert_eq!(c.replies.len(), 1);
    }

    /// In a group the reply goes to the group, quotes the question and names who asked
    /// (unless it already does); the kept history is bounded in turns and characters; and a
    /// membership notice does not open the 24-hour window.
    #[test]
    fn group_replies_name_the_asker_and_history_is_bounded() {
        let a = in_group(text("w1", 100, "Sandra, lunch ideas?"));
        let mut s = session_for(&a);
        for i in 0..10 {
            s.history.push(Turn {
                speaker: Speaker::User,
                text: format!("Ben: {i} {}", "y".repeat(40)),
                at: i,
                wamids: vec![],
                clock: None,
            });
        }
        let mut p = planned(&s, vec![a.clone()]);
        p.group_bound = Some((4, 1_000));
        let c = commit(&s, &p, Some(&reply("Try the taco place.")), 105, 40);
        let OutboundBody::Text { body } = &c.replies[0].body else {
            panic!("a text reply")
        };
        assert_eq!(body, "@Ana Try the taco place.");
        assert_eq!(c.replies[0].target.group_id.as_deref(), Some("GROUP1"));
        assert_eq!(c.replies[0].context_message_id.as_deref(), Some("w1"));
        let h: Vec<&str> = c.session.history.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(h.len(), 4, "{h:?}");
        assert_eq!(
            h[2..],
            ["Ana: Sandra, lunch ideas?", "@Ana Try the taco place."]
        );
        // The character bound drops the oldest first and keeps the newest.
        p.group_bound = Some((40, 60));
        let c = commit(&s, &p, Some(&reply("Ana, try tacos.")), 105, 40);
        let h: Vec<&str> = c.session.history.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            h,
            ["Ana: Sandra, lunch ideas?", "Ana, try tacos."],
            "already named"
        );

        let mut joined = in_group(text("j1", 900, ""));
        joined.content = crate::whatsapp::Content::Membership {
            joined: vec!["+15550007777".into()],
            left: vec![],
        };
        let p = planned(&c.session, vec![joined]);
        let c2 = commit(&c.session, &p, None, 901, 40);
        assert_eq!(c2.session.last_inbound_at, Some(100));
        assert!(c2.replies.is_empty());
    }

    #[test]
    fn bound_context_keeps_the_newest_turn() {
        let turn = |t: &str| Turn {
            speaker: Speaker::User,
            text: t.into(),
            at: 0,
            wamids: vec![],
            clock: None,
        };
        let mut h = vec![turn("aaaa"), turn("bb"), turn("cccccccccc")];
        bound_context(&mut h, 5, 3);
        assert_eq!(
            h,
            vec![turn("cccccccccc")],
            "too long alone, but the newest stays"
        );
        let mut h = vec![turn("aaaa"), turn("bb"), turn("c")];
        bound_context(&mut h, 5, 3);
        assert_eq!(h, vec![turn("bb"), turn("c")]);
        bound_context(&mut h, 1, 100);
        assert_eq!(h, vec![turn("c")]);
    }

    #[test]
    fn long_replies_are_split_for_whatsapp() {
        let a = text("w1", 1, "tell me everything");
        let s = session_for(&a);
        let p = planned(&s, vec![a]);
        let long = "word ".repeat(2000);
        let c = commit(&s, &p, Some(&reply(&long)), 2, 40);
        assert!(c.replies.len() >= 3);
        assert_eq!(
            c.session.history.len(),
            2,
            "one assistant turn however many parts"
        );
    }

    fn voice_note_from(wamid: &str, ts: i64) -> InboundMessage {
        crate::conversation::plan::tests::msg(
            wamid,
            ts,
            Content::Media(crate::whatsapp::MediaRef {
                voice: true,
                mime_type: Some("audio/ogg; codecs=opus".into()),
                ..crate::conversation::test_media(crate::whatsapp::MediaKind::Audio, None)
            }),
        )
    }

    fn english(reply: VoiceReply) -> VoicePolicy {
        VoicePolicy {
            reply,
            languages: vec!["en".into()],
            note_chars: 600,
        }
    }

    fn voices(c: &Committed) -> Vec<(String, String)> {
        c.replies
            .iter()
            .filter_map(|r| match &r.body {
                OutboundBody::Voice { text, language } => Some((text.clone(), language.clone())),
                _ => None,
            })
            .collect()
    }

    /// Mirror: a voice note is answered with the text and then a voice note of it; a typed
    /// message only with text.
    #[test]
    fn mirror_speaks_only_to_those_who_spoke() {
        let v = voice_note_from("w1", 100);
        let s = session_for(&v);
        let p = planned(&s, vec![v]);
        let r = reply("It is sunny today. Take a hat.");
        let mut c = commit(&s, &p, Some(&r), 105, 40);
        let spoken = voice_replies(&c, &p, Some(&r), Some("en"), &english(VoiceReply::Mirror));
        assert_eq!(
            spoken.iter().map(|n| n.target.clone()).collect::<Vec<_>>(),
            vec![c.session.target.clone(); 2]
        );
        c.replies.extend(spoken);
        // The text first, whole; then the first sentence alone, then the rest.
        assert!(
            matches!(&c.replies[0].body, OutboundBody::Text { body } if body == "It is sunny today. Take a hat.")
        );
        assert_eq!(
            voices(&c),
            vec![
                ("It is sunny today.".to_string(), "en".to_string()),
                ("Take a hat.".to_string(), "en".to_string())
            ]
        );

        let t = text("w2", 200, "What's the weather?");
        let p = planned(&s, vec![t]);
        let c = commit(&s, &p, Some(&r), 205, 40);
        assert!(voice_replies(&c, &p, Some(&r), None, &english(VoiceReply::Mirror)).is_empty());
        assert_eq!(
            voice_replies(&c, &p, Some(&r), None, &english(VoiceReply::Always)).len(),
            2
        );
    }

    #[test]
    fn never_means_text_only() {
        let v = voice_note_from("w1", 100);
        let s = session_for(&v);
        let p = planned(&s, vec![v]);
        let r = reply("Hello there.");
        let c = commit(&s, &p, Some(&r), 105, 40);
        assert!(
            voice_replies(&c, &p, Some(&r), Some("en"), &english(VoiceReply::Never)).is_empty()
        );
    }

    /// Spanish was heard but only an English voice is installed: the answer is text only.
    #[test]
    fn a_language_without_a_voice_gets_text_only() {
        let v = voice_note_from("w1", 100);
        let s = session_for(&v);
        let p = planned(&s, vec![v]);
        let r = reply("Hace sol hoy, lleva un sombrero.");
        let c = commit(&s, &p, Some(&r), 105, 40);
        assert!(
            voice_replies(&c, &p, Some(&r), Some("es"), &english(VoiceReply::Mirror)).is_empty()
        );
        // With a Spanish voice too, it is spoken in Spanish.
        let both = VoicePolicy {
            languages: vec!["en".into(), "es".into()],
            ..english(VoiceReply::Mirror)
        };
        let spoken = voice_replies(&c, &p, Some(&r), Some("es"), &both);
        assert!(
            matches!(&spoken[0].body, OutboundBody::Voice { language, .. } if language == "es")
        );
        // No voices installed at all: nothing to speak with.
        let none = VoicePolicy {
            languages: vec![],
            ..english(VoiceReply::Always)
        };
        assert!(voice_replies(&c, &p, Some(&r), Some("en"), &none).is_empty());
    }

    #[test]
    fn groups_and_empty_replies_are_not_spoken() {
        let v = in_group(voice_note_from("w1", 100));
        let s = session_for(&v);
        let p = planned(&s, vec![v]);
        let r = reply("Sure.");
        let c = commit(&s, &p, Some(&r), 105, 40);
        assert!(
            voice_replies(&c, &p, Some(&r), Some("en"), &english(VoiceReply::Always)).is_empty()
        );
        let v = voice_note_from("w2", 100);
        let s = session_for(&v);
        let p = planned(&s, vec![v]);
        let c = commit(&s, &p, None, 105, 40);
        assert!(voice_replies(&c, &p, None, Some("en"), &english(VoiceReply::Always)).is_empty());
    }

    /// A typed message in Always mode: the reply's own language decides.
    #[test]
    fn without_a_heard_language_the_replys_language_decides() {
        let t = text("w1", 100, "hola");
        let s = session_for(&t);
        let p = planned(&s, vec![t]);
        let r = reply("Claro que sí, mañana por la mañana tenemos tiempo para hablar.");
        let c = commit(&s, &p, Some(&r), 105, 40);
        let both = VoicePolicy {
            languages: vec!["en".into(), "es".into()],
            ..english(VoiceReply::Always)
        };
        let spoken = voice_replies(&c, &p, Some(&r), None, &both);
        assert!(
            matches!(&spoken[0].body, OutboundBody::Voice { language, .. } if language == "es")
        );
    }

    /// The transcript echo heads the text reply, but the voice says only the answer.
    #[test]
    fn the_transcript_echo_is_not_spoken() {
        let v = voice_note_from("w1", 100);
        let s = session_for(&v);
        let p = planned(&s, vec![v]);
        let r = reply("🎙️ _\"Is it sunny?\"_\n🎙️ _\"And warm?\"_\n\nYes, it is sunny.");
        let c = commit(&s, &p, Some(&r), 105, 40);
        let spoken = voice_replies(&c, &p, Some(&r), Some("en"), &english(VoiceReply::Mirror));
        assert_eq!(spoken.len(), 1);
        assert!(
            matches!(&spoken[0].body, OutboundBody::Voice { text, .. } if text == "Yes, it is sunny.")
        );
    }
}
