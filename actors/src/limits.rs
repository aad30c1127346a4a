//! Fair limits: who may talk to Sandra, how fast one sender may go, and how much one turn takes.
//!
//! Pure logic, shared by every conversation through one `Arc<Limits>` (a sender who writes in
//! several chats, or a group, is still one sender): the conversation asks [`Limits::check`] for
//! each inbound record and acts on the [`Verdict`]. Nothing here sends, stores or logs content.
//!
//! - Allowlist / blocklist of numbers or country prefixes ("+34", "34600111222"): an empty
//!   allowlist admits everyone; the blocklist wins over the allowlist.
//! - Per-sender rate: a GCRA limiter keyed by sender (the `governor` crate), `messages_per_minute`
//!   sustained with bursts of `burst`. The first over-limit message gets one polite notice per
//!   [`NOTICE_EVERY`]; the rest are dropped silently. The limiter's key map is pruned every
//!   [`PRUNE_EVERY`] checks (`retain_recent`), so it holds only senders seen recently: it cannot
//!   grow with every number that ever wrote.
//! - Per-turn caps: characters per message ([`Limits::cap_text`]) and inputs per turn
//!   (`max_batch_inputs`, applied by the conversation, which keeps the rest for the next turn).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// At most one rate-limit notice per sender within this long.
pub const NOTICE_EVERY: Duration = Duration::from_secs(60);

/// The key maps are pruned of idle senders every this many checks.
pub const PRUNE_EVERY: u64 = 1024;

/// What [`Limits`] enforces. The binary's config module reads it from `[limits]` in
/// config.toml, where its defaults are written (once); this type has none.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsPolicy {
    /// Sustained messages per minute per sender; 0 turns the rate limit off.
    pub messages_per_minute: u32,
    /// Messages a sender may send back to back before the sustained rate applies.
    pub burst: u32,
    /// Numbers or country prefixes ("+34", "34600111222") that may talk to Sandra; empty =
    /// everyone.
    pub allow: Vec<String>,
    /// Numbers or country prefixes Sandra ignores (wins over `allow`).
    pub block: Vec<String>,
    /// Longer messages are cut to this many characters (and the model is told).
    pub max_message_chars: usize,
    /// At most this many inputs are answered in one turn; the rest wait for the next.
    pub max_batch_inputs: usize,
}

/// What to do with one inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it as usual.
    Answer,
    /// The sender is blocked or not on the allowlist: no answer, no history.
    Blocked,
    /// Over the sender's rate: no answer, no history; `notify` for the first one in a while.
    RateLimited { notify: bool },
}

/// Digits of a phone number or prefix: "+34 600-111 222" → "34600111222". `None` when the text
/// holds anything but digits and the usual separators, or no digit at all.
pub fn normalise_number(s: &str) -> Option<String> {
    let mut digits = String::new();
    for c in s.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '+' | ' ' | '-' | '(' | ')' | '.' => {}
            _ => return None,
        }
    }
    (!digits.is_empty()).then_some(digits)
}

type Limiter<C> =
    RateLimiter<String, HashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The shared limits state. See the module docs.
pub struct Limits<C: Clock = DefaultClock> {
    policy: LimitsPolicy,
    allow: Vec<String>,
    block: Vec<String>,
    clock: C,
    limiter: Option<Limiter<C>>,
    /// When each over-limit sender was last told (pruned with the limiter).
    noticed: Mutex<HashMap<String, C::Instant>>,
    checks: AtomicU64,
}

