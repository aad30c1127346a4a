//! Many people writing at once: end-to-end, from signed webhook to the reply at a loopback Graph
//! API stand-in, through the real app (ingest, conversation actors, the chat model, the outbox
//! and the sender).
//!
//! Phases, each measured in the same run:
//! 1. **Simultaneous conversations** (default 1, 8 and 32): that many new users each send one
//!    realistic WhatsApp question at the same instant. Reported: aggregate generated tokens/s
//!    (reply tokens, counted with the model's own tokenizer, over the wall time from the first
//!    POST to the last reply) and p50/p95 of each user's time from POST to reply. Each round of
//!    2 to 8 is followed by the same questions from new users one at a time, and the round's
//!    aggregate and p95 are also given against that baseline (the same questions; only the clock
//!    note's minute differs), besides against the single conversation's.
//! 2. **A returning user**: the user of the single-conversation phase asks a follow-up after the
//!    other phases' conversations ran in between (their keys and values may have pushed theirs
//!    out of any cache).
//! 3. **Ack latency**: signed status webhooks at a fixed rate (open loop: each sent at its
//!    scheduled instant whatever the previous ones did) with the models idle, then while 8
//!    conversations are generating. Reported: p50/p99 ack and how many were refused.
//! 4. **Voice notes** (with `--whisper DIR`, local Whisper): new users ask the same short
//!    questions as text and as voice notes (spoken by Sandra's own voice when `.models/piper`
//!    has it, else by espeak-ng), alternating, one at a time. Reported: each pair's time to
//!    reply, and how long Whisper alone takes on each note (the same model, timed in the bench
//!    on the same clip), so "a voice note adds only its transcription" can be checked.
//!
//! The brain is the local GGUF model (`--model PATH`, default the installed one) or, with
//! `--openai URL`, an OpenAI-compatible server such as `llama-server --parallel 8`: the same
//! prompts, built by the same code, so the two engines can be compared like for like
//! (`scripts/bench-concurrency.sh` runs both). Sampling is greedy with at most `--max-tokens`.
//!
//! `cargo bench --bench concurrency -- --model M.gguf` runs it; under `cargo test` (no `--bench`)
//! it runs a smoke pass with a placeholder brain so it cannot rot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use sandra::app::Application;
use sandra::config::{Config, LlmBackend};
use sandra_actors::brain::PlaceholderBrain;
use sandra_actors::secret::SecretString;
use sha2::Sha256;

const SECRET: &str = "bench-secret";
const PHONE_ID: &str = "106540352242922";

/// Short questions of the kind people send on WhatsApp, in the languages Sandra meets most.
const QUESTIONS: &[&str] = &[
    "Hi! What's a quick dinner I can make with rice, eggs and spinach?",
    "How long should I boil an egg for a runny yolk?",
    "Can you explain what inflation is in two sentences?",
    "What's the difference between a virus and a bacterium?",
    "Give me three tips to sleep better.",
    "How do I politely decline a meeting invitation?",
    "¿Cuál es la capital de Australia?",
    "¿Cómo le digo a mi jefe que necesito un día libre?",
    "¿Qué puedo regalarle a mi madre por su cumpleaños?",
    "Quelle est la meilleure façon d'apprendre l'anglais rapidement ?",
    "Wie lange dauert ein Flug von Berlin nach Madrid?",
    "Qual é a diferença entre café expresso e coado?",
    "Write a short birthday message for my friend Ana.",
    "Is it safe to drink water after it has been boiled and cooled?",
    "What should I pack for a weekend trip to the mountains?",
    "How many minutes of exercise a day is healthy?",
    "Translate 'where is the train station' into Spanish and French.",
    "My phone battery drains fast. What can I check?",
    "What is a good name for a small bakery?",
    "Explain compound interest with a simple example.",
    "How do I get a red wine stain out of a shirt?",
    "Recommend a classic novel for someone who likes mysteries.",
    "What's the best way to keep basil fresh?",
    "How do I say thank you in Japanese?",
    "Can you help me plan a 20-minute workout without equipment?",
    "What are the symptoms of dehydration?",
    "¿Cuántas calorías tiene una manzana?",
    "¿Me das una receta fácil de tortilla de patatas?",
    "Why is the sky blue?",
    "How do I change a flat tyre?",
    "What time zone is Lisbon in?",
    "Give me a fun fact about octopuses.",
];

