//! Crash safety with the real binary: `kill -9` at awkward moments loses nothing and answers
//! nothing twice.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sandra_actors::store::Store;
use sandra_actors::whatsapp::{ChatId, ConversationKey};

use crate::support::*;

struct Proc {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(data: &std::path::Path, graph: &FakeGraph) -> Proc {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandra"))
        .arg("serve")
        .env("SANDRA_BIND", format!("127.0.0.1:{port}"))
        .env("SANDRA_DATA_DIR", data)
        .env("WHATSAPP_PHONE_NUMBER_ID", PHONE_NUMBER_ID)
        .env("WHATSAPP_ACCESS_TOKEN", ACCESS_TOKEN)
        .env("WHATSAPP_VERIFY_TOKEN", VERIFY_TOKEN)
        .env("WHATSAPP_APP_SECRET", APP_SECRET)
        .env("WHATSAPP_GRAPH_BASE_URL", graph.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return Proc { child, base };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("sandra did not become ready");
}

impl Proc {
    async fn post(&self, body: &[u8]) -> u16 {
        reqwest::Client::new()
            .post(format!("{}/api/channels/whatsapp", self.base))
            .header("X-Hub-Signature-256", sign(body))
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
    fn terminate(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap();
    }
}

fn replies_to(graph: &FakeGraph, wamid_text: &str) -> usize {
    graph
        .accepted()
        .iter()
        .filter(|r| {
            r.body["text"]["body"]
                .as_str()
                .unwrap_or_default()
                .contains(wamid_text)
        })
        .count()
}

/// kill -9 with a reply stuck in the outbox, and kill -9 right after a 200: after restart every
/// message is answered exactly once and the history is intact.
#[tokio::test]
async fn kill_dash_nine_loses_nothing_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let user = "15550002020";

    // 1. A normal turn.
    let p = start(&data, &graph).await;
    let m1 = text_webhook("wamid.k1", user, "first-msg", 1);
    assert_eq!(p.post(&m1).await, 200);
    graph.wait_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(replies_to(&graph, "first-msg"), 1);

    // 2. Meta is failing: the reply waits in the outbox when we crash.
    graph.inject(std::iter::repeat_n(
        Fault::Error {
            http: 500,
            code: 131000,
            retry_after: None,
        },
        1000,
    ));
    assert_eq!(
        p.post(&text_webhook("wamid.k2", user, "second-msg", 2))
            .await,
        200
    );
    assert!(eventually(Duration::from_secs(10), || graph.sends().len() >= 2).await);
    p.kill9();
    graph.clear_faults();

    // 3. Restart: the stuck reply goes out once; then crash again right after an ack.
    let p = start(&data, &graph).await;
    assert!(
        eventually(Duration::from_secs(10), || replies_to(&graph, "second-msg")
            == 1)
        .await
    );
    assert_eq!(
        p.post(&text_webhook("wamid.k3", user, "third-msg", 3))
            .await,
        200
    );
    p.kill9();

    // 4. Restart: the third message is answered (replayed from the inbox or the outbox) once.
    let p = start(&data, &graph).await;
    assert!(
        eventually(Duration::from_secs(10), || replies_to(&graph, "third-msg")
            == 1)
        .await
    );
    // Meta re-delivers the first message after the restart: still a duplicate.
    assert_eq!(p.post(&m1).await, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    p.terminate();

    assert_eq!(replies_to(&graph, "first-msg"), 1);
    assert_eq!(replies_to(&graph, "second-msg"), 1);
    assert_eq!(replies_to(&graph, "third-msg"), 1);
    assert_eq!(graph.accepted().len(), 3);

    let store = Store::open(&data).unwrap();
    let key = ConversationKey::new(PHONE_NUMBER_ID, &ChatId::Phone(user.into()));
    let session = store.load_session(&key).unwrap().unwrap();
    let texts: Vec<&str> = session.history.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(session.history.len(), 6, "{texts:?}");
    assert_eq!(texts[0], "first-msg");
    assert_eq!(texts[2], "second-msg");
    assert_eq!(texts[4], "third-msg");
    assert!(store.unfinished().unwrap().is_empty());
}
