//! WhatsApp Cloud API webhook payloads and the domain types Sandra routes on.
//!
//! Parsing is deliberately forgiving: Meta adds message types, fields and `field` values all the
//! time, and a 4xx/5xx makes Meta retry the same body for seven days. So every struct ignores
//! unknown fields, every list defaults to empty, and a message whose type we do not know (or whose
//! body does not have the shape we expect) becomes [`Content::Unsupported`] instead of an error.
//! Only a body that is not JSON at all is an error ([`parse_webhook`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

// ============================== Wire format ==============================

/// The top-level webhook body: `{"object": ..., "entry": [...]}`.
#[derive(Debug, Deserialize, Default)]
pub struct WebhookPayload {
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub entry: Vec<Entry>,
}

#[derive(Debug, Deserialize, Default)]
pub struct Entry {
    /// The WhatsApp Business Account id (not the phone number id).
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub changes: Vec<Change>,
}

#[derive(Debug, Deserialize, Default)]
pub struct Change {
    #[serde(default)]
    pub field: String,
    /// Kept raw: its shape depends on `field`, and only `messages` is parsed further.
    #[serde(default)]
    pub value: Value,
}

#[derive(Debug, Deserialize, Default)]
struct MessagesValue {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default)]
    messages: Vec<Value>,
    #[serde(default)]
    statuses: Vec<Value>,
    #[serde(default)]
    errors: Vec<Value>,
}

#[derive(Debug, Deserialize, Default, Clone)]
struct Metadata {
    #[serde(default)]
    display_phone_number: String,
    #[serde(default)]
    phone_number_id: String,
}

#[derive(Debug, Deserialize, Default, Clone)]
struct Contact {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    profile: Option<Profile>,
}

#[derive(Debug, Deserialize, Default, Clone)]
struct Profile {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    from_user_id: Option<String>,
    id: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    context: Option<RawContext>,
}

#[derive(Debug, Deserialize, Default)]
struct RawContext {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    forwarded: Option<bool>,
    #[serde(default)]
    frequently_forwarded: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawStatus {
    id: String,
    status: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    recipient_id: Option<String>,
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    errors: Vec<RawError>,
}

#[derive(Debug, Deserialize)]
struct RawError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

// ============================== Domain types ==============================

/// Which chat a message belongs to. One conversation actor exists per key.
///
/// Scoped by the business number that received the message, then the group if there is one,
/// else the sender's business-scoped user id (BSUID), else the sender's phone number: Meta may
/// drop `from` for users with usernames, and a group message's `from` is only the participant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConversationKey(String);

impl ConversationKey {
    pub fn new(phone_number_id: &str, chat: &ChatId) -> Self {
        let chat = match chat {
            ChatId::Group(g) => format!("g:{g}"),
            ChatId::User(u) => format!("u:{u}"),
            ChatId::Phone(p) => format!("p:{p}"),
        };
        Self(format!("{phone_number_id}/{chat}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ConversationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatId {
    Group(String),
    User(String),
    Phone(String),
}

/// Where replies to a conversation go: a group, or a user by phone (`to`) or BSUID (`recipient`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReplyTarget {
    pub group_id: Option<String>,
    pub phone: Option<String>,
    pub user_id: Option<String>,
}

impl ReplyTarget {
    /// A stable recipient identity for per-recipient pacing.
    pub fn recipient_key(&self) -> String {
        self.group_id
            .as_ref()
            .map(|g| format!("g:{g}"))
            .or_else(|| self.phone.as_ref().map(|p| format!("p:{p}")))
            .or_else(|| self.user_id.as_ref().map(|u| format!("u:{u}")))
            .unwrap_or_default()
    }
}

/// The kinds of media Meta delivers by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Audio,
    Video,
    Document,
    Sticker,
}

/// A reference to user media (download is two hops through the Graph API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaRef {
    pub kind: MediaKind,
    pub id: String,
    pub mime_type: Option<String>,
    /// Base64 in webhooks (treated as opaque).
    pub sha256: Option<String>,
    pub caption: Option<String>,
    pub filename: Option<String>,
    /// `true` for voice notes (push-to-talk), `false` for forwarded audio files.
    pub voice: bool,
    pub animated: bool,
    pub url: Option<String>,
}

/// What a user sent, normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    Text {
        body: String,
    },
    Media(MediaRef),
    Location {
        latitude: f64,
        longitude: f64,
        name: Option<String>,
        address: Option<String>,
    },
    /// Shared contact cards, summarised as "Name (+phone)" lines.
    Contacts {
        cards: Vec<String>,
    },
    /// A tap on an interactive button/list row, or a template quick-reply button.
    ChoiceReply {
        id: Option<String>,
        title: String,
        /// A list row's description (buttons have none).
        #[serde(default)]
        description: Option<String>,
    },
    Reaction {
        message_id: String,
        /// Empty when the user removed their reaction.
        emoji: String,
    },
    /// People who joined or left a group, from a `group_participants_update` webhook (not a
    /// user message: it has a synthetic id, is remembered as context and never answered). Each
    /// entry is a display form of a participant (`Name (+wa_id)` or `+wa_id`).
    Membership {
        joined: Vec<String>,
        left: Vec<String>,
    },
    /// Anything we cannot read: Meta's `unsupported` type, types we do not know yet, and known
    /// types whose body had an unexpected shape. `kind` is what Meta called it.
    Unsupported {
        kind: String,
        detail: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ContextRef {
    /// Who wrote the quoted message (our display number when the user replied to Sandra).
    pub from: Option<String>,
    pub id: Option<String>,
    pub forwarded: bool,
}

/// One inbound user message, normalised and ready to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    pub wamid: String,
    pub phone_number_id: String,
    pub display_phone_number: String,
    pub from: Option<String>,
    pub from_user_id: Option<String>,
    pub group_id: Option<String>,
    pub contact_name: Option<String>,
    /// Unix seconds as Meta stamped it (0 when absent or unparsable).
    pub timestamp: i64,
    pub context: Option<ContextRef>,
    pub content: Content,
}

