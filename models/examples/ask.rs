//! Asks a local GGUF chat model one question with Sandra's sampling defaults, to check answer
//! quality by hand: `cargo run --release -p sandra-models --example ask -- MODEL.gguf "question"`.

use sandra_models::chat::{ChatEngine, ChatMessage, DeviceChoice, SamplingParams};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(question)) = (args.next(), args.next()) else {
        eprintln!("usage: ask MODEL.gguf QUESTION");
        std::process::exit(2);
    };
    let engine = ChatEngine::load_local(
        model.as_ref(),
        DeviceChoice::Cpu,
        SamplingParams::greedy(200),
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let msgs = vec![
        ChatMessage::system(
            "You are Sandra, a friendly and helpful assistant that people talk to on WhatsApp. Answer in the language the user writes in. Be concise.",
        ),
        ChatMessage::user(question),
    ];
    let t = std::time::Instant::now();
    let r = engine.chat(msgs).await.unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{}\n[{} prompt + {} reply tokens, {:.1} s]",
        r.text.trim(),
        r.prompt_tokens,
        r.completion_tokens,
        t.elapsed().as_secs_f32()
    );
}
