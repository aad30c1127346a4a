//! The local chat model's thread: a fair queue of requests and one continuous-batching loop.
//!
//! An idle thread woken by a request waits a few milliseconds for the ones that follow it
//! closely ([`LocalOptions::gather`](super::LocalOptions::gather)), so that people writing at
//! the same moment share one prompt pass.
//!
//! Requests wait in a queue that serves conversations round-robin (FIFO within one
//! conversation), so one chatty conversation cannot starve the others, and nothing is refused
//! because others wait: the queue holds at most one entry per pending turn, and the actor layer
//! bounds the conversations. Up to `parallel` requests are active at once, at most one per
//! conversation (its next turn reuses the cache the previous one leaves). Each iteration of the
//! loop (1) admits requests from the queue, (2) feeds at most [`PREFILL_CHUNK`] prompt tokens
//! ([`PREFILL_CHUNK_IDLE`] while nothing decodes) of the requests still reading their prompts,
//! all in one product ([`QDecoder::forward_many`]), so a long prompt delays the others by one
//! chunk at a time,
//! (3) samples the next token of every request that has fresh logits, with its own sampler,
//! and answers those that reached an end token or their limit, and (4) feeds every new token
//! in one batched step ([`QDecoder::forward_batch`]), which reads the weights once for all of
//! them.
//!
//! Caches come from and return to a [`KvPool`]. A caller that stops waiting (its future
//! dropped) is skipped while queued and dropped between steps while active (its cache, still
//! consistent, is kept). A panic or error inside the model fails the requests it touched, never
//! the thread.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use candle_transformers::generation::LogitsProcessor;
use tokio::sync::{mpsc, oneshot};

use super::kvpool::{KvPool, SeqKey};
use super::local::LocalModel;
use super::qdecoder::SeqCache;
use super::{ChatError, ChatMessage, ChatReply, SamplingParams, encode_chat, template};

/// Prompt tokens fed per step, over all the prompts being read: small enough that decoding
/// requests wait one chunk (about a second for a 1.5B model on 2 cores), large enough for the
/// prompt kernels to run at speed. Decode steps give a sequence exactly its own numbers
/// whatever runs beside it; prompt reading may differ in the last bits with the company (candle
/// picks its prompt kernels by row count), which greedy replies almost never show.
pub(crate) const PREFILL_CHUNK: usize = 256;

/// Prompt tokens per pass while no request is decoding (nobody waits on the pass but the
/// prompts in it): fewer passes, and each pays the prompt kernels' fixed cost once (eight
/// simultaneous questions, ~450 new tokens, are read in one pass instead of two).
pub(crate) const PREFILL_CHUNK_IDLE: usize = 2 * PREFILL_CHUNK;

/// A request's place in the fair queue: its conversation, or itself alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum QueueKey {
    Conversation(String),
    Alone(u64),
}

/// Round-robin over keys, FIFO within a key. Holds only what was pushed: no capacity.
pub(crate) struct FairQueue<K, T> {
    items: HashMap<K, VecDeque<T>>,
    /// Keys with items, in serving order.
    ring: VecDeque<K>,
}

impl<K: Clone + Eq + Hash, T> FairQueue<K, T> {
    pub(crate) fn new() -> Self {
        Self {
            items: HashMap::new(),
            ring: VecDeque::new(),
        }
    }

