//! Accounts and identity linking: pure code, no store, no clock, no randomness of its own.
//!
//! An [`Account`] is keyed by a verified email address and holds a [`Profile`] (the name the
//! user gives, preferences, long-term notes). A channel identity ("whatsapp:<number>", see
//! [`link_key`]) has a [`NumberRecord`]: the email it is linked to, the linking flow in progress,
//! whether linking was offered, its own profile while it is not linked, and the codes it asked
//! for. The model is channel-agnostic: another channel links with another key prefix to the same
//! account, and every identity linked to one email shares its profile.
//!
//! The flow, one state per identity, stored so that it survives a restart:
//! `Idle` → (`/link`) `AwaitingEmail` → (a valid address) `AwaitingCode` → (the 6 digits) linked.
//!
//! Codes: 6 digits drawn by the caller from the OS's CSPRNG ([`draw_code`]), stored only as
//! HMAC-SHA256 under a random per-code salt and compared in constant time (`verify_slice`);
//! they expire after `code_lifetime`, allow `max_attempts` tries, and at most
//! `max_codes_per_hour` are sent per identity and per email address. No answer depends on
//! whether an address already has an account.
//!
//! A turn works on a [`Desk`]: a copy of the identity, the accounts it touches and the counters,
//! changed by [`Desk::command`] and [`Desk::flow_input`], then turned into one
//! [`IdentityChange`] the store writes in the turn's transaction.

use std::collections::BTreeMap;

use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The longest note kept, in characters; longer ones are cut.
pub const MAX_NOTE_CHARS: usize = 300;
/// The most notes an account keeps; the oldest is dropped for a new one.
pub const MAX_NOTES: usize = 50;
/// The longest name kept, in characters.
pub const MAX_NAME_CHARS: usize = 40;
/// The window of the per-hour code limits.
const HOUR_MS: i64 = 3_600_000;

/// The linking rules.
#[derive(Debug, Clone)]
pub struct AccountPolicy {
    pub code_lifetime_ms: i64,
    pub max_attempts: u32,
    pub max_codes_per_hour: usize,
}

impl AccountPolicy {
    /// What the product promises: codes live 10 minutes, 5 tries, 3 codes an hour.
    pub const STANDARD: AccountPolicy = AccountPolicy {
        code_lifetime_ms: 10 * 60 * 1000,
        max_attempts: 5,
        max_codes_per_hour: 3,
    };
}

/// The identity key of a WhatsApp number.
pub fn link_key(number: &str) -> String {
    format!("whatsapp:{number}")
}

/// One long-term note.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub text: String,
    /// Unix seconds.
    pub at: i64,
}

/// What Sandra knows about a person, and what personalises the prompt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub name: Option<String>,
    /// Preferred language (ISO 639-1), when the user gave one.
    #[serde(default)]
    pub language: Option<String>,
    /// Preferred reply length ("short", "long"), when the user gave one.
    #[serde(default)]
    pub reply_length: Option<String>,
    /// The user's IANA time zone (`/timezone Europe/Lisbon`): the prompt's clock uses it
    /// instead of the guess from the number.
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub notes: Vec<Note>,
}

impl Profile {
    pub fn is_empty(&self) -> bool {
        *self == Profile::default()
    }

    /// Adds what `other` has and this lacks: its notes (after these) and its name.
    fn absorb(&mut self, other: Profile) {
        if self.name.is_none() {
            self.name = other.name;
        }
        if self.language.is_none() {
            self.language = other.language;
        }
        if self.reply_length.is_none() {
            self.reply_length = other.reply_length;
        }
        if self.time_zone.is_none() {
            self.time_zone = other.time_zone;
        }
        for n in other.notes {
            if !self.notes.iter().any(|m| m.text == n.text) {
                self.notes.push(n);
            }
        }
        let over = self.notes.len().saturating_sub(MAX_NOTES);
        self.notes.drain(..over);
    }
}

/// An account: a verified email address and its profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub email: String,
    pub profile: Profile,
    /// The identities linked to it ([`link_key`]s).
    pub links: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// The account to store when this turn changed `base` into `ours` and the store now holds
