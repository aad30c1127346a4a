//! Webhook ingestion benchmark: signed POSTs on loopback into the real app (HMAC check, durable
//! dedup + inbox in one sled transaction, group-committed flush, routing to conversation actors
//! that answer through the outbox to a loopback Graph stand-in), beside a minimal axum handler
//! that only answers 200, measured in the same run with the same client. Sandra runs twice, on
//! separate data dirs: as deployed (personal data sealed, `storage.encrypt = true`) and with
//! `storage.encrypt = false`, to show what encryption at rest costs.
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

/// Waits (at most two minutes) until `system` has answered and sent everything it accepted.
async fn settle(system: &sandra_actors::System) {
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until
        && (system.store.outbox_pending_count() > 0
            || !system.store.unfinished().unwrap().is_empty())
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs of equal size as one: total requests over total time; the latencies are the runs'
/// medians.
fn combine(runs: &[Report]) -> Report {
    let secs: f64 = runs.iter().map(|r| 1.0 / r.rps).sum();
    let mid = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    Report {
        rps: runs.len() as f64 / secs,
        p50: mid(runs.iter().map(|r| r.p50).collect()),
        p99: mid(runs.iter().map(|r| r.p99).collect()),
        errors: runs.iter().map(|r| r.errors).sum(),
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
        let start = |encrypt: bool| async move {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = Config::default();
            cfg.server.bind = "127.0.0.1:0".parse().unwrap();
            cfg.server.max_in_flight = 1024;
            cfg.storage.data_dir = dir.path().join("data");
            cfg.storage.encrypt = encrypt;
            cfg.whatsapp.phone_number_id = "106540352242922".into();
            cfg.whatsapp.access_token = SecretString::from("t");
            cfg.whatsapp.app_secret = SecretString::from(SECRET);
            cfg.whatsapp.graph_base_url = format!("http://{graph}");
            cfg.sender.rate_per_second = 1000;
            cfg.conversation.typing_indicator = false;
            let app = Application::build_with_brain(cfg, Arc::new(PlaceholderBrain)).await.unwrap();
            let addr = app.local_addr();
            let system = app.system().clone();
            tokio::spawn(app.run_until(std::future::pending()));
            (addr, system, dir)
        };
        let (sandra, system, _dir) = start(true).await;
        let (plain, plain_system, _plain_dir) = start(false).await;
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
        load(format!("http://{sandra}/api/channels/whatsapp"), warm.clone(), concurrency).await;
        load(format!("http://{plain}/api/channels/whatsapp"), warm, concurrency).await;

        let base = load(format!("http://{baseline}/ok"), bodies.clone(), concurrency).await;
        // Encrypted and plain runs alternate on quarters of the load (P E E P P E E P), each
        // after the other app has answered its backlog, so drift in a busy machine's speed
        // weighs on both alike.
        let quarter = requests / 4;
        let (mut ps, mut ss) = (Vec::new(), Vec::new());
        for q in 0..4 {
            let part: Arc<Vec<(Vec<u8>, String)>> =
                Arc::new(bodies[q * quarter..(q + 1) * quarter].to_vec());
            let order = if q % 2 == 0 { [false, true] } else { [true, false] };
            for encrypted in order {
                let (addr, sys, out) = if encrypted {
                    (sandra, &system, &mut ss)
                } else {
                    (plain, &plain_system, &mut ps)
                };
                out.push(load(format!("http://{addr}/api/channels/whatsapp"), part.clone(), concurrency).await);
                settle(sys).await;
            }
        }
        let (p, s) = (combine(&ps), combine(&ss));
        let accepted = system.metrics().value("messages_accepted").unwrap() as u64;
        let accepted_plain = plain_system.metrics().value("messages_accepted").unwrap() as u64;
        println!("webhook ingestion: {requests} signed POSTs, {concurrency} concurrent clients, {users} users, loopback");
        println!("{:<28} {:>12} {:>10} {:>10} {:>7}", "server", "req/s", "p50", "p99", "errors");
        // The unencrypted run's name must not start with "sandra": bench-compare.sh reads that line.
        for (name, r) in [("axum 200-only baseline", &base), ("plain storage (encrypt=false)", &p), ("sandra (durable ack)", &s)] {
            println!("{:<28} {:>12.0} {:>10.2?} {:>10.2?} {:>7}", name, r.rps, r.p50, r.p99, r.errors);
        }
        println!("ratio sandra/baseline: throughput {:.2}x, p50 {:.1}x, p99 {:.1}x", s.rps / base.rps, s.p50.as_secs_f64() / base.p50.as_secs_f64(), s.p99.as_secs_f64() / base.p99.as_secs_f64());
        println!("encryption at rest: throughput {:.2}x of plain storage ({:+.1}%), p50 {:.2}x, p99 {:.2}x", s.rps / p.rps, (s.rps / p.rps - 1.0) * 100.0, s.p50.as_secs_f64() / p.p50.as_secs_f64(), s.p99.as_secs_f64() / p.p99.as_secs_f64());
        println!("messages stored: {accepted} (plain storage: {accepted_plain})");
        assert_eq!(s.errors + p.errors, 0);
        assert_eq!(accepted as usize, 4 * quarter + 200);
        assert_eq!(accepted_plain as usize, 4 * quarter + 200);
    });
}