    pub(crate) fn push(&mut self, key: K, item: T) {
        let q = self.items.entry(key.clone()).or_default();
        if q.is_empty() {
            self.ring.push_back(key);
        }
        q.push_back(item);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.values().map(VecDeque::len).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The oldest item of the next key in turn that `busy` does not hold back; that key then
    /// goes to the back of the ring.
    pub(crate) fn pop(&mut self, busy: impl Fn(&K) -> bool) -> Option<(K, T)> {
        for _ in 0..self.ring.len() {
            let key = self.ring.pop_front()?;
            if busy(&key) {
                self.ring.push_back(key);
                continue;
            }
            let q = self.items.get_mut(&key).expect("ring keys have items");
            let item = q.pop_front().expect("ring keys have items");
            if q.is_empty() {
                self.items.remove(&key);
            } else {
                self.ring.push_back(key.clone());
            }
            return Some((key, item));
        }
        None
    }

    /// Removes every item `drop_it` picks (callers that have gone), returning them.
    pub(crate) fn remove_where(&mut self, drop_it: impl Fn(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        for q in self.items.values_mut() {
            let mut kept = VecDeque::with_capacity(q.len());
            for item in q.drain(..) {
                if drop_it(&item) {
                    removed.push(item);
                } else {
                    kept.push_back(item);
                }
            }
            *q = kept;
        }
        self.items.retain(|_, q| !q.is_empty());
        let items = &self.items;
        self.ring.retain(|k| items.contains_key(k));
        removed
    }
}

/// One reply wanted.
pub(crate) struct Request {
    pub conversation: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub params: SamplingParams,
    /// Prompt + reply tokens allowed (the engine's context window, maybe capped).
    pub window: usize,
    pub reply: oneshot::Sender<Result<ChatReply, ChatError>>,
    /// Raised when the caller stops waiting.
    pub gone: Arc<AtomicBool>,
    pub queued: Instant,
    pub span: tracing::Span,
}

impl Request {
    fn abandoned(&self) -> bool {
        self.gone.load(Ordering::Relaxed) || self.reply.is_closed()
    }
}

/// How the loop runs (from `[llm]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchedulerOptions {
    pub parallel: usize,
    pub kv_cache_bytes: usize,
    /// See [`LocalOptions::gather`](super::LocalOptions::gather).
    pub gather: Duration,
}

/// Shared between the handle and the thread.
#[derive(Default)]
pub(crate) struct Shared {
    /// Requests sent and not yet answered or dropped (queued and active).
    pub pending: AtomicUsize,
    pub queue_wait: OnceLock<metrics::Histogram>,
    /// The most requests fed in one decode step so far.
    pub largest_batch: AtomicUsize,
    /// The most requests whose prompts were read in one pass so far.
    pub largest_prompt_pass: AtomicUsize,
}

/// A request being answered.
struct Active {
    key: SeqKey,
    conversation: Option<String>,
    request: Request,
    prompt: Vec<u32>,
    cache: SeqCache,
    reused: usize,
    sampler: LogitsProcessor,
    max_new: usize,
    out: Vec<u32>,
    /// The last position's logits, waiting to be sampled.
    logits: Option<Tensor>,
    /// A sampled token not yet fed.
    next: Option<u32>,
    admitted: Instant,
    prefilled: Option<Instant>,
}

impl Active {
    fn prefilling(&self) -> bool {
        self.logits.is_none()
            && self.next.is_none()
            && self.cache.tokens().len() < self.prompt.len()
    }
}

/// The model thread's state.
pub(crate) struct Scheduler {
    model: LocalModel,
    tokenizer: Arc<tokenizers::Tokenizer>,
    template: super::PromptFormat,
    opts: SchedulerOptions,
    pool: KvPool,
    queue: FairQueue<QueueKey, Request>,
    active: Vec<Active>,
    shared: Arc<Shared>,
    alone: u64,
}

/// How long an idle model thread, woken by a request, waits for more before it starts, by
/// default: until this passes without one, at most [`GATHER_LONGEST`] times it. People
/// writing at the same moment reach the thread within a few milliseconds of each other (eight
/// simultaneous webhooks: all within 3.1 ms in `benches/concurrency.rs`), and without the wait
/// the first one's prompt started alone: the other seven waited a whole prompt pass (~0.5 s)
/// and then paid the pass's fixed cost (unpacking every weight row) again.
pub(crate) const GATHER_QUIET: Duration = Duration::from_millis(3);
const GATHER_LONGEST: u32 = 5;

/// Takes the requests that follow the first one closely (see [`GATHER_QUIET`]). Runs on the
/// model's own thread, never on a runtime worker, so it may sleep; the channel has no
/// blocking receive with a timeout, hence the short polls.
#[allow(clippy::disallowed_methods)]
fn gather(
    rx: &mut mpsc::UnboundedReceiver<Request>,
    quiet: Duration,
    mut take: impl FnMut(Request),
) {
    let start = Instant::now();
    let mut last = start;
    let poll = quiet.min(Duration::from_micros(500));
    while last.elapsed() < quiet && start.elapsed() < quiet.saturating_mul(GATHER_LONGEST) {
        std::thread::sleep(poll);
        while let Ok(r) = rx.try_recv() {
            take(r);
            last = Instant::now();
        }
    }
}

fn caught<T>(f: impl FnOnce() -> Result<T, ChatError>) -> Result<T, ChatError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = crate::worker::panic_message(&p);
        tracing::error!(panic = %msg, "chat model panicked");
        Err(ChatError::Inference(format!("panicked: {msg}")))
    })
}

