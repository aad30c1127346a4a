//! `sandra doctor`: the "Verify" step. Each check says PASS or FAIL, what it found, and for a
//! failure what to do about it. The Admin Portal's status page shows the same list.
//!
//! The checks: the configuration is complete; the data directory exists, is writable and is not
//! readable by other users; the master key is where Sandra looks for it, 0600; the access token
//! works and names the phone number (`GET /{version}/{phone-number-id}`); the app is subscribed
//! to the business account's webhooks (`GET /{waba-id}/subscribed_apps`, when
//! `whatsapp.business_account_id` is set); the API version is not retired; the public webhook URL
//! answers the verify handshake end to end (when `server.public_url` is set: this proves DNS,
//! TLS, the proxy and the verify token in one go); the models are installed, unchanged, and
//! (with `--load`) load. With a running system (the portal) it also reports the actors and the
//! sender's view of the token.
//!
//! Nothing here prints a secret: Graph calls carry the token in a header, and errors are shown
//! without their URL (the handshake URL carries the verify token).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sandra_actors::secret::ExposeSecret;
use sandra_models::catalog::{self, Manifest, ModelRole};
use serde_json::Value;

use crate::config::{Config, LlmBackend};

/// One verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was found (on success too: the number, the model, the path).
    pub detail: String,
    /// What to do, for a failure.
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What the checks may use beyond the configuration.
#[derive(Default, Clone, Copy)]
pub struct Options<'a> {
    /// The running system (the portal): adds the actors' and the sender's state.
    pub system: Option<&'a sandra_actors::System>,
    /// Load every configured model fully (slow: seconds to minutes), not only verify its files.
    pub load_models: bool,
}

/// Every check, in order, for `cfg` alone.
pub async fn run_checks(cfg: &Config) -> Vec<Check> {
    run_checks_with(cfg, Options::default()).await
}

/// Every check, with what `opts` adds.
pub async fn run_checks_with(cfg: &Config, opts: Options<'_>) -> Vec<Check> {
    let env = |k: &str| std::env::var(k).ok();
    let mut out = vec![
        config_check(cfg),
        data_dir_check(&cfg.storage.data_dir),
        master_key_check(cfg, env),
        api_version_check(&cfg.whatsapp.api_version),
    ];
    let http = reqwest::Client::builder()
        .timeout(cfg.whatsapp.request_timeout)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("building the HTTP client");
    out.push(phone_number_check(cfg, &http).await);
    if !cfg.whatsapp.business_account_id.is_empty() {
        out.push(subscription_check(cfg, &http).await);
    }
    if !cfg.server.public_url.is_empty() {
        out.push(handshake_check(cfg, &http).await);
    }
    out.extend(model_checks(cfg, opts.load_models).await);
    if let Some(system) = opts.system {
        out.push(if system.actors_up() {
            Check::pass("actors", "router and sender running")
        } else {
            Check::fail(
                "actors",
                "the router or the sender is not running",
                "see the log for the actor's failure; restart Sandra",
            )
        });
        if system.token_invalid() {
            out.push(Check::fail(
                "sending",
                "paused: Meta refused the access token (190) on a send",
                "replace the token (WhatsApp settings in the portal, or `sandra secrets set whatsapp.access_token` then SIGHUP)",
            ));
        }
    }
    out
}