impl InboundMessage {
    pub fn chat_id(&self) -> Option<ChatId> {
        if let Some(g) = &self.group_id {
            Some(ChatId::Group(g.clone()))
        } else if let Some(u) = &self.from_user_id {
            Some(ChatId::User(u.clone()))
        } else {
            self.from.clone().map(ChatId::Phone)
        }
    }

    pub fn conversation_key(&self) -> Option<ConversationKey> {
        self.chat_id()
            .map(|c| ConversationKey::new(&self.phone_number_id, &c))
    }

    pub fn reply_target(&self) -> ReplyTarget {
        ReplyTarget {
            group_id: self.group_id.clone(),
            phone: if self.group_id.is_some() {
                None
            } else {
                self.from.clone()
            },
            user_id: if self.group_id.is_some() {
                None
            } else {
                self.from_user_id.clone()
            },
        }
    }
}

/// Delivery status of a message Sandra sent. Ordered: statuses only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Read,
    Played,
    Failed,
}

impl DeliveryStatus {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "played" => Self::Played,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Played => "played",
            Self::Failed => "failed",
        }
    }
}

/// A delivery status as Meta reported it. Values this version does not know are kept, not
/// rejected: Meta adds statuses, and the webhook must still be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReportedStatus {
    Known(DeliveryStatus),
    Unknown(String),
}

impl ReportedStatus {
    pub fn parse(s: &str) -> Self {
        DeliveryStatus::parse(s).map_or_else(|| Self::Unknown(s.to_string()), Self::Known)
    }

    /// Meta's string, as sent.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Known(d) => d.as_str(),
            Self::Unknown(s) => s,
        }
    }

    pub fn known(&self) -> Option<DeliveryStatus> {
        match self {
            Self::Known(d) => Some(*d),
            Self::Unknown(_) => None,
        }
    }
}

/// One Graph API error attached to a status webhook (`statuses[].errors[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusError {
    pub code: i64,
    pub title: String,
    /// Meta's longer explanation, when it sent one.
    pub message: Option<String>,
}

impl StatusError {
    /// "Re-engagement message": more than 24 hours since the user last wrote.
    pub const REENGAGEMENT: i64 = 131047;

    /// True when this error means the 24-hour customer-service window is closed: free-form
    /// messages to this chat fail until the user writes again.
    pub fn closes_window(&self) -> bool {
        self.code == Self::REENGAGEMENT
    }

    /// What to tell a human: Meta's message, else its title.
    pub fn description(&self) -> &str {
        self.message.as_deref().unwrap_or(&self.title)
    }
}