const FOLLOW_UP: &str = "Thanks! And how long does that take?";

fn sign(body: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A voice note as WhatsApp delivers it: the media id to fetch and the bytes' sha256.
fn voice_webhook(from: &str, id: &str, media_id: &str, ogg: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let sha = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(ogg));
    message_webhook(
        from,
        id,
        serde_json::json!({"type": "audio", "audio": {"mime_type": "audio/ogg; codecs=opus",
                           "sha256": sha, "id": media_id, "voice": true}}),
    )
}

/// The stand-in's media store: id → Ogg bytes, and its own address for the download URL.
#[derive(Clone, Default)]
struct Media {
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    base: Arc<Mutex<String>>,
}

/// `GET /{version}/{media-id}`: where to download it (the first of Meta's two hops).
async fn media_info(
    State(m): State<Media>,
    axum::extract::Path((_v, id)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let Some(len) = m.files.lock().unwrap().get(&id).map(Vec::len) else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    axum::Json(serde_json::json!({
        "messaging_product": "whatsapp",
        "url": format!("{}/media/{id}", m.base.lock().unwrap()),
        "mime_type": "audio/ogg",
        "file_size": len,
        "id": id,
    }))
    .into_response()
}

/// `GET /media/{id}`: the bytes (the second hop).
async fn media_bytes(
    State(m): State<Media>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Vec<u8> {
    m.files
        .lock()
        .unwrap()
        .get(&id)
        .cloned()
        .unwrap_or_default()
}

fn text_webhook(from: &str, id: &str, text: &str) -> Vec<u8> {
    message_webhook(
        from,
        id,
        serde_json::json!({"type": "text", "text": {"body": text}}),
    )
}

/// One inbound message from `from` in Meta's webhook envelope; `content` holds its `type` and
/// the object that type names.
fn message_webhook(from: &str, id: &str, content: serde_json::Value) -> Vec<u8> {
    let mut message =
        serde_json::json!({"from": from, "id": id, "timestamp": now_secs().to_string()});
    message
        .as_object_mut()
        .unwrap()
        .extend(content.as_object().unwrap().clone());
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
            "contacts": [{"profile": {"name": "Bench"}, "wa_id": from}],
            "messages": [message]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

fn status_webhook(i: usize) -> Vec<u8> {
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
            "statuses": [{"id": format!("wamid.ACK{i:08}"), "status": "delivered",
                          "timestamp": now_secs().to_string(), "recipient_id": "15559990000"}]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

/// Text messages the stand-in received, per recipient, with when they arrived.
#[derive(Default)]
struct Sent {
    texts: HashMap<String, Vec<(Instant, String)>>,
    /// "Got it, answering in a moment" notices (`conversation.wait_notice_after`): counted
    /// apart, never taken for the reply.
    notices: usize,
}

type SentLog = Arc<Mutex<Sent>>;

/// A reply's length in the model's tokens.
type TokenCount = Arc<dyn Fn(&str) -> usize + Send + Sync>;

async fn graph_messages(
    State(log): State<SentLog>,
    axum::Json(v): axum::Json<serde_json::Value>,
) -> axum::Json<serde_json::Value> {
    if v["type"] == "text"
        && let (Some(to), Some(body)) = (v["to"].as_str(), v["text"]["body"].as_str())
    {
        let mut log = log.lock().unwrap();
        if is_wait_notice(body) {
            log.notices += 1;
            return axum::Json(accepted(&v));
        }
        log.texts
            .entry(to.to_string())
            .or_default()
            .push((Instant::now(), body.to_string()));
    }
    axum::Json(accepted(&v))
}

/// Graph API's answer to an accepted send.
fn accepted(v: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": v["to"], "wa_id": v["to"]}],
        "messages": [{"id": format!("wamid.OUT{}", rand_id())}]
    })
}

fn is_wait_notice(body: &str) -> bool {
    use sandra_actors::texts::{Lang, wait_notice};
    [Lang::En, Lang::Es, Lang::Pt, Lang::Fr, Lang::De]
        .into_iter()
        .any(|l| wait_notice(l) == body)
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn serve(router: axum::Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    a
}

struct Args {
    full: bool,
    model: Option<PathBuf>,
    openai: Option<String>,
    conversations: Vec<usize>,
    max_tokens: usize,
    ack_rate: usize,
    ack_secs: u64,
    /// Sequences the local model decodes together (`llm.parallel`).
    parallel: usize,
    /// A Whisper directory: adds the voice-note phase.
    whisper: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        full: false,
        model: None,
        openai: None,
        conversations: vec![1, 8, 32],
        max_tokens: 96,
        ack_rate: 500,
        ack_secs: 10,
        parallel: 8,
        whisper: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => a.full = true,
            "--model" => a.model = it.next().map(PathBuf::from),
            "--openai" => a.openai = it.next(),
            "--conversations" => {
                a.conversations = it
                    .next()
                    .expect("--conversations 1,8,32")
                    .split(',')
                    .map(|n| n.parse().expect("a number of conversations"))
                    .collect()
            }
            "--max-tokens" => a.max_tokens = it.next().and_then(|n| n.parse().ok()).unwrap(),
            "--ack-rate" => a.ack_rate = it.next().and_then(|n| n.parse().ok()).unwrap(),
            "--ack-secs" => a.ack_secs = it.next().and_then(|n| n.parse().ok()).unwrap(),
            "--parallel" => a.parallel = it.next().and_then(|n| n.parse().ok()).unwrap(),
            "--whisper" => a.whisper = it.next().map(PathBuf::from),
            _ => {} // cargo's own flags
        }
    }
    if !a.full {
        // The smoke pass: the placeholder brain, small phases.
        a.conversations = vec![1, 4];
        a.ack_rate = 50;
        a.ack_secs = 1;
    }
    a
}

struct Bench {
    addr: SocketAddr,
    client: reqwest::Client,
    sent: SentLog,
    /// Counts a reply's tokens with the model's tokenizer (words without a model).
    tokens: Option<TokenCount>,
}

impl Bench {
    async fn post(&self, body: Vec<u8>) -> (Duration, u16) {
        let sig = sign(&body);
        let t = Instant::now();
        let status = self
            .client
            .post(format!("http://{}/api/channels/whatsapp", self.addr))
            .header("X-Hub-Signature-256", sig)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        (t.elapsed(), status)
    }

    /// The running sum of histogram `sandra_<name>` from the app's `GET /metrics`.
    async fn histogram_sum(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("sandra_{name}_sum ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn replies_to(&self, user: &str) -> usize {
        self.sent
            .lock()
            .unwrap()
            .texts
            .get(user)
            .map_or(0, Vec::len)
    }

    fn tokens(&self, text: &str) -> usize {
        match &self.tokens {
            Some(count) => count(text),
            None => text.split_whitespace().count(),
        }
    }

    /// Each of `users` sends `texts[i]` at the same instant; waits for every reply. Returns each
    /// user's seconds from POST to reply, the reply tokens, and the wall time of the whole phase.
    /// A user's reply is the last text sent to them once the phase is over (a "got it" notice,
    /// when Sandra sends one, comes before it).
    async fn round(&self, users: &[String], texts: &[&str], tag: &str) -> Round {
        let bodies = users
            .iter()
            .zip(texts)
            .enumerate()
            .map(|(i, (u, t))| text_webhook(u, &format!("wamid.{tag}{i:05}"), t))
            .collect();
        self.round_of(users, bodies).await
    }

    /// [`Self::round`] for any webhook bodies, one per user.
    async fn round_of(&self, users: &[String], bodies: Vec<Vec<u8>>) -> Round {
        let before: Vec<usize> = users.iter().map(|u| self.replies_to(u)).collect();
        let start = Instant::now();
        let mut posts = Vec::new();
        for body in bodies {
            let this = self.clone_light();
            posts.push(tokio::spawn(async move { this.post(body).await }));
        }
        let mut acks = Vec::new();
        for p in posts {
            acks.push(p.await.unwrap());
        }
        assert!(
            acks.iter().all(|(_, s)| *s == 200),
            "every webhook is accepted: {acks:?}"
        );
        let deadline = start + Duration::from_secs(1800);
        loop {
            let done = users
                .iter()
                .zip(&before)
                .all(|(u, b)| self.replies_to(u) > *b);
            if done || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let a reply that comes after a notice arrive too.
        let settle = Instant::now() + Duration::from_secs(2);
        while Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = self.sent.lock().unwrap();
        let mut secs = Vec::new();
        let mut tokens = 0;
        let mut last = start;
        let mut answers = Vec::new();
        for (u, b) in users.iter().zip(&before) {
            let Some(got) = log.texts.get(u).filter(|v| v.len() > *b) else {
                continue;
            };
            let (at, text) = got.last().unwrap();
            secs.push(at.duration_since(start).as_secs_f64());
            tokens += self.tokens(text);
            last = last.max(*at);
            answers.push(text.clone());
        }
        Round {
            secs,
            tokens,
            wall: last.duration_since(start).as_secs_f64(),
            answers,
            asked: users.len(),
        }
    }

    /// Status webhooks at `rate`/s for `secs`, open loop. Returns ack latencies and refusals.
    async fn acks(&self, rate: usize, secs: u64, offset: usize) -> (Vec<Duration>, usize) {
        let n = rate * secs as usize;
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            tokio::time::sleep_until(start + interval * i as u32).await;
            let body = status_webhook(offset + i);
            let this = self.clone_light();
            tasks.push(tokio::spawn(async move { this.post(body).await }));
        }
        let mut lat = Vec::new();
        let mut refused = 0;
        for t in tasks {
            let (d, s) = t.await.unwrap();
            if s == 200 {
                lat.push(d);
            } else {
                refused += 1;
            }
        }
        lat.sort();
        (lat, refused)
    }

    fn clone_light(&self) -> Bench {
        Bench {
            addr: self.addr,
            client: self.client.clone(),
            sent: self.sent.clone(),
            tokens: None,
        }
    }
}

#[derive(Default)]
struct Round {
    secs: Vec<f64>,
    tokens: usize,
    wall: f64,
    answers: Vec<String>,
    asked: usize,
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn pct_d(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    let a = args();
    // RUST_LOG=sandra_models=debug shows each reply's prompt, reused and generated tokens.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let sent: SentLog = Arc::default();
        let media = Media::default();
        let graph = serve(
            axum::Router::new()
                .route("/{v}/{p}/messages", post(graph_messages))
                .with_state(sent.clone())
                .merge(
                    axum::Router::new()
                        .route("/{v}/{id}", axum::routing::get(media_info))
                        .route("/media/{id}", axum::routing::get(media_bytes))
                        .with_state(media.clone()),
                ),
        )
        .await;
        *media.base.lock().unwrap() = format!("http://{graph}");
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.server.bind = "127.0.0.1:0".parse().unwrap();
        cfg.storage.data_dir = dir.path().join("data");
        cfg.whatsapp.phone_number_id = PHONE_ID.into();
        cfg.whatsapp.access_token = SecretString::from("t");
        cfg.whatsapp.app_secret = SecretString::from(SECRET);
        cfg.whatsapp.graph_base_url = format!("http://{graph}");
        cfg.sender.rate_per_second = 1000;
        cfg.conversation.brain_timeout = Duration::from_secs(1800);
        cfg.conversation.max_wait = Duration::from_secs(3600);
        cfg.conversation.offer_linking = false;
        cfg.llm.parallel = a.parallel;
        cfg.llm.sampling.temperature = 0.0;
        cfg.llm.sampling.repeat_penalty = 1.0;
        cfg.llm.sampling.max_new_tokens = a.max_tokens;
        cfg.llm.sampling.seed = Some(7);
        let mut tokens: Option<TokenCount> = None;
        let engine;
        let app = if !a.full {
            engine = "placeholder brain (smoke pass)".to_string();
            Application::build_with_brain(cfg, Arc::new(PlaceholderBrain))
                .await
                .unwrap()
        } else {
            if let Some(url) = &a.openai {
                cfg.llm.backend = LlmBackend::Openai;
                cfg.llm.openai.base_url = url.clone();
                cfg.llm.openai.model = "bench".into();
                cfg.llm.openai.timeout = Duration::from_secs(1800);
                cfg.llm.openai.context_tokens = cfg.llm.context_tokens;
                engine = format!("OpenAI-compatible server at {url}");
            } else {
                cfg.llm.backend = LlmBackend::Local;
                engine = "local candle model".to_string();
            }
            if let Some(w) = &a.whisper {
                cfg.transcription.enabled = true;
                cfg.transcription.model_dir = w.clone();
                cfg.transcription.echo_transcript = false;
            }
            if let Some(m) = &a.model {
                cfg.llm.model = m.clone();
                let md = sandra_models::chat::read_gguf_metadata(m).expect("a GGUF model");
                let t = sandra_models::chat::tokenizer::from_gguf(&md).unwrap();
                tokens = Some(Arc::new(move |text: &str| {
                    t.encode(text, false).map(|e| e.len()).unwrap_or(0)
                }));
            }
            Application::build(cfg).await.expect("the app starts with this model")
        };
        let addr = app.local_addr();
        tokio::spawn(app.run_until(std::future::pending()));
        let bench = Bench {
            addr,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
            sent,
            tokens,
        };
        println!(
            "concurrency benchmark: {engine}, greedy, at most {} new tokens, llm.parallel = {}",
            a.max_tokens, a.parallel
        );
        // Warm-up: one throwaway conversation (page the weights in, build kernels' tables).
        let warm = bench.round(&["15550000000".to_string()], &[QUESTIONS[0]], "W").await;
        println!("warm-up: {:.2} s", warm.wall);

        println!(
            "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "conversations", "answered", "tokens", "tok/s", "p50 s", "p95 s"
        );
        let mut single_tps = None;
        let mut single_p50 = None;
        let mut returning_user = None;
        let mut offset = 1;
        let mut others = 0;
        for &n in &a.conversations {
            let users: Vec<String> = (0..n).map(|i| format!("1556{:03}{:04}", n, i)).collect();
            let texts: Vec<&str> = (0..n).map(|i| QUESTIONS[(offset + i) % QUESTIONS.len()]).collect();
            offset += n;
            if n != 1 {
                others += n;
            }
            let r = bench.round(&users, &texts, &format!("C{n}x")).await;
            let tps = r.tokens as f64 / r.wall.max(1e-9);
            let (p50, p95) = (pct(&r.secs, 0.5), pct(&r.secs, 0.95));
            println!(
                "{:<14} {:>10} {:>10} {:>10.1} {:>10.2} {:>10.2}",
                n,
                format!("{}/{}", r.secs.len(), r.asked),
                r.tokens,
                tps,
                p50,
                p95
            );
            if n == 1 {
                single_tps = Some(tps);
                single_p50 = Some(p50);
                returning_user = Some(users[0].clone());
                println!("  answer: {:?}", r.answers.first());
            } else if let Some(s) = single_tps {
                println!(
                    "  aggregate {:.2}x single-stream; p95 {:.2}x the single reply",
                    tps / s,
                    p95 / single_p50.unwrap()
                );
            }
            if (2..=8).contains(&n) {
                // The same questions again, from new users, one at a time: a baseline with the
                // same questions, so the ratios measure what answering them together gains, not
                // how long one other question's answer is. The prompts still differ in the
                // clock note's minute, so greedy replies can differ in length: both token counts
                // are printed.
                let mut alone = Round::default();
                for (i, t) in texts.iter().enumerate() {
                    let user = format!("1558{n:03}{i:04}");
                    let r = bench.round(&[user], &[*t], &format!("A{n}x{i}_")).await;
                    alone.tokens += r.tokens;
                    alone.wall += r.wall;
                    alone.secs.extend(r.secs);
                }
                others += n;
                let alone_tps = alone.tokens as f64 / alone.wall.max(1e-9);
                let alone_p95 = pct(&alone.secs, 0.95);
                println!(
                    "  the same {n} one at a time: {} tokens, {alone_tps:.1} tok/s, p50 {:.2} s, p95 {alone_p95:.2} s; \
                     at once: aggregate {:.2}x, p95 {:.2}x",
                    alone.tokens,
                    pct(&alone.secs, 0.5),
                    tps / alone_tps,
                    p95 / alone_p95
                );
            }
        }
        println!(
            "  \"answering in a moment\" notices so far (not counted as replies): {}",
            bench.sent.lock().unwrap().notices
        );
        if let Some(u) = returning_user {
            let r = bench.round(&[u], &[FOLLOW_UP], "R").await;
            println!(
                "returning user, next turn after {others} other conversations ran: {:.2} s ({} tokens)",
                r.wall,
                r.tokens
            );
        }

        if let Some(w) = &a.whisper {
            voice_phase(&bench, &media, w).await;
        }

        // Ack latency, models idle, then with 8 conversations generating.
        let (idle, idle_refused) = bench.acks(a.ack_rate, a.ack_secs, 0).await;
        let busy_users: Vec<String> = (0..8).map(|i| format!("1557000{i:04}")).collect();
        let busy_texts: Vec<&str> = (0..8).map(|i| QUESTIONS[(i * 3) % QUESTIONS.len()]).collect();
        let busy = {
            let round = bench.round(&busy_users, &busy_texts, "L");
            let acks = async {
                // Let the turns reach the model first.
                tokio::time::sleep(Duration::from_millis(500)).await;
                bench.acks(a.ack_rate, a.ack_secs, 1_000_000).await
            };
            let (_, acks) = tokio::join!(round, acks);
            acks
        };
        for (name, (lat, refused)) in [("models idle", (&idle, idle_refused)), ("8 generating", (&busy.0, busy.1))] {
            println!(
                "ack at {}/s for {} s, {name}: p50 {:.2?}, p99 {:.2?}, max {:.2?}, refused {refused} of {}",
                a.ack_rate,
                a.ack_secs,
                pct_d(lat, 0.5),
                pct_d(lat, 0.99),
                lat.last().copied().unwrap_or_default(),
                lat.len() + refused
            );
        }
        assert_eq!(idle_refused + busy.1, 0, "no webhook is refused at this rate");
    });
}

/// Phase 4: the same short questions as text and as voice notes, from new users, one at a time,
/// alternating; and Whisper alone on each note (a second copy of the same model, timed here).
async fn voice_phase(bench: &Bench, media: &Media, whisper: &std::path::Path) {
    const ASKED: &[&str] = &[
        "How long should I boil an egg for a runny yolk?",
        "Give me three tips to sleep better.",
        "Why is the sky blue?",
    ];
    let joe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".models/piper/en_US-joe-medium.onnx");
    let speaker = joe.is_file().then(|| {
        sandra_models::speech::Speaker::load(
            sandra_models::speech::SpeechOptions {
                voices: vec![joe],
                threads: 2,
            },
            4,
        )
        .expect("the joe voice loads")
    });
    let whisper_alone = sandra_models::whisper::Transcriber::load(
        whisper,
        sandra_models::whisper::WhisperOptions::default(),
        4,
    )
    .expect("the Whisper model loads");
    println!(
        "voice notes ({}; local Whisper {}): question, text reply s, voice reply s, extra s, Whisper alone s, Whisper in the app s (queue included), note s",
        if speaker.is_some() {
            "spoken by the joe voice"
        } else {
            "spoken by espeak-ng"
        },
        whisper.display()
    );
    let (mut extra, mut alone) = (Vec::new(), Vec::new());
    for (i, q) in ASKED.iter().enumerate() {
        let ogg = match &speaker {
            Some(s) => s.speak(q.to_string(), "en").await.expect("spoken").ogg,
            None => sandra_models::testing_whisper::spoken_voice_note(q, "en")
                .expect("espeak-ng and opusenc make the note"),
        };
        let pcm = sandra_models::audio::decode_to_pcm16k(&ogg, "audio/ogg; codecs=opus", 120.0)
            .expect("the note decodes");
        let t = Instant::now();
        let heard = whisper_alone.transcribe(pcm.samples).await.expect("heard");
        let whisper_s = t.elapsed().as_secs_f64();

        let text_user = format!("1558000{i:04}");
        let text = bench
            .round(std::slice::from_ref(&text_user), &[q], &format!("VT{i}"))
            .await;
        let voice_user = format!("1559000{i:04}");
        let id = format!("VN{i}");
        media.files.lock().unwrap().insert(id.clone(), ogg.clone());
        let body = voice_webhook(&voice_user, &format!("wamid.VV{i:05}"), &id, &ogg);
        let rtf_before = bench.histogram_sum("transcription_rtf").await;
        let voice = bench.round_of(&[voice_user], vec![body]).await;
        let in_app =
            (bench.histogram_sum("transcription_rtf").await - rtf_before) * f64::from(pcm.seconds);
        let (t_s, v_s) = (text.wall, voice.wall);
        println!(
            "  {q:?} heard as {:?}: {t_s:.2} ({} tokens), {v_s:.2} ({} tokens), {:+.2}, {whisper_s:.2}, {in_app:.2}, {:.1}",
            heard.text,
            text.tokens,
            voice.tokens,
            v_s - t_s,
            pcm.seconds
        );
        extra.push(v_s - t_s);
        alone.push(whisper_s);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "  mean extra time of a voice note {:.2} s against Whisper alone {:.2} s",
        mean(&extra),
        mean(&alone)
    );
}