/// `current` (another number of the same account may have committed in between).
///
/// Without a concurrent change, `ours` as is. Otherwise this turn's edit is applied to `current`:
/// the profile fields it changed, the notes and links it added or removed. A turn that erased
/// the account (`/forget` by its last number) keeps it if another number linked meanwhile,
/// without `key`'s link.
pub fn merge_account(
    key: &str,
    base: Option<&Account>,
    ours: Option<&Account>,
    current: Option<&Account>,
) -> Option<Account> {
    if current == base {
        return ours.cloned();
    }
    let Some(current) = current else {
        // Erased meanwhile: this turn's version, if it keeps one.
        return ours.cloned();
    };
    let Some(ours) = ours else {
        let mut kept = current.clone();
        kept.links.retain(|l| l != key);
        return (!kept.links.is_empty()).then_some(kept);
    };
    let empty = Account {
        email: ours.email.clone(),
        profile: Profile::default(),
        links: Vec::new(),
        created_at: ours.created_at,
    };
    let base = base.unwrap_or(&empty);
    let mut merged = current.clone();
    let (b, o, m) = (&base.profile, &ours.profile, &mut merged.profile);
    if o.name != b.name {
        m.name = o.name.clone();
    }
    if o.language != b.language {
        m.language = o.language.clone();
    }
    if o.reply_length != b.reply_length {
        m.reply_length = o.reply_length.clone();
    }
    if o.time_zone != b.time_zone {
        m.time_zone = o.time_zone.clone();
    }
    m.notes.retain(|n| {
        o.notes.iter().any(|x| x.text == n.text) || !b.notes.iter().any(|x| x.text == n.text)
    });
    for n in &o.notes {
        if !b.notes.iter().any(|x| x.text == n.text) && !m.notes.iter().any(|x| x.text == n.text) {
            m.notes.push(n.clone());
        }
    }
    m.notes.sort_by_key(|n| n.at);
    let over = m.notes.len().saturating_sub(MAX_NOTES);
    m.notes.drain(..over);
    merged
        .links
        .retain(|l| ours.links.contains(l) || !base.links.contains(l));
    for l in &ours.links {
        if !base.links.contains(l) && !merged.links.contains(l) {
            merged.links.push(l.clone());
        }
    }
    Some(merged)
}

/// A code as stored: never the digits, only an HMAC of them under a random salt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeHash {
    pub salt: String,
    pub mac: String,
}

impl CodeHash {
    pub fn new(code: &str, salt: [u8; 16]) -> Self {
        Self {
            salt: hex::encode(salt),
            mac: hex::encode(mac_of(&salt, code)),
        }
    }

    /// Constant-time comparison of `code` with the stored one.
    pub fn matches(&self, code: &str) -> bool {
        let (Ok(salt), Ok(mac)) = (hex::decode(&self.salt), hex::decode(&self.mac)) else {
            return false;
        };
        let mut m = HmacSha256::new_from_slice(&salt).expect("HMAC takes any key length");
        m.update(code.as_bytes());
        m.verify_slice(&mac).is_ok()
    }
}

fn mac_of(salt: &[u8], code: &str) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(salt).expect("HMAC takes any key length");
    m.update(code.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// A fresh code and its salt. The digits are a secret until they are mailed.
pub struct NewCode {
    pub code: SecretString,
    pub salt: [u8; 16],
}

/// Draws a 6-digit code and a salt from the operating system's CSPRNG. Rejection sampling keeps
/// every code equally likely (a plain `% 1_000_000` of a `u32` favours the low codes).
pub fn draw_code() -> NewCode {
    use rand::TryRngCore;
    let mut rng = rand::rngs::OsRng;
    let limit = u32::MAX - u32::MAX % 1_000_000;
    let n = loop {
        let n = rng.try_next_u32().expect("the OS random source failed");
        if n < limit {
            break n % 1_000_000;
        }
    };
    let mut salt = [0u8; 16];
    rng.try_fill_bytes(&mut salt)
        .expect("the OS random source failed");
    NewCode {
        code: SecretString::from(format!("{n:06}")),
        salt,
    }
}

/// Where an identity is in linking.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Flow {
    #[default]
    Idle,
    AwaitingEmail,
    AwaitingCode {
        email: String,
        code: CodeHash,
        /// Unix milliseconds.
        expires_at_ms: i64,
        attempts_left: u32,
    },
}

/// Everything stored about one identity (a WhatsApp number).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NumberRecord {
    /// Linking was offered once already: never again.
    #[serde(default)]
    pub offered: bool,
    /// The email of the account this identity is linked to.
    #[serde(default)]
    pub linked: Option<String>,
    #[serde(default)]
    pub flow: Flow,
    /// The profile while not linked (merged into the account on linking).
    #[serde(default)]
    pub profile: Profile,
    /// When codes were sent for this identity (unix ms, the last hour's).
    #[serde(default)]
    pub code_sends_ms: Vec<i64>,
}

/// Validates and normalises an email address: trimmed, the domain lowercased (domains are
/// case-insensitive), the local part kept as written. RFC 5321 lets a server treat
/// `Ana@x.org` and `ana@x.org` as different mailboxes; folding them would let whoever can read
/// one reach the other's account, so they stay apart, at the cost of a second account for a
/// user who types their address differently.
pub fn normalise_email(input: &str) -> Option<String> {
    let t = input.trim().trim_end_matches('.');
    let parsed: email_address::EmailAddress = t.parse().ok()?;
    let (local, domain) = (parsed.local_part(), parsed.domain());
    // The crate accepts bare hosts and address literals; mail to a person needs a dotted domain.
    if !domain.contains('.') || domain.starts_with('[') || local.starts_with('"') {
        return None;
    }
    Some(format!("{local}@{}", domain.to_lowercase()))
}

/// Shows an address with most of the local part hidden (`a***@example.org`), for `/whoami`
/// and code confirmations: enough for the owner to recognise it, little for a shoulder-reader.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// The 6 digits of a code the user typed, spaces and dashes allowed.
pub fn as_code(text: &str) -> Option<String> {
    let digits: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    (digits.len() == 6 && digits.chars().all(|c| c.is_ascii_digit())).then_some(digits)
}

