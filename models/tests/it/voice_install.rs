//! `sandra models fetch --model piper-…`: a voice from the Hub's `resolve` URLs, against a fake
//! Hub on loopback that answers as huggingface.co does (an LFS file: a 302 to a CDN on another
//! origin, carrying `X-Linked-Etag` = sha256, `X-Linked-Size` and `X-Repo-Commit`; a small git
//! file: 200 with a git blob id as ETag; a missing file: 404 `EntryNotFound`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sandra_models::catalog::{self, InstallError, Manifest, ModelRole, ModelSource};
use sandra_models::install::{self, FetchOptions};
use sha2::{Digest, Sha256};

const COMMIT: &str = "5ca1ab1e0000000000000000000000000000beef";

/// (what was asked, the Authorization header it came with).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

#[derive(Clone, Default)]
struct Hub {
    /// Repository path → bytes.
    files: Arc<HashMap<String, Vec<u8>>>,
    /// Serve bytes that do not match the published hash (a corrupted CDN object).
    corrupt: bool,
    seen: Seen,
    /// `http://localhost:PORT`: the "CDN", another origin than the Hub's 127.0.0.1.
    cdn: Arc<Mutex<String>>,
}

fn auth(h: &HeaderMap) -> Option<String> {
    h.get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
}

async fn resolve(
    State(hub): State<Hub>,
    UrlPath((org, repo, rev, path)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    hub.seen
        .lock()
        .unwrap()
        .push((format!("hub:{path}"), auth(&headers)));
    let not_found = |what: &'static str| {
        (
            StatusCode::NOT_FOUND,
            [("x-error-code", what)],
            format!("{{\"error\":\"{what}\"}}"),
        )
            .into_response()
    };
    if (org.as_str(), repo.as_str()) != ("rhasspy", "piper-voices") {
        return not_found("RepoNotFound");
    }
    if rev != "v1.0.0" {
        return not_found("RevisionNotFound");
    }
    let Some(bytes) = hub.files.get(&path) else {
        return not_found("EntryNotFound");
    };
    if path.ends_with(".onnx") {
        let sha = hex::encode(Sha256::digest(bytes));
        let cdn = format!("{}/cdn/{path}?X-Amz-Signature=x", hub.cdn.lock().unwrap());
        (
            StatusCode::FOUND,
            [
                ("location", cdn),
                ("x-linked-etag", format!("\"{sha}\"")),
                ("x-linked-size", bytes.len().to_string()),
                ("x-repo-commit", COMMIT.to_string()),
                ("etag", "W/\"1c-abc\"".to_string()),
            ],
        )
            .into_response()
    } else {
        (
            [
                ("etag", "\"3c9ad8d1b8b2fbcd8e0c8ac0a1a2b2e2f0a7d3e4\""),
                ("x-repo-commit", COMMIT),
            ],
            bytes.clone(),
        )
            .into_response()
    }
}

async fn cdn(
    State(hub): State<Hub>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    hub.seen
        .lock()
        .unwrap()
        .push((format!("cdn:{path}"), auth(&headers)));
    let mut bytes = hub.files[&path].clone();
    if hub.corrupt {
        bytes[7] ^= 0x40;
    }
    bytes.into_response()
}

/// Starts the fake Hub on its own runtime thread; returns its endpoint.
fn start(hub: Hub) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            *hub.cdn.lock().unwrap() = format!("http://localhost:{port}");
            let app = Router::new()
                .route("/{org}/{repo}/resolve/{rev}/{*path}", get(resolve))
                .route("/cdn/{*path}", get(cdn))
                .with_state(hub);
            tx.send(format!("http://127.0.0.1:{port}")).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

const DAVEFX: &str = "piper-es_ES-davefx-medium";

