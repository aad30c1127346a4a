//! Conversations with a real language-model brain: a tiny random-weight GGUF model loaded
//! through the real loading path (tokenizer built from GGUF metadata), and the OpenAI-compatible
//! remote backend against a loopback fake server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use sandra::app::Application;
use sandra::config::LlmBackend;
use sandra_models::testing::{Behaviour, Family, vocab, write_model};
use serde_json::{Value, json};

use crate::support::*;

/// Webhook in → local candle model (tiny qwen2 that always says "o") → reply to the fake Graph.
#[tokio::test]
async fn local_tiny_model_answers_end_to_end() {
    let models = tempfile::tempdir().unwrap();
    let o = vocab(Family::Qwen2).id("o");
    let (path, _) = write_model(models.path(), Family::Qwen2, Behaviour::AlwaysEmit(o), 11);
    let app = TestApp::spawn_built(move |c| {
        c.llm.backend = LlmBackend::Local;
        c.llm.model = path;
        c.llm.sampling = sandra_models::chat::SamplingParams::greedy(6).into();
        c.llm.context_tokens = 256;
        // The tiny model's byte-level vocabulary spends a token per character: keep it short.
        c.llm.system_prompt = "Be brief.".into();
    })
    .await;
    // Without a profile name: at a token per character, the name sentence and the clock line
    // would not both fit the tiny model's 256-token context.
    let mut hook: Value =
        serde_json::from_slice(&text_webhook("wamid.llm1", "15550009191", "Hello model", 0))
            .unwrap();
    hook["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = "".into();
    app.post_signed(hook.to_string().as_bytes()).await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(30)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["text"]["body"], "oooooo");
    app.stop().await;
}

/// A model path that does not load stops start-up with the path and the reason.
#[tokio::test]
async fn bad_model_path_fails_startup_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let mut cfg = test_config(dir.path().join("data"), graph.url());
    cfg.llm.backend = LlmBackend::Local;
    cfg.llm.model = dir.path().join("no-such-model.gguf");
    let err = Application::build(cfg).await.err().expect("must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("no-such-model.gguf"), "{msg}");
}

type Seen = Arc<Mutex<Vec<Value>>>;

async fn fake_openai(seen: Seen) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |axum::Json(body): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                let summarising = body["messages"][0]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("summarise conversations");
                seen.lock().unwrap().push(body);
                let content = if summarising { "The user is Ana and likes tea." } else { "Paris." };
                axum::Json(json!({
                    "id": "x", "object": "chat.completion", "model": "fake",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
                }))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

