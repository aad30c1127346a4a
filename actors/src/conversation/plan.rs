//! Planning a turn: pure code, no actors, no I/O, no clock.
//!
//! Given the session as it stands, the messages taken for this turn (each with the limits'
//! verdict on its sender) and the policy, [`plan`] decides what happens to each message: it goes
//! to the brain, is answered directly (commands, things Sandra cannot read), only becomes
//! history (reactions, group chatter not addressed to Sandra), is a voice note to hear first or a
//! photo, sticker or document to look at first, or is dropped (blocked or over the rate). The actor then runs the plan ([`super::run`]) and
//! commits it ([`super::commit`]). Everything a user relies on about batching, groups, commands
//! and the 24-hour window is decided here, and tested here without an actor.

use std::collections::{BTreeMap, HashMap};

use crate::accounts::{
    self, AccountPolicy, Desk, IdentityChange, Lookup, MailJob, NewCode, Profile, Said,
};
use crate::brain::{TurnInput, UserInput};
use crate::limits::Verdict;
use crate::llm_brain::author_line;
use crate::session::{SessionState, Speaker, Turn};
use crate::store::{InboxRecord, refresh_target};
use crate::texts::{self, Lang, MediaWord};
use crate::whatsapp::{Content, InboundMessage, MediaKind, MediaRef, ReplyTarget, phone_digits};

use super::ConversationPolicy;
use super::mention::{mentions_name, mentions_number};

/// A voice note's place in history when it was never heard (download, decoding or
/// transcription failed, or the turn timed out first).
pub const UNHEARD_VOICE_NOTE: &str = "[voice note that could not be transcribed]";

/// Takes at most `max` messages (at least one) in (timestamp, arrival) order; the rest wait.
/// The cut comes before the turn's attempt is counted, so a message that waits is not charged
/// an attempt it never had.
pub fn take_batch(pending: &mut BTreeMap<(i64, u64), InboxRecord>, max: usize) -> Vec<InboxRecord> {
    let mut taken = Vec::new();
    while taken.len() < max.max(1) {
        match pending.pop_first() {
            Some((_, rec)) => taken.push(rec),
            None => break,
        }
    }
    taken
}

/// What the planner needs besides the session and the messages.
pub struct PlanContext<'a> {
    pub policy: &'a ConversationPolicy,
    /// A transcription actor is configured: voice notes are heard, not declined.
    pub can_hear: bool,
    /// A vision actor is configured: photos, stickers and documents are looked at.
    pub can_see: bool,
    /// Caps a user text at `limits.max_message_chars` (pure).
    pub cap_text: &'a dyn Fn(String) -> String,
    /// The text of Sandra's own messages that this turn's messages reply to, by wamid: what a
    /// tapped button or list row answers, and how a group reply to Sandra is recognised.
    pub answered: &'a HashMap<String, String>,
    /// The identity of a 1:1 chat, for account commands, linking and the profile (`None` in
    /// groups and where accounts are not wired, as in most tests).
    pub accounts: Option<AccountsContext<'a>>,
}

/// What the planner needs to run account commands and the linking flow (see [`accounts`]).
pub struct AccountsContext<'a> {
    /// The identity's key ([`accounts::link_key`]) and its stored record.
    pub key: String,
    pub record: accounts::NumberRecord,
    pub lookup: &'a dyn Lookup,
    pub policy: &'a AccountPolicy,
    /// An SMTP server is configured.
    pub mail_enabled: bool,
    /// Unix milliseconds now (code expiry, rate windows).
    pub now_ms: i64,
    /// Draws a code; called only when one is to be mailed.
    pub new_code: &'a dyn Fn() -> NewCode,
}

/// Something the actor logs and counts; the planner only reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanEvent {
    Blocked {
        wamid: String,
    },
    RateLimited {
        wamid: String,
        notify: bool,
    },
    Unsupported {
        wamid: String,
        kind: String,
        detail: Option<String>,
    },
}

/// What one turn will do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every message this turn answers (and removes from the inbox), dropped ones included.
    pub records: Vec<InboxRecord>,
    /// What goes to the brain, in order. A voice note is [`UNHEARD_VOICE_NOTE`] until heard.
    pub inputs: Vec<UserInput>,
    /// Voice notes to hear before the brain: (index into `inputs`, media).
    pub voice: Vec<(usize, MediaRef)>,
    /// Photos, stickers and documents to look at before the brain: (index into `inputs`,
    /// media). Their input says plainly that the file was not seen until it is.
    pub look: Vec<(usize, MediaRef)>,
    /// Replies decided without the brain (commands, canned answers), in order.
    pub direct: Vec<String>,
    /// Messages that only become history (reactions, group chatter not addressed to Sandra).
    pub quiet: Vec<Turn>,
    /// `/reset` was among the messages: history and summary are forgotten before this turn.
    pub reset: bool,
    /// Where replies go, refreshed from the newest messages.
    pub target: ReplyTarget,
    /// The user's profile name (1:1 chats), refreshed from the newest message that has one.
    pub contact_name: Option<String>,
    /// The language for canned texts this turn.
    pub lang: Lang,
    pub events: Vec<PlanEvent>,
    /// The number of the newest message's author that goes to the brain: whose time zone the
    /// prompt's clock is in (in a group, the person who asked, not the group's first member).
    pub asker_number: Option<String>,
    /// Groups only: (turns, characters) the history the brain sees and the session keeps is
    /// bounded by (`conversation.group_context_messages` / `group_context_chars`).
    pub group_bound: Option<(usize, usize)>,
    /// What the turn changes in links and accounts, committed with it.
    pub identity: Option<IdentityChange>,
    /// A verification code to mail before the turn is committed.
    pub mail: Option<MailJob>,
    /// The profile that personalises the prompt (1:1 chats).
    pub profile: Option<Profile>,
    /// `/forget yes`: the session forgets the profile name too.
    pub forget: bool,
    /// Said after the brain's reply (the one-time linking offer).
    pub trailing: Vec<String>,
}

impl Plan {
    /// Nothing for the brain and no mail to send: the turn can be committed at once.
    pub fn needs_brain(&self) -> bool {
        !self.inputs.is_empty() || self.mail.is_some()
    }