fn davefx_files() -> HashMap<String, Vec<u8>> {
    let onnx: Vec<u8> = (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let json = br#"{"audio":{"sample_rate":22050},"espeak":{"voice":"es"}}"#.to_vec();
    HashMap::from([
        (
            "es/es_ES/davefx/medium/es_ES-davefx-medium.onnx".to_string(),
            onnx,
        ),
        (
            "es/es_ES/davefx/medium/es_ES-davefx-medium.onnx.json".to_string(),
            json,
        ),
    ])
}

fn opts(endpoint: String) -> FetchOptions {
    FetchOptions {
        progress: false,
        hub_endpoint: endpoint,
        hub_token: Some("hf_test_token".into()),
        ..FetchOptions::default()
    }
}

fn piper_dir_entries(models: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(models.join(catalog::PIPER_DIR))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_spanish_voice_is_fetched_from_the_hub_checked_and_installed_beside_the_others() {
    let files = davefx_files();
    let hub = Hub {
        files: Arc::new(files.clone()),
        ..Hub::default()
    };
    let endpoint = start(hub.clone());
    let models = tempfile::tempdir().unwrap();
    let entry = catalog::find(DAVEFX).unwrap();
    assert_eq!(entry.role, ModelRole::Voice);

    let m = install::fetch(entry, models.path(), &opts(endpoint)).unwrap();

    assert_eq!(
        piper_dir_entries(models.path()),
        ["es_ES-davefx-medium.onnx", "es_ES-davefx-medium.onnx.json"],
        "both files in place, nothing left half-written"
    );
    let onnx = &files["es/es_ES/davefx/medium/es_ES-davefx-medium.onnx"];
    assert_eq!(
        std::fs::read(models.path().join("piper/es_ES-davefx-medium.onnx")).unwrap(),
        *onnx
    );
    assert_eq!(m.files[0].sha256, hex::encode(Sha256::digest(onnx)));
    assert_eq!(m.files[0].path, "piper/es_ES-davefx-medium.onnx");
    assert_eq!(
        m.source,
        ModelSource::Hub {
            repo: "rhasspy/piper-voices".into(),
            revision: COMMIT.into(),
            files: vec![
                "es/es_ES/davefx/medium/es_ES-davefx-medium.onnx".into(),
                "es/es_ES/davefx/medium/es_ES-davefx-medium.onnx.json".into()
            ],
        },
        "the manifest records what the tag pointed at"
    );
    let manifest = Manifest::load(models.path()).unwrap();
    assert_eq!(manifest.installed(ModelRole::Voice, DAVEFX), Some(&m));
    assert!(
        manifest.get(ModelRole::Voice).is_none(),
        "voices are kept by id"
    );
    m.verify(models.path()).unwrap();
    assert_eq!(
        catalog::installed_voice_files(models.path()),
        [models.path().join("piper/es_ES-davefx-medium.onnx")]
    );

    // The token went to the Hub, never to the CDN on another origin.
    let seen = hub.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(w, _)| w.starts_with("cdn:")), "{seen:?}");
    for (what, auth) in &seen {
        if what.starts_with("hub:") {
            assert_eq!(auth.as_deref(), Some("Bearer hf_test_token"), "{what}");
        } else {
            assert_eq!(auth, &None, "{what}");
        }
    }
}

/// Fetches the davefx voice from `hub`, which must fail, and checks that nothing was installed:
/// no voice file, no `.partial` left behind, nothing recorded in the manifest.
fn fetch_fails(hub: Hub) -> InstallError {
    let endpoint = start(hub);
    let models = tempfile::tempdir().unwrap();
    let err = install::fetch(
        catalog::find(DAVEFX).unwrap(),
        models.path(),
        &opts(endpoint),
    )
    .unwrap_err();
    assert_eq!(
        piper_dir_entries(models.path()),
        Vec::<String>::new(),
        "no voice and no partial file after: {err}"
    );
    assert!(
        Manifest::load(models.path()).unwrap().voices.is_empty(),
        "not recorded: {err}"
    );
    err
}

#[test]
fn a_voice_that_does_not_match_the_hubs_sha256_is_refused_and_nothing_is_installed() {
    let err = fetch_fails(Hub {
        files: Arc::new(davefx_files()),
        corrupt: true,
        ..Hub::default()
    });
    assert!(matches!(err, InstallError::HashMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("es_ES-davefx-medium.onnx"),
        "{err}"
    );
}

#[test]
fn a_voice_missing_from_the_hub_is_a_clear_error() {
    // The Hub has the voice's .onnx.json but not its .onnx.
    let mut files = davefx_files();
    files.retain(|k, _| k.ends_with(".json"));
    let msg = fetch_fails(Hub {
        files: Arc::new(files),
        ..Hub::default()
    })
    .to_string();
    assert!(msg.contains("404") && msg.contains("no such file"), "{msg}");
    assert!(msg.contains("es_ES-davefx-medium.onnx"), "{msg}");
}