/// A status webhook for one of Sandra's outbound messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub wamid: String,
    pub status: ReportedStatus,
    pub timestamp: i64,
    pub recipient_id: Option<String>,
    pub callback_data: Option<String>,
    /// The errors Meta attached, in order (see [`StatusError::closes_window`]).
    pub errors: Vec<StatusError>,
}

/// Everything one webhook body carried, in order.
#[derive(Debug, Default)]
pub struct WebhookBatch {
    pub messages: Vec<InboundMessage>,
    pub statuses: Vec<StatusUpdate>,
    /// Things we accepted but do not act on, for logs and counters: unknown `field` values,
    /// value-level `errors[]`, entries we could not read. Human-readable.
    pub ignored: Vec<String>,
    /// Business numbers (`value.metadata.phone_number_id`) other than the one asked for in
    /// [`parse_webhook_for`], each with how many messages and statuses it carried. One app
    /// receives the webhooks of every number in its WhatsApp Business Account; those items
    /// are not parsed further.
    pub other_numbers: Vec<(String, usize)>,
    /// Group conversations that must end: the group was deleted, or Sandra's number was removed
    /// from it (`group_*` webhooks, see [`parse_group_change`]).
    pub closed_groups: Vec<ClosedGroup>,
}

/// A group whose conversation ends: nothing more is sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedGroup {
    pub key: ConversationKey,
    pub group_id: String,
    /// Why, for logs: "group deleted" or "Sandra was removed".
    pub reason: String,
}

/// A body that is not JSON, or whose top level is not Meta's envelope (an object whose
/// `object`/`entry` fields, when present, have the right types, e.g. `{"entry": 5}`).
#[derive(Debug, thiserror::Error)]
#[error("webhook body is not a JSON object: {0}")]
pub struct NotJson(String);

/// Parses a webhook body. Never fails on unknown content inside the envelope (unknown fields,
/// message types, unreadable changes are listed in `ignored`); fails only when the body is not
/// JSON or not the envelope at all, which the caller keeps in dead-letter.
pub fn parse_webhook(body: &[u8]) -> Result<WebhookBatch, NotJson> {
    parse_webhook_for(body, None)
}

/// [`parse_webhook`] for one business number: changes whose `value.metadata.phone_number_id`
/// is not `phone_number_id` are only counted in [`WebhookBatch::other_numbers`]. `None` keeps
/// every number.
pub fn parse_webhook_for(
    body: &[u8],
    phone_number_id: Option<&str>,
) -> Result<WebhookBatch, NotJson> {
    let payload: WebhookPayload =
        serde_json::from_slice(body).map_err(|e| NotJson(e.to_string()))?;
    let mut batch = WebhookBatch::default();
    if payload.object != "whatsapp_business_account" {
        batch.ignored.push(format!(
            "object {:?} is not whatsapp_business_account",
            payload.object
        ));
    }
    for entry in payload.entry {
        for change in entry.changes {
            match change.field.as_str() {
                "messages" => {}
                "group_lifecycle_update" | "group_participants_update" => {
                    parse_group_change(&change.field, change.value, phone_number_id, &mut batch);
                    continue;
                }
                // Subscribed (README recommends every `group_*` field) but nothing Sandra acts
                // on: a subject, description or suspension change does not change who talks.
                "group_settings_update" | "group_status_update" => {
                    let groups = change.value.get("groups").and_then(Value::as_array);
                    let ids: Vec<&str> = groups
                        .into_iter()
                        .flatten()
                        .filter_map(|g| g.get("group_id")?.as_str())
                        .collect();
                    batch
                        .ignored
                        .push(format!("field {:?} for groups {ids:?}", change.field));
                    continue;
                }
                _ => {
                    batch.ignored.push(format!("field {:?}", change.field));
                    continue;
                }
            }
            let value: MessagesValue = match serde_json::from_value(change.value) {
                Ok(v) => v,
                Err(e) => {
                    batch
                        .ignored
                        .push(format!("unreadable messages value: {e}"));
                    continue;
                }
            };
            let number = &value.metadata.phone_number_id;
            if phone_number_id.is_some_and(|ours| ours != number) {
                let items = value.messages.len() + value.statuses.len();
                match batch.other_numbers.iter_mut().find(|(n, _)| n == number) {
                    Some((_, n)) => *n += items,
                    None => batch.other_numbers.push((number.clone(), items)),
                }
                continue;
            }
            for err in &value.errors {
                batch.ignored.push(format!("value-level error: {err}"));
            }
            for raw in value.messages {
                match normalise_message(raw, &value.metadata, &value.contacts) {
                    Ok(m) => batch.messages.push(m),
                    Err(why) => batch.ignored.push(why),
                }
            }
            for raw in value.statuses {
                match serde_json::from_value::<RawStatus>(raw) {
                    Ok(s) => batch.statuses.push(StatusUpdate {
                        wamid: s.id,
                        status: ReportedStatus::parse(&s.status),
                        timestamp: parse_ts(s.timestamp.as_deref()),
                        recipient_id: s.recipient_id,
                        callback_data: s.biz_opaque_callback_data,
                        errors: s
                            .errors
                            .into_iter()
                            .map(|e| StatusError {
                                code: e.code,
                                title: e.title.unwrap_or_default(),
                                message: e.message,
                            })
                            .collect(),
                    }),
                    Err(e) => batch.ignored.push(format!("unreadable status: {e}")),
                }
            }
        }
    }
    Ok(batch)
}