/// An account command, from a slash command or a trigger phrase.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Link,
    Cancel,
    WhoAmI,
    Unlink,
    Forget {
        confirmed: bool,
    },
    Remember(String),
    Notes,
    Name(String),
    /// `/language es` (an ISO 639-1 code), `/language auto` clears it.
    Language(String),
    /// `/length short|long`, `/length auto` clears it.
    Length(String),
    /// `/timezone Europe/Lisbon` (an IANA name), `/timezone auto` clears it.
    TimeZone(String),
}

/// Trigger phrases at the start of a message, lowercase, in the five languages.
/// With the language each is in (ISO 639-1): the answer follows the phrase, which says more
/// than a language guess over a few words ("remember that I'm vegetarian" reads as German).
const REMEMBER_PHRASES: &[(&str, &str)] = &[
    ("remember that ", "en"),
    ("remember: ", "en"),
    ("recuerda que ", "es"),
    ("lembra que ", "pt"),
    ("lembre-se de que ", "pt"),
    ("souviens-toi que ", "fr"),
    ("rappelle-toi que ", "fr"),
    ("merk dir, dass ", "de"),
    ("merk dir dass ", "de"),
    ("merke dir, dass ", "de"),
];
const NAME_PHRASES: &[(&str, &str)] = &[
    ("call me ", "en"),
    ("llámame ", "es"),
    ("me chamo ", "pt"),
    ("chama-me ", "pt"),
    ("appelle-moi ", "fr"),
    ("nenn mich ", "de"),
];

/// The language (ISO 639-1) of the trigger phrase `text` starts with, if any.
pub fn phrase_language(text: &str) -> Option<&'static str> {
    let lower = text.trim().to_lowercase();
    REMEMBER_PHRASES
        .iter()
        .chain(NAME_PHRASES)
        .find(|(p, _)| lower.starts_with(p))
        .map(|(_, l)| *l)
}

/// The account command `text` is, if any. Slash commands are matched by word; trigger phrases
/// only at the start of the message ("remember that I'm vegetarian", "call me Ana").
pub fn parse_command(text: &str) -> Option<Command> {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix('/') {
        let mut words = rest.splitn(2, char::is_whitespace);
        let cmd = words.next().unwrap_or("").to_lowercase();
        let arg = words.next().unwrap_or("").trim().to_string();
        return match cmd.as_str() {
            "link" => Some(Command::Link),
            "cancel" => Some(Command::Cancel),
            "whoami" => Some(Command::WhoAmI),
            "unlink" => Some(Command::Unlink),
            "forget" => Some(Command::Forget {
                confirmed: arg.eq_ignore_ascii_case("yes"),
            }),
            "remember" if !arg.is_empty() => Some(Command::Remember(arg)),
            "notes" => Some(Command::Notes),
            "name" if !arg.is_empty() => Some(Command::Name(arg)),
            "language" => Some(Command::Language(arg.to_lowercase())),
            "length" => Some(Command::Length(arg.to_lowercase())),
            "timezone" | "tz" => Some(Command::TimeZone(arg)),
            _ => None,
        };
    }
    let lower = t.to_lowercase();
    let after = |phrases: &[(&str, &str)]| {
        phrases.iter().find_map(|(p, _)| {
            // Lowercasing can change lengths; cut the original at the phrase's char count.
            lower
                .starts_with(p)
                .then(|| t.chars().skip(p.chars().count()).collect::<String>())
        })
    };
    if let Some(note) = after(REMEMBER_PHRASES).filter(|n| !n.trim().is_empty()) {
        return Some(Command::Remember(note.trim().to_string()));
    }
    if let Some(name) = after(NAME_PHRASES) {
        let name = name.trim().trim_end_matches(['.', '!']).trim();
        if !name.is_empty() && name.split_whitespace().count() <= 3 {
            return Some(Command::Name(name.to_string()));
        }
    }
    None
}

/// What an account step says to the user (worded in `texts`).
#[derive(Debug, Clone, PartialEq)]
pub enum Said {
    AskEmail,
    BadEmail,
    Disabled,
    RateLimited,
    /// Said once the mail is out (or not: see `MailJob`).
    CodeSent,
    WrongCode {
        left: u32,
    },
    CodeExpired,
    Linked {
        email: String,
    },
    Cancelled,
    WhoAmI {
        email: Option<String>,
        name: Option<String>,
    },
    Unlinked,
    NotLinked,
    ForgetConfirm,
    Forgotten,
    Noted {
        note: String,
    },
    Notes(Vec<String>),
    Named {
        name: String,
    },
    /// A preference was set (`None`: cleared).
    Preference {
        value: Option<String>,
    },
    /// `/language` or `/length` with a value it does not take.
    BadPreference,
    PrivateOnly,
}

/// A code to mail, decided by a turn and sent by its task.
#[derive(Debug, Clone)]
pub struct MailJob {
    pub to: String,
    pub code: SecretString,
}

