//! What a client can hold on the listener: connection slots, header and request timeouts, body
//! size, admission before the body is read, and a shutdown that lets requests finish.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Generous bound on anything the server must do "soon"; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(10);

/// A client that waits long enough for any limit under test to have acted.
fn patient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

/// Reads until the server closes the connection; returns what it sent, or `None` if it is
/// still open after [`PATIENCE`].
async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends a request head one byte a second; true once the server has closed the connection.
async fn slow_loris(addr: std::net::SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = b"POST /api/channels/whatsapp HTTP/1.1\r\nHost: sandra\r\nContent-Type: application/json\r\n";
    for byte in head {
        if s.write_all(&[*byte]).await.is_err() {
            return true;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            _ => {}
        }
    }
    false
}

/// The head of a signed webhook POST whose body (of `len` bytes) the caller sends itself.
fn webhook_head(len: usize, body: &[u8]) -> Vec<u8> {
    format!(
        "POST /api/channels/whatsapp HTTP/1.1\r\nHost: sandra\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nX-Hub-Signature-256: {}\r\n\r\n",
        sign(body)
    )
    .into_bytes()
}

/// 300 idle connections and 50 slow-loris clients do not keep a genuine webhook out, and the
/// server closes all of them once `header_timeout` passes.
#[tokio::test]
async fn idle_and_slow_connections_do_not_block_webhooks() {
    let app = TestApp::spawn_with(
        |c| c.server.header_timeout = Duration::from_secs(1),
        Arc::new(EchoBrain::default()),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let lorises: Vec<_> = (0..50)
        .map(|_| tokio::spawn(slow_loris(app.addr)))
        .collect();

    let body = text_webhook("wamid.limits1", "15550007001", "still reachable?", 0);
    let r = patient_client()
        .post(app.url("/api/channels/whatsapp"))
        .header("X-Hub-Signature-256", sign(&body))
        .body(body)
        .send()
        .await
        .expect("a webhook is answered while idle and slow clients hold connections");
    assert_eq!(r.status(), 200);

    for s in &mut idle {
        assert!(
            read_until_closed(s).await.is_some(),
            "idle connection left open"
        );
    }
    for l in lorises {
        assert!(l.await.unwrap(), "slow-loris connection left open");
    }
    // Every idle and slow connection; reqwest's own (answered) connections are not counted.
    assert!(app.metric("http_header_timeouts").await >= 350);
    app.graph.wait_accepted(1, PATIENCE).await;
    assert_eq!(app.graph.accepted().len(), 1);
    app.stop().await;
}

/// Connections beyond `max_connections` wait for a free slot instead of failing, and the
/// server keeps serving.
#[tokio::test]
async fn connections_over_the_cap_wait_their_turn() {
    let app = TestApp::spawn_with(
        |c| {
            c.server.header_timeout = Duration::from_secs(1);
            c.server.max_connections = 16;
        },
        Arc::new(EchoBrain::default()),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let body = text_webhook("wamid.limits2", "15550007002", "queued", 0);
    let r = patient_client()
        .post(app.url("/api/channels/whatsapp"))
        .header("X-Hub-Signature-256", sign(&body))
        .body(body)
        .send()
        .await
        .expect("a connection over the cap is served once a slot frees");
    assert_eq!(r.status(), 200);
    assert_eq!(app.status_of("/healthz").await, 200);
    app.stop().await;
}

/// A body over `max_body_bytes` gets 413 and is counted; nothing is stored.
#[tokio::test]
async fn body_over_the_limit_is_413() {
    let app = TestApp::spawn_with(
        |c| c.server.max_body_bytes = 64 * 1024,
        Arc::new(EchoBrain::default()),
    )
    .await;
    let mut body = text_webhook("wamid.limits3", "15550007003", "x", 0);
    body.extend(std::iter::repeat_n(b' ', 64 * 1024));
    assert_eq!(app.post_signed(&body).await.status(), 413);
    assert_eq!(app.metric("webhooks_too_large").await, 1);
    assert_eq!(app.metric("messages_accepted").await, 0);
    app.stop().await;
}

/// An upload that stalls is answered 408 after `request_timeout`, and the admission slot it
/// held is free again.
#[tokio::test]
async fn stalled_body_gets_408_and_frees_its_slot() {
    let app = TestApp::spawn_with(
        |c| {
            c.server.request_timeout = Duration::from_secs(1);
            c.server.max_in_flight = 1;
        },
        Arc::new(EchoBrain::default()),
    )
    .await;
    let body = text_webhook("wamid.limits4", "15550007004", "stalled", 0);
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(&webhook_head(body.len(), &body)).await.unwrap();
    s.write_all(&body[..10]).await.unwrap();
    let answer = read_until_closed(&mut s)
        .await
        .expect("a stalled upload is cut off");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    assert_eq!(app.metric("messages_accepted").await, 1);
    app.stop().await;
}

/// The admission permit is taken before the body is read: while one upload holds the only
/// slot, another webhook is shed with 503 at once; when the upload completes it is accepted.
#[tokio::test]
async fn admission_is_decided_before_the_body_is_read() {
    let app = TestApp::spawn_with(
        |c| c.server.max_in_flight = 1,
        Arc::new(EchoBrain::default()),
    )
    .await;
    let slow = text_webhook("wamid.limits5", "15550007005", "slow upload", 0);
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(&webhook_head(slow.len(), &slow)).await.unwrap();
    s.write_all(&slow[..10]).await.unwrap();
    // The handler takes the slot as soon as the head arrives; poll until it has.
    let other = text_webhook("wamid.limits6", "15550007006", "shed me", 1);
    let mut shed = false;
    for _ in 0..100 {
        let r = app.post_signed(&other).await;
        if r.status() == 503 {
            shed = true;
            break;
        }
        assert_eq!(r.status(), 200, "only shed or accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        shed,
        "a second webhook was not shed while the slot was held"
    );
    s.write_all(&slow[10..]).await.unwrap();
    let answer = read_first_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;
}

/// Reads until a complete response head has arrived (the connection stays open).
async fn read_first_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("a response within the client's patience")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Shutdown stops accepting, lets a request in progress finish (its upload completes after
/// the stop began and is answered 200), closes idle connections, and logs no error.
#[tokio::test]
async fn graceful_shutdown_finishes_requests_and_logs_no_errors() {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // #[tokio::test] runs the app's tasks on this thread, so a thread-local subscriber sees
    // the server's and the actors' logs.
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = TestApp::spawn().await;
    let addr = app.addr;
    let _idle = TcpStream::connect(addr).await.unwrap();
    let body = text_webhook("wamid.limits7", "15550007007", "in flight at shutdown", 0);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&webhook_head(body.len(), &body)).await.unwrap();
    s.write_all(&body[..10]).await.unwrap();
    // Make sure the server is reading this request before the stop begins.
    assert_eq!(app.status_of("/healthz").await, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let finish = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(&body[10..]).await.unwrap();
        read_first_response(&mut s).await
    };
    let (answer, _) = tokio::join!(finish, app.stop());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("no longer accepting connections"),
        "log not captured: {text}"
    );
    assert!(!text.contains("ERROR"), "{text}");
}