// ============================== Group webhooks ==============================
//
// Shapes from Meta's "Webhooks for Groups API" page (developers.facebook.com/documentation/
// business-messaging/whatsapp/groups/webhooks, updated Feb 11 2026; read through the mirror at
// support.chatarchitect.com/books/meta-whatsapp/page/webhooks-for-groups-api-developer-documentation):
// every `group_*` change carries `value.metadata` and `value.groups[]`, each with `timestamp`,
// `group_id` and `type`.
// - `group_lifecycle_update`: `type` is `group_create` (with `subject`, `invite_link`,
//   `request_id`) or `group_delete` (with `request_id`); a failed one carries `errors[]`.
// - `group_participants_update`: joins by invite link carry `added_participants[]`; removals
//   (`group_participants_remove`, possibly partial, then with `failed_participants[]`) carry
//   `removed_participants[]`; a participant who leaves is sent as a removal whose
//   `initiated_by` and only `removed_participants[].wa_id` are that participant. Join requests
//   (`group_join_request_created` / `_revoked`) change nobody's membership.
// Participants are `{"wa_id": ...}` objects (YCloud's relay of the same webhook also shows
// `input`, `user_id` and a profile `name`, all read when present). Anything else is accepted
// and logged (`WebhookBatch::ignored`), never an error: a 4xx would make Meta retry for days.

#[derive(Debug, Deserialize, Default)]
struct GroupsValue {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    groups: Vec<Value>,
}

#[derive(Debug, Deserialize, Default)]
struct RawGroup {
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    added_participants: Vec<RawParticipant>,
    #[serde(default)]
    removed_participants: Vec<RawParticipant>,
    #[serde(default)]
    errors: Vec<Value>,
}

#[derive(Debug, Deserialize, Default)]
struct RawParticipant {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    profile: Option<Profile>,
}

impl RawParticipant {
    fn id(&self) -> Option<&str> {
        self.wa_id
            .as_deref()
            .or(self.user_id.as_deref())
            .or(self.input.as_deref())
    }

    /// How the model reads this participant: the name when Meta sent one, and the number.
    fn display(&self) -> Option<String> {
        let id = self.id()?;
        let id = if self.wa_id.is_some() && !id.starts_with('+') {
            format!("+{id}")
        } else {
            id.to_string()
        };
        Some(
            match self.profile.as_ref().and_then(|p| p.name.as_deref()) {
                Some(name) if !name.trim().is_empty() => format!("{} ({id})", name.trim()),
                _ => id,
            },
        )
    }
}

