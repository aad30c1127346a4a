//! `sandra`: the binary's library half: configuration, HTTP, and the composition root.
//!
//! # Layout
//! - [`config`]: `config.toml` + environment, validated, secrets hidden.
//! - [`http`]: the webhook endpoint (admission, body limits, status codes; ingestion itself is
//!   `System::ingest`), health and metrics.
//! - [`admin`]: the Admin Portal under `/admin` (login, status, settings, chat box).
//! - [`app`]: [`app::Application`] wires the store, the actors and the server together.
//! - [`vault`]: the master key and the encrypted secrets (`sandra secrets`).
//!
//! The actors live in `sandra-actors`; the models in `sandra-models`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod doctor;
pub mod http;
pub mod systemd;
pub mod vault;

/// Installs the global tracing subscriber (text or JSON), honouring `RUST_LOG`.
pub fn init_tracing(level: &str, format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