/// Prints the checks as the CLI does; true when all passed.
pub fn print_report(checks: &[Check]) -> bool {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in checks {
        let verdict = if c.ok { "PASS" } else { "FAIL" };
        println!("{verdict}  {:<width$}  {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("      {:<width$}  fix: {fix}", "");
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        println!("\nall {} checks passed", checks.len());
    } else {
        println!("\n{failed} of {} checks failed", checks.len());
    }
    failed == 0
}

fn config_check(cfg: &Config) -> Check {
    if let Err(e) = cfg.validate() {
        return Check::fail(
            "config",
            e.to_string(),
            "correct the key named above (`sandra check-config` shows the result)",
        );
    }
    let missing = cfg.missing_whatsapp_settings();
    if missing.is_empty() {
        Check::pass("config", "valid; the WhatsApp settings are set")
    } else {
        Check::fail(
            "config",
            format!("valid, but not set: {}", missing.join(", ")),
            "set them in the environment (or config.toml) from Meta's App Dashboard → WhatsApp → API Setup",
        )
    }
}

fn data_dir_check(dir: &Path) -> Check {
    const NAME: &str = "data directory";
    let shown = dir.display();
    if let Err(e) = crate::app::create_private_dir(dir) {
        return Check::fail(
            NAME,
            format!("{e:#}"),
            format!(
                "create it for the user Sandra runs as: `install -d -m 700 {shown}` (or set storage.data_dir)"
            ),
        );
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    if let Err(e) = std::fs::write(&probe, b"probe") {
        return Check::fail(
            NAME,
            format!("{shown} is not writable: {e}"),
            format!("give the user Sandra runs as ownership: `chown -R <user> {shown}`"),
        );
    }
    let _ = std::fs::remove_file(&probe);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(dir) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                return Check::fail(
                    NAME,
                    format!(
                        "{shown} is open to every user (mode {mode:03o}): it holds conversations"
                    ),
                    format!("`chmod 700 {shown}`"),
                );
            }
            return Check::pass(NAME, format!("{shown}, writable, mode {mode:03o}"));
        }
    }
    Check::pass(NAME, format!("{shown}, writable"))
}

/// Where the master key file is when neither the environment nor a systemd credential gives
/// the key: `storage.master_key_file`, else `<data_dir>/master.key` (the vault's default).
fn master_key_file(cfg: &Config) -> PathBuf {
    cfg.storage.master_key_path()
}

const MASTER_KEY: &str = "master key";

/// Where the key comes from and whether its file is private; then, when secrets are stored,
/// whether this key opens them (a wrong key would stop start-up).
fn master_key_check(cfg: &Config, env: impl Fn(&str) -> Option<String>) -> Check {
    let found = master_key_location_check(cfg, &env);
    if !found.ok || !crate::vault::secrets_file(cfg).exists() {
        return found;
    }
    match crate::vault::Vault::open_with_env(cfg, &env) {
        Ok(v) => Check::pass(
            MASTER_KEY,
            format!(
                "{}; it opens the stored secrets (key id {})",
                found.detail,
                v.key_id()
            ),
        ),
        Err(e) => Check::fail(
            MASTER_KEY,
            format!("{e:#}"),
            "start with the master key the stored secrets were sealed with (SANDRA_MASTER_KEY, the systemd credential master_key, or the key file): see README, Secrets",
        ),
    }
}

/// By path only.
fn master_key_location_check(cfg: &Config, env: impl Fn(&str) -> Option<String>) -> Check {
    const NAME: &str = MASTER_KEY;
    if env("SANDRA_MASTER_KEY").is_some_and(|k| !k.is_empty()) {
        return Check::pass(NAME, "from SANDRA_MASTER_KEY");
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        let p = Path::new(&dir).join("master_key");
        if p.is_file() {
            return Check::pass(NAME, "from the systemd credential master_key");
        }
    }
    let path = master_key_file(cfg);
    let shown = path.display();
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::pass(
            NAME,
            format!("none yet: Sandra creates {shown} (0600) on first start"),
        ),
        Err(e) => Check::fail(
            NAME,
            format!("{shown} cannot be read: {e}"),
            format!("give the user Sandra runs as access: `chown <user> {shown}`"),
        ),
        Ok(meta) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Check::fail(
                        NAME,
                        format!("{shown} is readable by others (mode {mode:03o})"),
                        format!("`chmod 600 {shown}`"),
                    );
                }
            }
            let _ = meta;
            Check::pass(NAME, format!("{shown}, mode 600"))
        }
    }
}

/// v20.0 and older are retired (Meta's changelog: v20.0 end of life Sep 24 2026).
const LAST_RETIRED_MAJOR: u32 = 20;

fn api_version_check(version: &str) -> Check {
    const NAME: &str = "API version";
    let major = version
        .strip_prefix('v')
        .and_then(|r| r.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(m) if m > LAST_RETIRED_MAJOR => Check::pass(NAME, format!("{version} is supported")),
        Some(_) => Check::fail(
            NAME,
            format!("{version} is retired (v{LAST_RETIRED_MAJOR}.0 and older are)"),
            "set whatsapp.api_version = \"v26.0\" (or WHATSAPP_API_VERSION)",
        ),
        None => Check::fail(
            NAME,
            format!("{version:?} is not a version like \"v26.0\""),
            "set whatsapp.api_version = \"v26.0\"",
        ),
    }
}