/// The digits of a phone number as Meta or a person writes it ("+1 555-078-3881").
pub fn phone_digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Reads one `group_lifecycle_update` or `group_participants_update` change into `batch`:
/// joins and leaves become [`Content::Membership`] messages of the group's conversation (so they
/// go through the inbox like any message: durable, deduplicated, in order), and a deleted group
/// or Sandra's own removal becomes a [`ClosedGroup`].
fn parse_group_change(
    field: &str,
    value: Value,
    phone_number_id: Option<&str>,
    batch: &mut WebhookBatch,
) {
    let value: GroupsValue = match serde_json::from_value(value) {
        Ok(v) => v,
        Err(e) => {
            batch.ignored.push(format!("unreadable {field} value: {e}"));
            return;
        }
    };
    let md = &value.metadata;
    if phone_number_id.is_some_and(|ours| ours != md.phone_number_id) {
        let number = md.phone_number_id.clone();
        match batch.other_numbers.iter_mut().find(|(n, _)| *n == number) {
            Some((_, n)) => *n += value.groups.len(),
            None => batch.other_numbers.push((number, value.groups.len())),
        }
        return;
    }
    let ours = phone_digits(&md.display_phone_number);
    for raw in value.groups {
        let g: RawGroup = match serde_json::from_value(raw) {
            Ok(g) => g,
            Err(e) => {
                batch.ignored.push(format!("unreadable {field} group: {e}"));
                continue;
            }
        };
        let Some(group_id) = g.group_id.clone().filter(|id| !id.is_empty()) else {
            batch
                .ignored
                .push(format!("{field} {:?} without group_id", g.kind));
            continue;
        };
        if !g.errors.is_empty() {
            // A failed create, delete or removal changed nothing.
            batch.ignored.push(format!(
                "{field} {:?} for group {group_id} failed: {}",
                g.kind,
                Value::Array(g.errors.clone())
            ));
            if g.removed_participants.is_empty() && g.added_participants.is_empty() {
                continue;
            }
        }
        let key = ConversationKey::new(&md.phone_number_id, &ChatId::Group(group_id.clone()));
        let close = |reason: &str, batch: &mut WebhookBatch| {
            batch.closed_groups.push(ClosedGroup {
                key: key.clone(),
                group_id: group_id.clone(),
                reason: reason.into(),
            });
        };
        if field == "group_lifecycle_update" {
            match g.kind.as_str() {
                "group_delete" if g.errors.is_empty() => close("group deleted", batch),
                other => batch
                    .ignored
                    .push(format!("{field} {other:?} for group {group_id}")),
            }
            continue;
        }
        let sandra_removed = !ours.is_empty()
            && g.removed_participants
                .iter()
                .any(|p| p.wa_id.as_deref().is_some_and(|w| phone_digits(w) == ours));
        if sandra_removed {
            close("Sandra was removed", batch);
            continue;
        }
        let joined: Vec<String> = g
            .added_participants
            .iter()
            .filter_map(RawParticipant::display)
            .collect();
        let left: Vec<String> = g
            .removed_participants
            .iter()
            .filter_map(RawParticipant::display)
            .collect();
        if joined.is_empty() && left.is_empty() {
            batch
                .ignored
                .push(format!("{field} {:?} for group {group_id}", g.kind));
            continue;
        }
        let ids: Vec<&str> = g
            .added_participants
            .iter()
            .chain(&g.removed_participants)
            .filter_map(RawParticipant::id)
            .collect();
        let ts = g.timestamp.as_deref().unwrap_or("0");
        batch.messages.push(InboundMessage {
            // Synthetic but stable: a redelivered webhook is deduplicated like a message.
            wamid: format!("group_event:{group_id}:{}:{ts}:{}", g.kind, ids.join(",")),
            phone_number_id: md.phone_number_id.clone(),
            display_phone_number: md.display_phone_number.clone(),
            from: None,
            from_user_id: None,
            group_id: Some(group_id.clone()),
            contact_name: None,
            timestamp: parse_ts(Some(ts)),
            context: None,
            content: Content::Membership { joined, left },
        });
    }
}