/// What a turn changes, written by the store in the turn's transaction.
#[derive(Debug, Clone, Default)]
pub struct IdentityChange {
    pub key: String,
    /// The identity's new record; `None` erases it (`/forget`).
    pub number: Option<NumberRecord>,
    /// Accounts to write (`None`: erase), only those this turn changed.
    pub accounts: BTreeMap<String, Option<Account>>,
    /// Each written account as this turn read it: the store merges this turn's edit into
    /// whatever another number's turn committed meanwhile ([`merge_account`]).
    pub account_bases: BTreeMap<String, Option<Account>>,
    /// Per-email code counters to write.
    pub email_sends: BTreeMap<String, Vec<i64>>,
}

impl IdentityChange {
    /// The code mail could not be sent: the user never got a code, so it neither waits for one
    /// nor counts against the limits; they can send the address again.
    pub fn mail_failed(&mut self, email: &str) {
        if let Some(n) = self.number.as_mut() {
            n.flow = Flow::AwaitingEmail;
            n.code_sends_ms.pop();
        }
        if let Some(s) = self.email_sends.get_mut(email) {
            s.pop();
        }
    }
}

/// What a desk reads from the store while a turn is planned.
pub trait Lookup {
    fn account(&self, email: &str) -> Option<Account>;
    fn email_sends(&self, email: &str) -> Vec<i64>;
}

/// A turn's working copy of one identity and what it touches.
pub struct Desk<'a> {
    key: String,
    number: NumberRecord,
    accounts: BTreeMap<String, Option<Account>>,
    /// The accounts as read from the store, before this turn's edits.
    read: BTreeMap<String, Option<Account>>,
    email_sends: BTreeMap<String, Vec<i64>>,
    pub mail: Option<MailJob>,
    pub forgotten: bool,
    changed: bool,
    lookup: &'a dyn Lookup,
    policy: &'a AccountPolicy,
    now_ms: i64,
}

impl<'a> Desk<'a> {
    pub fn new(
        key: String,
        number: NumberRecord,
        lookup: &'a dyn Lookup,
        policy: &'a AccountPolicy,
        now_ms: i64,
    ) -> Self {
        Self {
            key,
            number,
            accounts: BTreeMap::new(),
            read: BTreeMap::new(),
            email_sends: BTreeMap::new(),
            mail: None,
            forgotten: false,
            changed: false,
            lookup,
            policy,
            now_ms,
        }
    }

    pub fn number(&self) -> &NumberRecord {
        &self.number
    }

    fn account(&mut self, email: &str) -> Option<Account> {
        if !self.accounts.contains_key(email) {
            let a = self.lookup.account(email);
            self.read.insert(email.to_string(), a.clone());
            self.accounts.insert(email.to_string(), a);
        }
        self.accounts.get(email).cloned().flatten()
    }

    fn put_account(&mut self, a: Option<Account>, email: &str) {
        if !self.read.contains_key(email) {
            let before = self.lookup.account(email);
            self.read.insert(email.to_string(), before);
        }
        self.accounts.insert(email.to_string(), a);
        self.changed = true;
    }

    /// The profile that personalises the prompt: the linked account's, else the identity's own.
    pub fn profile(&mut self) -> Profile {
        match self.number.linked.clone() {
            Some(e) => self.account(&e).map(|a| a.profile).unwrap_or_default(),
            None => self.number.profile.clone(),
        }
    }

    fn edit_profile(&mut self, f: impl FnOnce(&mut Profile)) {
        self.changed = true;
        if let Some(e) = self.number.linked.clone()
            && let Some(mut a) = self.account(&e)
        {
            f(&mut a.profile);
            self.put_account(Some(a), &e);
            return;
        }
        f(&mut self.number.profile);
    }

    /// Whether `text` is what the flow waits for: an address (one word: a sentence is the user
    /// talking about something else, and goes to the brain while the flow keeps waiting) or a
    /// code (6 digits).
    pub fn awaits_input(&self, text: &str) -> bool {
        match &self.number.flow {
            Flow::Idle => false,
            Flow::AwaitingEmail => !text.trim().contains(char::is_whitespace),
            Flow::AwaitingCode { .. } => as_code(text).is_some(),
        }
    }

    /// Offers linking once per identity: true the first time it is asked.
    pub fn offer_once(&mut self) -> bool {
        if self.number.offered || self.number.linked.is_some() {
            return false;
        }
        self.number.offered = true;
        self.changed = true;
        true
    }

