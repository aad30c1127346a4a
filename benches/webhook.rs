//! Webhook ingestion benchmark: signed POSTs on loopback into the real app (HMAC check, durable
//! dedup + inbox in one sled transaction, group-committed flush, routing to conversation actors
//! that answer through the outbox to a loopback Graph stand-in), beside a minimal axum handler
//! that only answers 200, measured in the same run with the same client.
//!
//! `cargo bench --bench webhook` runs the full measurement; under `cargo test` it runs a small
//! smoke pass so it cannot rot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use hmac::{Hmac, KeyInit, Mac};
use sandra::app::Application;
use sandra::config::Config;
use sandra_actors::brain::PlaceholderBrain;
use sandra_actors::secret::SecretString;
use sha2::Sha256;

const SECRET: &str = "bench-secret";

fn sign(body: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

fn body(i: usize, users: usize, now: i64) -> Vec<u8> {
    let from = format!("1555{:07}", i % users);
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"106540352242922"}},"contacts":[{{"profile":{{"name":"Bench"}},"wa_id":"{from}"}}],"messages":[{{"from":"{from}","id":"wamid.BENCH{i:08}","timestamp":"{now}","type":"text","text":{{"body":"message number {i}"}}}}]}},"field":"messages"}}]}}]}}"#
    )
    .into_bytes()
}

async fn serve(router: axum::Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    a
}

struct Report {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

async fn load(url: String, bodies: Arc<Vec<(Vec<u8>, String)>>, concurrency: usize) -> Report {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, bodies, next) =
            (client.clone(), url.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((b, sig)) = bodies.get(i) else { break };
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("X-Hub-Signature-256", sig)
                    .body(b.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => lat.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Report {
        rps: all.len() as f64 / secs,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (requests, concurrency, users) = if full {
        (20_000, 32, 2_000)
    } else {
        (200, 8, 50)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Graph API stand-in: accepts every send.
        let graph = serve(axum::Router::new().route(
            "/{v}/{p}/messages",
            post(|| async { axum::Json(serde_json::json!({"messaging_product":"whatsapp","messages":[{"id":"wamid.B"}]})) }),
        ))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.server.bind = "127.0.0.1:0".parse().unwrap();
        cfg.server.max_in_flight = 1024;
        cfg.storage.data_dir = dir.path().join("data");
        cfg.whatsapp.phone_number_id = "106540352242922".into();
        cfg.whatsapp.access_token = SecretString::from("t");
        cfg.whatsapp.app_secret = SecretString::from(SECRET);
        cfg.whatsapp.graph_base_url = format!("http://{graph}");
        cfg.sender.rate_per_second = 1000;
        cfg.conversation.typing_indicator = false;
        let app = Application::build_with_brain(cfg, Arc::new(PlaceholderBrain)).await.unwrap();
        let sandra = app.local_addr();
        let system = app.system().clone();
        tokio::spawn(app.run_until(std::future::pending()));
        let baseline = serve(axum::Router::new().route("/ok", post(|| async { "ok" })).route("/", get(|| async { "" }))).await;

        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let bodies: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
            (0..requests).map(|i| { let b = body(i, users, now); let s = sign(&b); (b, s) }).collect(),
        );
        // Warm-up of both servers (connections, allocations); different ids, then measure.
        let warm: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
            (0..200).map(|i| { let b = body(requests + i, users, now); let s = sign(&b); (b, s) }).collect(),
        );
        load(format!("http://{baseline}/ok"), warm.clone(), concurrency).await;
        load(format!("http://{sandra}/api/channels/whatsapp"), warm, concurrency).await;

        let base = load(format!("http://{baseline}/ok"), bodies.clone(), concurrency).await;
        let s = load(format!("http://{sandra}/api/channels/whatsapp"), bodies, concurrency).await;
        let accepted = system.metrics().value("messages_accepted").unwrap() as u64;
        println!("webhook ingestion: {requests} signed POSTs, {concurrency} concurrent clients, {users} users, loopback");
        println!("{:<28} {:>12} {:>10} {:>10} {:>7}", "server", "req/s", "p50", "p99", "errors");
        for (name, r) in [("axum 200-only baseline", &base), ("sandra (durable ack)", &s)] {
            println!("{:<28} {:>12.0} {:>10.2?} {:>10.2?} {:>7}", name, r.rps, r.p50, r.p99, r.errors);
        }
        println!("ratio sandra/baseline: throughput {:.2}x, p50 {:.1}x, p99 {:.1}x", s.rps / base.rps, s.p50.as_secs_f64() / base.p50.as_secs_f64(), s.p99.as_secs_f64() / base.p99.as_secs_f64());
        println!("messages stored: {accepted}");
        assert_eq!(s.errors, 0);
        assert_eq!(accepted as usize, requests + 200);
    });
}