fn parse_ts(s: Option<&str>) -> i64 {
    s.and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn normalise_message(
    raw_value: Value,
    metadata: &Metadata,
    contacts: &[Contact],
) -> Result<InboundMessage, String> {
    let raw: RawMessage = serde_json::from_value(raw_value.clone())
        .map_err(|e| format!("message without id: {e}"))?;
    let contact = contacts.iter().find(|c| {
        (c.wa_id.is_some() && c.wa_id == raw.from)
            || (c.user_id.is_some() && c.user_id == raw.from_user_id)
    });
    let contact = contact.or(if contacts.len() == 1 {
        contacts.first()
    } else {
        None
    });
    let content = content_of(&raw.kind, &raw_value);
    let msg = InboundMessage {
        wamid: raw.id,
        phone_number_id: metadata.phone_number_id.clone(),
        display_phone_number: metadata.display_phone_number.clone(),
        from: raw.from,
        from_user_id: raw.from_user_id,
        group_id: raw.group_id,
        contact_name: contact.and_then(|c| c.profile.as_ref()?.name.clone()),
        timestamp: parse_ts(raw.timestamp.as_deref()),
        context: raw.context.map(|c| ContextRef {
            from: c.from,
            id: c.id,
            forwarded: c.forwarded.unwrap_or(false) || c.frequently_forwarded.unwrap_or(false),
        }),
        content,
    };
    if msg.chat_id().is_none() {
        return Err(format!("message {} has no sender", msg.wamid));
    }
    Ok(msg)
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn content_of(kind: &str, msg: &Value) -> Content {
    let body = msg.get(kind).cloned().unwrap_or(Value::Null);
    let unsupported = |detail: Option<String>| Content::Unsupported {
        kind: kind.to_string(),
        detail,
    };
    match kind {
        "text" => match s(&body, "body") {
            Some(b) => Content::Text { body: b },
            None => unsupported(Some("text without body".into())),
        },
        "image" | "audio" | "video" | "document" | "sticker" => {
            let Some(id) = s(&body, "id") else {
                return unsupported(Some("media without id".into()));
            };
            let media_kind = match kind {
                "image" => MediaKind::Image,
                "audio" => MediaKind::Audio,
                "video" => MediaKind::Video,
                "document" => MediaKind::Document,
                _ => MediaKind::Sticker,
            };
            Content::Media(MediaRef {
                kind: media_kind,
                id,
                mime_type: s(&body, "mime_type"),
                sha256: s(&body, "sha256"),
                caption: s(&body, "caption"),
                filename: s(&body, "filename"),
                voice: body.get("voice").and_then(Value::as_bool).unwrap_or(false),
                animated: body
                    .get("animated")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                url: s(&body, "url"),
            })
        }
        "location" => match (
            body.get("latitude").and_then(Value::as_f64),
            body.get("longitude").and_then(Value::as_f64),
        ) {
            (Some(latitude), Some(longitude)) => Content::Location {
                latitude,
                longitude,
                name: s(&body, "name"),
                address: s(&body, "address"),
            },
            _ => unsupported(Some("location without coordinates".into())),
        },
        "contacts" => {
            let cards = msg
                .get("contacts")
                .and_then(Value::as_array)
                .map(|cards| {
                    cards
                        .iter()
                        .map(|c| {
                            let name = c
                                .pointer("/name/formatted_name")
                                .and_then(Value::as_str)
                                .unwrap_or("(no name)");
                            let phones: Vec<&str> = c
                                .get("phones")
                                .and_then(Value::as_array)
                                .map(|p| {
                                    p.iter().filter_map(|p| p.get("phone")?.as_str()).collect()
                                })
                                .unwrap_or_default();
                            if phones.is_empty() {
                                name.to_string()
                            } else {
                                format!("{name} ({})", phones.join(", "))
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            Content::Contacts { cards }
        }
        "interactive" => {
            let itype = s(&body, "type").unwrap_or_default();
            match body.get(&itype) {
                Some(reply) if itype == "button_reply" || itype == "list_reply" => {
                    Content::ChoiceReply {
                        id: s(reply, "id"),
                        title: s(reply, "title").unwrap_or_default(),
                        description: s(reply, "description"),
                    }
                }
                Some(reply) if itype == "nfm_reply" => Content::ChoiceReply {
                    id: s(reply, "name"),
                    title: s(reply, "body").unwrap_or_else(|| "(form submitted)".into()),
                    description: None,
                },
                _ => Content::Unsupported {
                    kind: format!("interactive/{itype}"),
                    detail: None,
                },
            }
        }
        "button" => Content::ChoiceReply {
            id: s(&body, "payload"),
            title: s(&body, "text").unwrap_or_default(),
            description: None,
        },
        "reaction" => Content::Reaction {
            message_id: s(&body, "message_id").unwrap_or_default(),
            emoji: s(&body, "emoji").unwrap_or_default(),
        },
        "unsupported" => Content::Unsupported {
            kind: s(&body, "type").unwrap_or_else(|| "unsupported".into()),
            detail: msg
                .pointer("/errors/0/title")
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        _ => unsupported(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_and_fields_become_unsupported() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
            {"field":"messages","value":{"metadata":{"phone_number_id":"9"},"new_thing":1,
             "messages":[{"from":"1","id":"wamid.x","timestamp":"5","type":"hologram","hologram":{}}]}},
            {"field":"account_update","value":{"x":1}}]}]}"#;
        let b = parse_webhook(body).unwrap();
        assert_eq!(b.messages.len(), 1);
        assert!(
            matches!(&b.messages[0].content, Content::Unsupported { kind, .. } if kind == "hologram")
        );
        assert_eq!(b.ignored, vec!["field \"account_update\"".to_string()]);
    }

    #[test]
    fn other_business_numbers_are_counted_not_parsed() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
            {"field":"messages","value":{"metadata":{"phone_number_id":"ours"},
             "messages":[{"from":"1","id":"wamid.a","timestamp":"5","type":"text","text":{"body":"a"}}]}},
            {"field":"messages","value":{"metadata":{"phone_number_id":"theirs"},
             "messages":[{"from":"2","id":"wamid.b","timestamp":"5","type":"text","text":{"body":"b"}}],
             "statuses":[{"id":"wamid.s","status":"sent","timestamp":"5","recipient_id":"2"}]}},
            {"field":"messages","value":{"messages":[{"from":"3","id":"wamid.c","timestamp":"5","type":"text","text":{"body":"c"}}]}}]}]}"#;
        let b = parse_webhook_for(body, Some("ours")).unwrap();
        let wamids: Vec<&str> = b.messages.iter().map(|m| m.wamid.as_str()).collect();
        assert_eq!(wamids, ["wamid.a"]);
        assert!(b.statuses.is_empty());
        // A change without metadata is not known to be ours either.
        assert_eq!(
            b.other_numbers,
            vec![("theirs".to_string(), 2), (String::new(), 1)]
        );
        let all = parse_webhook(body).unwrap();
        assert_eq!((all.messages.len(), all.statuses.len()), (3, 1));
        assert!(all.other_numbers.is_empty());
    }

    #[test]
    fn statuses_are_typed_and_unknown_ones_kept() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
            {"field":"messages","value":{"metadata":{"phone_number_id":"9"},"statuses":[
             {"id":"wamid.1","status":"sent","timestamp":"5","recipient_id":"2"},
             {"id":"wamid.2","status":"delivered","timestamp":"6"},
             {"id":"wamid.3","status":"read","timestamp":"7"},
             {"id":"wamid.4","status":"deleted","timestamp":"8"}]}}]}]}"#;
        let b = parse_webhook(body).unwrap();
        let got: Vec<&ReportedStatus> = b.statuses.iter().map(|s| &s.status).collect();
        assert_eq!(
            got,
            [
                &ReportedStatus::Known(DeliveryStatus::Sent),
                &ReportedStatus::Known(DeliveryStatus::Delivered),
                &ReportedStatus::Known(DeliveryStatus::Read),
                &ReportedStatus::Unknown("deleted".into()),
            ]
        );
        // Meta's string survives the typing (it keys the status dedup).
        assert_eq!(b.statuses[3].status.as_str(), "deleted");
        assert_eq!(b.statuses[3].status.known(), None);
        assert!(b.ignored.is_empty(), "an unknown status is not an error");
    }

    #[test]
    fn status_errors_are_typed_and_131047_closes_the_window() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
            {"field":"messages","value":{"metadata":{"phone_number_id":"9"},"statuses":[
             {"id":"wamid.1","status":"failed","timestamp":"5","errors":[
              {"code":131047,"title":"Re-engagement message","message":"More than 24 hours"}]},
             {"id":"wamid.2","status":"failed","timestamp":"6","errors":[
              {"code":131026,"title":"Message undeliverable"}]}]}}]}]}"#;
        let b = parse_webhook(body).unwrap();
        assert_eq!(
            b.statuses[0].status,
            ReportedStatus::Known(DeliveryStatus::Failed)
        );
        let e = &b.statuses[0].errors[0];
        assert_eq!(
            (e.code, e.title.as_str()),
            (131047, "Re-engagement message")
        );
        assert!(e.closes_window());
        assert_eq!(e.description(), "More than 24 hours");
        let e = &b.statuses[1].errors[0];
        assert!(!e.closes_window());
        // Without a message, the title is what a human reads.
        assert_eq!(e.description(), "Message undeliverable");
    }

    #[test]
    fn the_shared_131047_fixture_closes_the_window() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/webhooks/status_failed_131047.json"
        ))
        .unwrap();
        let b = parse_webhook(&body).unwrap();
        assert_eq!(
            b.statuses[0].status,
            ReportedStatus::Known(DeliveryStatus::Failed)
        );
        assert!(b.statuses[0].errors.iter().any(StatusError::closes_window));
    }

    fn group_fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../tests/fixtures/webhooks/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    const GROUP: &str = "Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD";

    /// Joins and leaves become membership messages of the group's conversation, with a stable
    /// synthetic id (so a redelivery is a duplicate).
    #[test]
    fn group_participant_changes_become_membership_messages() {
        let b = parse_webhook_for(
            &group_fixture("group_participants_joined.json"),
            Some("106540352242922"),
        )
        .unwrap();
        assert!(b.ignored.is_empty() && b.closed_groups.is_empty(), "{b:?}");
        let m = &b.messages[0];
        assert_eq!(m.group_id.as_deref(), Some(GROUP));
        assert_eq!(
            m.conversation_key().unwrap().as_str(),
            format!("106540352242922/g:{GROUP}")
        );
        assert_eq!(m.timestamp, 1739321100);
        assert_eq!(
            m.content,
            Content::Membership {
                joined: vec!["+16505557777".into()],
                left: vec![]
            }
        );
        let again = parse_webhook(&group_fixture("group_participants_joined.json")).unwrap();
        assert_eq!(again.messages[0].wamid, m.wamid);

        let b = parse_webhook(&group_fixture("group_participant_left.json")).unwrap();
        assert_eq!(
            b.messages[0].content,
            Content::Membership {
                joined: vec![],
                left: vec!["+16505557777".into()]
            }
        );
        assert_ne!(b.messages[0].wamid, m.wamid);
    }

    /// A deleted group, or Sandra's own number removed, closes the group's conversation;
    /// settings and status changes, failures and unknown shapes are accepted and listed.
    #[test]
    fn group_deletion_and_removal_of_sandra_close_the_conversation() {
        for name in ["group_delete.json", "group_business_removed.json"] {
            let b = parse_webhook(&group_fixture(name)).unwrap();
            assert!(b.messages.is_empty(), "{name}");
            assert_eq!(b.closed_groups.len(), 1, "{name}");
            assert_eq!(b.closed_groups[0].group_id, GROUP);
            assert_eq!(
                b.closed_groups[0].key.as_str(),
                format!("106540352242922/g:{GROUP}")
            );
        }
        let b = parse_webhook(&group_fixture("group_settings_update.json")).unwrap();
        assert!(b.messages.is_empty() && b.closed_groups.is_empty());
        assert_eq!(b.ignored.len(), 1);
        assert!(b.ignored[0].contains("group_settings_update") && b.ignored[0].contains(GROUP));

        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
            {"field":"group_lifecycle_update","value":{"metadata":{"phone_number_id":"9"},
             "groups":[{"group_id":"G","type":"group_delete","errors":[{"code":131000}]},
                       {"group_id":"G","type":"group_create","subject":"x"},
                       {"type":"group_delete"}, 5]}},
            {"field":"group_participants_update","value":{"groups":"not a list"}},
            {"field":"group_participants_update","value":{"metadata":{"phone_number_id":"9"},
             "groups":[{"group_id":"G","type":"group_join_request_created"}]}},
            {"field":"group_status_update","value":{}}]}]}"#;
        let b = parse_webhook(body).unwrap();
        assert!(b.messages.is_empty() && b.closed_groups.is_empty(), "{b:?}");
        assert_eq!(b.ignored.len(), 7, "{:#?}", b.ignored);
        // Another business number's group events are only counted.
        let b = parse_webhook_for(&group_fixture("group_delete.json"), Some("other")).unwrap();
        assert!(b.closed_groups.is_empty());
        assert_eq!(b.other_numbers, vec![("106540352242922".to_string(), 1)]);
    }

    #[test]
    fn not_json_is_an_error() {
        assert!(parse_webhook(b"not json").is_err());
        assert!(parse_webhook(b"[1,2]").is_err());
    }

    #[test]
    fn key_prefers_group_then_bsuid_then_phone() {
        let mut m = InboundMessage {
            wamid: "w".into(),
            phone_number_id: "pn".into(),
            display_phone_number: String::new(),
            from: Some("1".into()),
            from_user_id: Some("US.2".into()),
            group_id: Some("G".into()),
            contact_name: None,
            timestamp: 0,
            context: None,
            content: Content::Text { body: "x".into() },
        };
        assert_eq!(m.conversation_key().unwrap().as_str(), "pn/g:G");
        m.group_id = None;
        assert_eq!(m.conversation_key().unwrap().as_str(), "pn/u:US.2");
        m.from_user_id = None;
        assert_eq!(m.conversation_key().unwrap().as_str(), "pn/p:1");
    }
}
