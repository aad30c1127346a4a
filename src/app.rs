//! The composition root: builds the store, the actors and the HTTP server from a [`Config`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sandra_actors::System;
use sandra_actors::brain::{Brain, PlaceholderBrain};
use sandra_actors::conversation::commit::{VoicePolicy, VoiceReply};
use sandra_actors::conversation::{ConversationDeps, ConversationPolicy, RunDeps};
use sandra_actors::graph::{GraphClient, GraphConfig};
use sandra_actors::ingest::IngestConfig;
use sandra_actors::metrics::Metrics;
use sandra_actors::router::RouterArgs;
use sandra_actors::secret::{Credentials, ExposeSecret, Live, SecretString};
use sandra_actors::sender::{SenderArgs, SenderHealth};
use sandra_actors::slot::ActorSlot;
use sandra_actors::speech::SpeechArgs;
use sandra_actors::store::Store;
use sandra_actors::transcription::TranscriptionArgs;
use sandra_actors::vision::VisionArgs;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Config, VoiceReplyMode};
use crate::http::{self, HttpState};
use crate::vault::Vault;

/// The five WhatsApp settings, as live handles every holder reads per use: the Admin Portal and
/// SIGHUP change them and the next webhook or Graph call uses the new value, no restart.
#[derive(Clone, Debug)]
pub struct LiveWhatsapp {
    /// The same handle as `System::credentials`.
    pub access_token: Credentials,
    pub app_secret: Live<SecretString>,
    pub verify_token: Live<SecretString>,
    pub phone_number_id: Live<String>,
    pub api_version: Live<String>,
}

impl LiveWhatsapp {
    fn new(w: &crate::config::WhatsAppConfig) -> Self {
        Self {
            access_token: Credentials::new(w.access_token.clone()),
            app_secret: Live::new(w.app_secret.clone()),
            verify_token: Live::new(w.verify_token.clone()),
            phone_number_id: Live::new(w.phone_number_id.clone()),
            api_version: Live::new(w.api_version.clone()),
        }
    }

    /// Applies a (re-read) `[whatsapp]` section. A replaced token also tells the sender, which
    /// resumes sending if it had stopped on error 190. Returns whether the token changed.
    pub fn apply(&self, w: &crate::config::WhatsAppConfig, system: &System) -> bool {
        self.app_secret.set(w.app_secret.clone());
        self.verify_token.set(w.verify_token.clone());
        self.phone_number_id.set(w.phone_number_id.clone());
        self.api_version.set(w.api_version.clone());
        self.set_access_token(w.access_token.clone(), system)
    }

    /// Replaces the access token for every Graph client and tells the sender (see [`Self::apply`]).
    pub fn set_access_token(&self, token: SecretString, system: &System) -> bool {
        let changed = self.access_token.replace(token);
        if let Some(sender) = system.sender.try_get() {
            let _ = sender.cast(sandra_actors::sender::SenderMsg::TokenReplaced);
        }
        changed
    }
}

/// A built, listening Sandra.
pub struct Application {
    listener: TcpListener,
    system: System,
    live: LiveWhatsapp,
    router: axum::Router,
    metrics: Arc<Metrics>,
    cfg: Config,
    vault: Vault,
}

/// Opens the vault (the master key: a wrong one stops here, before anything else is read) and
/// layers the stored secrets over `cfg`, the environment still winning.
fn open_vault(mut cfg: Config) -> anyhow::Result<(Config, Vault)> {
    let vault = Vault::open(&cfg)?;
    vault.apply_to(&mut cfg)?;
    tracing::info!(key_id = %vault.key_id(), key_source = %vault.key_source(), encrypt = cfg.storage.encrypt, "master key loaded");
    Ok((cfg, vault))
}

