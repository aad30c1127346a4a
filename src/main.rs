//! `sandra`: a self-hosted AI assistant on WhatsApp. Thin entry point; see the library crate.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sandra::app::Application;
use sandra::config::Config;

#[derive(Parser)]
#[command(
    name = "sandra",
    version,
    about = "Self-hosted AI assistant on WhatsApp"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive webhooks and answer users.
    Serve {
        /// Path to config.toml (defaults apply when omitted; env vars override both).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Install and list models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Talk to Sandra in the terminal: the configured brain, the real conversation actor and
    /// memory, no WhatsApp needed. `/photo PATH [caption]`, `/voice PATH`, `/quit`.
    Chat {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The local chat to continue (each name has its own memory).
        #[arg(long, default_value = "terminal")]
        name: String,
    },
    /// Verify the set-up: config, data directory, master key, token and number, webhook
    /// subscription, API version, public URL handshake, models. Exits 1 on any failure.
    Doctor {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also load every configured model (slow), not only verify its files.
        #[arg(long)]
        load: bool,
    },
    /// The Admin Portal (`/admin`).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Check a configuration and print it (secrets hidden).
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Store secrets encrypted under the master key (the environment still wins over them).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Store the value of config key NAME (e.g. whatsapp.access_token), read from stdin; one
    /// trailing newline is dropped. A running Sandra picks it up on SIGHUP.
    Set {
        name: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The names stored (never the values).
    List {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Forget a stored value.
    Remove {
        name: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Re-encrypt every stored secret and all personal data under a new master key (stop
    /// Sandra first).
    RotateKey {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Set the portal's password (argon2id hash in `<data_dir>/admin-password`, mode 0600).
    /// Reads it from the terminal twice, or once from stdin with --stdin. Takes effect at the
    /// next login, without a restart.
    SetPassword {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Read the password from the first line of stdin (scripts), without asking twice.
        #[arg(long)]
        stdin: bool,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download, verify (sha256) and install a model under `<data_dir>/models`.
    Fetch {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Catalog id (see `sandra models list --available`); defaults to the default chat model.
        #[arg(long)]
        model: Option<String>,
        /// Do nothing when the model's role (for a voice: that voice) already has a verified
        /// installation.
        #[arg(long)]
        if_missing: bool,
    },
    /// Show what is installed, what each role uses, and (with --available) what can be fetched.
    List {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        available: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let cfg = Config::load(config.as_deref())?;
            sandra::init_tracing(&cfg.log.level, &cfg.log.format);
            let app = Application::build(cfg).await?;
            tokio::spawn(reload_on_sighup(
                config,
                app.system().clone(),
                app.live().clone(),
            ));
            sandra::systemd::spawn_watchdog(app.system().clone());
            sandra::systemd::ready();
            app.run_until(async {
                shutdown_signal().await;
                sandra::systemd::stopping();
            })
            .await
        }
        // The installer blocks (pip, downloads through a blocking HTTP client, which may not
        // run on the runtime's workers): a blocking thread of its own.
        Command::Models { command } => tokio::task::spawn_blocking(move || models(command)).await?,
        Command::Chat { config, name } => chat(config, name).await,
        Command::Doctor { config, load } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    println!("FAIL  config  {e}");
                    println!(
                        "      fix: correct the key named above; nothing else can be checked until it loads"
                    );
                    anyhow::bail!("the configuration does not load");
                }
            };
            // Check what `serve` would run with: the stored secrets under the environment. A
            // key that does not open them is the master-key check's failure, reported below.
            let mut cfg = cfg;
            let mut secrets_ok = true;
            if sandra::vault::secrets_file(&cfg).exists()
                && let Ok(vault) = sandra::vault::Vault::open(&cfg)
                && let Err(e) = vault.apply_to(&mut cfg)
            {
                println!("FAIL  stored secrets  {e:#}");
                println!("      fix: store a valid value with `sandra secrets set NAME`");
                secrets_ok = false;
            }
            let opts = sandra::doctor::Options {
                load_models: load,
                ..Default::default()
            };
            let checks = sandra::doctor::run_checks_with(&cfg, opts).await;
            if sandra::doctor::print_report(&checks) && secrets_ok {
                Ok(())
            } else {
                anyhow::bail!("some checks failed")
            }
        }
        Command::Admin {
            command: AdminCommand::SetPassword { config, stdin },
        } => {
            let cfg = Config::load(config.as_deref())?;
            let password = read_password(stdin)?;
            let path = sandra::admin::auth::set_password(&cfg.storage.data_dir, &password)?;
            println!(
                "Admin Portal password set ({}); log in at /admin",
                path.display()
            );
            Ok(())
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(config.as_deref())?;
            println!("{cfg:#?}");
            Ok(())
        }
        Command::Secrets { command } => secrets(command),
    }
}

fn secrets(cmd: SecretsCommand) -> anyhow::Result<()> {
    use sandra::config::STORABLE_KEYS;
    use sandra::vault::{KeySource, Vault};
    use sandra_actors::secret::SecretString;
    let env_var = |name: &str| {
        STORABLE_KEYS
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    };
    match cmd {
        SecretsCommand::Set { name, config } => {
            let cfg = Config::load(config.as_deref())?;
            // Before reading stdin: a typo is reported at once.
            sandra::vault::check_storable(&name)?;
            let mut value = zeroize::Zeroizing::new(String::new());
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)?;
            let trimmed = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v))
                .unwrap_or(&value);
            if trimmed.is_empty() {
                anyhow::bail!(
                    "no value on stdin for {name} (to forget it: `sandra secrets remove {name}`)"
                );
            }
            let secret = SecretString::from(trimmed.to_string());
            // The value must make a valid configuration, checked as if nothing overrode it.
            let mut check = cfg.clone();
            check.set_by_env.clear();
            check.apply_stored(|k| (k == name).then(|| secret.clone()))?;
            let vault = Vault::open(&cfg)?;
            vault.set(&name, &secret)?;
            println!(
                "stored {name} (encrypted, master key {}). A running Sandra reads it on SIGHUP or restart.",
                vault.key_id()
            );
            if let Some(var) = env_var(&name).filter(|_| cfg.set_by_env.contains(name.as_str())) {
                eprintln!("note: {var} is set in this environment and wins over the stored value");
            }
            Ok(())
        }
        SecretsCommand::List { config } => {
            let cfg = Config::load(config.as_deref())?;
            let vault = Vault::open(&cfg)?;
            eprintln!("master key {} from {}", vault.key_id(), vault.key_source());
            for name in vault.names()? {
                match env_var(&name).filter(|_| cfg.set_by_env.contains(name.as_str())) {
                    Some(var) => println!("{name}\t(overridden by {var})"),
                    None => println!("{name}"),
                }
            }
            Ok(())
        }
        SecretsCommand::Remove { name, config } => {
            let cfg = Config::load(config.as_deref())?;
            if Vault::open(&cfg)?.remove(&name)? {
                println!("removed {name}");
            } else {
                println!("{name} was not stored");
            }
            Ok(())
        }
        SecretsCommand::RotateKey { config } => {
            let cfg = Config::load(config.as_deref())?;
            let r = sandra::vault::rotate_key(&cfg, &|k| std::env::var(k).ok())?;
            if r.old_id == r.new_id {
                println!(
                    "the new master key {} is installed; rotation finished",
                    r.new_id
                );
                return Ok(());
            }
            println!(
                "re-encrypted the stored secrets and the database: master key {} -> {}",
                r.old_id, r.new_id
            );
            match r.source {
                KeySource::File(p) => println!("the new key is in {}", p.display()),
                other => println!(
                    "the key came from {other}: put the new key, in {}, there instead (then run `sandra secrets rotate-key` once more to remove that file; Sandra will not start while it exists)",
                    r.new_key_at.display()
                ),
            }
            Ok(())
        }
    }
}

