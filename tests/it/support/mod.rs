//! Test harness: the real app on port 0 with a temp data dir and a fake Graph API on loopback.

pub mod fake_graph;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sandra::app::Application;
use sandra::config::Config;
use sandra_actors::System;
use sandra_actors::brain::{Brain, BrainError, BrainFuture, TurnInput};
use sandra_actors::secret::SecretString;
use sha2::Sha256;

pub use fake_graph::{FakeGraph, Fault, MediaLie};

pub const APP_SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "verify-me-please";
pub const ACCESS_TOKEN: &str = "EAAG-test-access-token";
pub const PHONE_NUMBER_ID: &str = "106540352242922";

pub fn sign(body: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks")
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Unix seconds an hour ago: message timestamps in tests are offsets from it, so replies fall
/// inside the 24-hour customer-service window.
pub fn base_ts() -> i64 {
    static BASE: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 3600
    });
    *BASE
}

/// A shared fixture with its message timestamps moved to `base_ts() + offset` (the fixtures
/// are older than 24 hours, so Sandra would rightly refuse to answer them).
pub fn fresh_fixture(name: &str, offset: i64) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture(name)).unwrap();
    for entry in v["entry"].as_array_mut().unwrap() {
        for change in entry["changes"].as_array_mut().unwrap() {
            if let Some(msgs) = change["value"]["messages"].as_array_mut() {
                for m in msgs {
                    m["timestamp"] = (base_ts() + offset).to_string().into();
                }
            }
        }
    }
    v.to_string().into_bytes()
}

