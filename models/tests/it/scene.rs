//! Scene understanding: the local moondream2 code on a tiny random-weight model (safetensors and
//! GGUF), and the remote backend against a fake OpenAI-compatible server on 127.0.0.1.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine as _;
use image::{Rgb, RgbImage};
use sandra_models::testing::Behaviour;
use sandra_models::testing_scene::{END_MARKER, TinyScene, Weights, write_scene_model};
use sandra_models::vision::scene::{
    CAPTION_QUESTION, DESCRIPTOR_FILE, LocalScene, RemoteScene, SceneError,
};
use sandra_models::worker::ModelWorker;
use serde_json::{Value, json};

/// The random models, written once per test binary, by weights format: `(tempdir, model dir,
/// vocabulary)`.
fn random_model(weights: Weights) -> &'static (tempfile::TempDir, PathBuf, TinyScene) {
    static ST: OnceLock<(tempfile::TempDir, PathBuf, TinyScene)> = OnceLock::new();
    static GG: OnceLock<(tempfile::TempDir, PathBuf, TinyScene)> = OnceLock::new();
    let cell = match weights {
        Weights::Safetensors => &ST,
        Weights::Gguf => &GG,
    };
    cell.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vlm");
        let tiny = write_scene_model(&dir, weights, Behaviour::Random, 7);
        (tmp, dir, tiny)
    })
}

/// A photo-like test image: a gradient with a coloured square.
fn picture(w: u32, h: u32, square: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        if x > w / 3 && x < 2 * w / 3 && y > h / 3 && y < 2 * h / 3 {
            Rgb(square)
        } else {
            Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 90])
        }
    })
}

#[test]
fn local_model_answers_within_max_tokens_in_both_formats() {
    for weights in [Weights::Safetensors, Weights::Gguf] {
        let (_, dir, _) = random_model(weights);
        let mut scene = LocalScene::load(dir).unwrap();
        let img = picture(640, 480, [250, 20, 20]);
        let a = scene
            .generate(&img, Some("What colour is the square?"), 12)
            .unwrap();
        assert!(a.tokens >= 1 && a.tokens <= 12, "{weights:?}: {a:?}");
        if !a.finished {
            assert_eq!(a.tokens, 12, "{weights:?}: {a:?}");
            assert!(!a.text.is_empty(), "{weights:?}: {a:?}");
        }
        // Greedy decoding: the same image and question give the same answer.
        let again = scene
            .generate(&img, Some("What colour is the square?"), 12)
            .unwrap();
        assert_eq!(a, again, "{weights:?}");
        let short = scene
            .generate(&img, Some("What colour is the square?"), 3)
            .unwrap();
        assert!(short.tokens <= 3, "{weights:?}: {short:?}");
    }
}

#[test]
fn caption_is_the_caption_question_and_other_questions_change_the_answer() {
    let (_, dir, _) = random_model(Weights::Safetensors);
    let mut scene = LocalScene::load(dir).unwrap();
    let img = picture(300, 300, [20, 250, 20]);
    let caption = scene.generate(&img, None, 16).unwrap();
    let blank = scene.generate(&img, Some("   "), 16).unwrap();
    let asked = scene.generate(&img, Some(CAPTION_QUESTION), 16).unwrap();
    assert_eq!(caption, asked);
    assert_eq!(caption, blank);
    let other = scene
        .generate(&img, Some("How many people are in the photo?"), 16)
        .unwrap();
    assert_ne!(caption, other, "the question must reach the model");
    // The image reaches the model too.
    let other_img = scene
        .generate(&RgbImage::from_pixel(300, 300, Rgb([0, 0, 255])), None, 16)
        .unwrap();
    assert_ne!(caption, other_img, "the image must reach the model");
}