/// A Graph call's outcome: the JSON body, or Meta's error envelope, or no answer.
enum Graph {
    Ok(Value),
    Error {
        status: u16,
        code: Option<i64>,
        message: String,
    },
    Unreachable(String),
}

async fn graph_get(cfg: &Config, http: &reqwest::Client, path: &str) -> Graph {
    let w = &cfg.whatsapp;
    let url = format!(
        "{}/{}/{}",
        w.graph_base_url.trim_end_matches('/'),
        w.api_version,
        path
    );
    let resp = match http
        .get(url)
        .bearer_auth(w.access_token.expose_secret())
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Graph::Unreachable(error_chain(e)),
    };
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Graph::Ok(body);
    }
    Graph::Error {
        status,
        code: body.pointer("/error/code").and_then(Value::as_i64),
        message: body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("no error message")
            .chars()
            .take(300)
            .collect(),
    }
}

/// A request error with its causes ("connection refused", the TLS failure), without its URL:
/// a query can carry the verify token.
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

const TOKEN_FIX: &str = "create a System User token with whatsapp_business_messaging and whatsapp_business_management (Business Settings → System users), then set WHATSAPP_ACCESS_TOKEN (or `sandra secrets set whatsapp.access_token`) and reload (SIGHUP)";

/// The fix for a Graph error every check can get.
fn common_fix(code: Option<i64>) -> Option<&'static str> {
    match code {
        Some(190) => Some(TOKEN_FIX),
        Some(0 | 3 | 10) | Some(200..=299) => Some(
            "give the token's system user the WhatsApp permissions and access to this business account (Business Settings → System users → Assign assets)",
        ),
        Some(4 | 80007 | 613) => Some("Meta is rate-limiting this app; run the check again later"),
        _ => None,
    }
}

fn graph_failure(name: &str, what: &str, g: Graph, not_found_fix: &str) -> Check {
    match g {
        Graph::Ok(_) => unreachable!("only failures get here"),
        Graph::Unreachable(e) => Check::fail(
            name,
            format!("the Graph API did not answer: {e}"),
            "check outbound HTTPS to whatsapp.graph_base_url (firewall, proxy, DNS)",
        ),
        Graph::Error {
            status,
            code,
            message,
        } => {
            let detail = match code {
                Some(190) => format!("the access token is invalid or expired (190: {message})"),
                Some(100) => format!("{what} was not found (100: {message})"),
                Some(c) => format!("Meta refused (HTTP {status}, code {c}: {message})"),
                None => format!("HTTP {status} without Meta's error envelope"),
            };
            let fix = common_fix(code).unwrap_or(match code {
                Some(100) => not_found_fix,
                _ => "see Meta's error codes (https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes)",
            });
            Check::fail(name, detail, fix)
        }
    }
}

async fn phone_number_check(cfg: &Config, http: &reqwest::Client) -> Check {
    const NAME: &str = "token and number";
    let w = &cfg.whatsapp;
    if w.access_token.expose_secret().is_empty() || w.phone_number_id.is_empty() {
        return Check::fail(
            NAME,
            "not checked: whatsapp.access_token or whatsapp.phone_number_id is not set",
            "set WHATSAPP_ACCESS_TOKEN and WHATSAPP_PHONE_NUMBER_ID",
        );
    }
    let path = format!(
        "{}?fields=display_phone_number,verified_name,quality_rating",
        w.phone_number_id
    );
    match graph_get(cfg, http, &path).await {
        Graph::Ok(v) => {
            let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
            let quality = field("quality_rating");
            let detail = format!(
                "the token works; number {} ({}), quality {quality}",
                field("display_phone_number"),
                field("verified_name"),
            );
            if quality == "RED" {
                Check::fail(
                    NAME,
                    detail,
                    "the number's quality is low: Meta may limit it; see WhatsApp Manager → Insights",
                )
            } else {
                Check::pass(NAME, detail)
            }
        }
        g => graph_failure(
            NAME,
            &format!("phone number id {}", w.phone_number_id),
            g,
            "copy the Phone number ID (not the number itself) from App Dashboard → WhatsApp → API Setup",
        ),
    }
}