impl Application {
    /// Loads the configured brain, opens the store, starts the actors (replaying unanswered
    /// messages) and binds the listener.
    pub async fn build(cfg: Config) -> anyhow::Result<Self> {
        // First: the brain may need a stored API key.
        let (cfg, vault) = open_vault(cfg)?;
        // Created first: the models record their queue waits and speed into it.
        let metrics = Arc::new(Metrics::default());
        let brain = build_brain(&cfg, &metrics).await?;
        let transcriber = build_transcriber(&cfg).await?;
        if let Some(t) = &transcriber {
            t.observe_queue_wait(metrics.model_queue_wait_seconds.clone());
        }
        Self::build_with_metrics(cfg, vault, brain, transcriber, metrics).await
    }

    /// [`Application::build`] with a given brain (tests, and the LLM once configured).
    pub async fn build_with_brain(cfg: Config, brain: Arc<dyn Brain>) -> anyhow::Result<Self> {
        Self::build_with(cfg, brain, None).await
    }

    /// [`Application::build`] with a given brain and transcriber.
    pub async fn build_with(
        cfg: Config,
        brain: Arc<dyn Brain>,
        transcriber: Option<sandra_models::whisper::Transcriber>,
    ) -> anyhow::Result<Self> {
        let (cfg, vault) = open_vault(cfg)?;
        Self::build_with_metrics(cfg, vault, brain, transcriber, Arc::new(Metrics::default())).await
    }