/// `sandra chat`: a terminal conversation through the playground (see
/// `sandra_actors::playground`), built by `Application::build` like `serve`, so what answers is
/// the configured brain with the real conversation actor, memory and media pipeline.
async fn chat(config: Option<PathBuf>, name: String) -> anyhow::Result<()> {
    use anyhow::Context;
    use sandra_actors::playground::PlaygroundInput;
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut cfg = Config::load(config.as_deref())?;
    // Log lines would interleave with the conversation: warnings only, on stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
    // No webhooks come to a chat: any free loopback port, so a running `serve` keeps its own.
    cfg.server.bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let data_dir = cfg.storage.data_dir.clone();
    let app = Application::build(cfg).await.with_context(|| {
        format!(
            "starting Sandra on {} (if `sandra serve` is running on it, stop it or use the \
             Admin Portal's \"Try Sandra\" box instead)",
            data_dir.display()
        )
    })?;
    let system = app.system().clone();
    let playground = system.playground().clone();
    println!(
        "Talking to Sandra as local chat `{name}`. /photo PATH [caption], /voice PATH, /quit."
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        use std::io::Write;
        print!("you> ");
        let _ = std::io::stdout().flush();
        let Some(line) = lines.next_line().await? else {
            break;
        };
        let line = line.trim();
        let input = match line.split_once(' ').unwrap_or((line, "")) {
            ("", _) => continue,
            ("/quit" | "/exit", _) => break,
            ("/photo", rest) => {
                let (path, caption) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
                match read_media(path, "image") {
                    Ok((bytes, mime)) => PlaygroundInput::Image {
                        bytes,
                        mime,
                        caption: (!caption.trim().is_empty()).then(|| caption.trim().to_string()),
                    },
                    Err(e) => {
                        println!("({e})");
                        continue;
                    }
                }
            }
            ("/voice", rest) => match read_media(rest.trim(), "audio") {
                Ok((bytes, mime)) => PlaygroundInput::Voice { bytes, mime },
                Err(e) => {
                    println!("({e})");
                    continue;
                }
            },
            _ => PlaygroundInput::Text(line.to_string()),
        };
        match playground.say(&name, input).await {
            Ok(replies) => {
                for r in replies {
                    println!("sandra> {r}");
                }
            }
            Err(e) => println!("({e})"),
        }
    }
    system.shutdown().await;
    drop(app);
    Ok(())
}