async fn subscription_check(cfg: &Config, http: &reqwest::Client) -> Check {
    const NAME: &str = "webhook subscription";
    let waba = &cfg.whatsapp.business_account_id;
    match graph_get(cfg, http, &format!("{waba}/subscribed_apps")).await {
        Graph::Ok(v) => {
            let apps: Vec<String> = v
                .get("data")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|app| {
                            app.pointer("/whatsapp_business_api_data/name")
                                .and_then(Value::as_str)
                                .unwrap_or("an app")
                                .to_string()
                        })
                        .collect()
                })
                .unwrap_or_default();
            if apps.is_empty() {
                Check::fail(
                    NAME,
                    format!(
                        "no app is subscribed to business account {waba}: no webhook will arrive"
                    ),
                    format!(
                        "subscribe the app: `curl -X POST -H 'Authorization: Bearer <token>' {}/{}/{waba}/subscribed_apps`, or set the callback in App Dashboard → WhatsApp → Configuration",
                        cfg.whatsapp.graph_base_url.trim_end_matches('/'),
                        cfg.whatsapp.api_version
                    ),
                )
            } else {
                Check::pass(NAME, format!("subscribed: {}", apps.join(", ")))
            }
        }
        g => graph_failure(
            NAME,
            &format!("business account {waba}"),
            g,
            "copy the WhatsApp Business Account ID from App Dashboard → WhatsApp → API Setup into whatsapp.business_account_id",
        ),
    }
}

async fn handshake_check(cfg: &Config, http: &reqwest::Client) -> Check {
    use rand::Rng;
    const NAME: &str = "public webhook URL";
    let url = format!(
        "{}{}",
        cfg.server.public_url.trim_end_matches('/'),
        crate::http::WEBHOOK_PATH
    );
    let challenge = format!("doctor-{}", rand::rng().random::<u64>());
    let resp = http
        .get(&url)
        .query(&[
            ("hub.mode", "subscribe"),
            (
                "hub.verify_token",
                cfg.whatsapp.verify_token.expose_secret(),
            ),
            ("hub.challenge", challenge.as_str()),
        ])
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        // Without the URL: its query holds the verify token.
        Err(e) => {
            return Check::fail(
                NAME,
                format!("{url} did not answer: {}", error_chain(e)),
                "check DNS, the TLS certificate (Meta needs a valid one) and that the proxy forwards to server.bind",
            );
        }
    };
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    match status {
        200 if body == challenge => {
            Check::pass(NAME, format!("{url} answers the verify handshake"))
        }
        200 => Check::fail(
            NAME,
            format!("{url} answered 200 without echoing the challenge"),
            "the URL reaches something other than Sandra: point the proxy at server.bind",
        ),
        401 | 403 => Check::fail(
            NAME,
            format!("{url} refused the verify token (HTTP {status})"),
            "the Sandra behind the proxy has another verify token, or the proxy routes elsewhere",
        ),
        _ => Check::fail(
            NAME,
            format!("{url} answered HTTP {status}"),
            "make the proxy forward /api/channels/whatsapp to server.bind",
        ),
    }
}