/// The remote backend gets the persona, the history and the new message; when the history no
/// longer fits the token budget, older turns are folded into a running summary, not dropped.
#[tokio::test]
async fn remote_backend_with_history_and_running_summary() {
    let seen: Seen = Default::default();
    let url = fake_openai(seen.clone()).await;
    let app = TestApp::spawn_built(move |c| {
        c.llm.backend = LlmBackend::Openai;
        c.llm.openai.base_url = url;
        c.llm.openai.model = "fake-model".into();
        // Room for the first exchange (each user message with its clock note) beside the
        // second question, not for all four.
        c.llm.openai.context_tokens = 650;
        c.llm.context_tokens = 650;
        c.llm.sampling.max_new_tokens = 100;
    })
    .await;
    let from = "15550009292";
    let long = "I really like tea. ".repeat(20);
    for i in 0..4 {
        app.post_signed(&text_webhook(
            &format!("wamid.r{i}"),
            from,
            &format!("{i}: {long}"),
            i,
        ))
        .await;
        assert_eq!(
            app.graph
                .wait_accepted(i as usize + 1, Duration::from_secs(10))
                .await
                .len(),
            i as usize + 1
        );
    }
    let requests = seen.lock().unwrap().clone();
    let first = &requests[0];
    assert_eq!(first["model"], "fake-model");
    assert!(
        first["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("Sandra")
    );
    assert_eq!(first["messages"][0]["role"], "system");
    // The second turn carries the first exchange as history.
    let second = &requests[1];
    let roles: Vec<&str> = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    // Some turn overflowed the budget: a summary request happened and the summary is kept.
    assert!(requests.iter().any(|r| {
        r["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("summarise conversations")
    }));
    let key = sandra_actors::whatsapp::ConversationKey::new(
        PHONE_NUMBER_ID,
        &sandra_actors::whatsapp::ChatId::Phone(from.into()),
    );
    let session = app.system.store.load_session(&key).unwrap().unwrap();
    assert_eq!(
        session.summary.as_deref(),
        Some("The user is Ana and likes tea.")
    );
    assert!(session.history.len() < 8, "folded turns left the history");
    let last = requests.last().unwrap();
    assert!(
        last["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("The user is Ana and likes tea.")
    );
    assert!(
        app.graph
            .accepted()
            .iter()
            .all(|r| r.body["text"]["body"] == "Paris.")
    );
    app.stop().await;
}

/// The clock lines that can start for every minute from `from` to `to` in `zone` (a turn can
/// straddle a minute).
fn local_minutes(from: jiff::Timestamp, to: jiff::Timestamp, zone: &str) -> Vec<String> {
    let mut t = from - jiff::SignedDuration::from_secs(from.as_second() % 60);
    let mut out = Vec::new();
    while t <= to {
        let local = t.in_tz(zone).unwrap();
        out.push(format!(
            "[It is now {} in {zone} (UTC{};",
            local.strftime("%A %-d %B %Y, %H:%M"),
            local.strftime("%:z")
        ));
        t += jiff::SignedDuration::from_secs(60);
    }
    out
}

/// Asked the time, the model is told the time: the newest message of a real turn's prompt ends
/// with the date and time where the user is, guessed from their number's calling code (+351: Lisbon);
/// in a group, where the person who asked is (+1 650: California).
#[tokio::test]
async fn the_prompt_carries_the_local_time_of_whoever_asked() {
    let seen: Seen = Default::default();
    let url = fake_openai(seen.clone()).await;
    let app = TestApp::spawn_built(move |c| {
        c.llm.backend = LlmBackend::Openai;
        c.llm.openai.base_url = url;
        c.llm.openai.model = "fake-model".into();
    })
    .await;
    let before = jiff::Timestamp::now();
    app.post_signed(&text_webhook(
        "wamid.tz1",
        "351912345678",
        "What time is it in Lisbon?",
        0,
    ))
    .await;
    app.graph.wait_accepted(1, Duration::from_secs(10)).await;
    let mut group: Value = serde_json::from_slice(&fresh_fixture("group_text.json", 1)).unwrap();
    group["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] =
        "Sandra, what day is it?".into();
    app.post_signed(group.to_string().as_bytes()).await;
    app.graph.wait_accepted(2, Duration::from_secs(10)).await;
    let after = jiff::Timestamp::now();

    let requests = seen.lock().unwrap().clone();
    // The clock ends the newest message (the system prompt stays the same for the cache).
    let newest = |i: usize| {
        let messages = requests[i]["messages"].as_array().unwrap();
        let last = messages.last().unwrap();
        assert_eq!(last["role"], "user");
        assert!(
            !messages[0]["content"]
                .as_str()
                .unwrap()
                .contains("It is now"),
            "{messages:?}"
        );
        last["content"].as_str().unwrap().to_string()
    };
    let (one, two) = (newest(0), newest(1));
    assert!(
        local_minutes(before, after, "Europe/Lisbon")
            .iter()
            .any(|l| one.ends_with(&format!("\n\n{l} guessed from the user's number).]"))),
        "{one}"
    );
    assert!(
        local_minutes(before, after, "America/Los_Angeles")
            .iter()
            .any(|l| two.ends_with(&format!(
                "\n\n{l} guessed from the number of the person who addressed you).]"
            ))),
        "{two}"
    );
    app.stop().await;
}
