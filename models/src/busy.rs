//! Waiting out a busy OpenAI-compatible server instead of failing the user's turn.
//!
//! A pool of inference servers (llama.cpp `llama-server`, vLLM, Ollama behind a load balancer)
//! answers 429 or 503 when every slot is taken or its queue is full; that is "not now", not "no".
//! The message behind the request is already safe in Sandra's durable inbox and the user has
//! their read receipt, so the right answer is to wait and ask again, never to tell them to send
//! it again. The wait is bounded by [`BUSY_WAIT`] here and, for conversations, by
//! `conversation.max_wait`, which drops the whole turn's future (and with it this loop).

use std::time::{Duration, Instant};

use reqwest::StatusCode;

/// How long one request keeps asking a busy server before its last answer stands.
pub(crate) const BUSY_WAIT: Duration = Duration::from_secs(600);

/// Waits before the first retry; doubled each time up to [`MAX_PAUSE`] when the server does not
/// say (`Retry-After`).
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(8);

/// True for the answers that mean "busy, ask again later".
pub(crate) fn is_busy(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// Sends the request `make` builds until the answer is not "busy" or [`BUSY_WAIT`] has passed
/// (then the busy answer is returned for the caller to report). Transport errors return at once:
/// a server that is down is not a server that is busy.
pub(crate) async fn send(
    what: &str,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    let mut tries = 1u32;
    loop {
        let resp = make().send().await?;
        if !is_busy(resp.status()) || started.elapsed() >= BUSY_WAIT {
            if tries > 1 {
                tracing::info!(%what, tries, waited_ms = started.elapsed().as_millis() as u64,
                    status = resp.status().as_u16(), "remote server no longer busy");
            }
            return Ok(resp);
        }
        let wait = retry_after(&resp).unwrap_or(pause).min(MAX_PAUSE * 4);
        tracing::info!(%what, status = resp.status().as_u16(), wait_ms = wait.as_millis() as u64,
            "remote server busy; asking again");
        tokio::time::sleep(wait).await;
        pause = (pause * 2).min(MAX_PAUSE);
        tries += 1;
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by these servers).
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // "0" still gets a short pause, so a server that says "now" cannot make a busy loop.
    Some(Duration::from_secs(secs).max(Duration::from_millis(50)))
}