    async fn build_with_metrics(
        cfg: Config,
        vault: Vault,
        brain: Arc<dyn Brain>,
        transcriber: Option<sandra_models::whisper::Transcriber>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let missing = cfg.missing_whatsapp_settings();
        if !missing.is_empty() {
            tracing::warn!(missing = ?missing, "WhatsApp is not fully configured: webhooks will be refused or replies cannot be sent until these are set");
        }
        create_private_dir(&cfg.storage.data_dir)?;
        let store = Arc::new(
            Store::open_with(
                &cfg.storage.data_dir,
                vault.store_codec(cfg.storage.encrypt),
            )
            .with_context(|| format!("opening storage in {}", cfg.storage.data_dir.display()))?,
        );
        let w = &cfg.whatsapp;
        let live = LiveWhatsapp::new(w);
        let graph = GraphClient::new(GraphConfig {
            base_url: w.graph_base_url.clone(),
            api_version: live.api_version.clone(),
            phone_number_id: live.phone_number_id.clone(),
            credentials: live.access_token.clone(),
            timeout: w.request_timeout,
        });
        let c = &cfg.conversation;
        let sender_slot = ActorSlot::default();
        let transcription = transcriber.map(|t| TranscriptionArgs {
            transcriber: t,
            media: sandra_actors::media::MediaClient::new(graph.clone()),
            max_audio_seconds: cfg.transcription.max_audio_seconds,
            max_jobs: cfg.transcription.max_jobs,
            metrics: metrics.clone(),
        });
        let vision = build_vision(&cfg).await?.map(|v| {
            v.observe_queue_wait(metrics.model_queue_wait_seconds.clone());
            VisionArgs {
                vision: v,
                media: sandra_actors::media::MediaClient::new(graph.clone()),
                image: cfg.vision.image_limits(),
                document: cfg.vision.doc_limits(),
                max_jobs: cfg.vision.max_jobs,
                metrics: metrics.clone(),
            }
        });
        let speaker = build_speaker(&cfg).await?;
        if let Some(s) = &speaker {
            s.observe_queue_wait(metrics.model_queue_wait_seconds.clone());
        }
        let voice_policy = VoicePolicy {
            reply: match cfg.voice.reply {
                VoiceReplyMode::Mirror => VoiceReply::Mirror,
                VoiceReplyMode::Always => VoiceReply::Always,
                VoiceReplyMode::Never => VoiceReply::Never,
            },
            languages: speaker
                .as_ref()
                .map(|s| s.languages().to_vec())
                .unwrap_or_default(),
            note_chars: cfg.voice.note_chars,
        };
        let speech = speaker.map(|s| SpeechArgs {
            speaker: s,
            max_jobs: cfg.voice.max_jobs,
            metrics: metrics.clone(),
        });
        let mailer = if cfg.email.enabled() {
            let e = &cfg.email;
            let m = sandra_actors::mailer::Mailer::new(sandra_actors::mailer::MailerConfig {
                smtp_url: e.smtp_url.clone(),
                from: e.from.clone(),
                attempts: e.send_attempts,
                retry_delay: e.retry_delay,
                timeout: e.timeout,
            })
            .map_err(|e| anyhow::anyhow!("config key {e}"))?;
            tracing::info!(mailer = ?m, "linking by email is on");
            Some(Arc::new(m))
        } else {
            tracing::info!("linking by email is off: [email] smtp_url is not set");
            None
        };
        let deps = ConversationDeps {
            store: store.clone(),
            run: RunDeps {
                brain: brain.clone(),
                sender: sender_slot,
                transcription: transcription.as_ref().map(|_| ActorSlot::default()),
                vision: vision.as_ref().map(|_| ActorSlot::default()),
                echo_transcript: cfg.transcription.echo_transcript,
                max_audio_seconds: cfg.transcription.max_audio_seconds,
                mailer,
                progress: Arc::default(),
            },
            metrics: metrics.clone(),
            policy: ConversationPolicy {
                bot_name: c.bot_name.clone(),
                max_history_turns: c.max_history_turns,
                typing_indicator: c.typing_indicator,
                brain_timeout: c.brain_timeout,
                max_wait: c.max_wait,
                wait_notice_after: c.wait_notice_after,
                group_context_messages: c.group_context_messages,
                group_context_chars: c.group_context_chars,
                offer_linking: c.offer_linking,
            },
            limits: Arc::new(sandra_actors::limits::Limits::new(cfg.limits.policy())),
            max_attempts: 3,
            voice: voice_policy,
        };
        let router_args = RouterArgs {
            deps: Arc::new(deps),
            idle_timeout: c.idle_timeout,
            sweep_every: (c.idle_timeout / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(30)),
        };
        let sender_args = SenderArgs {
            store: store.clone(),
            graph,
            metrics: metrics.clone(),
            pacing: cfg.sender.pacing(),
            health: Arc::new(SenderHealth::default()),
            reopen_template: (!w.reopen_template.name.is_empty()).then(|| {
                sandra_actors::sender::ReopenTemplate {
                    name: w.reopen_template.name.clone(),
                    language: w.reopen_template.language.clone(),
                }
            }),
            speech: speech.as_ref().map(|_| ActorSlot::default()),
            speech_timeout: cfg.voice.timeout,
        };
        let ingest = IngestConfig {
            app_secret: live.app_secret.clone(),
            phone_number_id: live.phone_number_id.clone(),
            max_body_bytes: cfg.server.max_body_bytes,
        };
        let system = System::start(
            router_args,
            sender_args,
            transcription,
            vision,
            speech,
            ingest,
        )
        .await
        .context("starting the actor system")?;
        tracing::info!(brain = %brain.describe(), "actors started");

        let state = HttpState {
            system: system.clone(),
            verify_token: live.verify_token.clone(),
            admission: Arc::new(Semaphore::new(cfg.server.max_in_flight)),
            max_body_bytes: cfg.server.max_body_bytes,
            missing_settings: missing,
            admin: crate::admin::Admin::new(&cfg, system.clone(), live.clone(), vault.clone()),
        };
        let router = http::router(state, cfg.server.request_timeout);
        let listener = TcpListener::bind(cfg.server.bind)
            .await
            .with_context(|| format!("binding {}", cfg.server.bind))?;
        Ok(Self {
            listener,
            system,
            live,
            router,
            metrics,
            cfg,
            vault,
        })
    }

    /// The vault the stored secrets were read from (the portal stores settings through it).
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The configuration in effect (stored secrets layered in).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn system(&self) -> &System {
        &self.system
    }

    /// The live WhatsApp settings (SIGHUP and the Admin Portal change them).
    pub fn live(&self) -> &LiveWhatsapp {
        &self.live
    }