    /// The brain's view of this turn, over the session as it stood before it, at `now`.
    pub fn brain_input(&self, session: &SessionState, now: jiff::Timestamp) -> TurnInput {
        let mut history = if self.reset {
            Vec::new()
        } else {
            session.history.clone()
        };
        if let Some((turns, chars)) = self.group_bound {
            // Already bounded when committed; bounded again in case the limits were lowered.
            super::commit::bound_context(&mut history, turns, chars);
        }
        TurnInput {
            conversation: session.key.to_string(),
            history,
            summary: if self.reset {
                None
            } else {
                session.summary.clone()
            },
            inputs: self.inputs.clone(),
            contact_name: self.contact_name.clone(),
            is_group: session.is_group,
            now,
            time_zone: self.profile.as_ref().and_then(|p| p.time_zone.clone()),
            asker_number: self.asker_number.clone(),
            profile: self.profile.clone().filter(|p| !p.is_empty()),
        }
    }

    /// The message marked read when the turn starts (the newest: that marks the earlier ones
    /// read too). 1:1 chats only: Meta's groups support no read receipts.
    pub fn read_for(&self, session: &SessionState) -> Option<String> {
        (!session.is_group)
            .then(|| self.inputs.last().map(|i| i.wamid.clone()))
            .flatten()
    }

    /// The message whose typing indicator is shown while the brain works (1:1 chats only;
    /// groups cannot show one).
    pub fn typing_for(
        &self,
        session: &SessionState,
        policy: &ConversationPolicy,
    ) -> Option<String> {
        (!session.is_group && policy.typing_indicator)
            .then(|| self.inputs.last().map(|i| i.wamid.clone()))
            .flatten()
    }
}

/// Decides what the turn does with each of `records` (`verdicts[i]` is the limits' verdict on
/// `records[i]`'s sender).
pub fn plan(
    session: &SessionState,
    records: Vec<InboxRecord>,
    verdicts: &[Verdict],
    ctx: &PlanContext<'_>,
) -> Plan {
    let mut p = Plan {
        records: Vec::with_capacity(records.len()),
        inputs: Vec::new(),
        voice: Vec::new(),
        look: Vec::new(),
        direct: Vec::new(),
        quiet: Vec::new(),
        reset: false,
        target: session.target.clone(),
        contact_name: session.contact_name.clone(),
        lang: language_of(&records, session),
        events: Vec::new(),
        asker_number: None,
        group_bound: session.is_group.then_some((
            ctx.policy.group_context_messages,
            ctx.policy.group_context_chars,
        )),
        identity: None,
        mail: None,
        profile: None,
        forget: false,
        trailing: Vec::new(),
    };
    let mut desk = ctx
        .accounts
        .as_ref()
        .filter(|_| !session.is_group)
        .map(|a| {
            Desk::new(
                a.key.clone(),
                a.record.clone(),
                a.lookup,
                a.policy,
                a.now_ms,
            )
        });
    // A language the user chose (`/language pt`) wins over the one guessed from their words.
    if let Some(chosen) = desk
        .as_mut()
        .and_then(|d| d.profile().language)
        .and_then(|code| Lang::from_code(&code))
    {
        p.lang = chosen;
    }
    let lang = p.lang;
    for (i, rec) in records.into_iter().enumerate() {
        let m = &rec.message;
        match verdicts.get(i).copied().unwrap_or(Verdict::Answer) {
            Verdict::Answer => {}
            Verdict::Blocked => {
                // Answered by silence: leaves the inbox with this turn, enters no history.
                p.events.push(PlanEvent::Blocked {
                    wamid: m.wamid.clone(),
                });
                p.records.push(rec);
                continue;
            }
            Verdict::RateLimited { notify } => {
                p.events.push(PlanEvent::RateLimited {
                    wamid: m.wamid.clone(),
                    notify,
                });
                // No notice for group chatter not meant for Sandra: the group did not ask.
                if notify && (!session.is_group || addressed_in_group(m, ctx)) {
                    p.direct.push(texts::rate_notice(lang));
                }
                p.records.push(rec);
                continue;
            }
        }
        refresh_target(&mut p.target, m);
        if m.contact_name.is_some() && !session.is_group {
            p.contact_name = m.contact_name.clone();
        }
        if let Content::Unsupported { kind, detail } = &m.content {
            p.events.push(PlanEvent::Unsupported {
                wamid: m.wamid.clone(),
                kind: kind.clone(),
                detail: detail.clone(),
            });
        }
        if let (Some(desk), Some(a), Content::Text { body }) =
            (desk.as_mut(), ctx.accounts.as_ref(), &m.content)
            && let Some(said) = account_step(desk, a, body, m.timestamp)
        {
            let lang = accounts::phrase_language(body)
                .and_then(Lang::from_code)
                .unwrap_or(lang);
            // Account messages (addresses, codes, notes) stay out of history and the brain.
            match said {
                Said::CodeSent => p.mail = desk.mail.take(),
                Said::Forgotten => {
                    p.reset = true;
                    p.forget = true;
                    p.contact_name = None;
                    p.direct.push(texts::account(lang, &said));
                }
                _ => p.direct.push(texts::account(lang, &said)),
            }
            p.records.push(rec);
            continue;
        }
        let rendered = match render(m, ctx, lang) {
            Rendered::Input(t) => Rendered::Input((ctx.cap_text)(t)),
            Rendered::Quiet(t) => Rendered::Quiet((ctx.cap_text)(t)),
            other => other,
        };
        if session.is_group && !addressed_in_group(m, ctx) {
            // Group chatter: remember it as context, answer nothing.
            match rendered {
                Rendered::Input(t) | Rendered::Quiet(t) => p.quiet.push(user_turn(m, t)),
                Rendered::Look(media) => {
                    p.quiet
                        .push(user_turn(m, (ctx.cap_text)(unseen_text(&media))));
                }
                _ => {}
            }
            p.records.push(rec);
            continue;
        }
        let asked = p.inputs.len();
        let input = |text: String| UserInput {
            wamid: m.wamid.clone(),
            author: m.contact_name.clone(),
            text,
        };
        match rendered {
            Rendered::Input(text) => p.inputs.push(input(text)),
            Rendered::Direct(text) => p.direct.push(text),
            Rendered::Quiet(text) => p.quiet.push(user_turn(m, text)),
            Rendered::Voice(media) => {
                p.voice.push((p.inputs.len(), media));
                // Replaced by the transcript once heard; kept as is if it never is, so history
                // never holds an empty user turn.
                p.inputs.push(input(UNHEARD_VOICE_NOTE.into()));
            }
            Rendered::Look(media) => {
                p.look.push((p.inputs.len(), media.clone()));
                // Replaced by what was found once seen; kept as is if it never is, so neither
                // the brain nor history ever takes the caption for the file's contents.
                p.inputs.push(input((ctx.cap_text)(unseen_text(&media))));
            }
            Rendered::Reset => {
                p.reset = true;
                p.direct.push(texts::reset_done(lang));
            }
        }
        if p.inputs.len() > asked {
            p.asker_number = m.from.clone();
        }
        p.records.push(rec);
    }
    if let (Some(mut desk), Some(a)) = (desk, ctx.accounts.as_ref()) {
        let answers = !p.inputs.is_empty() || !p.direct.is_empty();
        if answers && ctx.policy.offer_linking && a.mail_enabled && desk.offer_once() {
            p.trailing.push(texts::link_offer(lang));
        }
        p.profile = Some(desk.profile());
        p.identity = desk.into_change();
    }
    p
}