async fn model_checks(cfg: &Config, load: bool) -> Vec<Check> {
    let dir = catalog::models_dir(&cfg.storage.data_dir);
    let manifest = Manifest::load(&dir).unwrap_or_default();
    let mut out = Vec::new();
    // (role, wanted, how to get it)
    let chat_wanted = cfg.llm.backend == LlmBackend::Local;
    let roles = [
        (ModelRole::Chat, chat_wanted, "sandra models fetch"),
        (
            ModelRole::Transcription,
            cfg.transcription.enabled
                && cfg.transcription.backend == crate::config::TranscriptionBackend::Local
                && cfg.transcription.model_dir.as_os_str().is_empty(),
            "sandra models fetch --model whisper-base",
        ),
        (
            ModelRole::Ocr,
            cfg.vision.enabled,
            "sandra models fetch --model ppocr-v6-small",
        ),
    ];
    for (role, wanted, fetch) in roles {
        let name = format!("model: {role}");
        if role == ModelRole::Chat {
            match cfg.llm.backend {
                LlmBackend::None => {
                    out.push(Check::pass(
                        &name,
                        "llm.backend = \"none\": placeholder replies",
                    ));
                    continue;
                }
                LlmBackend::Openai => {
                    out.push(Check::pass(
                        &name,
                        format!(
                            "remote {} at {}",
                            cfg.llm.openai.model, cfg.llm.openai.base_url
                        ),
                    ));
                    continue;
                }
                LlmBackend::Local if !cfg.llm.model.as_os_str().is_empty() => {
                    let p = &cfg.llm.model;
                    out.push(if p.is_file() {
                        Check::pass(&name, format!("{} (llm.model)", p.display()))
                    } else {
                        Check::fail(
                            &name,
                            format!("llm.model {} does not exist", p.display()),
                            "point llm.model at a GGUF file, or empty it to use the installed model",
                        )
                    });
                    continue;
                }
                LlmBackend::Local => {}
            }
        }
        if role == ModelRole::Transcription && !cfg.transcription.model_dir.as_os_str().is_empty() {
            let d = &cfg.transcription.model_dir;
            out.push(if d.is_dir() {
                Check::pass(&name, format!("{} (transcription.model_dir)", d.display()))
            } else {
                Check::fail(
                    &name,
                    format!("transcription.model_dir {} does not exist", d.display()),
                    "point it at a Whisper directory, or empty it to use the installed model",
                )
            });
            continue;
        }
        if !wanted {
            continue;
        }
        match manifest.get(role) {
            Some(m) => {
                let (m_id, dir2, man) = (m.id.clone(), dir.clone(), manifest.clone());
                // Hashing a gigabyte takes seconds: off the runtime.
                let verified = tokio::task::spawn_blocking(move || man.verify(role, &dir2)).await;
                out.push(match verified {
                    Ok(Ok(())) => Check::pass(&name, format!("{m_id}, files verified (sha256)")),
                    Ok(Err(e)) => Check::fail(
                        &name,
                        format!("{m_id}: {e}"),
                        format!("reinstall it: `sandra models fetch --model {m_id}`"),
                    ),
                    Err(e) => Check::fail(&name, format!("verifying failed: {e}"), fetch),
                });
            }
            // The OCR networks may sit where the catalog puts them without a manifest entry.
            None if role == ModelRole::Ocr && dir.join(catalog::PPOCR_V6_SMALL).is_dir() => out
                .push(Check::pass(
                    &name,
                    format!(
                        "{} (not in the manifest: not verified)",
                        catalog::PPOCR_V6_SMALL
                    ),
                )),
            None => out.push(Check::fail(
                &name,
                format!("none installed in {}", dir.display()),
                format!("`{fetch}`"),
            )),
        }
    }
    out.push(voice_check(cfg, &dir, &manifest).await);
    if load && out.iter().all(|c| c.ok) {
        out.push(load_check(cfg).await);
    }
    out
}

/// The voices replies would be spoken with: each file present, the fetched ones re-hashed. No
/// voice is not a failure (replies are text only), but the detail says how to get one.
async fn voice_check(cfg: &Config, dir: &Path, manifest: &Manifest) -> Check {
    const NAME: &str = "model: voice";
    if cfg.voice.reply == crate::config::VoiceReplyMode::Never {
        return Check::pass(NAME, "voice.reply = \"never\": replies are text only");
    }
    let configured = !cfg.voice.voices.is_empty();
    let files = crate::app::voice_files(cfg);
    if files.is_empty() {
        return Check::pass(
            NAME,
            format!(
                "none installed: replies are text only (`sandra models fetch --model {}`; `sandra models list --available` lists other languages)",
                catalog::JOE_VOICE
            ),
        );
    }
    let (dir2, man, files2) = (dir.to_path_buf(), manifest.clone(), files.clone());
    // Hashing 63 MB a voice: off the runtime.
    let (problems, changed) = tokio::task::spawn_blocking(move || {
        let (mut problems, mut changed) = (Vec::new(), Vec::new());
        for f in &files2 {
            let json = std::path::PathBuf::from(format!("{}.json", f.display()));
            if !f.is_file() || !json.is_file() {
                problems.push(format!("{} or its .onnx.json does not exist", f.display()));
            } else if let Some(m) = man.voice_with_file(&dir2, f)
                && let Err(e) = m.verify(&dir2)
            {
                problems.push(format!("{}: {e}", m.id));
                changed.push(m.id.clone());
            }
        }
        (problems, changed)
    })
    .await
    .unwrap_or_else(|e| (vec![format!("verifying failed: {e}")], Vec::new()));
    if !problems.is_empty() {
        return Check::fail(
            NAME,
            problems.join("; "),
            match changed.first() {
                Some(id) => format!("reinstall it: `sandra models fetch --model {id}`"),
                None if configured => {
                    "fix the paths in voice.voices, or empty it to use the installed voices".into()
                }
                None => "put each voice's .onnx.json beside its .onnx".into(),
            },
        );
    }
    let mut langs: Vec<String> = Vec::new();
    for f in &files {
        let (name, lang) = catalog::voice_name_and_language(f);
        if !langs.iter().any(|l| l.starts_with(&format!("{lang} "))) {
            langs.push(format!("{lang} ({name})"));
        }
    }
    Check::pass(NAME, format!("replies spoken in {}", langs.join(", ")))
}

