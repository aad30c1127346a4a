//! `sandra`: a self-hosted AI assistant on WhatsApp. Thin entry point; see the library crate.

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
    /// Check a configuration and print it (secrets hidden).
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
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
            tokio::spawn(reload_on_sighup(config, app.system().clone()));
            app.run_until(shutdown_signal()).await
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(config.as_deref())?;
            println!("{cfg:#?}");
            Ok(())
        }
    }
}

/// SIGHUP re-reads the configuration and hands the (possibly replaced) access token to the
/// sender, which resumes sending if it had stopped on error 190. A token set through the
/// environment can only change with a restart.
async fn reload_on_sighup(path: Option<PathBuf>, system: sandra_actors::System) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match Config::load(path.as_deref()) {
                Ok(cfg) => {
                    if let Some(sender) = system.sender.try_get() {
                        let _ = sender.cast(sandra_actors::sender::SenderMsg::TokenReplaced(
                            cfg.whatsapp.access_token,
                        ));
                    }
                    tracing::info!(
                        "configuration re-read on SIGHUP: access token handed to the sender"
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: configuration invalid; keeping the current one")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, system);
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
