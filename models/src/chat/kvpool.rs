//! The local model's KV caches between turns: one [`SeqCache`] per conversation, least recently
//! used evicted first to stay within a memory budget (`llm.kv_cache_mb`), plus the prefix that
//! conversations share (the system prompt), kept apart and never evicted.
//!
//! A request takes its conversation's cache out of the pool while it runs and puts it back when
//! it is over. What it reuses is the longest common token prefix of its prompt with, in order of
//! preference, its own cache (rewound in place), or any other cached sequence or the shared
//! prefix (whose rows are copied, not recomputed). A cache is worth one token per position:
//! [`QDecoder::kv_bytes_per_token`] (layers × 2 × kv_heads × head_dim × 2 bytes, f16: 28 KiB
//! for Qwen2.5-1.5B), counted by capacity: buffers grow by 256 positions while a request runs,
//! and are trimmed to their length when it puts them back.

use std::collections::HashMap;

use super::qdecoder::{QDecoder, SeqCache};

/// Whose cache: a conversation's (by its opaque key), or the scratch sequence that requests
/// without a conversation (summaries, `chat_with`) share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SeqKey {
    Conversation(String),
    Scratch,
}

struct Entry {
    cache: SeqCache,
    /// Logical clock of the last take or put: the smallest is evicted first.
    used: u64,
}

/// Idle caches by owner, and the shared prefix.
pub(crate) struct KvPool {
    entries: HashMap<SeqKey, Entry>,
    /// The longest prefix two conversations were seen to share (in practice the template's
    /// opening and the system prompt): a new conversation copies it even after every other
    /// cache was evicted.
    shared: Option<SeqCache>,
    budget: usize,
    clock: u64,
}

/// A cache taken for one request.
pub(crate) struct Taken {
    pub cache: SeqCache,
    /// Prompt tokens whose keys and values it already holds.
    pub reused: usize,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl KvPool {
    /// A pool that keeps at most `budget` bytes of caches (idle and in use together).
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            entries: HashMap::new(),
            shared: None,
            budget,
            clock: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Bytes held by idle caches and the shared prefix.
    pub(crate) fn bytes(&self) -> usize {
        self.entries
            .values()
            .map(|e| e.cache.bytes())
            .sum::<usize>()
            + self.shared.as_ref().map_or(0, SeqCache::bytes)
    }

    /// The cache `key`'s request runs on, holding the longest prefix of `prompt` available. At
    /// least the last prompt token is left to feed (its logits start the reply). If copying
    /// rows fails, the request starts from an empty cache.
    pub(crate) fn take(&mut self, key: &SeqKey, prompt: &[u32], model: &QDecoder) -> Taken {
        let limit = prompt.len().saturating_sub(1);
        let own = self.entries.remove(key).map(|e| e.cache);
        let own_len = own
            .as_ref()
            .map_or(0, |c| common_prefix(c.tokens(), prompt).min(limit));
        // The best other sequence to copy from: another conversation, or the shared prefix.
        let mut donor: Option<(Option<&SeqKey>, usize)> = None;
        for (k, e) in &self.entries {
            let n = common_prefix(e.cache.tokens(), prompt).min(limit);
            if n > donor.map_or(0, |d| d.1) {
                donor = Some((Some(k), n));
            }
        }
        let shared_len = self
            .shared
            .as_ref()
            .map_or(0, |s| common_prefix(s.tokens(), prompt).min(limit));
        if shared_len > 0 && shared_len >= donor.map_or(0, |d| d.1) {
            donor = Some((None, shared_len));
        }
        let mut cache = own.unwrap_or_else(|| SeqCache::new(model));
        let mut new_shared = None;
        let reused = match donor {
            Some((from, n)) if n > own_len => {
                let src = match from {
                    Some(k) => &self.entries[k].cache,
                    None => self.shared.as_ref().expect("shared prefix"),
                };
                match cache.copy_prefix(src, n) {
                    Ok(()) => {
                        // Two conversations share these tokens: remember them as the shared
                        // prefix unless it already covers as much.
                        if from.is_some() && n > shared_len {
                            let mut shared = SeqCache::new(model);
                            if shared.copy_prefix(src, n).is_ok() {
                                shared.trim();
                                new_shared = Some(shared);
                            }
                        }
                        n
                    }
                    Err(error) => {
                        tracing::warn!(%error, "copying a cached prefix failed; starting afresh");
                        cache.clear();
                        0
                    }
                }
            }
            _ => {
                cache.truncate(own_len);
                own_len
            }
        };
        let donor_key = donor.and_then(|(k, _)| k.cloned());
        if let Some(shared) = new_shared {
            self.shared = Some(shared);
        }
        if let Some(k) = donor_key {
            let now = self.tick();
            if let Some(e) = self.entries.get_mut(&k) {
                e.used = now;
            }
        }
        Taken { cache, reused }
    }

    /// Puts `key`'s cache back after its request, trimmed to what it holds, then evicts the
    /// least recently used idle caches until the pool and the `in_use` bytes of running
    /// requests fit the budget (the cache just returned goes too if it alone does not fit).
    pub(crate) fn put(&mut self, key: SeqKey, mut cache: SeqCache, in_use: usize) {
        cache.trim();
        let used = self.tick();
        self.entries.insert(key, Entry { cache, used });
        self.evict(in_use);
    }

    /// Evicts least recently used idle caches until everything fits the budget.
    pub(crate) fn evict(&mut self, in_use: usize) {
        while self.bytes() + in_use > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
            tracing::debug!(
                idle = self.entries.len(),
                "KV cache evicted to stay in budget"
            );
        }
    }
}