/// Loads the configured models the way `serve` does.
async fn load_check(cfg: &Config) -> Check {
    const NAME: &str = "models load";
    let metrics = sandra_actors::metrics::Metrics::default();
    let started = std::time::Instant::now();
    let result = async {
        let brain = crate::app::build_brain(cfg, &metrics).await?;
        let t = crate::app::build_transcriber(cfg).await?;
        let v = crate::app::build_vision(cfg).await?;
        // Loading a voice also asks libespeak-ng for its language.
        let s = crate::app::build_speaker(cfg).await?;
        anyhow::Ok(format!(
            "brain: {}; transcription: {}; vision: {}; voices: {}",
            brain.describe(),
            if t.is_some() { "loaded" } else { "off" },
            if v.is_some() { "loaded" } else { "off" },
            s.map(|s| s.languages().join(", "))
                .unwrap_or_else(|| "off".into())
        ))
    }
    .await;
    match result {
        Ok(d) => Check::pass(
            NAME,
            format!("{d} ({:.1} s)", started.elapsed().as_secs_f32()),
        ),
        Err(e) => Check::fail(
            NAME,
            format!("{e:#}"),
            "reinstall the model named above with `sandra models fetch`",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_versions_fail_and_current_ones_pass() {
        assert!(!api_version_check("v20.0").ok);
        assert!(!api_version_check("v19.0").ok);
        assert!(api_version_check("v21.0").ok);
        assert!(api_version_check("v26.0").ok);
        let bad = api_version_check("latest");
        assert!(!bad.ok && bad.fix.is_some());
    }

    #[cfg(unix)]
    #[test]
    fn the_master_key_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.storage.data_dir = dir.path().to_path_buf();
        let no_env = |_: &str| None;
        let c = master_key_check(&cfg, no_env);
        assert!(c.ok && c.detail.contains("creates"), "{c:?}");
        let key = dir.path().join("master.key");
        std::fs::write(&key, [7u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = master_key_check(&cfg, no_env);
        assert!(!c.ok, "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("chmod 600"), "{c:?}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(master_key_check(&cfg, no_env).ok);
        let env = |k: &str| (k == "SANDRA_MASTER_KEY").then(|| "k".to_string());
        assert!(
            master_key_check(&cfg, env)
                .detail
                .contains("SANDRA_MASTER_KEY")
        );
    }

    #[test]
    fn a_master_key_that_does_not_open_the_stored_secrets_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.storage.data_dir = dir.path().to_path_buf();
        let key =
            |hex: &'static str| move |k: &str| (k == "SANDRA_MASTER_KEY").then(|| hex.to_string());
        let right = key("1111111111111111111111111111111111111111111111111111111111111111");
        let wrong = key("2222222222222222222222222222222222222222222222222222222222222222");
        crate::vault::Vault::open_with_env(&cfg, &right)
            .unwrap()
            .set("whatsapp.access_token", &"EAAtoken".to_string().into())
            .unwrap();
        let c = master_key_check(&cfg, right);
        assert!(
            c.ok && c.detail.contains("opens the stored secrets"),
            "{c:?}"
        );
        let c = master_key_check(&cfg, wrong);
        assert!(!c.ok, "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("sealed with"), "{c:?}");
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_data_directory_fails() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let c = data_dir_check(&data);
        assert!(data.is_dir());
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c2 = data_dir_check(&data);
        assert!(
            !c2.ok && c2.fix.as_deref().unwrap().contains("chmod 700"),
            "{c2:?}"
        );
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(data_dir_check(&data).ok, "{c:?}");
    }
}