/// A compact text-message webhook, as Meta sends them; `ts` is an offset from [`base_ts`].
pub fn text_webhook(wamid: &str, from: &str, body: &str, ts: i64) -> Vec<u8> {
    let ts = base_ts() + ts;
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Tester"}, "wa_id": from}],
            "messages": [{"from": from, "id": wamid, "timestamp": ts.to_string(), "type": "text", "text": {"body": body}}]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

/// A status webhook for one of Sandra's messages.
pub fn status_webhook(wamid: &str, status: &str, to: &str, error_code: Option<i64>) -> Vec<u8> {
    let mut st = serde_json::json!({"id": wamid, "status": status, "timestamp": "1750030073", "recipient_id": to});
    if let Some(c) = error_code {
        st["errors"] = serde_json::json!([{"code": c, "title": "Re-engagement message", "message": "Re-engagement message"}]);
    }
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
            "statuses": [st]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

/// A configuration for tests: loopback, temp data dir, fake Graph, fast pacing.
pub fn test_config(data_dir: PathBuf, graph_url: String) -> Config {
    let mut c = Config::default();
    c.server.bind = "127.0.0.1:0".parse().unwrap();
    c.storage.data_dir = data_dir;
    c.whatsapp.phone_number_id = PHONE_NUMBER_ID.into();
    c.whatsapp.access_token = SecretString::from(ACCESS_TOKEN);
    c.whatsapp.verify_token = SecretString::from(VERIFY_TOKEN);
    c.whatsapp.app_secret = SecretString::from(APP_SECRET);
    c.whatsapp.graph_base_url = graph_url;
    c.whatsapp.request_timeout = Duration::from_secs(2);
    c.sender.backoff_base = Duration::from_millis(50);
    c.sender.backoff_max = Duration::from_millis(400);
    c.sender.reconcile_wait = Duration::from_millis(300);
    c.sender.recipient_burst = 100;
    c.sender.recipient_window = Duration::from_secs(1);
    c.conversation.typing_indicator = false;
    // Tests that want the "got it" notice turn it on; others count their sends exactly.
    c.conversation.wait_notice_after = Duration::ZERO;
    // Tests that want a model configure one; by default no model is looked for.
    c.llm.backend = sandra::config::LlmBackend::None;
    c
}

/// Opens the store of a stopped app the way the app opens it (the master key from its data
/// dir, personal data sealed), for tests that inspect what a process left behind.
pub fn open_store(data_dir: &std::path::Path) -> sandra_actors::store::Store {
    let mut cfg = Config::default();
    cfg.storage.data_dir = data_dir.to_path_buf();
    let vault = sandra::vault::Vault::open(&cfg).unwrap();
    sandra_actors::store::Store::open_with(data_dir, vault.store_codec(cfg.storage.encrypt))
        .unwrap()
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub graph: FakeGraph,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub system: System,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}, Arc::new(EchoBrain::default())).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Config), brain: Arc<dyn Brain>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let graph = FakeGraph::start(ACCESS_TOKEN).await;
        Self::spawn_in(dir, graph, tweak, brain).await
    }

    /// Starts the app through [`Application::build`], so the brain comes from the config.
    pub async fn spawn_built(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let graph = FakeGraph::start(ACCESS_TOKEN).await;
        let mut cfg = test_config(dir.path().join("data"), graph.url());
        tweak(&mut cfg);
        let app = Application::build(cfg).await.unwrap();
        Self::run(app, dir, graph)
    }

    pub fn from_app(app: Application, dir: tempfile::TempDir, graph: FakeGraph) -> Self {
        Self::run(app, dir, graph)
    }

    fn run(app: Application, dir: tempfile::TempDir, graph: FakeGraph) -> Self {
        let addr = app.local_addr();
        let system = app.system().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            graph,
            client: reqwest::Client::new(),
            dir,
            system,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Starts the app on an existing data dir and fake (restarts).
    pub async fn spawn_in(
        dir: tempfile::TempDir,
        graph: FakeGraph,
        tweak: impl FnOnce(&mut Config),
        brain: Arc<dyn Brain>,
    ) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            sandra::init_tracing("debug,sled=info,hyper=info,reqwest=info", "text");
        }
        let mut cfg = test_config(dir.path().join("data"), graph.url());
        tweak(&mut cfg);
        let app = Application::build_with_brain(cfg, brain).await.unwrap();
        Self::run(app, dir, graph)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs a webhook body signed with the test app secret.
    pub async fn post_signed(&self, body: &[u8]) -> reqwest::Response {
        self.post_with(body, Some(&sign(body))).await
    }

    pub async fn post_with(&self, body: &[u8], signature: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("/api/channels/whatsapp"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = signature {
            req = req.header("X-Hub-Signature-256", s);
        }
        req.send().await.unwrap()
    }

    /// The HTTP status of `GET path`.
    pub async fn status_of(&self, path: &str) -> u16 {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The body of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `sandra_<name>` from `GET /metrics` (counters and gauges, or a histogram's `_count`).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("sandra_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// Graceful stop; returns the data dir and the fake for a restart.
    pub async fn stop(mut self) -> (tempfile::TempDir, FakeGraph) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        // sled releases its file lock once every handle is dropped.
        let TestApp {
            dir, graph, system, ..
        } = self;
        drop(system);
        tokio::time::sleep(Duration::from_millis(100)).await;
        (dir, graph)
    }
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// A deterministic brain: echoes the new inputs and says how much history it saw.
#[derive(Default)]
pub struct EchoBrain {
    pub calls: AtomicUsize,
    pub delay: Option<Duration>,
}

impl EchoBrain {
    pub fn slow(delay: Duration) -> Self {
        Self {
            calls: AtomicUsize::new(0),
            delay: Some(delay),
        }
    }
}

impl Brain for EchoBrain {
    fn reply(&self, input: TurnInput) -> BrainFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay;
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let said: Vec<String> = input.inputs.iter().map(|i| i.text.clone()).collect();
            Ok(format!("echo[{}]: {}", input.history.len(), said.join(" | ")).into())
        })
    }
    fn describe(&self) -> String {
        "echo".into()
    }
}

/// A brain that panics on any input containing "PANIC" while `panics_left` > 0.
pub struct PanickyBrain {
    pub panics_left: AtomicUsize,
}

impl Brain for PanickyBrain {
    fn reply(&self, input: TurnInput) -> BrainFuture {
        let poison = input.inputs.iter().any(|i| i.text.contains("PANIC"));
        let panic_now = poison
            && self
                .panics_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        Box::pin(async move {
            if panic_now {
                panic!("brain bug triggered by test");
            }
            if input.inputs.iter().any(|i| i.text.contains("FAIL")) {
                return Err(BrainError::Failed("model exploded".into()));
            }
            Ok(format!(
                "ok: {}",
                input
                    .inputs
                    .iter()
                    .map(|i| i.text.clone())
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
            .into())
        })
    }
    fn describe(&self) -> String {
        "panicky".into()
    }
}

/// Runs `cmd` (the real binary, arguments and environment already set) with `input` on its
/// stdin, capturing stdout and stderr, and waits for it to exit.
pub fn run_with_stdin(mut cmd: std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
