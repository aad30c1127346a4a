//! The local chat engine with several conversations: a KV cache per conversation within a
//! memory budget, the shared system prompt, the fair queue, and batched decoding that says
//! exactly what each reply says alone (greedy). Tiny random-weight models, as in `chat.rs`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use sandra_models::chat::{
    ChatEngine, ChatMessage, ChatReply, ChatTemplate, DeviceChoice, LocalOptions, SamplingParams,
    encode_chat,
};
use sandra_models::testing::*;

const SYSTEM: &str = "You are terse and kind.";

fn load_with(path: &Path, parallel: usize, kv_cache_mb: usize) -> ChatEngine {
    let opts = LocalOptions {
        device: DeviceChoice::Cpu,
        parallel,
        kv_cache_mb,
        ..Default::default()
    };
    ChatEngine::load_local_with(path, opts, SamplingParams::default()).unwrap()
}

fn ask(question: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::system(SYSTEM), ChatMessage::user(question)]
}

/// Tokens Qwen3's generation prompt adds that its history does not repeat (an empty think
/// block); 0 for the other templates.
fn think_header(engine: &ChatEngine) -> usize {
    if engine.template() == Some(ChatTemplate::ChatMlNoThink) {
        let tok = engine.tokenizer().unwrap();
        tok.encode("<think>\n\n</think>\n\n", false).unwrap().len()
    } else {
        0
    }
}

fn ids(engine: &ChatEngine, messages: &[ChatMessage]) -> Vec<u32> {
    encode_chat(
        engine.tokenizer().unwrap(),
        engine.prompt_format().unwrap(),
        messages,
    )
    .unwrap()
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn then(mut messages: Vec<ChatMessage>, reply: &ChatReply, next: &str) -> Vec<ChatMessage> {
    messages.push(ChatMessage::assistant(reply.text.clone()));
    messages.push(ChatMessage::user(next));
    messages
}

/// A, B, A: A's second turn finds its own previous prompt and reply although B ran in between
/// (the model always says `!`, which re-tokenizes to the same ids, so the count is exact).
#[tokio::test]
async fn a_returning_conversation_reuses_its_own_turn_after_another_ran() {
    let dir = tempfile::tempdir().unwrap();
    for family in ALL {
        let (path, _) = write_model(dir.path(), family, Behaviour::AlwaysEmit(0), 21);
        let engine = load_with(&path, 4, 64);
        let a1 = engine
            .chat_in("a", ask("Capital of France?"), SamplingParams::greedy(6))
            .await
            .unwrap();
        let b1 = engine
            .chat_in("b", ask("Name a river."), SamplingParams::greedy(6))
            .await
            .unwrap();
        assert_eq!(a1.text, "!!!!!!", "{family:?}");
        assert!(b1.reused_prompt_tokens < a1.prompt_tokens, "{family:?}");
        let a2 = engine
            .chat_in(
                "a",
                then(ask("Capital of France?"), &a1, "And of Spain?"),
                SamplingParams::greedy(6),
            )
            .await
            .unwrap();
        let header = think_header(&engine);
        // The whole previous prompt and reply, but for the reply's last token: cut at the
        // length limit, it was sampled, never fed.
        let want = if header > 0 {
            a1.prompt_tokens - header
        } else {
            a1.prompt_tokens + a1.completion_tokens - 1
        };
        assert_eq!(a2.reused_prompt_tokens, want, "{family:?}: {a1:?} {a2:?}");
    }
}

/// A new conversation copies the system prompt's keys and values from one already cached;
/// after eviction the shared prefix is still there; what is said never depends on the cache.
#[tokio::test]
async fn new_conversations_start_from_the_shared_system_prompt_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    for family in ALL {
        let (path, _) = write_model(dir.path(), family, Behaviour::Random, 22);
        // An idle cache is trimmed to its positions (about 200 here: the prompt and reply) of
        // 256 bytes each (f16): 1 MiB holds about 20 of them besides the shared prefix, and 40
        // conversations overflow it. Each question starts with its own letter, so two share
        // only the system prompt.
        let engine = load_with(&path, 2, 1);
        let questions: Vec<String> = ('A'..='Z')
            .chain('a'..='n')
            .map(|c| format!("{c}: which way? {}", "and then ".repeat(20)))
            .collect();
        let mut first = Vec::new();
        for (i, q) in questions.iter().enumerate() {
            let r = engine
                .chat_in(&format!("c{i}"), ask(q), SamplingParams::greedy(4))
                .await
                .unwrap();
            first.push(r);
        }
        let shared = common_prefix(
            &ids(&engine, &ask(&questions[0])),
            &ids(&engine, &ask(&questions[1])),
        );
        // The template's opening and the system prompt (about a token per character here).
        assert!(shared > 20, "{family:?}: {shared}");
        assert_eq!(first[0].reused_prompt_tokens, 0, "{family:?}");
        for r in &first[1..] {
            assert_eq!(r.reused_prompt_tokens, shared, "{family:?}: {r:?}");
        }

        // The oldest conversation was evicted: it starts again from the shared prefix only.
        let old = then(ask(&questions[0]), &first[0], "Why?");
        let again = engine
            .chat_in("c0", old.clone(), SamplingParams::greedy(4))
            .await
            .unwrap();
        assert_eq!(again.reused_prompt_tokens, shared, "{family:?}");
        // The latest was kept.
        let recent = then(ask(&questions[39]), &first[39], "Why?");
        let kept = engine
            .chat_in("c39", recent.clone(), SamplingParams::greedy(4))
            .await
            .unwrap();
        assert!(
            kept.reused_prompt_tokens >= first[39].prompt_tokens - think_header(&engine),
            "{family:?}: {kept:?}"
        );
        // A cold engine says the same.
        for (conv, warm) in [(old, again), (recent, kept)] {
            let c = load_with(&path, 1, 64)
                .chat_with(conv, SamplingParams::greedy(4))
                .await
                .unwrap();
            assert_eq!(c.text, warm.text, "{family:?}");
        }
    }
}

