//! Sending verification codes by email (SMTP, `lettre` on tokio with rustls).
//!
//! Not an actor: a send is one async call made from a turn's task (never from a handler), and
//! the transport is shared by every conversation (`Arc<Mailer>`). A send that fails for a
//! reason that may pass (connection refused, timeout, a 4xx reply) is retried `attempts` times
//! with a growing pause; a permanent refusal (5xx: no such mailbox, relaying denied) is not.
//!
//! The server URL follows lettre's conventions: `smtp://user:pass@host:587?tls=required`
//! (STARTTLS, refused without it), `smtp://host:25?tls=opportunistic`, `smtp://host:25` (plain,
//! for a relay on the same host), `smtps://user:pass@host:465` (TLS from the first byte). It
//! holds the password, so it is a secret: kept only inside the transport, never logged.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use crate::texts::{self, Lang};

/// How the mailer is set up (from `[email]` in config.toml).
pub struct MailerConfig {
    pub smtp_url: SecretString,
    pub from: String,
    /// Tries per mail, the first included.
    pub attempts: u32,
    /// Pause before the second try; doubled for each next one.
    pub retry_delay: Duration,
    /// One SMTP conversation at most this long.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// A bad `smtp_url` or `from` (start-up).
    #[error("{0}")]
    Config(String),
    /// The server refused the mail for good (the address, the sender, relaying).
    #[error("the mail server refused the message: {0}")]
    Refused(String),
    /// The server could not be reached or failed, on every try.
    #[error("the mail server is unavailable: {0}")]
    Unavailable(String),
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    attempts: u32,
    retry_delay: Duration,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Builds the transport (no connection is made until the first mail).
    pub fn new(cfg: MailerConfig) -> Result<Self, MailError> {
        let transport =
            AsyncSmtpTransport::<Tokio1Executor>::from_url(cfg.smtp_url.expose_secret())
                // lettre's message names what is wrong with the URL without repeating it.
                .map_err(|e| MailError::Config(format!("email.smtp_url: {e}")))?
                .timeout(Some(cfg.timeout))
                .build();
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e| MailError::Config(format!("email.from: {e}")))?;
        Ok(Self {
            transport,
            from,
            attempts: cfg.attempts.max(1),
            retry_delay: cfg.retry_delay,
        })
    }

    /// Mails `code` to `to`, in the user's language, retrying what may pass.
    pub async fn send_code(
        &self,
        to: &str,
        code: &SecretString,
        lang: Lang,
    ) -> Result<(), MailError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Refused(e.to_string()))?;
        let (subject, body) = texts::code_mail(lang, code.expose_secret());
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| MailError::Refused(e.to_string()))?;
        let mut delay = self.retry_delay;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            match self.transport.send(message.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_permanent() => {
                    tracing::warn!(error = %e, "the mail server refused a code mail");
                    return Err(MailError::Refused(e.to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "sending a code mail failed");
                    last = e.to_string();
                }
            }
            if attempt < self.attempts {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(MailError::Unavailable(last))
    }
}