fn inf(e: candle_core::Error) -> ChatError {
    ChatError::Inference(e.to_string())
}

impl Scheduler {
    pub(crate) fn new(
        model: LocalModel,
        tokenizer: Arc<tokenizers::Tokenizer>,
        template: super::PromptFormat,
        opts: SchedulerOptions,
        shared: Arc<Shared>,
    ) -> Self {
        let per_token = model.weights.kv_bytes_per_token();
        tracing::info!(
            parallel = opts.parallel,
            kv_cache_mb = opts.kv_cache_bytes >> 20,
            kv_bytes_per_token = per_token,
            cached_tokens = opts.kv_cache_bytes / per_token.max(1),
            "chat model serving"
        );
        Self {
            model,
            tokenizer,
            template,
            pool: KvPool::new(opts.kv_cache_bytes),
            opts: SchedulerOptions {
                parallel: opts.parallel.max(1),
                ..opts
            },
            queue: FairQueue::new(),
            active: Vec::new(),
            shared,
            alone: 0,
        }
    }

    fn enqueue(&mut self, r: Request) {
        let key = match &r.conversation {
            Some(c) => QueueKey::Conversation(c.clone()),
            None => {
                self.alone += 1;
                QueueKey::Alone(self.alone)
            }
        };
        self.queue.push(key, r);
    }

