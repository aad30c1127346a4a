//! Local chat model under concurrent conversations: aggregate generated tokens/s with 1, 4 and 8
//! simultaneous short WhatsApp questions, against single-stream generation on an engine with
//! `parallel = 1` measured in the same run.
//!
//! `cargo bench -p sandra-models --bench bench_batch -- <model.gguf> [GEN_TOKENS]`
//! (`scripts/bench-batch.sh` runs it). Greedy; each question is a new conversation (its own
//! key), so each reads its own prompt; the system prompt's keys and values are shared, as in
//! production (a warm-up turn caches them on both engines first). `BENCH_CONC` (default
//! "1,4,8") sets the concurrency levels, `BENCH_PARALLEL` (default 8) the batched engine's
//! `parallel`, `BENCH_REPEAT` (default 3) how many times the rounds alternate. Under `cargo test` (no `--bench` argument) it does nothing.

use std::path::PathBuf;
use std::time::Instant;

use sandra_models::chat::{ChatEngine, ChatMessage, DeviceChoice, LocalOptions, SamplingParams};

const SYSTEM: &str = "You are Sandra, a friendly assistant that people reach on WhatsApp. \
    Answer in the language of the last message. Keep answers short: two to five sentences, \
    plain text, no tables, no markdown headings. If you are not sure, say so plainly instead of \
    guessing, and never invent facts, prices, opening hours or phone numbers. You cannot browse \
    the web, place calls, or make bookings; when someone asks for that, tell them how they can \
    do it themselves. Be warm but brief. Today is Tuesday.";

const QUESTIONS: [&str; 8] = [
    "Hi Sandra! What's a quick dinner I can make with rice, eggs, spinach and a bit of cheese? I have about 20 minutes and one pan.",
    "Hola, ¿me ayudas a escribir un mensaje corto para felicitar a mi jefa por su cumpleaños? Algo amable pero no demasiado formal.",
    "My phone battery drains really fast since the last update. What are the first things I should check before taking it to a shop?",
    "Can you explain in simple words what the difference is between a fixed and a variable rate mortgage? Which is safer right now?",
    "I have a job interview tomorrow for a receptionist position at a hotel. What questions should I expect and how should I prepare tonight?",
    "¿Cuántas horas debería dormir un niño de 7 años? Mi hijo se acuesta a las 22:30 y se levanta a las 7 para ir al colegio.",
    "What's a polite way to tell my neighbour that his dog barks all night? We get along fine and I don't want to make it awkward.",
    "I want to start running but I'm 45 and haven't exercised in years. Can you suggest a simple plan for the first two weeks?",
];

fn ask(q: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::system(SYSTEM), ChatMessage::user(q)]
}

struct Round {
    wall_s: f64,
    tokens: usize,
    latencies: Vec<f64>,
    prompt_tokens: Vec<usize>,
    reused: Vec<usize>,
}

/// `n` new conversations at once; returns when all are answered.
fn round(
    rt: &tokio::runtime::Runtime,
    engine: &ChatEngine,
    n: usize,
    tag: &str,
    new_tokens: usize,
) -> Round {
    let started = Instant::now();
    let replies = rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let e = engine.clone();
                let key = format!("{tag}-{i}");
                // Tagged per round, so no round reuses another's prompt beyond the system's.
                let q = format!("({key}) {}", QUESTIONS[i % QUESTIONS.len()]);
                tokio::spawn(async move {
                    let t = Instant::now();
                    let r = e
                        .chat_in(&key, ask(&q), SamplingParams::greedy(new_tokens))
                        .await
                        .expect("reply");
                    (r, t.elapsed().as_secs_f64())
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let wall_s = started.elapsed().as_secs_f64();
    Round {
        wall_s,
        tokens: replies.iter().map(|(r, _)| r.completion_tokens).sum(),
        latencies: replies.iter().map(|(_, s)| *s).collect(),
        prompt_tokens: replies.iter().map(|(r, _)| r.prompt_tokens).collect(),
        reused: replies
            .iter()
            .map(|(r, _)| r.reused_prompt_tokens)
            .collect(),
    }
}

fn load(model: &std::path::Path, parallel: usize) -> ChatEngine {
    // The default `cpu_prefill`, or BENCH_PREFILL=compact|repacked.
    let cpu_prefill = sandra_models::testing::bench_cpu_prefill();
    let opts = LocalOptions {
        device: DeviceChoice::Auto,
        parallel,
        cpu_prefill,
        ..Default::default()
    };
    ChatEngine::load_local_with(model, opts, SamplingParams::greedy(1)).expect("loading")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "bench_batch: run with `cargo bench -p sandra-models --bench bench_batch -- MODEL`"
        );
        return;
    }
    let rest: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(model) = rest.first().map(PathBuf::from) else {
        eprintln!("usage: cargo bench -p sandra-models --bench bench_batch -- MODEL.gguf [GEN]");
        std::process::exit(2);
    };
    let new_tokens: usize = rest.get(1).and_then(|s| s.parse().ok()).unwrap_or(96);
    let levels: Vec<usize> = std::env::var("BENCH_CONC")
        .unwrap_or_else(|_| "1,4,8".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let parallel: usize = std::env::var("BENCH_PARALLEL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let report = |label: &str, r: &Round, engine: &ChatEngine| {
        let mut lat = r.latencies.clone();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let rate = r.tokens as f64 / r.wall_s;
        println!(
            "batch\t{label}\tconversations={}\tgen_tokens={}\twall_s={:.2}\taggregate_tok_s={rate:.2}\t\
             p50_s={:.2}\tmax_s={:.2}\tprompt_tokens={:?}\treused={:?}\tlargest_batch={}",
            lat.len(),
            r.tokens,
            r.wall_s,
            lat[lat.len() / 2],
            lat[lat.len() - 1],
            r.prompt_tokens,
            r.reused,
            engine.largest_batch().unwrap_or(0),
        );
        rate
    };

    // Baseline: one reply at a time (`parallel = 1`), one conversation. Both engines stay loaded
    // and the rounds alternate (baseline, then each level, `BENCH_REPEAT` times), so a burst
    // of other work on the machine weighs on both sides of a ratio alike; the median ratio is
    // the figure.
    let single = load(&model, 1);
    eprintln!("loaded: {}", single.describe());
    round(&rt, &single, 1, "warm", 4);
    let engine = load(&model, parallel);
    round(&rt, &engine, 1, "warm", 4);
    let repeat: usize = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); levels.len()];
    for rep in 0..repeat {
        let base = round(&rt, &single, 1, &format!("base{rep}"), new_tokens);
        let base_rate = report("parallel=1", &base, &single);
        for (li, &n) in levels.iter().enumerate() {
            let r = round(&rt, &engine, n, &format!("r{rep}c{n}"), new_tokens);
            let rate = report(&format!("parallel={parallel}"), &r, &engine);
            ratios[li].push(rate / base_rate);
        }
    }
    for (li, &n) in levels.iter().enumerate() {
        let mut r = ratios[li].clone();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "ratio\tconversations={n}\taggregate_vs_single_median={:.2}\teach={:?}",
            r[r.len() / 2],
            r.iter()
                .map(|v| (v * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    }
    println!(
        "threads={}\tpeak_rss_mb={:.0}",
        candle_core::utils::get_num_threads(),
        sandra_models::testing::peak_rss_mb()
    );
}