impl Limits<DefaultClock> {
    pub fn new(policy: LimitsPolicy) -> Self {
        Self::with_clock(policy, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    /// Limits on a given clock (tests use governor's fake clock). Entries that are not numbers
    /// are ignored here; config validation refuses them before this point.
    pub fn with_clock(policy: LimitsPolicy, clock: C) -> Self {
        let list = |v: &[String]| v.iter().filter_map(|s| normalise_number(s)).collect();
        let limiter = NonZeroU32::new(policy.messages_per_minute).map(|per_min| {
            let burst = NonZeroU32::new(policy.burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::hashmap_with_clock(
                Quota::per_minute(per_min).allow_burst(burst),
                clock.clone(),
            )
        });
        Self {
            allow: list(&policy.allow),
            block: list(&policy.block),
            policy,
            clock,
            limiter,
            noticed: Mutex::new(HashMap::new()),
            checks: AtomicU64::new(0),
        }
    }
}

impl<C: Clock> Limits<C> {
    pub fn policy(&self) -> &LimitsPolicy {
        &self.policy
    }

    /// Whether a sender's number passes the allowlist and blocklist. A sender without a phone
    /// number (user id only) passes only when there is no allowlist.
    pub fn admits(&self, phone: Option<&str>) -> bool {
        // The playground is the operator's own console, never a WhatsApp number to filter.
        if phone.is_some_and(crate::playground::is_local_id) {
            return true;
        }
        let digits = phone.and_then(normalise_number);
        let listed = |list: &[String]| {
            digits
                .as_deref()
                .is_some_and(|d| list.iter().any(|p| d.starts_with(p.as_str())))
        };
        if listed(&self.block) {
            return false;
        }
        self.allow.is_empty() || listed(&self.allow)
    }

    /// Decides one inbound message from `sender` (the rate key: phone or user id) whose phone
    /// number, if known, is `phone`. Counts towards the sender's rate only when admitted.
    pub fn check(&self, sender: &str, phone: Option<&str>) -> Verdict {
        if !self.admits(phone) {
            return Verdict::Blocked;
        }
        let Some(limiter) = &self.limiter else {
            return Verdict::Answer;
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune();
        }
        // The key is owned by the map; an idle sender costs one allocation per message.
        if limiter.check_key(&sender.to_string()).is_ok() {
            return Verdict::Answer;
        }
        let now = self.clock.now();
        let mut noticed = self.noticed.lock().unwrap_or_else(PoisonError::into_inner);
        let notify = noticed
            .get(sender)
            .is_none_or(|at| Duration::from(now.duration_since(*at)) >= NOTICE_EVERY);
        if notify {
            noticed.insert(sender.to_string(), now);
        }
        Verdict::RateLimited { notify }
    }

    /// Forgets senders who are back under their limit and notices older than [`NOTICE_EVERY`].
    pub fn prune(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = self.clock.now();
        self.noticed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, at| Duration::from(now.duration_since(*at)) < NOTICE_EVERY);
    }

    /// Senders the limiter currently remembers (for tests and diagnostics).
    pub fn tracked_senders(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }

    /// Cuts `text` to `max_message_chars` characters, telling the model it was cut.
    pub fn cap_text(&self, text: String) -> String {
        let max = self.policy.max_message_chars;
        match text.char_indices().nth(max) {
            None => text,
            Some((cut, _)) => format!(
                "{}\n[This message was too long: only its first {max} characters are shown.]",
                &text[..cut]
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limits(policy: LimitsPolicy) -> (Limits<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Limits::with_clock(policy, clock.clone()), clock)
    }

    /// Everyone admitted, 20 a minute with bursts of 10, long caps: each test changes what it
    /// is about.
    fn policy() -> LimitsPolicy {
        LimitsPolicy {
            messages_per_minute: 20,
            burst: 10,
            allow: Vec::new(),
            block: Vec::new(),
            max_message_chars: 4000,
            max_batch_inputs: 10,
        }
    }

    fn rate(per_minute: u32, burst: u32) -> LimitsPolicy {
        LimitsPolicy {
            messages_per_minute: per_minute,
            burst,
            ..policy()
        }
    }

    #[test]
    fn numbers_are_normalised_and_junk_refused() {
        assert_eq!(
            normalise_number("+34 600-111 222").as_deref(),
            Some("34600111222")
        );
        assert_eq!(normalise_number("+34").as_deref(), Some("34"));
        assert_eq!(
            normalise_number("(555) 000.1234").as_deref(),
            Some("5550001234")
        );
        assert_eq!(normalise_number("+"), None);
        assert_eq!(normalise_number("34abc"), None);
    }

    #[test]
    fn allowlist_and_blocklist_match_numbers_and_prefixes() {
        let (l, _) = limits(LimitsPolicy {
            allow: vec!["+34".into(), "1 555 000 1111".into()],
            block: vec!["34 600 999".into()],
            ..policy()
        });
        assert!(l.admits(Some("34600111222")));
        assert!(l.admits(Some("15550001111")));
        assert!(!l.admits(Some("15550002222")), "not on the allowlist");
        assert!(!l.admits(Some("34600999000")), "the blocklist wins");
        assert!(!l.admits(None), "no number, and an allowlist exists");
        assert_eq!(
            l.check("34600999000", Some("34600999000")),
            Verdict::Blocked
        );

        let (open, _) = limits(LimitsPolicy {
            block: vec!["+44".into()],
            ..policy()
        });
        assert!(
            open.admits(Some("15550002222")),
            "empty allowlist admits everyone"
        );
        assert!(open.admits(None));
        assert!(!open.admits(Some("447700900123")));
    }

    #[test]
    fn over_the_rate_one_notice_then_silence_then_recovery() {
        let (l, clock) = limits(rate(20, 3));
        let a = "15550001111";
        for _ in 0..3 {
            assert_eq!(l.check(a, Some(a)), Verdict::Answer);
        }
        assert_eq!(l.check(a, Some(a)), Verdict::RateLimited { notify: true });
        assert_eq!(l.check(a, Some(a)), Verdict::RateLimited { notify: false });
        // Another sender has its own budget.
        assert_eq!(l.check("15550002222", None), Verdict::Answer);
        // 20/min sustains one message every 3 s.
        clock.advance(Duration::from_secs(3));
        assert_eq!(l.check(a, Some(a)), Verdict::Answer);
        assert_eq!(l.check(a, Some(a)), Verdict::RateLimited { notify: false });
        // A minute after the notice, the next over-limit message gets a notice again.
        clock.advance(Duration::from_secs(57));
        for _ in 0..3 {
            assert_eq!(l.check(a, Some(a)), Verdict::Answer);
        }
        assert_eq!(l.check(a, Some(a)), Verdict::RateLimited { notify: true });
    }

    #[test]
    fn zero_per_minute_turns_the_rate_limit_off() {
        let (l, _) = limits(rate(0, 1));
        for _ in 0..100 {
            assert_eq!(l.check("1555", Some("1555")), Verdict::Answer);
        }
        assert_eq!(l.tracked_senders(), 0);
    }

    #[test]
    fn idle_senders_are_forgotten() {
        let (l, clock) = limits(rate(60, 2));
        for i in 0..(PRUNE_EVERY - 1) {
            let s = format!("1555{i:06}");
            assert_eq!(l.check(&s, Some(&s)), Verdict::Answer);
        }
        assert_eq!(l.tracked_senders(), (PRUNE_EVERY - 1) as usize);
        clock.advance(Duration::from_secs(120));
        // The next check prunes before counting itself.
        assert_eq!(l.check("15559999999", None), Verdict::Answer);
        assert_eq!(l.tracked_senders(), 1);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary_and_say_so() {
        let (l, _) = limits(LimitsPolicy {
            max_message_chars: 5,
            ..policy()
        });
        assert_eq!(l.cap_text("hello".into()), "hello");
        let cut = l.cap_text("ñññññññ".into());
        assert!(cut.starts_with("ñññññ\n["), "{cut}");
        assert!(cut.contains("first 5 characters"), "{cut}");
    }
}