/// An account command, or the address or code the linking flow waits for; `None` for
/// anything else (it goes on to the brain as usual).
fn account_step(desk: &mut Desk<'_>, a: &AccountsContext<'_>, body: &str, ts: i64) -> Option<Said> {
    if let Some(cmd) = accounts::parse_command(body) {
        return Some(desk.command(cmd, a.mail_enabled, ts));
    }
    (!body.trim_start().starts_with('/') && desk.awaits_input(body))
        .then(|| desk.flow_input(body, a.new_code))
}

/// The language of this turn's canned texts: the newest message that says, else the newest user
/// turn in history that does, else English.
fn language_of(records: &[InboxRecord], session: &SessionState) -> Lang {
    let from_messages = records.iter().rev().find_map(|r| match &r.message.content {
        Content::Text { body } => Lang::detect(body),
        Content::Media(m) => m.caption.as_deref().and_then(Lang::detect),
        _ => None,
    });
    from_messages
        .or_else(|| {
            session
                .history
                .iter()
                .rev()
                .filter(|t| t.speaker == Speaker::User)
                .find_map(|t| Lang::detect(&t.text))
        })
        .unwrap_or_default()
}

/// What a user message becomes for the brain, or a direct answer when the brain cannot use it.
#[derive(Debug)]
enum Rendered {
    /// Goes to the brain.
    Input(String),
    /// Answered without the brain (commands, things Sandra cannot read yet).
    Direct(String),
    /// Recorded in history, not answered (reactions).
    Quiet(String),
    /// `/reset`.
    Reset,
    /// A voice note or audio file, heard by the transcription actor.
    Voice(MediaRef),
    /// A photo, sticker or document, looked at by the vision actor.
    Look(MediaRef),
}

/// What a file's media word is.
pub fn media_word(media: &MediaRef) -> MediaWord {
    match media.kind {
        MediaKind::Image => MediaWord::Photo,
        MediaKind::Audio if media.voice => MediaWord::VoiceNote,
        MediaKind::Audio => MediaWord::AudioFile,
        MediaKind::Video => MediaWord::Video,
        MediaKind::Document => MediaWord::Document,
        MediaKind::Sticker => MediaWord::Sticker,
    }
}

/// A file the model has not seen, as the model reads it: plainly unseen, so it never answers
/// from the caption as if it could see the file (asked "What is the invoice total?" about an
/// unseen photo, a model will otherwise invent a figure).
pub fn unseen_text(media: &MediaRef) -> String {
    let what = media_word(media).english();
    let unseen = format!(
        "[I sent a {what}, but you cannot see it and nothing has read it for you: you know \
         nothing of what it contains, so do not guess or make anything up about it.]"
    );
    match media.caption.as_deref().map(str::trim) {
        Some(c) if !c.is_empty() => format!("{unseen}\nMy caption: {c}"),
        _ => unseen,
    }
}

