//! Local chat model speed: load time, prefill and generation tokens/s, peak RSS.
//!
//! `cargo bench -p sandra-models --bench bench_llm -- <model.gguf> [threads]` (greedy, the same
//! ~220-token prompt as `scripts/bench-llm-llamacpp.py`; `scripts/bench-llm.sh` runs both).
//! Under `cargo test` (no `--bench` argument) it does nothing.

use std::path::PathBuf;
use std::time::Instant;

use sandra_models::chat::{ChatEngine, ChatMessage, DeviceChoice, LocalOptions, SamplingParams};

/// The shared benchmark prompt (system + user), about 220 tokens with ChatML.
pub fn bench_messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(
            "You are Sandra, a helpful assistant that people talk to on WhatsApp. \
             Answer clearly and concisely, in the language of the question.",
        ),
        ChatMessage::user(
            "I am planning a three-day trip to Lisbon in early spring with two friends. We like \
             walking, good food, old neighbourhoods, music and museums, but we do not want to \
             spend much money. We arrive on Friday morning by train and leave on Sunday evening. \
             Could you suggest a plan for each day, with a few places to eat that are not too \
             touristy, what kind of weather to expect, how to get around the city cheaply, and \
             one or two day trips we could take instead if it rains? Also tell us which areas \
             are best to stay in for a group of three on a budget, and anything we should book \
             in advance. Please keep it practical.",
        ),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("bench_llm: run with `cargo bench -p sandra-models --bench bench_llm -- MODEL`");
        return;
    }
    let rest: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(model) = rest.first().map(PathBuf::from) else {
        eprintln!(
            "usage: cargo bench -p sandra-models --bench bench_llm -- MODEL.gguf [GEN_TOKENS]"
        );
        std::process::exit(2);
    };
    let gen_tokens: usize = rest.get(1).and_then(|s| s.parse().ok()).unwrap_or(128);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);

    // The default `cpu_prefill`, or BENCH_PREFILL=compact|repacked.
    let cpu_prefill = sandra_models::testing::bench_cpu_prefill();
    let t = Instant::now();
    let opts = LocalOptions {
        device: DeviceChoice::Auto,
        parallel: 1,
        kv_cache_mb: 512,
        cpu_prefill,
        ..Default::default()
    };
    let engine =
        ChatEngine::load_local_with(&model, opts, SamplingParams::greedy(1)).expect("loading");
    let load_s = t.elapsed().as_secs_f64();
    eprintln!("loaded in {load_s:.2} s: {}", engine.describe());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Every call gets its own system prompt, so the engine cannot reuse the previous call's
    // cached prompt beyond the template's first few tokens; rates count the tokens it fed.
    let tagged = |call: usize| {
        let mut m = bench_messages();
        m[0] = ChatMessage::system(format!("[call {call}] {}", m[0].content));
        m
    };
    let mut call = 0;
    let mut fresh = || {
        call += 1;
        tagged(call)
    };
    let prompt_tokens = engine.count_tokens(&fresh());
    eprintln!("prompt: {prompt_tokens} tokens");
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let mut generated = 0;
    for _ in 0..runs {
        // One token: prefill + one sampling step. N tokens: prefill + N steps.
        let t = Instant::now();
        let r = rt
            .block_on(engine.chat_with(fresh(), SamplingParams::greedy(1)))
            .unwrap();
        let t1 = t.elapsed().as_secs_f64();
        let rate = (r.prompt_tokens - r.reused_prompt_tokens) as f64 / t1;
        eprintln!("prefill run: {t1:.2} s");
        let t = Instant::now();
        let r = rt
            .block_on(engine.chat_with(fresh(), SamplingParams::greedy(gen_tokens)))
            .unwrap();
        let tn = t.elapsed().as_secs_f64();
        let t_prefill = (r.prompt_tokens - r.reused_prompt_tokens) as f64 / rate;
        generated = r.completion_tokens;
        prefill.push(rate);
        decode.push((r.completion_tokens.saturating_sub(1)) as f64 / (tn - t_prefill).max(1e-9));
    }
    // The conversation's next turn: the last prompt and reply come from the cache, only the
    // new message is read before the first reply token.
    let mut next = tagged(call);
    let last = rt
        .block_on(engine.chat_with(next.clone(), SamplingParams::greedy(gen_tokens)))
        .unwrap();
    next.push(ChatMessage::assistant(last.text));
    next.push(ChatMessage::user(
        "Thanks! Which of those museums are free on Sundays?",
    ));
    let t = Instant::now();
    let r = rt
        .block_on(engine.chat_with(next, SamplingParams::greedy(1)))
        .unwrap();
    let next_turn_s = t.elapsed().as_secs_f64();
    eprintln!(
        "next turn: {} prompt tokens, {} reused, first token after {next_turn_s:.2} s",
        r.prompt_tokens, r.reused_prompt_tokens
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "candle\t{}\tload_s={load_s:.2}\tprompt_tokens={prompt_tokens}\tgen_tokens={generated}\t\
         prefill_tok_s={:.1}\tgen_tok_s={:.1}\tpeak_rss_mb={:.0}\tthreads={}\t\
         cpu_prefill={cpu_prefill:?}\tnext_turn_first_token_s={next_turn_s:.2}",
        engine.describe(),
        median(&mut prefill),
        median(&mut decode),
        sandra_models::testing::peak_rss_mb(),
        candle_core::utils::get_num_threads(),
    );
}