    /// Runs an account command. `mail_enabled`: an SMTP server is configured.
    pub fn command(&mut self, cmd: Command, mail_enabled: bool, now_s: i64) -> Said {
        match cmd {
            Command::Link if !mail_enabled => Said::Disabled,
            Command::Link => {
                self.number.flow = Flow::AwaitingEmail;
                // Asking for linking counts as having been offered it.
                self.number.offered = true;
                self.changed = true;
                Said::AskEmail
            }
            Command::Cancel => {
                self.number.flow = Flow::Idle;
                self.changed = true;
                Said::Cancelled
            }
            Command::WhoAmI => Said::WhoAmI {
                email: self.number.linked.as_deref().map(mask_email),
                name: self.profile().name,
            },
            Command::Unlink => match self.number.linked.take() {
                Some(e) => {
                    if let Some(mut a) = self.account(&e) {
                        a.links.retain(|k| *k != self.key);
                        self.put_account(Some(a), &e);
                    }
                    self.changed = true;
                    Said::Unlinked
                }
                None => Said::NotLinked,
            },
            Command::Forget { confirmed: false } => Said::ForgetConfirm,
            Command::Forget { confirmed: true } => {
                // The account goes with its last identity; while another number is linked, its
                // profile is that number's memory too, and stays.
                if let Some(e) = self.number.linked.clone()
                    && let Some(mut a) = self.account(&e)
                {
                    a.links.retain(|k| *k != self.key);
                    let keep = !a.links.is_empty();
                    self.put_account(keep.then_some(a), &e);
                }
                self.number = NumberRecord {
                    // Not offered again after being forgotten: the user knows about linking.
                    offered: true,
                    ..NumberRecord::default()
                };
                self.forgotten = true;
                self.changed = true;
                Said::Forgotten
            }
            Command::Remember(note) => {
                let note: String = note.chars().take(MAX_NOTE_CHARS).collect();
                let text = note.clone();
                self.edit_profile(|p| {
                    p.notes.push(Note { text, at: now_s });
                    let over = p.notes.len().saturating_sub(MAX_NOTES);
                    p.notes.drain(..over);
                });
                Said::Noted { note }
            }
            Command::Notes => {
                Said::Notes(self.profile().notes.into_iter().map(|n| n.text).collect())
            }
            Command::Language(code) => {
                let ok = code.len() == 2 && code.chars().all(|c| c.is_ascii_lowercase());
                self.preference(code, ok, |p, v| p.language = v)
            }
            Command::Length(len) => {
                let ok = matches!(len.as_str(), "short" | "long");
                self.preference(len, ok, |p, v| p.reply_length = v)
            }
            Command::TimeZone(name) => {
                // Stored under the database's own spelling ("europe/lisbon" → "Europe/Lisbon").
                let canonical = crate::clock::zone(&name)
                    .ok()
                    .and_then(|tz| tz.iana_name().map(str::to_string));
                match canonical {
                    Some(tz) => self.preference(tz, true, |p, v| p.time_zone = v),
                    None => self.preference(name.to_lowercase(), false, |p, v| p.time_zone = v),
                }
            }
            Command::Name(name) => {
                let name: String = name.chars().take(MAX_NAME_CHARS).collect();
                let n = name.clone();
                self.edit_profile(|p| p.name = Some(n));
                Said::Named { name }
            }
        }
    }

    /// Sets (`ok`), clears (`auto`) or refuses a preference.
    fn preference(
        &mut self,
        value: String,
        ok: bool,
        set: impl FnOnce(&mut Profile, Option<String>),
    ) -> Said {
        let value = match value.as_str() {
            "auto" => None,
            _ if ok => Some(value),
            _ => return Said::BadPreference,
        };
        let v = value.clone();
        self.edit_profile(|p| set(p, v));
        Said::Preference { value }
    }

    /// Text while the flow waits for an address or a code. `new_code` is called only when a
    /// code is to be sent.
    pub fn flow_input(&mut self, text: &str, new_code: &dyn Fn() -> NewCode) -> Said {
        self.changed = true;
        match self.number.flow.clone() {
            Flow::Idle => Said::Cancelled,
            Flow::AwaitingEmail => {
                let Some(email) = normalise_email(text) else {
                    return Said::BadEmail;
                };
                let since = self.now_ms - HOUR_MS;
                self.number.code_sends_ms.retain(|t| *t > since);
                let mut by_email = self.lookup.email_sends(&email);
                by_email.retain(|t| *t > since);
                let max = self.policy.max_codes_per_hour;
                if self.number.code_sends_ms.len() >= max || by_email.len() >= max {
                    self.number.flow = Flow::Idle;
                    return Said::RateLimited;
                }
                let fresh = new_code();
                self.number.code_sends_ms.push(self.now_ms);
                by_email.push(self.now_ms);
                self.email_sends.insert(email.clone(), by_email);
                self.number.flow = Flow::AwaitingCode {
                    email: email.clone(),
                    code: CodeHash::new(fresh.code.expose_secret(), fresh.salt),
                    expires_at_ms: self.now_ms + self.policy.code_lifetime_ms,
                    attempts_left: self.policy.max_attempts,
                };
                self.mail = Some(MailJob {
                    to: email,
                    code: fresh.code,
                });
                Said::CodeSent
            }
            Flow::AwaitingCode {
                email,
                code,
                expires_at_ms,
                attempts_left,
            } => {
                let typed = as_code(text).unwrap_or_default();
                if self.now_ms >= expires_at_ms || attempts_left == 0 {
                    self.number.flow = Flow::Idle;
                    return Said::CodeExpired;
                }
                if !code.matches(&typed) {
                    let left = attempts_left - 1;
                    self.number.flow = if left == 0 {
                        Flow::Idle
                    } else {
                        Flow::AwaitingCode {
                            email,
                            code,
                            expires_at_ms,
                            attempts_left: left,
                        }
                    };
                    return Said::WrongCode { left };
                }
                self.link(&email);
                Said::Linked {
                    email: mask_email(&email),
                }
            }
        }
    }