    /// Serves requests until every sender is gone.
    pub(crate) fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        loop {
            if self.active.is_empty() && self.queue.is_empty() {
                match rx.blocking_recv() {
                    Some(r) => self.enqueue(r),
                    None => break,
                }
                let quiet = self.opts.gather;
                gather(&mut rx, quiet, |r| self.enqueue(r));
            }
            while let Ok(r) = rx.try_recv() {
                self.enqueue(r);
            }
            self.step();
        }
        tracing::debug!("chat model thread exits");
    }

    /// One iteration: drop the abandoned, admit, one prefill pass, sample, one decode step.
    pub(crate) fn step(&mut self) {
        self.drop_abandoned();
        self.admit();
        self.prefill_waiting();
        self.sample_all();
        self.decode_all();
    }

    fn in_use(&self) -> usize {
        self.active.iter().map(|a| a.cache.bytes()).sum()
    }

    fn done(&self) {
        self.shared.pending.fetch_sub(1, Ordering::Relaxed);
    }

    fn drop_abandoned(&mut self) {
        for r in self.queue.remove_where(Request::abandoned) {
            let _e = r.span.enter();
            crate::worker::count_skipped();
            tracing::debug!("chat request skipped: its caller has gone");
            self.done();
        }
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].request.abandoned() {
                let a = self.active.swap_remove(i);
                let _e = a.request.span.enter();
                tracing::debug!(
                    completion_tokens = a.out.len(),
                    "chat request stopped: its caller has gone"
                );
                self.release(a.key, a.cache);
                self.done();
            } else {
                i += 1;
            }
        }
    }

    fn release(&mut self, key: SeqKey, cache: SeqCache) {
        let in_use = self.in_use();
        self.pool.put(key, cache, in_use);
    }

    fn admit(&mut self) {
        while self.active.len() < self.opts.parallel {
            let active = &self.active;
            let Some((_, r)) = self.queue.pop(|k| match k {
                QueueKey::Conversation(c) => active
                    .iter()
                    .any(|a| a.conversation.as_deref() == Some(c.as_str())),
                QueueKey::Alone(_) => false,
            }) else {
                return;
            };
            if r.abandoned() {
                crate::worker::count_skipped();
                self.done();
                continue;
            }
            if let Some(h) = self.shared.queue_wait.get() {
                h.record(r.queued.elapsed().as_secs_f64());
            }
            match self.start(r) {
                Ok(a) => self.active.push(a),
                Err((r, e)) => {
                    // Counted out before the caller hears, so `pending` never lags a reply.
                    self.done();
                    let _ = r.reply.send(Err(e));
                }
            }
        }
    }

    /// Tokenizes the request's prompt and takes its cache.
    #[allow(clippy::result_large_err)]
    fn start(&mut self, r: Request) -> Result<Active, (Request, ChatError)> {
        let prompt = match caught(|| encode_chat(&self.tokenizer, &self.template, &r.messages)) {
            Ok(p) => p,
            Err(e) => return Err((r, e)),
        };
        let window = r.window.min(self.model.context_length);
        if prompt.is_empty() {
            return Err((r, ChatError::Inference("empty prompt".into())));
        }
        if prompt.len() >= window {
            let e = ChatError::ContextOverflow {
                prompt_tokens: prompt.len(),
                context_window: window,
            };
            return Err((r, e));
        }
        let max_new = r.params.max_new_tokens.min(window - prompt.len());
        let key = match &r.conversation {
            Some(c) => SeqKey::Conversation(c.clone()),
            None => SeqKey::Scratch,
        };
        let taken = self.pool.take(&key, &prompt, &self.model.weights);
        let sampler = LogitsProcessor::from_sampling(
            r.params.seed_or_random(),
            super::local::sampling(&r.params),
        );
        // Caches of running requests count against the budget too.
        self.pool.evict(self.in_use() + taken.cache.bytes());
        Ok(Active {
            key,
            conversation: r.conversation.clone(),
            request: r,
            prompt,
            cache: taken.cache,
            reused: taken.reused,
            sampler,
            max_new,
            out: Vec::new(),
            logits: None,
            next: None,
            admitted: Instant::now(),
            prefilled: None,
        })
    }

    /// Feeds the prompts of the requests still reading theirs, earliest admitted first, at most
    /// [`PREFILL_CHUNK`] tokens in all, as one product ([`QDecoder::forward_many`]): eight
    /// short questions arriving together are read in one pass over the weights, not eight.
    fn prefill_waiting(&mut self) {
        let weights = &self.model.weights;
        let mut budget = if self.active.iter().all(Active::prefilling) {
            PREFILL_CHUNK_IDLE
        } else {
            PREFILL_CHUNK
        };
        let mut idx = Vec::new();
        let mut ends = Vec::new();
        let mut seqs: Vec<(&[u32], &mut SeqCache)> = Vec::new();
        for (i, a) in self.active.iter_mut().enumerate() {
            if budget == 0 {
                break;
            }
            if !a.prefilling() {
                continue;
            }
            let fed = a.cache.tokens().len();
            let end = (fed + budget).min(a.prompt.len());
            budget -= end - fed;
            idx.push(i);
            ends.push(end == a.prompt.len());
            seqs.push((&a.prompt[fed..end], &mut a.cache));
        }
        if seqs.is_empty() {
            return;
        }
        self.shared
            .largest_prompt_pass
            .fetch_max(seqs.len(), Ordering::Relaxed);
        let r = caught(|| weights.forward_many(&mut seqs).map_err(inf));
        drop(seqs);
        let rows = r.and_then(|logits| {
            (0..idx.len())
                .map(|r| logits.get(r).map_err(inf))
                .collect::<Result<Vec<_>, _>>()
        });
        match rows {
            Ok(rows) => {
                for ((row, &i), done) in rows.into_iter().zip(&idx).zip(ends) {
                    if done {
                        let a = &mut self.active[i];
                        a.logits = Some(row);
                        a.prefilled = Some(Instant::now());
                    }
                }
            }
            Err(e) => {
                // Every cache in the pass is now in an unknown state. Highest index first, so
                // the indices left stay valid for swap_remove.
                let why = match e {
                    ChatError::Inference(why) => why,
                    other => other.to_string(),
                };
                for &i in idx.iter().rev() {
                    let a = self.active.swap_remove(i);
                    self.fail(a, ChatError::Inference(why.clone()));
                }
            }
        }
    }

    /// Answers with `e`; the cache's content is unknown, so it is dropped.
    fn fail(&mut self, a: Active, e: ChatError) {
        let _e = a.request.span.enter();
        tracing::warn!(error = %e, "chat request failed");
        self.done();
        let _ = a.request.reply.send(Err(e));
    }

    fn sample_all(&mut self) {
        let stop_ids = &self.model.stop_ids;
        let mut finished = Vec::new();
        let mut failed = Vec::new();
        for (i, a) in self.active.iter_mut().enumerate() {
            let Some(logits) = a.logits.take() else {
                continue;
            };
            match caught(|| sample(a, &logits)) {
                Ok(next) => {
                    if stop_ids.contains(&next) {
                        finished.push(i);
                    } else {
                        a.out.push(next);
                        if a.out.len() >= a.max_new {
                            finished.push(i);
                        } else {
                            a.next = Some(next);
                        }
                    }
                }
                Err(e) => failed.push((i, e)),
            }
        }
        // Highest index first, so the others stay valid under swap_remove.
        let mut ends: Vec<(usize, Option<ChatError>)> = finished
            .into_iter()
            .map(|i| (i, None))
            .chain(failed.into_iter().map(|(i, e)| (i, Some(e))))
            .collect();
        ends.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, e) in ends {
            let a = self.active.swap_remove(i);
            match e {
                Some(e) => self.fail(a, e),
                None => self.finish(a),
            }
        }
    }

    /// Replies with the generated text and returns the cache to the pool.
    fn finish(&mut self, a: Active) {
        let _e = a.request.span.enter();
        let now = Instant::now();
        let prefilled = a.prefilled.unwrap_or(now);
        let prefill = prefilled.duration_since(a.admitted).as_secs_f64();
        let decode = now.duration_since(prefilled).as_secs_f64();
        tracing::debug!(
            prompt_tokens = a.prompt.len(),
            reused_tokens = a.reused,
            completion_tokens = a.out.len(),
            prefill_tok_s = (a.prompt.len() - a.reused) as f64 / prefill.max(1e-9),
            decode_tok_s = a.out.len() as f64 / decode.max(1e-9),
            active = self.active.len() + 1,
            "generated"
        );
        let reply = self
            .tokenizer
            .decode(&a.out, true)
            .map_err(|e| ChatError::Inference(format!("decoding: {e}")))
            .map(|text| ChatReply {
                text: template::strip_think(&text).to_string(),
                prompt_tokens: a.prompt.len(),
                completion_tokens: a.out.len(),
                reused_prompt_tokens: a.reused,
            });
        self.done();
        let _ = a.request.reply.send(reply);
        drop(_e);
        self.release(a.key, a.cache);
    }

    /// One batched step for every request with a sampled token.
    fn decode_all(&mut self) {
        let weights = &self.model.weights;
        let mut idx = Vec::new();
        let mut steps: Vec<(u32, &mut SeqCache)> = Vec::new();
        for (i, a) in self.active.iter_mut().enumerate() {
            if let Some(t) = a.next {
                idx.push(i);
                steps.push((t, &mut a.cache));
            }
        }
        if steps.is_empty() {
            return;
        }
        self.shared
            .largest_batch
            .fetch_max(steps.len(), Ordering::Relaxed);
        match caught(|| weights.forward_batch(&mut steps).map_err(inf)) {
            Ok(logits) => {
                drop(steps);
                match (0..idx.len())
                    .map(|r| logits.get(r))
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(rows) => {
                        for (row, &i) in rows.into_iter().zip(&idx) {
                            let a = &mut self.active[i];
                            a.next = None;
                            a.logits = Some(row);
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        for &i in idx.iter().rev() {
                            let a = self.active.swap_remove(i);
                            self.fail(a, ChatError::Inference(msg.clone()));
                        }
                    }
                }
            }
            Err(e) => {
                drop(steps);
                // Every cache in the step may hold a partial row now.
                for &i in idx.iter().rev() {
                    let a = self.active.swap_remove(i);
                    self.fail(a, ChatError::Inference(e.to_string()));
                }
            }
        }
    }
}

