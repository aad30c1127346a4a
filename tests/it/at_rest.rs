//! Encryption at rest, end to end: the access token and app secret are stored through the
//! vault (nowhere else), a real conversation runs (a text and, when the speech tools are
//! installed, a voice note), the app stops, and no file under the data directory holds the
//! token, the app secret, a message body, a reply or the transcript, in plain, base64 or hex.
//! And `sandra secrets` through the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use sandra::app::Application;
use sandra::vault::Vault;
use sandra_actors::secret::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::support::*;

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `needle` as it could appear on disk: plain, hex (both cases), and base64 (standard and
/// URL-safe) at each of the three alignments it can have inside a longer base64 text (the
/// characters that depend on the neighbouring bytes are cut off).
fn forms(needle: &str) -> Vec<Vec<u8>> {
    let b = needle.as_bytes();
    let mut out = vec![
        b.to_vec(),
        hex::encode(b).into_bytes(),
        hex::encode_upper(b).into_bytes(),
    ];
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for pad in 0..3 {
            let mut bytes = vec![0u8; pad];
            bytes.extend_from_slice(b);
            let text = engine.encode(&bytes);
            // The first group mixes in the bytes before, the last the bytes after.
            let start = if pad == 0 { 0 } else { 4 };
            let stable = text.get(start..text.len().saturating_sub(4)).unwrap_or("");
            if stable.len() >= 8 {
                out.push(stable.as_bytes().to_vec());
            }
        }
    }
    out
}

fn found_in(files: &[PathBuf], needle: &str) -> Vec<String> {
    let forms = forms(needle);
    let mut hits = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).unwrap();
        for form in &forms {
            if bytes.windows(form.len()).any(|w| w == &form[..]) {
                hits.push(format!(
                    "{} ({})",
                    f.display(),
                    String::from_utf8_lossy(form)
                ));
            }
        }
    }
    hits
}