    /// Serves until `shutdown` resolves, then stops the actors and flushes the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let system = self.system.clone();
        let retention = self.cfg.storage.retention();
        let sweeper = tokio::spawn({
            let store = system.store.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    every.tick().await;
                    // Sweeps walk whole trees with blocking sled calls: off the runtime.
                    let (store, retention) = (store.clone(), retention.clone());
                    let swept = tokio::task::spawn_blocking(move || {
                        store.sweep(&retention, sandra_actors::store::now_ms())
                    })
                    .await;
                    match swept {
                        Ok(Ok(r)) => tracing::info!(
                            dedup = r.dedup,
                            outbox = r.outbox,
                            dead_letters = r.dead_letters,
                            sessions = r.sessions,
                            "retention sweep done"
                        ),
                        Ok(Err(e)) => tracing::error!(error = %e, "retention sweep failed"),
                        Err(e) => tracing::error!(error = %e, "retention sweep panicked"),
                    }
                }
            }
        });
        let server = &self.cfg.server;
        let opts = http::ServeOptions {
            header_timeout: server.header_timeout,
            max_connections: server.max_connections,
            // No request outlives request_timeout, so this wait is enough for every one of them.
            shutdown_grace: server.request_timeout,
        };
        tracing::info!(addr = %self.local_addr(), max_connections = opts.max_connections, "listening");
        http::serve(self.listener, self.router, opts, self.metrics, shutdown).await;
        sweeper.abort();
        system.shutdown().await;
        Ok(())
    }
}

/// Creates the data directory (and missing parents) readable by Sandra's user only: it holds
/// conversations. An existing directory keeps its mode (`sandra doctor` reports an open one).
pub(crate) fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))
}

/// The brain `[llm]` asks for. A configured model that fails to load stops start-up with the
/// path and the reason; no model configured or installed falls back to the placeholder, loudly.
pub async fn build_brain(cfg: &Config, metrics: &Metrics) -> anyhow::Result<Arc<dyn Brain>> {
    sandra_models::priority::set_model_threads(cfg.server.model_threads);
    use sandra_actors::llm_brain::LlmBrain;
    use sandra_models::catalog::{Manifest, ModelRole, models_dir};
    use sandra_models::chat::{ChatEngine, RemoteConfig};

    use crate::config::LlmBackend;
    let l = &cfg.llm;
    let engine = match l.backend {
        LlmBackend::None => {
            tracing::info!("llm.backend = \"none\": replies come from the placeholder brain");
            return Ok(Arc::new(PlaceholderBrain));
        }
        LlmBackend::Openai => {
            let mut rc = RemoteConfig::new(
                l.openai.base_url.clone(),
                l.openai.model.clone(),
                l.openai.timeout.as_secs().max(1),
                l.openai.context_tokens,
            );
            let key = l.openai.api_key.expose_secret();
            if !key.is_empty() {
                rc.api_key = Some(key.to_string());
            }
            ChatEngine::remote(rc, l.sampling.params()).context("configuring llm.openai")?
        }
        LlmBackend::Local => {
            let path = if l.model.as_os_str().is_empty() {
                let dir = models_dir(&cfg.storage.data_dir);
                let installed = Manifest::load(&dir)
                    .ok()
                    .and_then(|m| m.get(ModelRole::Chat).and_then(|c| c.main_path(&dir)));
                match installed {
                    Some(p) => p,
                    None => {
                        tracing::warn!(models_dir = %dir.display(), "no chat model installed and llm.model is empty: replies come from the placeholder brain. Install one with `sandra models fetch`.");
                        return Ok(Arc::new(PlaceholderBrain));
                    }
                }
            } else {
                l.model.clone()
            };
            let opts = sandra_models::chat::LocalOptions {
                device: l.device,
                parallel: l.parallel,
                kv_cache_mb: l.kv_cache_mb,
                cpu_prefill: l.cpu_prefill,
                ..Default::default()
            };
            let params = l.sampling.params();
            tracing::info!(model = %path.display(), "loading chat model");
            let started = std::time::Instant::now();
            let engine = tokio::task::spawn_blocking(move || {
                ChatEngine::load_local_with(&path, opts, params)
            })
            .await
            .context("loading the chat model")??;
            tracing::info!(model = %engine.describe(), secs = started.elapsed().as_secs_f32(), "chat model loaded");
            engine
        }
    };
    let engine = engine.with_context_cap(l.context_tokens);
    engine.observe_queue_wait(metrics.model_queue_wait_seconds.clone());
    Ok(Arc::new(
        LlmBrain::new(engine, cfg.system_prompt().to_string())
            .with_tokens_per_second(metrics.llm_tokens_per_second.clone()),
    ))
}