#[test]
fn forced_tokens_bound_the_answer_and_eos_or_the_end_marker_stop_it() {
    let tmp = tempfile::tempdir().unwrap();
    // Every step picks "a": the answer runs into max_tokens.
    let probe = write_scene_model(
        &tmp.path().join("probe"),
        Weights::Gguf,
        Behaviour::Random,
        1,
    );
    let a_id = probe.id("a");
    let dir = tmp.path().join("a");
    write_scene_model(&dir, Weights::Gguf, Behaviour::AlwaysEmit(a_id), 1);
    let mut scene = LocalScene::load(&dir).unwrap();
    let img = picture(50, 40, [9, 9, 9]);
    let out = scene.generate(&img, Some("Say a"), 5).unwrap();
    assert_eq!(out.text, "aaaaa");
    assert_eq!(out.tokens, 5);
    assert!(!out.finished);
    assert_eq!(scene.answer(&img, None, 2).unwrap(), "aa");

    // EOS first: nothing said, one token generated, finished.
    let dir = tmp.path().join("eos");
    write_scene_model(
        &dir,
        Weights::Safetensors,
        Behaviour::AlwaysEmit(probe.eos),
        1,
    );
    let mut scene = LocalScene::load(&dir).unwrap();
    let out = scene.generate(&img, None, 50).unwrap();
    assert_eq!((out.text.as_str(), out.tokens, out.finished), ("", 1, true));

    // The text end marker ends the answer the same way, and is not part of it.
    let dir = tmp.path().join("end");
    write_scene_model(
        &dir,
        Weights::Safetensors,
        Behaviour::AlwaysEmit(probe.id(END_MARKER)),
        1,
    );
    let mut scene = LocalScene::load(&dir).unwrap();
    let out = scene.generate(&img, None, 50).unwrap();
    assert_eq!((out.text.as_str(), out.tokens, out.finished), ("", 1, true));

    // Cut off by max_tokens right after a `<`: that possible start of the marker is dropped,
    // the `<`s before it are text.
    let dir = tmp.path().join("lt");
    write_scene_model(&dir, Weights::Gguf, Behaviour::AlwaysEmit(probe.id("<")), 1);
    let mut scene = LocalScene::load(&dir).unwrap();
    let out = scene.generate(&img, None, 3).unwrap();
    assert_eq!(
        (out.text.as_str(), out.tokens, out.finished),
        ("<<", 3, false)
    );
}

/// A caller that stops waiting (a turn aborted on timeout) stops the generation at the next token.
#[tokio::test]
async fn a_job_whose_caller_has_gone_stops_generating() {
    let (_, dir, _) = random_model(Weights::Gguf);
    let dir = dir.clone();
    let worker: Arc<ModelWorker<LocalScene, ()>> =
        Arc::new(ModelWorker::spawn("scene-test", 1, move || LocalScene::load(&dir)).unwrap());
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (result_tx, result_rx) = std::sync::mpsc::channel();
    let img = picture(64, 64, [5, 5, 5]);
    let w = worker.clone();
    let caller = tokio::spawn(async move {
        w.run(move |scene: &mut LocalScene| {
            started_tx.send(()).unwrap();
            // Holds the job until its caller has gone, so the order is certain without timing.
            go_rx.recv().unwrap();
            result_tx.send(scene.generate(&img, None, 40)).unwrap();
        })
        .await
    });
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    go_tx.send(()).unwrap();
    let result = tokio::task::spawn_blocking(move || result_rx.recv().unwrap())
        .await
        .unwrap();
    match result {
        Err(SceneError::Inference(m)) => assert!(m.contains("cancelled"), "{m}"),
        other => panic!("generation went on for a caller that had gone: {other:?}"),
    }
}

#[test]
fn mangled_or_missing_files_are_model_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_scene_model(&dir, Weights::Safetensors, Behaviour::Random, 3);
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 3]).unwrap();
    match LocalScene::load(&dir) {
        Err(SceneError::Model(m)) => assert!(m.contains("model.safetensors"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a truncated weights file loaded"),
    }
    std::fs::write(&weights, b"not safetensors at all").unwrap();
    assert!(matches!(LocalScene::load(&dir), Err(SceneError::Model(_))));

    let dir = tmp.path().join("g");
    write_scene_model(&dir, Weights::Gguf, Behaviour::Random, 3);
    std::fs::write(dir.join("model-q8_0.gguf"), b"GGUF but garbage").unwrap();
    match LocalScene::load(&dir) {
        Err(SceneError::Model(m)) => assert!(m.contains("model-q8_0.gguf"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a garbage GGUF loaded"),
    }

    let dir = tmp.path().join("d");
    write_scene_model(&dir, Weights::Safetensors, Behaviour::Random, 3);
    std::fs::write(dir.join(DESCRIPTOR_FILE), br#"{"architecture": "llava"}"#).unwrap();
    match LocalScene::load(&dir) {
        Err(SceneError::Model(m)) => assert!(m.contains("llava"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an unknown architecture loaded"),
    }
    std::fs::remove_file(dir.join(DESCRIPTOR_FILE)).unwrap();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert!(matches!(LocalScene::load(&dir), Err(SceneError::Model(_))));
    assert!(matches!(
        LocalScene::load(&tmp.path().join("nothing")),
        Err(SceneError::Model(_))
    ));
}

// --- remote ---

#[derive(Clone, Default)]
struct Seen {
    bodies: Arc<Mutex<Vec<Value>>>,
    auth: Arc<Mutex<Vec<Option<String>>>>,
}

async fn completions(
    State(seen): State<Seen>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let v: Value = serde_json::from_str(&body).unwrap();
    seen.bodies.lock().unwrap().push(v.clone());
    seen.auth.lock().unwrap().push(
        headers
            .get("authorization")
            .map(|h| h.to_str().unwrap().to_string()),
    );
    match v["model"].as_str().unwrap() {
        "ok" => axum::Json(json!({
            "choices": [{"index": 0, "message": {"role": "assistant",
                         "content": " A red square on a gradient. "}, "finish_reason": "stop"}]
        }))
        .into_response(),
        "broken" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "mmproj failed to load"}})),
        )
            .into_response(),
        "busy" => (StatusCode::TOO_MANY_REQUESTS, "slow down, quota exceeded").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(json!({"choices": []})).into_response()
        }
        other => (StatusCode::BAD_REQUEST, format!("unknown model {other}")).into_response(),
    }
}