/// A photo or voice note from disk for `sandra chat`, its MIME type from the extension.
fn read_media(path: &str, family: &str) -> anyhow::Result<(Vec<u8>, String)> {
    let ext = std::path::Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = match (family, ext.as_str()) {
        ("image", "jpg" | "jpeg") => "image/jpeg",
        ("image", "png") => "image/png",
        ("image", "webp") => "image/webp",
        ("audio", "ogg" | "opus" | "oga") => "audio/ogg",
        ("audio", "mp3") => "audio/mpeg",
        ("audio", "wav") => "audio/wav",
        ("audio", "m4a") => "audio/mp4",
        _ => anyhow::bail!("{path}: not a {family} file Sandra reads (by its extension)"),
    };
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    Ok((bytes, mime.to_string()))
}

/// SIGHUP re-reads the configuration and applies the five WhatsApp settings to the live handles
/// every reader uses (the token to every Graph client: sender, media downloads, a re-created
/// sender), then tells the sender, which resumes sending if it had stopped on error 190. A value
/// set through the environment can only change with a restart.
async fn reload_on_sighup(
    path: Option<PathBuf>,
    system: sandra_actors::System,
    live: sandra::app::LiveWhatsapp,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let loaded = Config::load(path.as_deref())
                .map_err(anyhow::Error::from)
                .and_then(|mut cfg| {
                    sandra::vault::Vault::open(&cfg)?.apply_to(&mut cfg)?;
                    Ok(cfg)
                });
            match loaded {
                Ok(cfg) => {
                    let changed = live.apply(&cfg.whatsapp, &system);
                    tracing::info!(
                        token_changed = changed,
                        "configuration re-read on SIGHUP: WhatsApp settings applied (the access token to every Graph client)"
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: configuration invalid; keeping the current one")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, system, live);
}

/// The new password: one line of stdin with `--stdin`; else asked twice (the two must match),
/// without echo when stdin is a terminal.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal() && !from_stdin;
    let mut lines = stdin.lock().lines();
    let mut next = |prompt: &str| -> anyhow::Result<String> {
        if tty {
            return Ok(rpassword::prompt_password(prompt)?);
        }
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("no password on stdin"))??;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    if from_stdin {
        return next("");
    }
    let first = next("New Admin Portal password: ")?;
    let second = next("Again: ")?;
    if first != second {
        anyhow::bail!("the two passwords differ; nothing was changed");
    }
    Ok(first)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

fn models(cmd: ModelsCommand) -> anyhow::Result<()> {
    use sandra_models::catalog::{self, Manifest};
    use sandra_models::install;
    match cmd {
        ModelsCommand::Fetch {
            config,
            model,
            if_missing,
        } => {
            let cfg = Config::load(config.as_deref())?;
            sandra::init_tracing(&cfg.log.level, &cfg.log.format);
            let dir = catalog::models_dir(&cfg.storage.data_dir);
            let ids: Vec<String> = match model {
                Some(m) => vec![m],
                None => catalog::DEFAULT_INSTALL
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            };
            let manifest = Manifest::load(&dir).unwrap_or_default();
            for id in ids {
                let entry = catalog::find(&id).ok_or_else(|| {
                    anyhow::anyhow!("unknown model `{id}`; see `sandra models list --available`")
                })?;
                // A role holds one model (a voice: one per id), so "missing" asks about the
                // role; for voices, about that voice.
                let installed = match entry.role {
                    catalog::ModelRole::Voice => manifest.installed(entry.role, entry.id),
                    role => manifest.get(role),
                };
                if if_missing && installed.is_some_and(|m| m.verify(&dir).is_ok()) {
                    println!("{} model already installed; nothing to do", entry.role);
                    continue;
                }
                println!(
                    "fetching {} ({}) into {}",
                    entry.id,
                    entry.description,
                    dir.display()
                );
                let m = install::fetch(entry, &dir, &install::FetchOptions::default())?;
                println!("installed {} for role {}", m.id, entry.role);
                if let Some(lang) = catalog::voice_language(entry.id) {
                    println!(
                        "replies in language {lang:?} can now be spoken (from Sandra's next start)"
                    );
                }
            }
            Ok(())
        }
        ModelsCommand::List { config, available } => {
            let cfg = Config::load(config.as_deref())?;
            let dir = catalog::models_dir(&cfg.storage.data_dir);
            println!("models directory: {}", dir.display());
            for row in sandra::admin::model_rows(&cfg) {
                println!("{:<14} uses: {}", row.role, row.uses);
                if let Some(i) = row.installed {
                    println!("{:<14} installed: {i}", "");
                }
            }
            if available {
                println!("\navailable (`sandra models fetch --model ID`):");
                for e in catalog::catalog() {
                    println!(
                        "  {:<40} {:<14} {}",
                        e.id,
                        e.role.to_string(),
                        e.description
                    );
                }
            }
            Ok(())
        }
    }
}
