//! The composition root: builds the store, the actors and the HTTP server from a [`Config`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sandra_actors::System;
use sandra_actors::brain::{Brain, PlaceholderBrain};
use sandra_actors::conversation::ConversationPolicy;
use sandra_actors::graph::{GraphClient, GraphConfig};
use sandra_actors::metrics::Metrics;
use sandra_actors::router::RouterArgs;
use sandra_actors::sender::{SenderArgs, SenderHealth};
use sandra_actors::slot::ActorSlot;
use sandra_actors::store::Store;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::http::{self, HttpState};

/// A built, listening Sandra.
pub struct Application {
    listener: TcpListener,
    system: System,
    router: axum::Router,
    cfg: Config,
}

impl Application {
    /// Opens the store, starts the actors (replaying unanswered messages) and binds the listener.
    pub async fn build(cfg: Config) -> anyhow::Result<Self> {
        Self::build_with_brain(cfg, Arc::new(PlaceholderBrain)).await
    }

    /// [`Application::build`] with a given brain (tests, and the LLM once configured).
    pub async fn build_with_brain(cfg: Config, brain: Arc<dyn Brain>) -> anyhow::Result<Self> {
        let missing = cfg.missing_whatsapp_settings();
        if !missing.is_empty() {
            tracing::warn!(missing = ?missing, "WhatsApp is not fully configured: webhooks will be refused or replies cannot be sent until these are set");
        }
        let store =
            Arc::new(Store::open(&cfg.storage.data_dir).with_context(|| {
                format!("opening storage in {}", cfg.storage.data_dir.display())
            })?);
        let metrics = Arc::new(Metrics::default());
        let w = &cfg.whatsapp;
        let graph = GraphClient::new(GraphConfig {
            base_url: w.graph_base_url.clone(),
            api_version: w.api_version.clone(),
            phone_number_id: w.phone_number_id.clone(),
            access_token: w.access_token.clone(),
            timeout: w.request_timeout,
        });
        let c = &cfg.conversation;
        let router_args = RouterArgs {
            store: store.clone(),
            brain: brain.clone(),
            sender: ActorSlot::default(),
            metrics: metrics.clone(),
            policy: ConversationPolicy {
                bot_name: c.bot_name.clone(),
                max_history_turns: c.max_history_turns,
                typing_indicator: c.typing_indicator,
                brain_timeout: c.brain_timeout,
            },
            idle_timeout: c.idle_timeout,
            sweep_every: (c.idle_timeout / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(30)),
            max_failures: 3,
        };
        let sender_args = SenderArgs {
            store: store.clone(),
            graph,
            metrics: metrics.clone(),
            pacing: cfg.sender.pacing(),
            health: Arc::new(SenderHealth::default()),
        };
        let system = System::start(router_args, sender_args)
            .await
            .context("starting the actor system")?;
        tracing::info!(brain = %brain.describe(), "actors started");

        let state = HttpState {
            system: system.clone(),
            verify_token: w.verify_token.clone(),
            app_secret: w.app_secret.clone(),
            admission: Arc::new(Semaphore::new(cfg.server.max_in_flight)),
            metrics,
        };
        let router = http::router(state, cfg.server.max_body_bytes);
        let listener = TcpListener::bind(cfg.server.bind)
            .await
            .with_context(|| format!("binding {}", cfg.server.bind))?;
        Ok(Self {
            listener,
            system,
            router,
            cfg,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn system(&self) -> &System {
        &self.system
    }

    /// Serves until `shutdown` resolves, then stops the actors and flushes the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let system = self.system.clone();
        let retention = self.cfg.storage.dedup_retention;
        let sweeper = tokio::spawn({
            let store = system.store.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    every.tick().await;
                    let cutoff = sandra_actors::store::now_ms() / 1000 - retention.as_secs() as i64;
                    match store.sweep_dedup(cutoff) {
                        Ok(n) if n > 0 => {
                            tracing::info!(removed = n, "expired dedup entries swept")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "dedup sweep failed"),
                    }
                }
            }
        });
        tracing::info!(addr = %self.local_addr(), "listening");
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        sweeper.abort();
        system.shutdown().await;
        served.context("HTTP server failed")
    }
}