    /// Links this identity to `email`'s account (created if new), leaving any previous one.
    fn link(&mut self, email: &str) {
        if let Some(old) = self.number.linked.take()
            && old != email
            && let Some(mut a) = self.account(&old)
        {
            a.links.retain(|k| *k != self.key);
            self.put_account(Some(a), &old);
        }
        let mut account = self.account(email).unwrap_or_else(|| Account {
            email: email.to_string(),
            profile: Profile::default(),
            links: Vec::new(),
            created_at: self.now_ms / 1000,
        });
        if !account.links.contains(&self.key) {
            account.links.push(self.key.clone());
        }
        // What the number learnt before linking joins the account.
        account
            .profile
            .absorb(std::mem::take(&mut self.number.profile));
        self.put_account(Some(account), email);
        self.number.linked = Some(email.to_string());
        self.number.flow = Flow::Idle;
    }

    /// The writes this turn makes, if it changed anything.
    pub fn into_change(self) -> Option<IdentityChange> {
        let read = self.read;
        // Only what this turn changed is written: an account it merely read is left to
        // whoever else may be writing it.
        let accounts: BTreeMap<_, _> = self
            .accounts
            .into_iter()
            .filter(|(email, a)| read.get(email) != Some(a))
            .collect();
        let account_bases = accounts
            .keys()
            .map(|e| (e.clone(), read.get(e).cloned().flatten()))
            .collect();
        self.changed.then(|| IdentityChange {
            number: (!self.forgotten || self.number != NumberRecord::default())
                .then_some(self.number),
            key: self.key,
            accounts,
            account_bases,
            email_sends: self.email_sends,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Db {
        accounts: RefCell<BTreeMap<String, Account>>,
        sends: RefCell<BTreeMap<String, Vec<i64>>>,
        numbers: RefCell<BTreeMap<String, NumberRecord>>,
    }

    impl Lookup for Db {
        fn account(&self, email: &str) -> Option<Account> {
            self.accounts.borrow().get(email).cloned()
        }
        fn email_sends(&self, email: &str) -> Vec<i64> {
            self.sends.borrow().get(email).cloned().unwrap_or_default()
        }
    }

    impl Db {
        fn apply(&self, c: IdentityChange) {
            match c.number {
                Some(n) => self.numbers.borrow_mut().insert(c.key.clone(), n),
                None => self.numbers.borrow_mut().remove(&c.key),
            };
            for (e, a) in c.accounts {
                match a {
                    Some(a) => self.accounts.borrow_mut().insert(e, a),
                    None => self.accounts.borrow_mut().remove(&e),
                };
            }
            self.sends.borrow_mut().extend(c.email_sends);
        }

        /// One message from `number` at `now_ms`: a command or flow input, committed.
        fn say(&self, number: &str, text: &str, now_ms: i64) -> (Said, Option<MailJob>) {
            let key = link_key(number);
            let rec = self.numbers.borrow().get(&key).cloned().unwrap_or_default();
            let mut desk = Desk::new(key, rec, self, &POLICY, now_ms);
            let said = match parse_command(text) {
                Some(c) => desk.command(c, true, now_ms / 1000),
                None if desk.awaits_input(text) => desk.flow_input(text, &|| NewCode {
                    code: SecretString::from("123456"),
                    salt: [7; 16],
                }),
                None => panic!("not an account message: {text}"),
            };
            let mail = desk.mail.take();
            if let Some(c) = desk.into_change() {
                self.apply(c);
            }
            (said, mail)
        }
    }

    const POLICY: AccountPolicy = AccountPolicy {
        code_lifetime_ms: 600_000,
        max_attempts: 5,
        max_codes_per_hour: 3,
    };

    fn link(db: &Db, number: &str, email: &str, now: i64) -> Said {
        assert_eq!(db.say(number, "/link", now).0, Said::AskEmail);
        let (said, mail) = db.say(number, email, now);
        assert_eq!(said, Said::CodeSent);
        assert_eq!(mail.unwrap().code.expose_secret(), "123456");
        db.say(number, "123 456", now + 1000).0
    }

    #[test]
    fn emails_are_validated_and_the_domain_lowercased() {
        assert_eq!(
            normalise_email("  Ana.Silva@Example.ORG "),
            Some("Ana.Silva@example.org".into())
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@x.org",
            "ana@localhost",
            "a b@x.org",
            "ana@@x.org",
        ] {
            assert_eq!(normalise_email(bad), None, "{bad}");
        }
        assert_eq!(mask_email("ana@example.org"), "a***@example.org");
    }

    #[test]
    fn codes_are_six_uniform_digits_stored_only_as_a_salted_mac() {
        let c = draw_code();
        let code = c.code.expose_secret().to_string();
        assert!(code.len() == 6 && code.chars().all(|d| d.is_ascii_digit()));
        let h = CodeHash::new(&code, c.salt);
        assert!(!h.mac.contains(&code) && !h.salt.contains(&code));
        assert!(h.matches(&code));
        assert!(!h.matches("000000") || code == "000000");
        // Two draws differ in salt, so equal codes hash apart.
        assert_ne!(
            CodeHash::new("111111", draw_code().salt),
            CodeHash::new("111111", draw_code().salt)
        );
        assert_eq!(as_code(" 123-456 "), Some("123456".into()));
        assert_eq!(as_code("12345"), None);
        assert_eq!(as_code("abcdef"), None);
    }

    #[test]
    fn commands_and_trigger_phrases_are_recognised() {
        assert_eq!(parse_command(" /LINK "), Some(Command::Link));
        assert_eq!(
            parse_command("/forget"),
            Some(Command::Forget { confirmed: false })
        );
        assert_eq!(
            parse_command("/forget yes"),
            Some(Command::Forget { confirmed: true })
        );
        assert_eq!(
            parse_command("Remember that I'm vegetarian"),
            Some(Command::Remember("I'm vegetarian".into()))
        );
        assert_eq!(
            parse_command("/remember my flat is 3B"),
            Some(Command::Remember("my flat is 3B".into()))
        );
        assert_eq!(
            parse_command("Recuerda que soy vegetariana"),
            Some(Command::Remember("soy vegetariana".into()))
        );
        assert_eq!(
            parse_command("call me Ana."),
            Some(Command::Name("Ana".into()))
        );
        assert_eq!(
            parse_command("/name Ana María"),
            Some(Command::Name("Ana María".into()))
        );
        assert_eq!(
            parse_command("call me when you can, I have a question"),
            None
        );
        assert_eq!(parse_command("I remember that day"), None);
        assert_eq!(parse_command("/reset"), None);
        assert_eq!(parse_command("/remember"), None);
        assert_eq!(
            parse_command("/language PT"),
            Some(Command::Language("pt".into()))
        );
        assert_eq!(
            parse_command("/length short"),
            Some(Command::Length("short".into()))
        );
    }

    #[test]
    fn the_whole_flow_links_the_number_and_keeps_what_it_learnt() {
        let db = Db::default();
        assert_eq!(
            db.say("111", "call me Ana", 0).0,
            Said::Named { name: "Ana".into() }
        );
        db.say("111", "remember that I'm vegetarian", 0);
        assert_eq!(
            link(&db, "111", "ana@example.org", 10_000),
            Said::Linked {
                email: "a***@example.org".into()
            }
        );
        let a = db.accounts.borrow()["ana@example.org"].clone();
        assert_eq!(a.links, vec!["whatsapp:111"]);
        assert_eq!(a.profile.name.as_deref(), Some("Ana"));
        assert_eq!(a.profile.notes[0].text, "I'm vegetarian");
        let n = db.numbers.borrow()["whatsapp:111"].clone();
        assert_eq!(n.flow, Flow::Idle);
        assert!(
            n.profile.is_empty(),
            "the number's own profile moved to the account"
        );
        // Nothing stored holds the digits.
        let stored = serde_json::to_string(&*db.numbers.borrow()).unwrap();
        assert!(!stored.contains("123456"));
    }

    #[test]
    fn two_numbers_on_one_account_share_notes_and_forget_keeps_the_other() {
        let db = Db::default();
        link(&db, "111", "ana@example.org", 0);
        link(&db, "222", "ana@example.org", 0);
        db.say("111", "/remember I'm vegetarian", 5_000);
        assert_eq!(
            db.say("222", "/notes", 6_000).0,
            Said::Notes(vec!["I'm vegetarian".into()])
        );
        assert_eq!(db.say("222", "/forget", 7_000).0, Said::ForgetConfirm);
        assert!(
            db.numbers.borrow().contains_key("whatsapp:222"),
            "not without confirmation"
        );
        assert_eq!(db.say("222", "/forget yes", 7_000).0, Said::Forgotten);
        let a = db.accounts.borrow()["ana@example.org"].clone();
        assert_eq!(
            a.links,
            vec!["whatsapp:111"],
            "the other number keeps the account"
        );
        assert_eq!(db.say("111", "/forget yes", 8_000).0, Said::Forgotten);
        assert!(
            db.accounts.borrow().is_empty(),
            "the last number takes the account with it"
        );
        assert_eq!(
            db.say("111", "/whoami", 9_000).0,
            Said::WhoAmI {
                email: None,
                name: None
            }
        );
    }

    #[test]
    fn preferences_are_checked_set_and_cleared() {
        let db = Db::default();
        let set = |v: &str| Said::Preference {
            value: Some(v.into()),
        };
        assert_eq!(db.say("1", "/language pt", 0).0, set("pt"));
        assert_eq!(db.say("1", "/length short", 0).0, set("short"));
        assert_eq!(db.say("1", "/length 3 words", 0).0, Said::BadPreference);
        assert_eq!(
            db.say("1", "/language portuguese", 0).0,
            Said::BadPreference
        );
        let p = db.numbers.borrow()["whatsapp:1"].profile.clone();
        assert_eq!(
            (p.language.as_deref(), p.reply_length.as_deref()),
            (Some("pt"), Some("short"))
        );
        assert_eq!(
            db.say("1", "/language auto", 0).0,
            Said::Preference { value: None }
        );
        assert_eq!(db.numbers.borrow()["whatsapp:1"].profile.language, None);
        assert_eq!(
            db.say("1", "/timezone europe/lisbon", 0).0,
            set("Europe/Lisbon")
        );
        assert_eq!(
            db.numbers.borrow()["whatsapp:1"]
                .profile
                .time_zone
                .as_deref(),
            Some("Europe/Lisbon")
        );
        assert_eq!(
            db.say("1", "/timezone Mars/Olympus", 0).0,
            Said::BadPreference
        );
        assert_eq!(
            db.say("1", "/tz auto", 0).0,
            Said::Preference { value: None }
        );
        assert_eq!(db.numbers.borrow()["whatsapp:1"].profile.time_zone, None);
    }

    #[test]
    fn relinking_moves_the_number_and_unlink_removes_it() {
        let db = Db::default();
        link(&db, "111", "ana@example.org", 0);
        link(&db, "111", "ana@work.example", 0);
        assert!(db.accounts.borrow()["ana@example.org"].links.is_empty());
        assert_eq!(
            db.accounts.borrow()["ana@work.example"].links,
            vec!["whatsapp:111"]
        );
        assert_eq!(
            db.say("111", "/whoami", 0).0,
            Said::WhoAmI {
                email: Some("a***@work.example".into()),
                name: None
            }
        );
        assert_eq!(db.say("111", "/unlink", 0).0, Said::Unlinked);
        assert_eq!(db.say("111", "/unlink", 0).0, Said::NotLinked);
        assert!(db.accounts.borrow()["ana@work.example"].links.is_empty());
    }

    #[test]
    fn wrong_codes_cost_attempts_and_expired_codes_fail() {
        let db = Db::default();
        db.say("111", "/link", 0);
        db.say("111", "ana@example.org", 0);
        for left in (1..5).rev() {
            assert_eq!(db.say("111", "654321", 1).0, Said::WrongCode { left });
        }
        assert_eq!(db.say("111", "654321", 1).0, Said::WrongCode { left: 0 });
        assert_eq!(db.numbers.borrow()["whatsapp:111"].flow, Flow::Idle);
        // After the last attempt, even the right code is no longer taken as one.
        let rec = db.numbers.borrow()["whatsapp:111"].clone();
        assert!(!Desk::new(link_key("111"), rec, &db, &POLICY, 2).awaits_input("123456"));

        db.say("111", "/link", 0);
        db.say("111", "ana@example.org", 0);
        assert_eq!(db.say("111", "123456", 600_000).0, Said::CodeExpired);
        assert!(db.numbers.borrow()["whatsapp:111"].linked.is_none());
    }

    #[test]
    fn codes_are_limited_per_number_and_per_email_per_hour() {
        let db = Db::default();
        for i in 0..3 {
            db.say("111", "/link", i);
            assert_eq!(db.say("111", "ana@example.org", i).0, Said::CodeSent);
        }
        db.say("111", "/link", 10);
        assert_eq!(db.say("111", "bob@example.org", 10).0, Said::RateLimited);
        // Another number asking for the same address is limited too, and is told nothing more.
        db.say("222", "/link", 10);
        assert_eq!(db.say("222", "ana@example.org", 10).0, Said::RateLimited);
        db.say("222", "/link", 10);
        assert_eq!(db.say("222", "bob@example.org", 10).0, Said::CodeSent);
        // An hour later the first number may ask again.
        db.say("111", "/link", HOUR_MS + 10);
        assert_eq!(
            db.say("111", "ana@example.org", HOUR_MS + 10).0,
            Said::CodeSent
        );
    }

    #[test]
    fn a_failed_mail_costs_nothing() {
        let db = Db::default();
        let key = link_key("111");
        let mut desk = Desk::new(key, NumberRecord::default(), &db, &POLICY, 0);
        desk.command(Command::Link, true, 0);
        let fresh = || NewCode {
            code: SecretString::from("123456"),
            salt: [1; 16],
        };
        assert_eq!(desk.flow_input("ana@example.org", &fresh), Said::CodeSent);
        let mut c = desk.into_change().unwrap();
        c.mail_failed("ana@example.org");
        assert_eq!(c.number.as_ref().unwrap().flow, Flow::AwaitingEmail);
        assert!(c.number.as_ref().unwrap().code_sends_ms.is_empty());
        assert!(c.email_sends["ana@example.org"].is_empty());
    }

    #[test]
    fn only_one_word_is_taken_for_an_address_while_one_is_awaited() {
        let db = Db::default();
        let rec = NumberRecord {
            flow: Flow::AwaitingEmail,
            ..Default::default()
        };
        let desk = Desk::new(link_key("1"), rec, &db, &POLICY, 0);
        assert!(desk.awaits_input(" ana@example "));
        assert!(!desk.awaits_input("what is the weather in Lisbon?"));
    }

    #[test]
    fn linking_is_offered_once_and_not_when_disabled() {
        let db = Db::default();
        let mut desk = Desk::new(link_key("1"), NumberRecord::default(), &db, &POLICY, 0);
        assert!(desk.offer_once());
        assert!(!desk.offer_once());
        assert_eq!(desk.command(Command::Link, false, 0), Said::Disabled);
    }
}
