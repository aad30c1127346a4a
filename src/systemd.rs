//! systemd integration for `sandra serve` under `Type=notify` (see `scripts/sandra.service`):
//! `READY=1` once the listener is bound and the actors run, `WATCHDOG=1` at half of
//! `WatchdogSec` while the actor system is healthy, `STOPPING=1` when shutdown begins. Outside
//! systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::time::Duration;

use sandra_actors::System;

fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "telling systemd our state failed");
    }
}

/// Start-up is done: the listener is bound and the actors are running.
pub fn ready() {
    notify(sd_notify::NotifyState::Ready);
}

/// Shutdown has begun (systemd then allows `TimeoutStopSec` for the drain).
pub fn stopping() {
    notify(sd_notify::NotifyState::Stopping);
}

/// When systemd asked for a watchdog, pings it at half its interval, and only while the router
/// and sender run and the store accepts writes: a wedged Sandra stops pinging and systemd
/// restarts it (`Restart=on-failure`).
pub fn spawn_watchdog(system: System) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(every_ms = every.as_millis() as u64, "systemd watchdog on");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if system.actors_up() && system.store.healthy() {
                notify(sd_notify::NotifyState::Watchdog);
            } else {
                tracing::warn!("unhealthy (actors or store): not pinging the systemd watchdog");
            }
        }
    });
}