fn render(m: &InboundMessage, ctx: &PlanContext<'_>, lang: Lang) -> Rendered {
    match &m.content {
        Content::Text { body } => {
            let t = body.trim();
            if let Some(cmd) = t.strip_prefix('/') {
                let cmd = cmd.split_whitespace().next().unwrap_or("").to_lowercase();
                return match cmd.as_str() {
                    "reset" => Rendered::Reset,
                    "help" | "start" if ctx.accounts.is_some() => Rendered::Direct(format!(
                        "{} {}",
                        texts::help(lang),
                        texts::account_help(lang)
                    )),
                    "help" | "start" => Rendered::Direct(texts::help(lang)),
                    // Account commands reach here only in groups.
                    "link" | "whoami" | "unlink" | "forget" | "remember" | "notes" | "name"
                    | "language" | "length" => {
                        Rendered::Direct(texts::account(lang, &Said::PrivateOnly))
                    }
                    _ => Rendered::Direct(texts::unknown_command(lang, &cmd)),
                };
            }
            Rendered::Input(body.clone())
        }
        Content::ChoiceReply {
            title, description, ..
        } => Rendered::Input(choice_text(
            title,
            description.as_deref(),
            m.context
                .as_ref()
                .and_then(|c| c.id.as_ref())
                .and_then(|id| ctx.answered.get(id))
                .map(String::as_str),
        )),
        Content::Location {
            latitude,
            longitude,
            name,
            address,
        } => {
            let place = [name.as_deref(), address.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
            Rendered::Input(format!(
                "[I shared a location: {}({latitude:.5}, {longitude:.5})]",
                if place.is_empty() {
                    String::new()
                } else {
                    format!("{place} ")
                }
            ))
        }
        Content::Contacts { cards } => {
            Rendered::Input(format!("[I shared contact cards: {}]", cards.join("; ")))
        }
        Content::Reaction { message_id, emoji } => Rendered::Quiet(if emoji.is_empty() {
            format!("[removed a reaction from message {message_id}]")
        } else {
            format!("[reacted {emoji} to message {message_id}]")
        }),
        Content::Media(media) if media.kind == MediaKind::Audio && ctx.can_hear => {
            Rendered::Voice(media.clone())
        }
        Content::Media(media)
            if ctx.can_see
                && matches!(
                    media.kind,
                    MediaKind::Image | MediaKind::Sticker | MediaKind::Document
                ) =>
        {
            Rendered::Look(media.clone())
        }
        Content::Media(media) => {
            let what = media_word(media);
            match &media.caption {
                Some(c) if !c.trim().is_empty() => Rendered::Input(unseen_text(media)),
                _ if media.kind == MediaKind::Sticker => {
                    Rendered::Quiet(format!("[sent a {}]", what.english()))
                }
                _ => Rendered::Direct(texts::cannot_open(lang, what)),
            }
        }
        Content::Unsupported { kind, .. } => Rendered::Direct(texts::cannot_read(lang, kind)),
        Content::Membership { joined, left } => Rendered::Quiet(membership_text(joined, left)),
    }
}

/// Who joined or left, as the model reads it in the group's history. Bounded: Meta's groups
/// hold at most 8 participants, but a webhook is input, so a longer list is cut.
fn membership_text(joined: &[String], left: &[String]) -> String {
    const MAX_NAMED: usize = 8;
    let list = |people: &[String]| {
        let mut s = people
            .iter()
            .take(MAX_NAMED)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if people.len() > MAX_NAMED {
            s.push_str(&format!(" and {} more", people.len() - MAX_NAMED));
        }
        s
    };
    let mut parts = Vec::new();
    if !joined.is_empty() {
        parts.push(format!("{} joined the group", list(joined)));
    }
    if !left.is_empty() {
        parts.push(format!("{} left the group", list(left)));
    }
    format!("[{}]", parts.join("; "))
}

/// A tapped button or list row, as the model reads it: what was tapped, the row's description,
/// and the message it answers, so "Lisboa" means the answer to "Which city?".
fn choice_text(title: &str, description: Option<&str>, answered: Option<&str>) -> String {
    let mut s = format!("[I tapped \"{title}\"");
    if let Some(d) = description.filter(|d| !d.trim().is_empty()) {
        s.push_str(&format!(" ({d})"));
    }
    match answered {
        Some(a) => s.push_str(&format!(" in reply to your message: \"{a}\"]")),
        None => s.push(']'),
    }
    s
}

/// In a group, Sandra answers only when mentioned by name or `@number` (see [`super::mention`]),
/// or replied to: the quoted message is one Sandra sent (its wamid is in the outbox), or,
/// when that record is gone, Meta says its author was our number (compared as digits, since a
/// display number may be formatted).
pub fn addressed_in_group(m: &InboundMessage, ctx: &PlanContext<'_>) -> bool {
    if let Some(c) = &m.context {
        let ours = phone_digits(&m.display_phone_number);
        let quoted_ours =
            c.id.as_deref()
                .is_some_and(|id| ctx.answered.contains_key(id));
        let from_ours =
            !ours.is_empty() && c.from.as_deref().is_some_and(|f| phone_digits(f) == ours);
        if quoted_ours || from_ours {
            return true;
        }
    }
    let text = match &m.content {
        Content::Text { body } => body.as_str(),
        Content::Media(media) => media.caption.as_deref().unwrap_or_default(),
        _ => return false,
    };
    mentions_name(text, &ctx.policy.bot_name) || mentions_number(text, &m.display_phone_number)
}

/// A message that only becomes history, with its author in groups.
fn user_turn(m: &InboundMessage, text: String) -> Turn {
    let text = author_line(m.contact_name.as_deref(), m.group_id.is_some(), &text);
    Turn {
        speaker: Speaker::User,
        text,
        at: m.timestamp,
        wamids: vec![m.wamid.clone()],
        clock: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::whatsapp::ContextRef;

    pub fn policy() -> ConversationPolicy {
        ConversationPolicy {
            bot_name: "Sandra".into(),
            max_history_turns: 40,
            typing_indicator: true,
            brain_timeout: std::time::Duration::from_secs(300),
            max_wait: std::time::Duration::from_secs(1200),
            wait_notice_after: std::time::Duration::from_secs(10),
            group_context_messages: 40,
            group_context_chars: 100_000,
            offer_linking: true,
        }
    }

    pub fn msg(wamid: &str, ts: i64, content: Content) -> InboundMessage {
        InboundMessage {
            wamid: wamid.into(),
            phone_number_id: "PNID".into(),
            display_phone_number: "15550009999".into(),
            from: Some("15550001111".into()),
            from_user_id: None,
            group_id: None,
            contact_name: Some("Ana".into()),
            timestamp: ts,
            context: None,
            content,
        }
    }

    pub fn text(wamid: &str, ts: i64, body: &str) -> InboundMessage {
        msg(wamid, ts, Content::Text { body: body.into() })
    }

    pub fn in_group(mut m: InboundMessage) -> InboundMessage {
        m.group_id = Some("GROUP1".into());
        m
    }

    pub fn rec(seq: u64, m: InboundMessage) -> InboxRecord {
        InboxRecord {
            seq,
            key: m.conversation_key().unwrap(),
            message: m,
            received_at_ms: 0,
            attempts: 0,
            noticed: false,
        }
    }

    pub fn session_for(m: &InboundMessage) -> SessionState {
        SessionState::new(m.conversation_key().unwrap(), m.reply_target())
    }

    fn uncapped(t: String) -> String {
        t
    }

    /// A context over `policy` and `answered`: voice notes heard, files unseen, text uncapped,
    /// no accounts. Tests override the fields they are about.
    pub fn context<'a>(
        policy: &'a ConversationPolicy,
        answered: &'a HashMap<String, String>,
    ) -> PlanContext<'a> {
        PlanContext {
            policy,
            can_hear: true,
            can_see: false,
            cap_text: &uncapped,
            answered,
            accounts: None,
        }
    }

    fn run(session: &SessionState, msgs: Vec<InboundMessage>, verdicts: &[Verdict]) -> Plan {
        run_with(session, msgs, verdicts, true, &HashMap::new())
    }

    fn run_with(
        session: &SessionState,
        msgs: Vec<InboundMessage>,
        verdicts: &[Verdict],
        can_hear: bool,
        answered: &HashMap<String, String>,
    ) -> Plan {
        let policy = policy();
        let cap = |t: String| t.chars().take(50).collect::<String>();
        let ctx = PlanContext {
            can_hear,
            cap_text: &cap,
            ..context(&policy, answered)
        };
        let records = msgs
            .into_iter()
            .enumerate()
            .map(|(i, m)| rec(i as u64, m))
            .collect();
        plan(session, records, verdicts, &ctx)
    }

    #[test]
    fn batch_takes_oldest_first_and_leaves_the_rest_waiting() {
        let mut pending = BTreeMap::new();
        for (ts, seq) in [(30, 1), (10, 2), (20, 3), (10, 4)] {
            pending.insert((ts, seq), rec(seq, text("w", ts, "hi")));
        }
        let taken: Vec<u64> = take_batch(&mut pending, 3).iter().map(|r| r.seq).collect();
        assert_eq!(taken, vec![2, 4, 3], "timestamp order, then arrival order");
        assert_eq!(pending.len(), 1);
        // A cap of 0 still makes progress.
        assert_eq!(take_batch(&mut pending, 0).len(), 1);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_batch_of_texts_goes_to_the_brain_together_in_order() {
        let a = text("w1", 1, "Hello");
        let s = session_for(&a);
        let p = run(&s, vec![a, text("w2", 2, "Are you there?")], &[]);
        let texts: Vec<&str> = p.inputs.iter().map(|i| i.text.as_str()).collect();
        assert_eq!(texts, vec!["Hello", "Are you there?"]);
        assert_eq!(p.records.len(), 2);
        assert!(p.direct.is_empty() && p.quiet.is_empty() && !p.reset);
        assert_eq!(p.typing_for(&s, &policy()), Some("w2".into()));
        // Read receipts do not depend on the typing indicator.
        let quiet = ConversationPolicy {
            typing_indicator: false,
            ..policy()
        };
        assert_eq!(p.typing_for(&s, &quiet), None);
        assert_eq!(p.read_for(&s), Some("w2".into()));
        // The brain is told whose conversation this is, so a local model can keep its cache.
        assert_eq!(
            p.brain_input(&s, jiff::Timestamp::UNIX_EPOCH).conversation,
            s.key.to_string()
        );
        // Long texts are capped.
        let long = text("w3", 3, &"x".repeat(500));
        assert_eq!(run(&s, vec![long], &[]).inputs[0].text.len(), 50);
    }

    #[test]
    fn commands_are_answered_without_the_brain() {
        let a = text("w1", 1, "/help");
        let mut s = session_for(&a);
        s.history.push(Turn {
            speaker: Speaker::User,
            text: "old".into(),
            at: 0,
            wamids: vec![],
            clock: None,
        });
        s.summary = Some("earlier".into());
        let p = run(&s, vec![a, text("w2", 2, "/Frobnicate now")], &[]);
        assert!(!p.needs_brain());
        assert_eq!(p.direct[0], texts::help(Lang::En));
        assert!(p.direct[1].starts_with("I don't know the command /frobnicate."));

        let p = run(
            &s,
            vec![text("w1", 1, " /reset "), text("w2", 2, "new topic")],
            &[],
        );
        assert!(p.reset);
        assert_eq!(p.direct, vec![texts::reset_done(Lang::En)]);
        let input = p.brain_input(&s, jiff::Timestamp::UNIX_EPOCH);
        assert!(
            input.history.is_empty() && input.summary.is_none(),
            "reset forgets before the brain answers"
        );
        assert_eq!(input.inputs[0].text, "new topic");
    }

    #[test]
    fn groups_answer_only_when_addressed() {
        let chatter = in_group(text("w1", 1, "lunch at noon?"));
        let s = session_for(&chatter);
        assert!(s.is_group);
        let named = in_group(text("w2", 2, "sandra, what's the weather?"));
        let not_a_mention = in_group(text("w3", 3, "I sent it to Sandr a"));
        let mut replied = in_group(text("w4", 4, "thanks"));
        replied.context = Some(ContextRef {
            from: Some("15550009999".into()),
            id: Some("sent1".into()),
            forwarded: false,
        });
        let by_number = in_group(text("w5", 5, "@15550009999 hi"));
        let help = in_group(text("w6", 6, "/help"));
        let p = run(
            &s,
            vec![chatter, named, not_a_mention, replied, by_number, help],
            &[],
        );
        let answered: Vec<&str> = p.inputs.iter().map(|i| i.wamid.as_str()).collect();
        assert_eq!(answered, vec!["w2", "w4", "w5"]);
        // Chatter is remembered with its author, never answered; a command not addressed to
        // Sandra is neither answered nor remembered.
        let quiet: Vec<&str> = p.quiet.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            quiet,
            vec!["Ana: lunch at noon?", "Ana: I sent it to Sandr a"]
        );
        assert!(p.direct.is_empty());
        assert_eq!(p.records.len(), 6);
        assert_eq!(
            p.typing_for(&s, &policy()),
            None,
            "groups cannot show typing"
        );
        assert_eq!(p.read_for(&s), None, "Meta's groups have no read receipts");
    }

    /// The three ways to address Sandra in a group (name, `@number`, a reply to one of her
    /// messages), and the near misses that must stay chatter.
    #[test]
    fn group_addressing_by_name_number_and_reply_with_near_misses() {
        let first = in_group(text("w0", 0, "hi all"));
        let s = session_for(&first);
        let mut n = 0;
        let mut next = |body: &str| {
            n += 1;
            in_group(text(&format!("w{n}"), n, body))
        };
        let addressed = vec![
            next("Sandra, what's the weather?"),
            next("SANDRA?"),
            next("what do you think, Sándra"),
            next("@Sandra help"),
            next("@15550009999 hi"),
            next("ping @+1 555-000-9999"),
        ];
        let near_misses = vec![
            next("Alessandra is late"),
            next("who wants a sandrawich"),
            next("I sent it to Sandr a"),
            next("call 15550009999"),
            next("@155500099990 wrong number"),
        ];
        // A reply quoting Sandra's message, known by its wamid even when Meta's `context.from`
        // is missing; and by `context.from` (formatted) when the outbox record is gone.
        let mut by_wamid = next("thanks");
        by_wamid.context = Some(ContextRef {
            from: None,
            id: Some("wamid.sandra1".into()),
            forwarded: false,
        });
        let mut by_from = next("and tomorrow?");
        by_from.context = Some(ContextRef {
            from: Some("+1 555-000-9999".into()),
            id: Some("wamid.swept".into()),
            forwarded: false,
        });
        // A reply to another member is not a reply to Sandra.
        let mut to_member = next("agreed");
        to_member.context = Some(ContextRef {
            from: Some("15550002222".into()),
            id: Some("wamid.member".into()),
            forwarded: false,
        });
        let answered = HashMap::from([("wamid.sandra1".to_string(), "Sunny.".to_string())]);
        let mut msgs = addressed.clone();
        msgs.extend(near_misses.clone());
        msgs.extend([by_wamid, by_from, to_member]);
        let p = run_with(&s, msgs, &[], true, &answered);
        let got: Vec<&str> = p.inputs.iter().map(|i| i.wamid.as_str()).collect();
        let mut want: Vec<String> = addressed.iter().map(|m| m.wamid.clone()).collect();
        want.extend(["w12".to_string(), "w13".to_string()]);
        assert_eq!(got, want);
        assert_eq!(
            p.quiet.len(),
            near_misses.len() + 1,
            "near misses stay chatter"
        );
    }

    /// Who joined or left is remembered in the group's history, never answered, and never
    /// rate-limited or taken for anyone's message.
    #[test]
    fn membership_changes_become_group_context() {
        let mut m = in_group(msg(
            "group_event:1",
            5,
            Content::Membership {
                joined: vec!["Bea (+1)".into()],
                left: vec!["+2".into()],
            },
        ));
        m.from = None;
        m.contact_name = None;
        let s = session_for(&m);
        let p = run(&s, vec![m], &[]);
        assert!(!p.needs_brain() && p.direct.is_empty());
        let quiet: Vec<&str> = p.quiet.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(quiet, ["[Bea (+1) joined the group; +2 left the group]"]);
        let many: Vec<String> = (0..12).map(|i| format!("+1{i}")).collect();
        assert!(membership_text(&many, &[]).ends_with(" and 4 more joined the group]"));
    }

    /// A group's history as the brain sees it is bounded in turns and characters; a 1:1
    /// chat's is not touched by those bounds.
    #[test]
    fn group_history_for_the_brain_is_bounded() {
        let a = in_group(text("w1", 1, "Sandra, recap?"));
        let mut s = session_for(&a);
        for i in 0..50 {
            s.history.push(Turn {
                speaker: Speaker::User,
                text: format!("Ana: chatter {i:02} {}", "x".repeat(20)),
                at: i,
                wamids: vec![],
                clock: None,
            });
        }
        let policy = ConversationPolicy {
            group_context_messages: 10,
            group_context_chars: 100,
            ..policy()
        };
        let answered = HashMap::new();
        let ctx = context(&policy, &answered);
        let p = plan(&s, vec![rec(1, a.clone())], &[], &ctx);
        let h = p.brain_input(&s, jiff::Timestamp::UNIX_EPOCH).history;
        // Each turn is 35 characters: 100 allow two, the newest.
        assert_eq!(h.len(), 2);
        assert!(h[1].text.starts_with("Ana: chatter 49"), "{}", h[1].text);
        let chars: usize = h.iter().map(|t| t.text.chars().count()).sum();
        assert!(chars <= 100);
        let roomy = ConversationPolicy {
            group_context_chars: 100_000,
            ..policy.clone()
        };
        let ctx = PlanContext {
            policy: &roomy,
            ..ctx
        };
        let p = plan(&s, vec![rec(1, a.clone())], &[], &ctx);
        assert_eq!(
            p.brain_input(&s, jiff::Timestamp::UNIX_EPOCH).history.len(),
            10,
            "the turn bound"
        );
        // Not a group: untouched.
        let one = text("w2", 2, "hi");
        let mut s1 = session_for(&one);
        s1.history = s.history.clone();
        let p = plan(&s1, vec![rec(2, one)], &[], &ctx);
        assert_eq!(
            p.brain_input(&s1, jiff::Timestamp::UNIX_EPOCH)
                .history
                .len(),
            50
        );
    }

    #[test]
    fn the_clock_is_the_turns_and_the_zone_follows_whoever_asked() {
        let from = |mut m: InboundMessage, n: &str| {
            m.from = Some(n.into());
            m
        };
        let asks = from(
            in_group(text("w1", 1, "Sandra, what time is it?")),
            "351911111111",
        );
        let s = session_for(&asks);
        let also = from(
            in_group(text("w2", 2, "Sandra, and the date?")),
            "4915111111111",
        );
        // Chatter after the question is not the asker.
        let chatter = from(in_group(text("w3", 3, "lunch?")), "12125551234");
        let now: jiff::Timestamp = "2026-12-01T14:05:00Z".parse().unwrap();
        let input = run(&s, vec![asks.clone(), also, chatter], &[]).brain_input(&s, now);
        assert_eq!(input.now, now);
        assert_eq!(input.asker_number.as_deref(), Some("4915111111111"));
        assert_eq!(input.time_zone, None, "no profile yet");
        let input = run(&s, vec![asks], &[]).brain_input(&s, now);
        assert_eq!(input.asker_number.as_deref(), Some("351911111111"));
        // Nothing for the brain: nobody asked.
        let p = run(&s, vec![in_group(text("w4", 4, "lunch?"))], &[]);
        assert_eq!(p.asker_number, None);
    }

    #[test]
    fn blocked_and_rate_limited_senders_get_no_brain_and_no_history() {
        let a = text("w1", 1, "spam");
        let s = session_for(&a);
        let p = run(
            &s,
            vec![a, text("w2", 2, "spam"), text("w3", 3, "spam")],
            &[
                Verdict::Blocked,
                Verdict::RateLimited { notify: true },
                Verdict::RateLimited { notify: false },
            ],
        );
        assert!(!p.needs_brain());
        assert!(p.quiet.is_empty());
        assert_eq!(p.records.len(), 3, "dropped messages still leave the inbox");
        assert_eq!(
            p.direct,
            vec![texts::rate_notice(Lang::En)],
            "one notice, not one per message"
        );
        assert_eq!(p.events.len(), 3);

        // In a group, no notice for chatter that was not meant for Sandra.
        let g = in_group(text("w1", 1, "spam"));
        let gs = session_for(&g);
        let p = run(&gs, vec![g], &[Verdict::RateLimited { notify: true }]);
        assert!(p.direct.is_empty());
    }

    #[test]
    fn the_reply_target_and_name_follow_the_newest_message() {
        let a = text("w1", 1, "hi");
        let s = session_for(&a);
        let mut b = text("w2", 2, "me again");
        b.from_user_id = Some("US.123".into());
        b.contact_name = Some("Ana María".into());
        let p = run(&s, vec![a, b], &[]);
        assert_eq!(p.target.user_id.as_deref(), Some("US.123"));
        assert_eq!(p.target.phone.as_deref(), Some("15550001111"));
        assert_eq!(p.contact_name.as_deref(), Some("Ana María"));
        // The 24-hour window is opened by what the user sends, answered or not: every record
        // is part of the plan, and the commit stamps `last_inbound_at` from them.
        let p = run(&s, vec![text("w3", 9, "x")], &[Verdict::Blocked]);
        assert_eq!(p.records[0].message.timestamp, 9);
    }

    #[test]
    fn voice_notes_are_heard_first_or_declined_when_no_one_can_hear() {
        let media = |voice| MediaRef {
            kind: MediaKind::Audio,
            id: "m1".into(),
            mime_type: Some("audio/ogg".into()),
            sha256: None,
            caption: None,
            filename: None,
            voice,
            animated: false,
            url: None,
        };
        let a = msg("w1", 1, Content::Media(media(true)));
        let s = session_for(&a);
        let p = run(&s, vec![text("w0", 0, "listen:"), a.clone()], &[]);
        assert_eq!(p.voice.len(), 1);
        assert_eq!(
            p.voice[0].0, 1,
            "index of the voice note among the brain's inputs"
        );
        assert_eq!(p.inputs[1].text, UNHEARD_VOICE_NOTE);
        let p = run_with(&s, vec![a], &[], false, &HashMap::new());
        assert!(p.voice.is_empty() && !p.needs_brain());
        assert_eq!(
            p.direct,
            vec![texts::cannot_open(Lang::En, MediaWord::VoiceNote)]
        );
    }

    /// With a vision actor, photos, stickers and documents are looked at before the brain;
    /// until then (and without one) the caption never passes for the file's contents.
    #[test]
    fn photos_and_documents_are_looked_at_or_plainly_unseen() {
        let file = super::super::test_media;
        let photo = msg(
            "w1",
            1,
            Content::Media(file(MediaKind::Image, Some("What is the invoice total?"))),
        );
        let sticker = msg("w2", 2, Content::Media(file(MediaKind::Sticker, None)));
        let doc = msg("w3", 3, Content::Media(file(MediaKind::Document, None)));
        let video = msg("w4", 4, Content::Media(file(MediaKind::Video, None)));
        let s = session_for(&photo);
        let policy = policy();
        let answered = HashMap::new();
        let ctx = |can_see| PlanContext {
            can_see,
            ..context(&policy, &answered)
        };
        let all = vec![photo.clone(), sticker, doc, video];
        let records = |msgs: Vec<InboundMessage>| {
            msgs.into_iter()
                .enumerate()
                .map(|(i, m)| rec(i as u64, m))
                .collect::<Vec<_>>()
        };
        let p = plan(&s, records(all.clone()), &[], &ctx(true));
        let looked: Vec<(usize, MediaKind)> = p.look.iter().map(|(i, m)| (*i, m.kind)).collect();
        assert_eq!(
            looked,
            vec![
                (0, MediaKind::Image),
                (1, MediaKind::Sticker),
                (2, MediaKind::Document)
            ]
        );
        let unseen = &p.inputs[0].text;
        assert!(unseen.contains("you cannot see it"), "{unseen}");
        assert!(unseen.contains("do not guess"), "{unseen}");
        assert!(unseen.ends_with("\nMy caption: What is the invoice total?"));
        assert_eq!(
            p.direct,
            vec![texts::cannot_open(Lang::En, MediaWord::Video)]
        );

        // No vision actor: the captioned photo goes to the brain, plainly unseen; the rest
        // is answered or remembered as before.
        let p = plan(&s, records(all), &[], &ctx(false));
        assert!(p.look.is_empty());
        assert_eq!(p.inputs.len(), 1);
        assert_eq!(p.inputs[0].text, *unseen);
        assert_eq!(
            p.quiet.len(),
            1,
            "a sticker without caption is only remembered"
        );
        assert_eq!(
            p.direct,
            vec![
                texts::cannot_open(Lang::En, MediaWord::Document),
                texts::cannot_open(Lang::En, MediaWord::Video)
            ]
        );

        // Group chatter with a photo is remembered as unseen, not looked at.
        let g = in_group(photo);
        let gs = session_for(&g);
        let mut g2 = g.clone();
        if let Content::Media(m) = &mut g2.content {
            m.caption = Some("lunch menu".into());
        }
        let p = plan(&gs, records(vec![g2]), &[], &ctx(true));
        assert!(p.look.is_empty() && p.inputs.is_empty());
        assert!(
            p.quiet[0].text.contains("you cannot see it"),
            "{}",
            p.quiet[0].text
        );
    }

    #[test]
    fn list_replies_keep_title_description_and_the_question() {
        let mut tap = msg(
            "w1",
            1,
            Content::ChoiceReply {
                id: Some("city_lis".into()),
                title: "Lisboa".into(),
                description: Some("Capital of Portugal".into()),
            },
        );
        tap.context = Some(ContextRef {
            from: Some("15550009999".into()),
            id: Some("wamid.sent".into()),
            forwarded: false,
        });
        let s = session_for(&tap);
        let answered = HashMap::from([(
            "wamid.sent".to_string(),
            "Which city are you flying to?".to_string(),
        )]);
        let policy = policy();
        let ctx = context(&policy, &answered);
        let p = plan(&s, vec![rec(1, tap.clone())], &[], &ctx);
        assert_eq!(
            p.inputs[0].text,
            "[I tapped \"Lisboa\" (Capital of Portugal) in reply to your message: \"Which city are you flying to?\"]"
        );
        // Without the question on record, still the title and the description.
        let p = run(&s, vec![tap], &[]);
        assert_eq!(
            p.inputs[0].text,
            "[I tapped \"Lisboa\" (Capital of Portugal)]"
        );
    }

    #[test]
    fn canned_texts_follow_the_users_language() {
        let a = text("w1", 1, "/ayuda");
        let s = session_for(&a);
        let p = run(
            &s,
            vec![
                text("w0", 0, "Hola, ¿me puedes ayudar con una receta de cocina?"),
                a,
            ],
            &[],
        );
        assert!(
            p.direct[0].starts_with("No conozco el comando /ayuda."),
            "{}",
            p.direct[0]
        );
        // Nothing to tell the language by: English.
        let p = run(&s, vec![text("w1", 1, "/x")], &[]);
        assert!(p.direct[0].starts_with("I don't know the command /x."));
        // The history tells it when this turn's messages do not.
        let mut s2 = s.clone();
        s2.history.push(Turn {
            speaker: Speaker::User,
            text: "Bonjour, pouvez-vous m'aider à écrire une lettre à mon propriétaire ?".into(),
            at: 0,
            wamids: vec![],
            clock: None,
        });
        let p = run(&s2, vec![text("w1", 1, "/reset")], &[]);
        assert_eq!(p.direct, vec![texts::reset_done(Lang::Fr)]);
    }

    #[test]
    fn unsupported_and_media_without_caption_are_answered_directly() {
        let poll = msg(
            "w1",
            1,
            Content::Unsupported {
                kind: "poll_update".into(),
                detail: None,
            },
        );
        let s = session_for(&poll);
        let p = run(&s, vec![poll], &[]);
        assert!(p.direct[0].contains("can't read this kind of message (poll_update)"));
        assert!(matches!(p.events[0], PlanEvent::Unsupported { .. }));
    }

    struct NoAccounts;

    impl Lookup for NoAccounts {
        fn account(&self, _: &str) -> Option<crate::accounts::Account> {
            None
        }
        fn email_sends(&self, _: &str) -> Vec<i64> {
            Vec::new()
        }
    }

    fn with_accounts(
        session: &SessionState,
        msgs: Vec<InboundMessage>,
        record: accounts::NumberRecord,
    ) -> Plan {
        let policy = policy();
        let answered = HashMap::new();
        let new_code = || NewCode {
            code: "123456".to_string().into(),
            salt: [3; 16],
        };
        let ctx = PlanContext {
            accounts: Some(AccountsContext {
                key: accounts::link_key("15550001111"),
                record,
                lookup: &NoAccounts,
                policy: &AccountPolicy::STANDARD,
                mail_enabled: true,
                now_ms: 1_000,
                new_code: &new_code,
            }),
            ..context(&policy, &answered)
        };
        let records = msgs
            .into_iter()
            .enumerate()
            .map(|(i, m)| rec(i as u64, m))
            .collect();
        plan(session, records, &[], &ctx)
    }

    #[test]
    fn canned_texts_follow_the_language_the_user_chose() {
        let a = text("w1", 1, "hello there, how are you doing today?");
        let s = session_for(&a);
        let record = accounts::NumberRecord {
            profile: accounts::Profile {
                language: Some("pt".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let p = with_accounts(&s, vec![a.clone(), text("w2", 2, "/reset")], record);
        assert_eq!(p.lang, Lang::Pt);
        assert_eq!(p.direct, vec![texts::reset_done(Lang::Pt)]);
        // Without a choice, the guess from their words.
        let p = with_accounts(&s, vec![a, text("w2", 2, "/reset")], Default::default());
        assert_eq!(p.lang, Lang::En);
    }

    #[test]
    fn the_profiles_time_zone_sets_the_prompts_clock() {
        let a = text("w1", 1, "/timezone america/mexico_city");
        let s = session_for(&a);
        let p = with_accounts(
            &s,
            vec![a, text("w2", 2, "what time is it?")],
            Default::default(),
        );
        let input = p.brain_input(&s, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(input.time_zone.as_deref(), Some("America/Mexico_City"));
        // Without one, no zone: the clock guesses from the number.
        let b = text("w3", 3, "hello");
        let p = with_accounts(&s, vec![b], Default::default());
        assert_eq!(
            p.brain_input(&s, jiff::Timestamp::UNIX_EPOCH).time_zone,
            None
        );
    }

    #[test]
    fn account_messages_stay_out_of_the_brain_and_linking_is_offered_once() {
        let a = text("w1", 1, "hello");
        let s = session_for(&a);
        let p = with_accounts(
            &s,
            vec![a, text("w2", 2, "/remember I like tea")],
            Default::default(),
        );
        let inputs: Vec<&str> = p.inputs.iter().map(|i| i.text.as_str()).collect();
        assert_eq!(inputs, vec!["hello"], "the note is not the brain's input");
        assert!(p.direct[0].starts_with("Noted"), "{:?}", p.direct);
        assert_eq!(p.trailing, vec![texts::link_offer(Lang::En)]);
        let profile = p
            .brain_input(&s, jiff::Timestamp::UNIX_EPOCH)
            .profile
            .unwrap();
        assert_eq!(profile.notes[0].text, "I like tea");
        let stored = p.identity.unwrap().number.unwrap();
        assert!(stored.offered);
        // The next turn, with what was stored: no offer again.
        let p = with_accounts(&s, vec![text("w3", 3, "hi again")], stored.clone());
        assert!(p.trailing.is_empty());

        // An address while one is awaited: a code to mail, nothing for the brain or history.
        let awaiting = accounts::NumberRecord {
            flow: accounts::Flow::AwaitingEmail,
            ..stored
        };
        let p = with_accounts(&s, vec![text("w4", 4, "ana@example.org")], awaiting);
        assert_eq!(
            p.mail.as_ref().map(|m| m.to.as_str()),
            Some("ana@example.org")
        );
        assert!(p.needs_brain() && p.inputs.is_empty() && p.direct.is_empty());

        // Never in groups: no offer, no account commands, no profile.
        let g = in_group(text("w5", 5, "Sandra, remember that I like tea"));
        let gs = session_for(&g);
        let p = with_accounts(&gs, vec![g], Default::default());
        assert_eq!(
            p.inputs.len(),
            1,
            "in a group it is just a message to Sandra"
        );
        assert!(p.trailing.is_empty() && p.identity.is_none() && p.profile.is_none());
        let g = in_group(text("w6", 6, "/link"));
        let mut g = g;
        g.context = Some(ContextRef {
            from: Some("15550009999".into()),
            id: Some("sent1".into()),
            forwarded: false,
        });
        let p = with_accounts(&gs, vec![g], Default::default());
        assert_eq!(p.direct, vec![texts::account(Lang::En, &Said::PrivateOnly)]);
    }
}