/// Replies decoded together, some joining when others finish, say exactly what each says on an
/// engine that has seen nothing else.
#[tokio::test]
async fn batched_replies_match_replies_computed_alone() {
    let dir = tempfile::tempdir().unwrap();
    for family in ALL {
        let (path, _) = write_model(dir.path(), family, Behaviour::Random, 23);
        let questions = [
            ("Capital of France?", 5),
            ("Name a river.", 30),
            ("Is it raining?", 12),
            ("Tell me a story.", 40),
            ("Hello!", 20),
        ];
        let mut alone = Vec::new();
        for (q, n) in questions {
            let cold = load_with(&path, 1, 64);
            alone.push(
                cold.chat_in("x", ask(q), SamplingParams::greedy(n))
                    .await
                    .unwrap(),
            );
        }
        // Three at a time: the last two join once earlier ones are done.
        let engine = load_with(&path, 3, 64);
        let tasks: Vec<_> = questions
            .iter()
            .enumerate()
            .map(|(i, (q, n))| {
                let e = engine.clone();
                let (q, n) = (q.to_string(), *n);
                tokio::spawn(async move {
                    e.chat_in(&format!("c{i}"), ask(&q), SamplingParams::greedy(n))
                        .await
                })
            })
            .collect();
        for (t, want) in tasks.into_iter().zip(&alone) {
            let got = t.await.unwrap().unwrap();
            assert_eq!(got.text, want.text, "{family:?}");
            assert_eq!(got.completion_tokens, want.completion_tokens, "{family:?}");
        }
        assert!(
            engine.largest_batch().unwrap() >= 2,
            "{family:?}: the replies were decoded together"
        );
        assert_eq!(engine.pending(), Some(0));
    }
}

/// A caller that goes away mid-reply is dropped between steps; the replies beside it are
/// unaffected and the engine goes on serving.
#[tokio::test]
async fn a_cancelled_reply_leaves_the_others_correct() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_model(dir.path(), Family::Qwen2, Behaviour::AlwaysEmit(0), 24);
    let engine = load_with(&path, 3, 64);
    let spawn = |key: &str, n: usize| {
        let e = engine.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            e.chat_in(&key, ask("Count."), SamplingParams::greedy(n))
                .await
        })
    };
    let long = spawn("long", 200);
    let short = spawn("short", 3);
    let middle = spawn("middle", 40);
    assert_eq!(short.await.unwrap().unwrap().text, "!!!");
    long.abort();
    assert!(long.await.unwrap_err().is_cancelled());
    assert_eq!(middle.await.unwrap().unwrap().text, "!".repeat(40));
    let after = engine
        .chat_in("later", ask("Again."), SamplingParams::greedy(7))
        .await
        .unwrap();
    assert_eq!(after.text, "!".repeat(7));
}

/// Many turns at once are all answered (none refused), and a conversation that writes a lot
/// does not hold back one that writes once: conversations take turns.
#[tokio::test]
async fn every_turn_is_answered_and_conversations_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_model(dir.path(), Family::Qwen2, Behaviour::AlwaysEmit(0), 25);
    let engine = load_with(&path, 1, 64);
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let mut spawn = |key: &'static str, tag: String| {
        let (e, done) = (engine.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let r = e
                .chat_in(key, ask(&tag), SamplingParams::greedy(8))
                .await
                .unwrap();
            done.lock().unwrap().push(tag);
            r
        }));
    };
    for i in 0..30 {
        spawn("chatty", format!("chatty {i}"));
    }
    spawn("quiet", "quiet".to_string());
    for t in tasks {
        assert_eq!(t.await.unwrap().text, "!".repeat(8));
    }
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 31);
    let quiet = done.iter().position(|t| t == "quiet").unwrap();
    // The chatty conversation's turns stay in order, and the quiet one is served within the
    // first few turns instead of after all thirty.
    let chatty: Vec<_> = done.iter().filter(|t| *t != "quiet").cloned().collect();
    let in_order: Vec<_> = (0..30).map(|i| format!("chatty {i}")).collect();
    assert_eq!(chatty, in_order);
    assert!(quiet <= 2, "quiet answered at position {quiet}: {done:?}");
}

/// People who write a moment apart, while the model is idle, have their prompts read in one
/// pass: the idle model waits briefly for requests that follow the first one closely (here a
/// wide window, so that a loaded machine cannot space the requests past it).
#[tokio::test]
async fn questions_arriving_together_are_read_in_one_prompt_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_model(dir.path(), Family::Qwen2, Behaviour::AlwaysEmit(0), 26);
    let opts = LocalOptions {
        device: DeviceChoice::Cpu,
        parallel: 4,
        kv_cache_mb: 64,
        gather: std::time::Duration::from_millis(400),
        ..Default::default()
    };
    let engine = ChatEngine::load_local_with(&path, opts, SamplingParams::default()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let e = engine.clone();
        tasks.push(tokio::spawn(async move {
            e.chat_in(&format!("g{i}"), ask("Hi."), SamplingParams::greedy(2))
                .await
        }));
        // A few milliseconds apart, as simultaneous webhooks reach the model.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().text, "!!");
    }
    assert_eq!(engine.largest_prompt_pass(), Some(3));
}