/// The next token of `a` from its last logits (`[vocab]` or `[1, vocab]`).
fn sample(a: &mut Active, logits: &Tensor) -> Result<u32, ChatError> {
    let mut l = logits
        .flatten_all()
        .and_then(|l| l.to_dtype(DType::F32))
        .map_err(inf)?;
    let p = &a.request.params;
    if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
        // The penalty looks at the prompt and the reply so far, as one sequence.
        let seen: Vec<u32> = a.prompt.iter().chain(&a.out).copied().collect();
        let start = seen.len().saturating_sub(p.repeat_last_n);
        l = candle_transformers::utils::apply_repeat_penalty(&l, p.repeat_penalty, &seen[start..])
            .map_err(inf)?;
    }
    a.sampler.sample(&l).map_err(inf)
}

/// The async side's handle to the model thread.
pub(crate) struct Handle {
    tx: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
}

impl Handle {
    /// Starts the model thread (below the runtime's priority), runs `load` there and waits for
    /// its outcome; then the thread serves requests.
    pub(crate) fn spawn<L>(opts: SchedulerOptions, load: L) -> Result<Self, ChatError>
    where
        L: FnOnce() -> Result<
                (LocalModel, Arc<tokenizers::Tokenizer>, super::PromptFormat),
                ChatError,
            > + Send
            + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel::<Request>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), ChatError>>(1);
        // Before the model loads: candle's first matmul would otherwise build rayon's global
        // pool at the runtime's priority.
        crate::priority::init_global_pool();
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("model-chat".into())
            .spawn(move || {
                crate::priority::lower_current_thread();
                match load() {
                    Ok((model, tokenizer, template)) => {
                        let _ = ready_tx.send(Ok(()));
                        Scheduler::new(model, tokenizer, template, opts, theirs).run(rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| ChatError::Inference(format!("spawning the model thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { tx, shared }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ChatError::Inference(
                "the model thread died while loading".into(),
            )),
        }
    }

    /// Queues a request and awaits its reply. Dropping the future tells the thread to stop
    /// computing it.
    pub(crate) async fn chat(
        &self,
        conversation: Option<String>,
        messages: Vec<ChatMessage>,
        params: SamplingParams,
        window: usize,
    ) -> Result<ChatReply, ChatError> {
        let (reply, answer) = oneshot::channel();
        let flag = Arc::new(AtomicBool::new(false));
        let mut gone = crate::worker::CancelOnDrop(Some(flag.clone()));
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.send(Request {
            conversation,
            messages,
            params,
            window,
            reply,
            gone: flag,
            queued: Instant::now(),
            span: tracing::Span::current(),
        });
        if sent.is_err() {
            self.shared.pending.fetch_sub(1, Ordering::Relaxed);
            gone.0 = None;
            return Err(ChatError::Stopped);
        }
        let out = answer
            .await
            .unwrap_or_else(|_| Err(ChatError::Inference("request aborted".into())));
        // Answered: nothing left to cancel.
        gone.0 = None;
        out
    }

    /// Requests queued or being answered.
    pub(crate) fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
    }

    /// The most requests decoded together in one step so far.
    pub(crate) fn largest_batch(&self) -> usize {
        self.shared.largest_batch.load(Ordering::Relaxed)
    }

    /// The most requests whose prompts were read in one pass so far.
    pub(crate) fn largest_prompt_pass(&self) -> usize {
        self.shared.largest_prompt_pass.load(Ordering::Relaxed)
    }

    /// Records each request's wait in the queue (seconds); the first histogram given stays.
    pub(crate) fn observe_queue_wait(&self, histogram: metrics::Histogram) {
        let _ = self.shared.queue_wait.set(histogram);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fair_queue_serves_keys_in_turn_and_each_key_in_order() {
        let mut q = FairQueue::new();
        for i in 0..5 {
            q.push("chatty", i);
        }
        q.push("quiet", 100);
        q.push("late", 200);
        assert_eq!(q.len(), 7);
        let order: Vec<_> = std::iter::from_fn(|| q.pop(|_| false)).collect();
        assert_eq!(
            order,
            vec![
                ("chatty", 0),
                ("quiet", 100),
                ("late", 200),
                ("chatty", 1),
                ("chatty", 2),
                ("chatty", 3),
                ("chatty", 4)
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_busy_key_is_passed_over_and_keeps_its_turn_order() {
        let mut q = FairQueue::new();
        q.push("a", 1);
        q.push("a", 2);
        q.push("b", 3);
        assert_eq!(q.pop(|k| *k == "a"), Some(("b", 3)));
        assert_eq!(q.pop(|k| *k == "a"), None);
        assert_eq!(q.pop(|_| false), Some(("a", 1)));
        assert_eq!(q.pop(|_| false), Some(("a", 2)));
    }

    #[test]
    fn removed_items_leave_the_rest_in_order() {
        let mut q = FairQueue::new();
        q.push("a", 1);
        q.push("b", 2);
        q.push("a", 3);
        q.push("c", 4);
        let gone = q.remove_where(|i| *i == 2 || *i == 1);
        assert_eq!(gone.len(), 2);
        let order: Vec<_> = std::iter::from_fn(|| q.pop(|_| false)).collect();
        assert_eq!(order, vec![("a", 3), ("c", 4)]);
    }
}
