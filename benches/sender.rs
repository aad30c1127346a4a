//! Sender benchmark: sustained sends/s through the durable outbox and the pacing sender against
//! a loopback Graph stand-in, and CPU time per send (process user+system time from
//! /proc/self/stat), beside a baseline that posts the same bodies to the same stand-in with a
//! bare reqwest loop (no outbox, no pacing), measured in the same run.
//!
//! `cargo bench --bench sender` runs the full measurement; under `cargo test` a smoke pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::routing::post;
use sandra::app::Application;
use sandra::config::Config;
use sandra_actors::brain::PlaceholderBrain;
use sandra_actors::graph::GraphClient;
use sandra_actors::secret::SecretString;
use sandra_actors::sender::SenderMsg;
use sandra_actors::session::SessionState;
use sandra_actors::store::{NewOutbound, OutboundBody};
use sandra_actors::whatsapp::{ChatId, ConversationKey, ReplyTarget};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (messages, recipients, rate) = if full {
        (10_000, 2_000, 1000u32)
    } else {
        (300, 100, 1000)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let received = Arc::new(AtomicUsize::new(0));
        let r2 = received.clone();
        let app = axum::Router::new().route(
            "/{v}/{p}/messages",
            post(move || {
                let r = r2.clone();
                async move {
                    r.fetch_add(1, Ordering::Relaxed);
                    axum::Json(serde_json::json!({"messaging_product":"whatsapp","messages":[{"id":"wamid.B"}]}))
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let graph = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.server.bind = "127.0.0.1:0".parse().unwrap();
        cfg.storage.data_dir = dir.path().join("data");
        cfg.whatsapp.phone_number_id = "1065".into();
        cfg.whatsapp.access_token = SecretString::from("t");
        cfg.whatsapp.app_secret = SecretString::from("s");
        cfg.whatsapp.graph_base_url = format!("http://{graph}");
        cfg.sender.rate_per_second = rate;
        cfg.sender.recipient_burst = 1000;
        cfg.sender.max_in_flight = 64;
        let app = Application::build_with_brain(cfg.clone(), Arc::new(PlaceholderBrain)).await.unwrap();
        let system = app.system().clone();
        tokio::spawn(app.run_until(std::future::pending()));

        // Baseline: the same JSON bodies, posted by a bare client at the same concurrency.
        let client = GraphClient::new(sandra_actors::graph::GraphConfig {
            base_url: format!("http://{graph}"),
            api_version: "v26.0".into(),
            phone_number_id: "1065".into(),
            credentials: sandra_actors::secret::Credentials::new(SecretString::from("t")),
            timeout: Duration::from_secs(10),
        });
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let mut records = Vec::new();
        for r in 0..recipients {
            let target = ReplyTarget { phone: Some(format!("1777{r:07}")), ..Default::default() };
            let key = ConversationKey::new("1065", &ChatId::Phone(format!("1777{r:07}")));
            let mut s = SessionState::new(key, target.clone());
            s.last_inbound_at = Some(now);
            records.push(s);
        }
        let per = messages / recipients;
        let base_next = Arc::new(AtomicUsize::new(0));
        let probe = {
            let s = &records[0];
            let ids = system.store.commit_turn(s, &[], &[NewOutbound { target: s.target.clone(), body: OutboundBody::Text { body: "warm-up".into() }, context_message_id: None, window_expires_at: s.window_expires_at() }]).unwrap();
            system.store.outbox_record(ids[0]).unwrap().unwrap()
        };
        system.sender.get().cast(SenderMsg::Kick).unwrap();
        while received.load(Ordering::Relaxed) < 1 { tokio::time::sleep(Duration::from_millis(5)).await; }

        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (c, n, rec) = (client.clone(), base_next.clone(), probe.clone());
            tasks.push(tokio::spawn(async move {
                while n.fetch_add(1, Ordering::Relaxed) < messages {
                    c.send(&rec).await.unwrap();
                }
            }));
        }
        for t in tasks { t.await.unwrap(); }
        let base_secs = t0.elapsed().as_secs_f64();
        let base_cpu = cpu_seconds() - cpu0;

        let before = received.load(Ordering::Relaxed);
        for s in &records {
            let replies: Vec<NewOutbound> = (0..per).map(|i| NewOutbound { target: s.target.clone(), body: OutboundBody::Text { body: format!("reply {i}") }, context_message_id: None, window_expires_at: s.window_expires_at() }).collect();
            system.store.commit_turn(s, &[], &replies).unwrap();
        }
        let cpu1 = cpu_seconds();
        let t1 = Instant::now();
        system.sender.get().cast(SenderMsg::Kick).unwrap();
        while received.load(Ordering::Relaxed) < before + per * recipients {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = t1.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu1;
        let n = (per * recipients) as f64;
        println!("sender: {} messages to {recipients} recipients, configured limit {rate}/s, loopback stand-in", per * recipients);
        println!("{:<34} {:>10} {:>16}", "path", "sends/s", "CPU µs/send");
        println!("{:<34} {:>10.0} {:>16.0}", "bare reqwest loop (baseline)", messages as f64 / base_secs, base_cpu / messages as f64 * 1e6);
        println!("{:<34} {:>10.0} {:>16.0}", "sandra outbox + paced sender", n / secs, cpu / n * 1e6);
        println!("sandra/limit {:.2}, CPU per send sandra/baseline {:.2}x", n / secs / rate as f64, (cpu / n) / (base_cpu / messages as f64));
    });
}
