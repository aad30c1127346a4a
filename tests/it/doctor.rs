//! `sandra doctor`: every check's pass and fail cases against the fake Graph API, and the public
//! URL handshake against the running app itself on loopback.

use std::process::Command;

use sandra::config::{Config, LlmBackend};
use sandra::doctor::{Check, Options, run_checks, run_checks_with};
use sandra_actors::secret::SecretString;

use crate::support::*;

const WABA: &str = "102290129340398";

/// The running app's own config, completed with what the doctor looks at, and no models
/// expected (each test asks for what it checks).
fn doctor_config(app: &TestApp) -> Config {
    let mut c = test_config(app.dir.path().join("data"), app.graph.url());
    c.server.public_url = format!("http://{}", app.addr);
    c.whatsapp.business_account_id = WABA.into();
    c.transcription.enabled = false;
    c.vision.enabled = false;
    c
}

fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"))
}

#[tokio::test]
async fn a_complete_set_up_passes_every_check() {
    let app = TestApp::spawn().await;
    app.graph.set_subscribed_apps(WABA, &["Sandra"]);
    let checks = run_checks_with(
        &doctor_config(&app),
        Options {
            system: Some(&app.system),
            ..Default::default()
        },
    )
    .await;
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    for n in [
        "config",
        "data directory",
        "master key",
        "API version",
        "token and number",
        "webhook subscription",
        "public webhook URL",
        "model: chat",
        "actors",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let number = find(&checks, "token and number");
    assert!(number.detail.contains("+1 555-078-3881"), "{number:?}");
    assert!(number.detail.contains("Sandra Test"), "{number:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_bad_token_or_number_fails_with_the_fix() {
    let app = TestApp::spawn().await;
    let mut cfg = doctor_config(&app);
    cfg.whatsapp.access_token = SecretString::from("EAAG-expired");
    let checks = run_checks(&cfg).await;
    let c = find(&checks, "token and number");
    assert!(!c.ok);
    assert!(c.detail.contains("190"), "{c:?}");
    assert!(
        c.fix.as_deref().unwrap().contains("WHATSAPP_ACCESS_TOKEN"),
        "{c:?}"
    );
    // The subscription check needs the token too: it names the same fix.
    let s = find(&checks, "webhook subscription");
    assert!(!s.ok && s.detail.contains("190"), "{s:?}");
    // No check repeats the token.
    assert!(!format!("{checks:?}").contains("EAAG-expired"));

    let mut cfg = doctor_config(&app);
    cfg.whatsapp.phone_number_id = "999000111".into();
    let c = find(&run_checks(&cfg).await, "token and number").clone();
    assert!(!c.ok && c.detail.contains("100"), "{c:?}");
    assert!(
        c.fix.as_deref().unwrap().contains("Phone number ID"),
        "{c:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_retired_version_an_unsubscribed_app_and_a_red_number_fail() {
    let app = TestApp::spawn().await;
    app.graph.set_subscribed_apps(WABA, &[]);
    app.graph.set_phone_number_field("quality_rating", "RED");
    let mut cfg = doctor_config(&app);
    cfg.whatsapp.api_version = "v20.0".into();
    let checks = run_checks(&cfg).await;
    let v = find(&checks, "API version");
    assert!(
        !v.ok && v.fix.as_deref().unwrap().contains("v26.0"),
        "{v:?}"
    );
    let s = find(&checks, "webhook subscription");
    assert!(
        !s.ok && s.fix.as_deref().unwrap().contains("subscribed_apps"),
        "{s:?}"
    );
    assert!(!find(&checks, "token and number").ok);
    app.stop().await;
}

#[tokio::test]
async fn the_public_url_handshake_catches_a_wrong_token_and_a_dead_address() {
    let app = TestApp::spawn().await;
    app.graph.set_subscribed_apps(WABA, &["Sandra"]);
    // Another verify token than the running Sandra has: refused end to end.
    let mut cfg = doctor_config(&app);
    cfg.whatsapp.verify_token = SecretString::from("not-the-one");
    let c = find(&run_checks(&cfg).await, "public webhook URL").clone();
    assert!(!c.ok && c.detail.contains("403"), "{c:?}");
    assert!(!c.detail.contains("not-the-one"), "{c:?}");
    // Nothing listening there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut cfg = doctor_config(&app);
    cfg.server.public_url = format!("http://127.0.0.1:{port}");
    let c = find(&run_checks(&cfg).await, "public webhook URL").clone();
    assert!(
        !c.ok && c.fix.as_deref().unwrap().contains("proxy"),
        "{c:?}"
    );
    assert!(!c.detail.contains(VERIFY_TOKEN), "{c:?}");
    app.stop().await;
}

#[tokio::test]
async fn missing_models_fail_with_the_fetch_command() {
    let app = TestApp::spawn().await;
    let mut cfg = doctor_config(&app);
    cfg.llm.backend = LlmBackend::Local;
    cfg.transcription.enabled = true;
    cfg.vision.enabled = true;
    let checks = run_checks(&cfg).await;
    for (name, fix) in [
        ("model: chat", "sandra models fetch"),
        ("model: transcription", "whisper-base"),
        ("model: ocr", "ppocr-v6-small"),
    ] {
        let c = find(&checks, name);
        assert!(!c.ok, "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains(fix), "{c:?}");
    }
    app.stop().await;
}

/// The real binary prints PASS/FAIL lines with fixes and exits 1 when anything fails.
#[tokio::test]
async fn sandra_doctor_exits_non_zero_on_a_failure() {
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandra"));
    cmd.arg("doctor")
        .env("SANDRA_DATA_DIR", dir.path().join("data"))
        .env("WHATSAPP_PHONE_NUMBER_ID", PHONE_NUMBER_ID)
        .env("WHATSAPP_ACCESS_TOKEN", "EAAG-wrong-token")
        .env("WHATSAPP_VERIFY_TOKEN", VERIFY_TOKEN)
        .env("WHATSAPP_APP_SECRET", APP_SECRET)
        .env("WHATSAPP_GRAPH_BASE_URL", graph.url())
        .env_remove("SANDRA_MASTER_KEY")
        .env_remove("CREDENTIALS_DIRECTORY");
    // Off the runtime: the fake Graph API answers on it meanwhile.
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("PASS  config"), "{stdout}");
    assert!(stdout.contains("FAIL  token and number"), "{stdout}");
    assert!(
        stdout.contains("fix: create a System User token"),
        "{stdout}"
    );
    assert!(!stdout.contains("EAAG-wrong-token"), "{stdout}");
}

/// Voices: the doctor names the language each installed voice speaks (a fetched one re-hashed,
/// one dropped in by hand taken as is), fails with the fix when a fetched voice changed on
/// disk, and says how to get one when there is none; the portal's Models page lists each.
#[tokio::test]
async fn voices_are_listed_by_language_and_a_changed_one_fails() {
    use sandra_models::catalog::{
        InstalledFile, InstalledModel, Manifest, ModelRole, ModelSource, hash_file, models_dir,
    };
    let app = TestApp::spawn().await;
    let cfg = doctor_config(&app);
    let none = run_checks(&cfg).await;
    let c = find(&none, "model: voice");
    assert!(c.ok && c.detail.contains("none installed"), "{c:?}");
    assert!(c.detail.contains("piper-en_US-joe-medium"), "{c:?}");

    let models = models_dir(&cfg.storage.data_dir);
    let piper = models.join("piper");
    std::fs::create_dir_all(&piper).unwrap();
    for (stem, bytes) in [
        ("es_ES-davefx-medium", b"spanish".as_slice()),
        ("en_US-joe-medium", b"english"),
    ] {
        std::fs::write(piper.join(format!("{stem}.onnx")), bytes).unwrap();
        std::fs::write(piper.join(format!("{stem}.onnx.json")), b"{}").unwrap();
    }
    let mut files = Vec::new();
    for f in [
        "piper/es_ES-davefx-medium.onnx",
        "piper/es_ES-davefx-medium.onnx.json",
    ] {
        let (sha256, size) = hash_file(&models.join(f)).unwrap();
        files.push(InstalledFile {
            path: f.into(),
            sha256,
            size,
        });
    }
    let mut manifest = Manifest::default();
    manifest.set(
        ModelRole::Voice,
        InstalledModel {
            id: "piper-es_ES-davefx-medium".into(),
            format: "piper".into(),
            files,
            source: ModelSource::Local {
                origin: "test".into(),
            },
            licence: None,
            installed_at: 1,
        },
    );
    manifest.save(&models).unwrap();

    let checks = run_checks(&cfg).await;
    let c = find(&checks, "model: voice");
    assert!(c.ok, "{c:?}");
    assert!(
        c.detail.contains("es (es_ES-davefx-medium)") && c.detail.contains("en (en_US-joe-medium)"),
        "{c:?}"
    );
    let rows = sandra::admin::model_rows(&cfg);
    let es = rows
        .iter()
        .find(|r| r.role == "voice (es)")
        .expect("a Spanish row");
    assert!(
        es.installed
            .as_deref()
            .unwrap()
            .contains("piper-es_ES-davefx-medium [piper]")
            && es.installed.as_deref().unwrap().contains("verified"),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r.role == "voice (en)"), "{rows:?}");

    std::fs::write(piper.join("es_ES-davefx-medium.onnx"), b"spanisH").unwrap();
    let checks = run_checks(&cfg).await;
    let c = find(&checks, "model: voice");
    assert!(
        !c.ok && c.detail.contains("piper-es_ES-davefx-medium"),
        "{c:?}"
    );
    assert!(
        c.fix.as_deref().unwrap().contains("sandra models fetch"),
        "{c:?}"
    );
    app.stop().await;
}