async fn server() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn remote_sends_the_question_and_a_jpeg_data_url_with_the_bearer() {
    let (base, seen) = server().await;
    let scene = RemoteScene::new(&format!("{base}/v1/"), "ok", Some("sk-test".into())).unwrap();
    let img = picture(2048, 1024, [250, 20, 20]);
    let answer = scene
        .answer(&img, Some("What colour is the square?"), 64)
        .await
        .unwrap();
    assert_eq!(answer, "A red square on a gradient.");

    let body = seen.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["model"], "ok");
    assert_eq!(body["max_tokens"], 64);
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["role"], "user");
    let parts = msgs[0]["content"].as_array().unwrap();
    assert_eq!(
        parts[0],
        json!({"type": "text", "text": "What colour is the square?"})
    );
    assert_eq!(parts[1]["type"], "image_url");
    let url = parts[1]["image_url"]["url"].as_str().unwrap();
    let b64 = url.strip_prefix("data:image/jpeg;base64,").unwrap();
    let jpeg = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(
        image::guess_format(&jpeg).unwrap(),
        image::ImageFormat::Jpeg
    );
    let back = image::load_from_memory(&jpeg).unwrap().to_rgb8();
    assert_eq!(back.dimensions(), (1024, 512), "downscaled, aspect kept");
    // The square is still red where it was.
    let p = back.get_pixel(512, 256);
    assert!(p[0] > 200 && p[1] < 60 && p[2] < 60, "{p:?}");
    assert_eq!(
        seen.auth.lock().unwrap()[0].as_deref(),
        Some("Bearer sk-test")
    );

    // A caption asks the caption question; no key, no authorization header.
    let anon = RemoteScene::new(&base, "ok", None).unwrap();
    anon.answer(&picture(100, 80, [0, 0, 0]), None, 32)
        .await
        .unwrap();
    let body = seen.bodies.lock().unwrap()[1].clone();
    assert_eq!(body["messages"][0]["content"][0]["text"], CAPTION_QUESTION);
    assert_eq!(seen.auth.lock().unwrap()[1], None);
}

#[tokio::test]
async fn remote_errors_carry_the_status_and_body_and_timeouts_are_reported() {
    let (base, _) = server().await;
    let img = picture(64, 64, [1, 1, 1]);
    let key = "sk-do-not-leak";
    for (model, status, excerpt) in [
        ("broken", "HTTP 500", "mmproj failed to load"),
        ("busy", "HTTP 429", "quota exceeded"),
    ] {
        let scene = RemoteScene::new(&base, model, Some(key.into())).unwrap();
        match scene.answer(&img, None, 16).await {
            Err(SceneError::Remote(m)) => {
                assert!(m.contains(status) && m.contains(excerpt), "{m}");
                assert!(!m.contains(key), "{m}");
            }
            other => panic!("{model}: {other:?}"),
        }
    }
    let slow = RemoteScene::new(&base, "slow", None)
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    match slow.answer(&img, None, 16).await {
        Err(SceneError::Remote(m)) => assert!(m.contains("did not answer within"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Nothing listening: a transport error naming the URL.
    let dead = RemoteScene::new("http://127.0.0.1:9", "ok", None).unwrap();
    match dead.answer(&img, None, 16).await {
        Err(SceneError::Remote(m)) => assert!(m.contains("127.0.0.1:9"), "{m}"),
        other => panic!("{other:?}"),
    }
}