/// The voice files `[voice]` names (`voice.voices`), else every voice installed under
/// `<data_dir>/models/piper/`, the most recently fetched first (it speaks its language).
pub fn voice_files(cfg: &Config) -> Vec<std::path::PathBuf> {
    if cfg.voice.voices.is_empty() {
        sandra_models::catalog::installed_voice_files(&sandra_models::catalog::models_dir(
            &cfg.storage.data_dir,
        ))
    } else {
        cfg.voice.voices.clone()
    }
}

/// The voices `[voice]` asks for: `voice.voices`, else every voice installed under
/// `<data_dir>/models/piper/` (the most recently fetched first: it speaks its language). None (or `voice.reply = "never"`): replies are text only. A
/// voice that fails to load stops start-up with the path and the reason.
pub async fn build_speaker(cfg: &Config) -> anyhow::Result<Option<sandra_models::speech::Speaker>> {
    use sandra_models::speech::{Speaker, SpeechOptions};
    let v = &cfg.voice;
    if v.reply == VoiceReplyMode::Never {
        return Ok(None);
    }
    let voices = voice_files(cfg);
    if voices.is_empty() {
        tracing::info!(
            "no voice installed: replies are text only (`sandra models fetch --model piper-en_US-joe-medium` installs one; `sandra models list --available` lists the others)"
        );
        return Ok(None);
    }
    let opts = SpeechOptions {
        voices: voices.clone(),
        threads: if v.threads > 0 {
            v.threads
        } else {
            sandra_models::whisper::default_threads()
        },
    };
    let queue = v.queue;
    let speaker = tokio::task::spawn_blocking(move || Speaker::load(opts, queue))
        .await
        .context("loading the voices")?
        .with_context(|| format!("loading the voices (config key voice.voices): {voices:?}"))?;
    tracing::info!(languages = ?speaker.languages(), "voice replies on");
    Ok(Some(speaker))
}

/// The Whisper model `[transcription]` asks for, if any. A configured directory that fails to
/// load stops start-up with the path and the reason.
pub async fn build_transcriber(
    cfg: &Config,
) -> anyhow::Result<Option<sandra_models::whisper::Transcriber>> {
    sandra_models::priority::set_model_threads(cfg.server.model_threads);
    use sandra_models::catalog::{Manifest, ModelRole, models_dir};
    use sandra_models::whisper::{Transcriber, WhisperOptions};
    let t = &cfg.transcription;
    if !t.enabled {
        return Ok(None);
    }
    if t.backend == crate::config::TranscriptionBackend::Openai {
        let key = t.api_key.expose_secret();
        let tr = Transcriber::remote(sandra_models::whisper::remote::RemoteWhisperConfig {
            base_url: t.base_url.clone(),
            model: t.model.clone(),
            api_key: (!key.is_empty()).then(|| key.to_string()),
            language: (!t.language.is_empty()).then(|| t.language.clone()),
            timeout: t.timeout,
        })
        .context("config key transcription.base_url")?;
        return Ok(Some(tr));
    }
    let dir = if t.model_dir.as_os_str().is_empty() {
        let models = models_dir(&cfg.storage.data_dir);
        let installed = Manifest::load(&models).ok().and_then(|m| {
            m.get(ModelRole::Transcription)
                .and_then(|w| w.main_path(&models))
                .and_then(|p| {
                    if p.is_dir() {
                        Some(p)
                    } else {
                        p.parent().map(|d| d.to_path_buf())
                    }
                })
        });
        match installed {
            Some(d) => d,
            None => {
                tracing::warn!(
                    "no transcription model installed: voice notes get a polite \"I can't listen yet\". Install one with `sandra models fetch --model whisper-base`."
                );
                return Ok(None);
            }
        }
    } else {
        t.model_dir.clone()
    };
    let opts = WhisperOptions {
        language: (!t.language.is_empty()).then(|| t.language.clone()),
        threads: (t.threads > 0).then_some(t.threads),
        decoder_q8: t.decoder_q8,
        ..Default::default()
    };
    let queue = t.queue;
    let shown = dir.display().to_string();
    let tr = tokio::task::spawn_blocking(move || Transcriber::load(&dir, opts, queue))
        .await
        .context("loading the transcription model")?
        .with_context(|| format!("loading the transcription model from {shown}"))?;
    tracing::info!(model = %shown, "transcription model loaded");
    Ok(Some(tr))
}