fn voice_webhook(wamid: &str, from: &str, media_id: &str, sha256_b64: &str) -> Vec<u8> {
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Voice"}, "wa_id": from}],
            "messages": [{"from": from, "id": wamid, "timestamp": base_ts().to_string(), "type": "audio",
                "audio": {"mime_type": "audio/ogg; codecs=opus", "sha256": sha256_b64, "id": media_id, "voice": true}}]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn no_file_under_the_data_dir_holds_a_secret_or_what_was_said() {
    const BODY: &str = "my private diary line about the blue heron";
    let dir = tempfile::tempdir().unwrap();
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let mut cfg = test_config(dir.path().join("data"), graph.url());
    // Only the vault knows the token and the app secret: the fake Graph API refuses any other
    // token and the webhook signature needs the secret, so the conversation below works only
    // if the stored values were used.
    cfg.whatsapp.access_token = SecretString::default();
    cfg.whatsapp.app_secret = SecretString::default();
    let vault = Vault::open(&cfg).unwrap();
    vault
        .set("whatsapp.access_token", &SecretString::from(ACCESS_TOKEN))
        .unwrap();
    vault
        .set("whatsapp.app_secret", &SecretString::from(APP_SECRET))
        .unwrap();

    let models = tempfile::tempdir().unwrap();
    let clip = sandra_models::testing_whisper::spoken_voice_note("Remember the heron", "en");
    let transcriber = match &clip {
        Some(_) => {
            sandra_models::testing_whisper::write_tiny_model(models.path(), 5);
            let opts = sandra_models::whisper::WhisperOptions {
                max_new_tokens: Some(8),
                ..Default::default()
            };
            Some(sandra_models::whisper::Transcriber::load(models.path(), opts, 4).unwrap())
        }
        None => {
            println!("voice note skipped: espeak-ng/opusenc not installed");
            None
        }
    };
    let app = Application::build_with(cfg, Arc::new(EchoBrain::default()), transcriber)
        .await
        .unwrap();
    let app = TestApp::from_app(app, dir, graph);

    let r = app
        .post_signed(&text_webhook("wamid.atrest1", "15550004242", BODY, 0))
        .await;
    assert_eq!(r.status(), 200);
    let sent = app.graph.wait_accepted(1, Duration::from_secs(20)).await;
    let reply = sent[0].body["text"]["body"].as_str().unwrap().to_string();
    assert!(reply.contains(BODY), "{reply}");

    let mut transcript = None;
    if let Some(clip) = clip {
        app.graph
            .add_media("MEDIA-AR", "audio/ogg; codecs=opus", clip.clone());
        let sha = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&clip));
        app.post_signed(&voice_webhook(
            "wamid.atrest2",
            "15550004242",
            "MEDIA-AR",
            &sha,
        ))
        .await;
        let sent = app.graph.wait_accepted(2, Duration::from_secs(60)).await;
        assert_eq!(sent.len(), 2);
        // What Sandra heard is the user's text of the last turn in the conversation's memory.
        let key = app.system.store.outbox_all().unwrap()[1].key.clone();
        let session = app.system.store.load_session(&key).unwrap().unwrap();
        let heard = session
            .history
            .iter()
            .find(|t| t.wamids.iter().any(|w| w == "wamid.atrest2"))
            .map(|t| t.text.trim().to_string())
            .unwrap_or_default();
        // A tiny random model may hear next to nothing; only a telling string is searched.
        if heard.len() >= 8 {
            transcript = Some(heard);
        }
    }

    let (dir, _graph) = app.stop().await;
    let files = files_under(&dir.path().join("data"));
    // The scan does read the database: the message id, a lookup key, is stored plain.
    assert!(!found_in(&files, "wamid.atrest1").is_empty());
    let mut secrets = vec![
        ("the access token", ACCESS_TOKEN.to_string()),
        ("the app secret", APP_SECRET.to_string()),
        ("the message body", BODY.to_string()),
        ("the reply", reply),
    ];
    if let Some(t) = transcript {
        secrets.push(("the transcript", t));
    }
    for (what, needle) in secrets {
        let hits = found_in(&files, &needle);
        assert!(hits.is_empty(), "{what} found on disk: {hits:?}");
    }
}

fn sandra(args: &[&str], stdin: &str, home: &Path) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandra"));
    cmd.args(args)
        .current_dir(home)
        .env_remove("SANDRA_MASTER_KEY")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("WHATSAPP_ACCESS_TOKEN")
        .env_remove("SANDRA_DATA_DIR");
    crate::support::run_with_stdin(cmd, stdin.as_bytes())
}

#[test]
fn sandra_secrets_stores_lists_and_removes_through_the_binary() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config.toml");
    std::fs::write(&config, "[storage]\ndata_dir = \"data\"\n").unwrap();
    let c = config.to_str().unwrap();

    let out = sandra(
        &["secrets", "set", "whatsapp.access_token", "--config", c],
        "EAAG-from-stdin\n",
        home.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sandra(&["secrets", "list", "--config", c], "", home.path());
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.trim(), "whatsapp.access_token");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("EAAG"));

    // The value, without its newline, is what the server will read.
    let mut cfg = sandra::config::Config::default();
    cfg.storage.data_dir = home.path().join("data");
    let v = Vault::open(&cfg).unwrap();
    assert_eq!(
        v.get("whatsapp.access_token")
            .unwrap()
            .unwrap()
            .expose_secret(),
        "EAAG-from-stdin"
    );

    // A name that is not a storable key, or a value the config refuses, is an error.
    let out = sandra(
        &["secrets", "set", "whatsapp.token", "--config", c],
        "x\n",
        home.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("whatsapp.access_token"));
    let out = sandra(
        &["secrets", "set", "whatsapp.api_version", "--config", c],
        "latest\n",
        home.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("whatsapp.api_version"));

    let out = sandra(
        &["secrets", "remove", "whatsapp.access_token", "--config", c],
        "",
        home.path(),
    );
    assert!(out.status.success());
    assert!(v.names().unwrap().is_empty());
}