/// The vision models `[vision]` asks for, if the OCR model is installed. Installed models that
/// fail to load stop start-up with the path and the reason; no OCR model turns vision off,
/// with one log line.
pub async fn build_vision(cfg: &Config) -> anyhow::Result<Option<sandra_models::vision::Vision>> {
    sandra_models::priority::set_model_threads(cfg.server.model_threads);
    use sandra_models::catalog::{Manifest, ModelRole, models_dir};
    use sandra_models::vision::{Vision, VisionOptions};

    use crate::config::SceneBackend;
    let v = &cfg.vision;
    if !v.enabled {
        return Ok(None);
    }
    let models = models_dir(&cfg.storage.data_dir);
    let manifest = Manifest::load(&models).ok();
    // The installed OCR model's directory (its files' parent), else where the catalog puts it.
    let ocr_dir = manifest
        .as_ref()
        .and_then(|m| m.get(ModelRole::Ocr))
        .and_then(|o| o.main_path(&models))
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_else(|| models.join(sandra_models::catalog::PPOCR_V6_SMALL));
    if !ocr_dir.is_dir() {
        tracing::warn!(models_dir = %models.display(), "no OCR model installed: photos and documents get a polite \"I can't open these yet\". Install it with `sandra models fetch`.");
        return Ok(None);
    }
    let scene_dir = match v.scene {
        SceneBackend::Auto => manifest.as_ref().and_then(|m| {
            m.get(ModelRole::Vision)
                .and_then(|w| w.main_path(&models))
                .map(|p| {
                    if p.is_dir() {
                        p
                    } else {
                        p.parent().map_or(p.clone(), |d| d.to_path_buf())
                    }
                })
        }),
        SceneBackend::None | SceneBackend::Remote => None,
    };
    let remote: Option<std::sync::Arc<dyn sandra_models::vision::SceneServer>> =
        if v.scene == SceneBackend::Remote {
            let key = Some(v.remote_api_key.expose_secret().to_string()).filter(|k| !k.is_empty());
            let server =
                sandra_models::vision::scene::RemoteScene::new(&v.remote_url, &v.remote_model, key)
                    .context("vision.remote_url / vision.remote_model")?
                    .with_timeout(v.remote_timeout);
            tracing::info!(server = %server.describe(), "photos are described by a remote server");
            Some(std::sync::Arc::new(server))
        } else {
            None
        };
    let opts = VisionOptions {
        ocr_dir: ocr_dir.clone(),
        scene_dir: scene_dir.clone(),
        remote,
        queue: v.queue,
        scene_max_tokens: v.scene_max_tokens,
    };
    let started = std::time::Instant::now();
    let vision = tokio::task::spawn_blocking(move || Vision::start(opts))
        .await
        .context("loading the vision models")?
        .with_context(|| format!("loading the vision models from {}", ocr_dir.display()))?;
    tracing::info!(
        ocr = %ocr_dir.display(),
        scene = ?scene_dir,
        describes_scenes = vision.describes_scenes(),
        secs = started.elapsed().as_secs_f32(),
        "vision models loaded"
    );
    Ok(Some(vision))
}
