//! The Admin Portal under `/admin`: login, status (with the doctor's checks), the five WhatsApp
//! settings applied live, conversations (metadata only), linked accounts, models, a test
//! message and the "Try Sandra" chat box. Only HTTP lives here: who may come in is
//! [`auth`], the HTML is [`pages`], the work is the system's (store, sender, playground).
//!
//! Every route goes through [`guard`]: no password set → 404 for everything; a POST whose
//! `Origin` names another host → 403; anything but the login page and the stylesheet without a
//! live session → a redirect to the login page (GET) or 401 (POST); a POST without its session's
//! CSRF token → 403.

pub mod auth;
pub mod pages;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use sandra_actors::System;
use sandra_actors::secret::{ExposeSecret, SecretString};
use sandra_actors::store::{NewOutbound, OutboundBody};
use sandra_actors::whatsapp::{ChatId, ConversationKey, ReplyTarget};

use self::auth::SessionInfo;
use self::pages::{ChatLine, Flash, Page, Row};
use crate::app::LiveWhatsapp;
use crate::config::Config;
use crate::vault::Vault;

/// Largest form body read (the portal's forms are a few fields of text).
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Largest photo or voice note the chat box takes (WhatsApp's own limit for images is 5 MB,
/// for audio 16 MB).
const MAX_UPLOAD_BYTES: usize = 16 * 1024 * 1024;
/// Lines of the chat box's transcript kept per session.
const MAX_TRANSCRIPT: usize = 100;
/// The local chat the "Try Sandra" box talks in (its memory is shared by every admin session,
/// like one phone shared by the operators).
const PORTAL_CHAT: &str = "admin";

/// The portal's state, shared by its handlers.
#[derive(Clone)]
pub struct Admin(Arc<Inner>);

struct Inner {
    system: System,
    live: LiveWhatsapp,
    /// Where saved settings are kept, encrypted, for the next start.
    vault: Vault,
    /// The configuration Sandra started with; the WhatsApp values in it are stale once the
    /// portal or SIGHUP changed them ([`Admin::current_config`] has the live ones).
    cfg: Config,
    sessions: auth::Sessions,
    limits: auth::LoginLimits,
    /// Unix ms of the last webhook accepted (0: none since start).
    last_webhook_ms: AtomicI64,
    transcripts: Mutex<HashMap<String, Vec<ChatLine>>>,
    flashes: Mutex<HashMap<String, Flash>>,
}

impl Admin {
    pub fn new(cfg: &Config, system: System, live: LiveWhatsapp, vault: Vault) -> Self {
        if !auth::password_path(&cfg.storage.data_dir).exists() {
            tracing::info!(
                "the Admin Portal (/admin) is off until a password is set: run `sandra admin set-password`"
            );
        }
        Self(Arc::new(Inner {
            system,
            live,
            vault,
            cfg: cfg.clone(),
            sessions: auth::Sessions::default(),
            limits: auth::LoginLimits::default(),
            last_webhook_ms: AtomicI64::new(0),
            transcripts: Mutex::default(),
            flashes: Mutex::default(),
        }))
    }

    /// The HTTP layer calls this for every webhook it accepted (the status page's "last
    /// webhook received").
    pub fn note_webhook(&self) {
        self.0
            .last_webhook_ms
            .store(sandra_actors::store::now_ms(), Ordering::Relaxed);
    }

    /// The configuration with the WhatsApp values in use now.
    pub fn current_config(&self) -> Config {
        let mut c = self.0.cfg.clone();
        let (w, l) = (&mut c.whatsapp, &self.0.live);
        w.access_token = l.access_token.current();
        w.app_secret = l.app_secret.get();
        w.verify_token = l.verify_token.get();
        w.phone_number_id = l.phone_number_id.get();
        w.api_version = l.api_version.get();
        c
    }

    fn flash(&self, s: &SessionInfo, ok: bool, text: impl Into<String>) {
        self.0
            .flashes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                s.id.clone(),
                Flash {
                    ok,
                    text: text.into(),
                },
            );
    }

    fn take_flash(&self, s: &SessionInfo) -> Option<Flash> {
        self.0
            .flashes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&s.id)
    }

    fn page(&self, s: &SessionInfo, page: Page, title: &str, body: Markup) -> Response {
        let flash = self.take_flash(s);
        html(pages::layout(page, title, &s.csrf, flash.as_ref(), body))
    }
}

fn html(m: Markup) -> Response {
    Html(m.into_string()).into_response()
}

/// The portal's routes, to be nested under `/admin` in any router (`S`: its state).
pub fn routes<S: Clone + Send + Sync + 'static>(admin: Admin) -> Router<S> {
    Router::new()
        .route("/", get(status))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/settings", get(settings_page).post(save_settings))
        .route("/conversations", get(conversations))
        .route("/accounts", get(accounts))
        .route("/accounts/unlink", post(unlink))
        .route("/models", get(models))
        .route("/test-message", get(test_page).post(send_test))
        .route("/chat", get(chat_page).post(chat_say))
        .route(
            "/chat/upload",
            post(chat_upload).layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route("/style.css", get(css))
        .layer(axum::middleware::from_fn_with_state(admin.clone(), guard))
        .with_state(admin)
}

/// The cookie value of the portal's session, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == auth::COOKIE).then(|| v.to_string())
        })
}

/// Whether an `Origin` header, when there is one, names the host the request was sent to.
/// Browsers send it on every form POST; a cross-site form or script carries its own origin.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

async fn guard(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    let data_dir = &admin.0.cfg.storage.data_dir;
    if auth::stored_password(data_dir).await.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = req.uri().path().trim_start_matches("/admin").to_string();
    let is_post = req.method() == Method::POST;
    if is_post && !same_origin(req.headers()) {
        tracing::warn!(path = %path, "admin POST refused: Origin is another site");
        return (StatusCode::FORBIDDEN, "cross-origin request refused\n").into_response();
    }
    let mut response = if path == "/login" || path == "/style.css" {
        next.run(req).await
    } else {
        let session = session_cookie(req.headers()).and_then(|c| admin.0.sessions.check(&c));
        match session {
            None if is_post => (StatusCode::UNAUTHORIZED, "log in first\n").into_response(),
            None => Redirect::to("/admin/login").into_response(),
            Some(s) => match with_csrf_checked(req, &s, is_post).await {
                Ok(mut req) => {
                    req.extensions_mut().insert(s);
                    next.run(req).await
                }
                Err(r) => r,
            },
        }
    };
    let h = response.headers_mut();
    // Pages hold settings state and CSRF tokens: never cached, never framed.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}

/// For a POST: reads the form, refuses it (403) unless its `csrf` field is this session's
/// token, and hands the request on with the same body. A file upload (multipart) carries the
/// token in the query string instead, so that its body is not read twice; the page's
/// `Referrer-Policy` keeps that URL on this site.
async fn with_csrf_checked(
    req: Request,
    s: &SessionInfo,
    is_post: bool,
) -> Result<Request, Response> {
    if !is_post {
        return Ok(req);
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if multipart {
        let fields: Vec<(String, String)> =
            serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
        let token = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str());
        if !auth::tokens_equal(token.unwrap_or(""), &s.csrf) {
            tracing::warn!("admin upload refused: missing or wrong CSRF token");
            return Err((StatusCode::FORBIDDEN, "missing or wrong CSRF token\n").into_response());
        }
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "form too large\n").into_response())?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let token = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if !auth::tokens_equal(token, &s.csrf) {
        tracing::warn!("admin POST refused: missing or wrong CSRF token");
        return Err((StatusCode::FORBIDDEN, "missing or wrong CSRF token\n").into_response());
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

impl Admin {
    /// The client's address: the last hop of `X-Forwarded-For` (what the trusted proxy saw)
    /// when `server.trust_proxy` is on, else the TCP peer.
    fn client_ip(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> IpAddr {
        let forwarded = self
            .0
            .cfg
            .server
            .trust_proxy
            .then(|| {
                headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit(',').next())
                    .and_then(|ip| ip.trim().parse().ok())
            })
            .flatten();
        forwarded
            .or(peer.map(|p| p.ip()))
            .unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    /// Whether the browser reached us over TLS (the cookie gets `Secure`): Sandra's public
    /// address is https, or a trusted proxy says `X-Forwarded-Proto: https`.
    fn over_tls(&self, headers: &HeaderMap) -> bool {
        let server = &self.0.cfg.server;
        server.public_url.starts_with("https://")
            || server.trust_proxy
                && headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    }
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        pages::CSS,
    )
        .into_response()
}

async fn login_page(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if session_cookie(&headers)
        .and_then(|c| admin.0.sessions.check(&c))
        .is_some()
    {
        return Redirect::to("/admin").into_response();
    }
    html(pages::login(None))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    password: String,
}

async fn login(
    State(admin): State<Admin>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let ip = admin.client_ip(&headers, peer.map(|Extension(ConnectInfo(p))| p));
    if !admin.0.limits.allow(ip) {
        tracing::warn!(client = %ip, "admin login refused: too many attempts");
        let mut r = html(pages::login(Some(
            "Too many attempts. Wait a minute and try again.",
        )));
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        return r;
    }
    let Some(phc) = auth::stored_password(&admin.0.cfg.storage.data_dir).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let password = SecretString::from(form.password);
    let ok =
        tokio::task::spawn_blocking(move || auth::verify_password(&phc, password.expose_secret()))
            .await
            .unwrap_or(false);
    if !ok {
        tracing::warn!(client = %ip, "admin login failed: wrong password");
        let mut r = html(pages::login(Some("Wrong password.")));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    let cookie = admin.0.sessions.create();
    let secure = if admin.over_tls(&headers) {
        "; Secure"
    } else {
        ""
    };
    tracing::info!(client = %ip, "admin logged in");
    let mut r = Redirect::to("/admin").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{}={cookie}; HttpOnly; SameSite=Strict; Path=/admin{secure}",
            auth::COOKIE
        ))
        .expect("hex is a valid header value"),
    );
    r
}

async fn logout(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Some(c) = session_cookie(&headers) {
        admin.0.sessions.remove(&c);
    }
    let mut r = Redirect::to("/admin/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{}=; HttpOnly; SameSite=Strict; Path=/admin; Max-Age=0",
            auth::COOKIE
        ))
        .expect("a valid header value"),
    );
    r
}

fn day_start_s(now_s: i64) -> i64 {
    now_s - now_s.rem_euclid(86_400)
}

fn ago(now_ms: i64, at_ms: i64) -> String {
    let s = (now_ms - at_ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// Customer-service window of one conversation (Meta's 24 hours from the user's last message).
fn window_open(now_s: i64, last_inbound_at: Option<i64>, closed_at: Option<i64>) -> bool {
    last_inbound_at.is_some_and(|t| now_s - t < 24 * 3600 && closed_at.is_none_or(|c| c < t))
}

async fn status(State(admin): State<Admin>, Extension(s): Extension<SessionInfo>) -> Response {
    let rows = admin.status_rows().await;
    let checks = admin.doctor_rows().await;
    admin.page(
        &s,
        Page::Status,
        "Status",
        maud::html! {
            (pages::checks_table("status", &rows))
            (pages::section("Checks (as `sandra doctor`)", pages::checks_table("checks", &checks)))
        },
    )
}

impl Admin {
    async fn status_rows(&self) -> Vec<Row> {
        let system = &self.0.system;
        let store = system.store.clone();
        let now_ms = sandra_actors::store::now_ms();
        let now_s = now_ms / 1000;
        let today = day_start_s(now_s);
        // Whole-tree walks are blocking sled calls: off the runtime.
        let counts = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let inbound = store.messages_seen_since(today)?;
            let outbound = store
                .outbox_all()?
                .iter()
                .filter(|r| r.created_at_ms / 1000 >= today)
                .filter(|r| !sandra_actors::playground::is_local_target(&r.target))
                .count();
            let unanswered = store.unfinished()?.len();
            let convs = store.conversations()?;
            let open = convs
                .iter()
                .filter(|c| window_open(now_s, c.last_inbound_at, c.window_closed_at))
                .count();
            Ok((inbound, outbound, unanswered, open, convs.len()))
        })
        .await;
        let mut rows = Vec::new();
        let last = self.0.last_webhook_ms.load(Ordering::Relaxed);
        rows.push(Row {
            name: "Last webhook received".into(),
            ok: last > 0,
            detail: if last > 0 {
                ago(now_ms, last)
            } else {
                "none since Sandra started".into()
            },
            fix: (last == 0).then(|| {
                "check the callback URL and the `messages` subscription in Meta's app dashboard"
                    .into()
            }),
        });
        match counts {
            Ok(Ok((inbound, outbound, unanswered, open, total))) => {
                rows.push(Row {
                    name: "Messages today (UTC)".into(),
                    ok: true,
                    detail: format!("{inbound} in, {outbound} out"),
                    fix: None,
                });
                rows.push(Row {
                    name: "Queues".into(),
                    ok: system.store.dead_letter_count() == 0,
                    detail: format!(
                        "{} replies waiting to be sent, {unanswered} messages being answered, {} dead letters",
                        system.store.outbox_pending_count(),
                        system.store.dead_letter_count()
                    ),
                    fix: (system.store.dead_letter_count() > 0)
                        .then(|| "look at the dead letters in the data directory's store".into()),
                });
                rows.push(Row {
                    name: "24-hour windows".into(),
                    ok: true,
                    detail: format!("{open} open, {} closed", total - open),
                    fix: None,
                });
            }
            Ok(Err(e)) => rows.push(Row {
                name: "Storage".into(),
                ok: false,
                detail: format!("reading the store failed: {e}"),
                fix: None,
            }),
            Err(e) => rows.push(Row {
                name: "Storage".into(),
                ok: false,
                detail: format!("reading the store failed: {e}"),
                fix: None,
            }),
        }
        let token_set = !self
            .0
            .live
            .access_token
            .current()
            .expose_secret()
            .is_empty();
        let invalid = system.token_invalid();
        rows.push(Row {
            name: "Access token".into(),
            ok: token_set && !invalid,
            detail: if !token_set {
                "not set".into()
            } else if invalid {
                "Meta refused it (error 190: invalid or expired); sending is paused".into()
            } else {
                "set; Meta has not refused it".into()
            },
            fix: (!token_set || invalid)
                .then(|| "paste a valid token on the WhatsApp settings page".into()),
        });
        rows.push(Row {
            name: "Actors".into(),
            ok: system.actors_up(),
            detail: if system.actors_up() {
                "running".into()
            } else {
                "not running".into()
            },
            fix: None,
        });
        let models = model_rows(&self.0.cfg);
        let chat = models.first().map(|m| m.uses.clone()).unwrap_or_default();
        rows.push(Row {
            name: "Models".into(),
            ok: !chat.contains("nothing installed"),
            detail: format!("chat: {chat}"),
            fix: chat
                .contains("nothing installed")
                .then(|| "`sandra models fetch`".into()),
        });
        rows
    }

    /// `sandra doctor`'s checks, on the configuration in use now (the live WhatsApp values)
    /// and the running system.
    async fn doctor_rows(&self) -> Vec<Row> {
        let cfg = self.current_config();
        let opts = crate::doctor::Options {
            system: Some(&self.0.system),
            ..Default::default()
        };
        crate::doctor::run_checks_with(&cfg, opts)
            .await
            .into_iter()
            .map(|c| Row {
                name: c.name,
                ok: c.ok,
                detail: c.detail,
                fix: c.fix,
            })
            .collect()
    }
}

/// The five settings: (config key = vault name, label, secret).
const SETTINGS: [(&str, &str, bool); 5] = [
    (
        "whatsapp.phone_number_id",
        "Phone number id (WHATSAPP_PHONE_NUMBER_ID)",
        false,
    ),
    (
        "whatsapp.access_token",
        "Access token (WHATSAPP_ACCESS_TOKEN)",
        true,
    ),
    (
        "whatsapp.app_secret",
        "App secret (WHATSAPP_APP_SECRET)",
        true,
    ),
    (
        "whatsapp.verify_token",
        "Verify token (WHATSAPP_VERIFY_TOKEN)",
        true,
    ),
    (
        "whatsapp.api_version",
        "API version (WHATSAPP_API_VERSION)",
        false,
    ),
];

async fn settings_page(
    State(admin): State<Admin>,
    Extension(s): Extension<SessionInfo>,
) -> Response {
    let cfg = admin.current_config();
    let w = &cfg.whatsapp;
    let items: Vec<pages::SettingView> = SETTINGS
        .iter()
        .map(|&(key, label, secret)| {
            let (value, set) = match key {
                "whatsapp.phone_number_id" => {
                    (w.phone_number_id.clone(), !w.phone_number_id.is_empty())
                }
                "whatsapp.api_version" => (w.api_version.clone(), !w.api_version.is_empty()),
                "whatsapp.access_token" => {
                    (String::new(), !w.access_token.expose_secret().is_empty())
                }
                "whatsapp.app_secret" => (String::new(), !w.app_secret.expose_secret().is_empty()),
                _ => (String::new(), !w.verify_token.expose_secret().is_empty()),
            };
            pages::SettingView {
                key,
                label,
                secret,
                value,
                set,
                from_env: cfg.set_by_env.contains(&key),
            }
        })
        .collect();
    admin.page(
        &s,
        Page::Settings,
        "WhatsApp settings",
        pages::settings(&s.csrf, &items, admin.store_note()),
    )
}

impl Admin {
    /// How saved values survive a restart.
    fn store_note(&self) -> &'static str {
        "They are stored encrypted under the master key and used again at the next start; a \
         value set in the environment still wins there."
    }

    /// Stores saved settings, encrypted, for the next start (the vault writes a file: off the
    /// runtime).
    async fn persist(&self, values: Vec<(&'static str, SecretString)>) -> anyhow::Result<()> {
        let vault = self.0.vault.clone();
        tokio::task::spawn_blocking(move || {
            for (name, value) in &values {
                vault.set(name, value)?;
            }
            anyhow::Ok(())
        })
        .await?
    }
}

async fn save_settings(
    State(admin): State<Admin>,
    Extension(s): Extension<SessionInfo>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut cfg = admin.current_config();
    let mut changed: Vec<&'static str> = Vec::new();
    for (key, _, _) in SETTINGS {
        let Some(v) = form.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) else {
            continue;
        };
        let w = &mut cfg.whatsapp;
        match key {
            "whatsapp.phone_number_id" => w.phone_number_id = v.to_string(),
            "whatsapp.api_version" => w.api_version = v.to_string(),
            "whatsapp.access_token" => w.access_token = v.into(),
            "whatsapp.app_secret" => w.app_secret = v.into(),
            _ => w.verify_token = v.into(),
        }
        changed.push(key);
    }
    if changed.is_empty() {
        admin.flash(&s, false, "Nothing to save: every field was empty.");
        return Redirect::to("/admin/settings").into_response();
    }
    // The same checks as at start-up, naming the key; nothing is applied unless all pass.
    let bad_number = !cfg
        .whatsapp
        .phone_number_id
        .chars()
        .all(|c| c.is_ascii_digit());
    if let Err(e) = cfg.validate() {
        admin.flash(&s, false, format!("Not saved: {e}"));
        return Redirect::to("/admin/settings").into_response();
    }
    if bad_number {
        admin.flash(
            &s,
            false,
            "Not saved: config key whatsapp.phone_number_id: digits only (Meta's phone number id)",
        );
        return Redirect::to("/admin/settings").into_response();
    }
    let w = &cfg.whatsapp;
    let values = changed
        .iter()
        .map(|&key| {
            let value = match key {
                "whatsapp.phone_number_id" => SecretString::from(w.phone_number_id.clone()),
                "whatsapp.api_version" => SecretString::from(w.api_version.clone()),
                "whatsapp.access_token" => w.access_token.clone(),
                "whatsapp.app_secret" => w.app_secret.clone(),
                _ => w.verify_token.clone(),
            };
            (key, value)
        })
        .collect();
    if let Err(e) = admin.persist(values).await {
        tracing::error!(keys = ?changed, error = %e, "storing settings failed; nothing applied");
        admin.flash(&s, false, format!("Not saved: storing failed: {e}"));
        return Redirect::to("/admin/settings").into_response();
    }
    let token_changed = admin.0.live.apply(w, &admin.0.system);
    tracing::info!(keys = ?changed, token_changed, "WhatsApp settings changed in the Admin Portal and applied");
    admin.flash(
        &s,
        true,
        format!("Saved and applied: {}.", changed.join(", ")),
    );
    Redirect::to("/admin/settings").into_response()
}

async fn conversations(
    State(admin): State<Admin>,
    Extension(s): Extension<SessionInfo>,
) -> Response {
    let store = admin.0.system.store.clone();
    let listed = tokio::task::spawn_blocking(move || {
        Ok::<_, sandra_actors::store::StoreError>((store.conversations()?, store.held_replies()?))
    })
    .await;
    let now_ms = sandra_actors::store::now_ms();
    let now_s = now_ms / 1000;
    let body = match listed {
        Ok(Ok((mut convs, held))) => {
            convs.sort_by_key(|c| std::cmp::Reverse(c.last_inbound_at));
            let rows: Vec<_> = convs
                .iter()
                .map(|c| pages::ConversationView {
                    key: c.key.as_str().to_string(),
                    kind: if c.is_group { "group" } else { "direct" },
                    last_activity: c
                        .last_inbound_at
                        .map(|t| ago(now_ms, t * 1000))
                        .unwrap_or_else(|| "never".into()),
                    turns: c.turns,
                    window: if window_open(now_s, c.last_inbound_at, c.window_closed_at) {
                        "open".into()
                    } else {
                        "closed".into()
                    },
                })
                .collect();
            let held: Vec<_> = held
                .iter()
                .map(|h| pages::HeldView {
                    key: h.key.as_str().to_string(),
                    since: ago(now_ms, h.since_ms),
                    reason: h.reason.clone(),
                    template_queued: h.template_queued,
                })
                .collect();
            maud::html! {
                (pages::conversations(&rows))
                (pages::section("Held replies", pages::held(&held)))
            }
        }
        Ok(Err(e)) => maud::html! { p { "Reading the store failed: " (e.to_string()) } },
        Err(e) => maud::html! { p { "Reading the store failed: " (e.to_string()) } },
    };
    admin.page(&s, Page::Conversations, "Conversations", body)
}

async fn accounts(State(admin): State<Admin>, Extension(s): Extension<SessionInfo>) -> Response {
    let store = admin.0.system.store.clone();
    let listed = tokio::task::spawn_blocking(move || store.accounts()).await;
    let body = match listed {
        Ok(Ok(accs)) => {
            let rows: Vec<_> = accs
                .into_iter()
                .map(|a| pages::AccountView {
                    created: utc_date(a.created_at),
                    name: a.profile.name.clone(),
                    links: a.links,
                    email: a.email,
                })
                .collect();
            pages::accounts(&s.csrf, &rows)
        }
        Ok(Err(e)) => maud::html! { p { "Reading the store failed: " (e.to_string()) } },
        Err(e) => maud::html! { p { "Reading the store failed: " (e.to_string()) } },
    };
    admin.page(&s, Page::Accounts, "Linked accounts", body)
}

/// `YYYY-MM-DD` (UTC) of unix seconds, without a date crate (days-to-civil, H. Hinnant's
/// public-domain algorithm).
fn utc_date(unix_s: i64) -> String {
    let z = unix_s.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[derive(serde::Deserialize)]
struct UnlinkForm {
    key: String,
}

async fn unlink(
    State(admin): State<Admin>,
    Extension(s): Extension<SessionInfo>,
    Form(form): Form<UnlinkForm>,
) -> Response {
    let store = admin.0.system.store.clone();
    let key = form.key.clone();
    let done = tokio::task::spawn_blocking(move || store.unlink(&key)).await;
    match done {
        Ok(Ok(Some(email))) => {
            tracing::info!("a number was unlinked from its account in the Admin Portal");
            admin.flash(&s, true, format!("Unlinked {} from {email}.", form.key));
        }
        Ok(Ok(None)) => admin.flash(&s, false, format!("{} was not linked.", form.key)),
        Ok(Err(e)) => admin.flash(&s, false, format!("Unlinking failed: {e}")),
        Err(e) => admin.flash(&s, false, format!("Unlinking failed: {e}")),
    }
    Redirect::to("/admin/accounts").into_response()
}

async fn models(State(admin): State<Admin>, Extension(s): Extension<SessionInfo>) -> Response {
    let dir = sandra_models::catalog::models_dir(&admin.0.cfg.storage.data_dir);
    let rows = model_rows(&admin.0.cfg);
    admin.page(
        &s,
        Page::Models,
        "Models",
        pages::models(&dir.display().to_string(), &rows),
    )
}

async fn test_page(State(admin): State<Admin>, Extension(s): Extension<SessionInfo>) -> Response {
    admin.page(
        &s,
        Page::Test,
        "Send a test message",
        pages::test_message(&s.csrf),
    )
}

#[derive(serde::Deserialize)]
struct TestForm {
    to: String,
    text: String,
}

async fn send_test(
    State(admin): State<Admin>,
    Extension(s): Extension<SessionInfo>,
    Form(form): Form<TestForm>,
) -> Response {
    let to: String = form
        .to
        .chars()
        .filter(|c| !matches!(c, ' ' | '+' | '-' | '(' | ')'))
        .collect();
    let text = form.text.trim().to_string();
    if !(6..=15).contains(&to.len()) || !to.chars().all(|c| c.is_ascii_digit()) {
        admin.flash(
            &s,
            false,
            "Not sent: the number must be 6 to 15 digits with its country code.",
        );
        return Redirect::to("/admin/test-message").into_response();
    }
    if text.is_empty() || text.chars().count() > sandra_actors::sender::MAX_TEXT_CHARS {
        admin.flash(
            &s,
            false,
            "Not sent: the text must be 1 to 4096 characters.",
        );
        return Redirect::to("/admin/test-message").into_response();
    }
    let system = admin.0.system.clone();
    let key = ConversationKey::new(
        &admin.0.live.phone_number_id.get(),
        &ChatId::Phone(to.clone()),
    );
    let out = NewOutbound {
        target: ReplyTarget {
            group_id: None,
            phone: Some(to.clone()),
            user_id: None,
        },
        body: OutboundBody::Text { body: text },
        context_message_id: None,
        window_expires_at: None,
    };
    let store = system.store.clone();
    match tokio::task::spawn_blocking(move || store.enqueue(&key, &out)).await {
        Ok(Ok(id)) => {
            if let Some(sender) = system.sender.try_get() {
                let _ = sender.cast(sandra_actors::sender::SenderMsg::Kick);
            }
            tracing::info!(outbox_id = id, "test message queued from the Admin Portal");
            admin.flash(&s, true, format!("Queued for {to} (outbox #{id})."));
        }
        Ok(Err(e)) => admin.flash(&s, false, format!("Not sent: {e}")),
        Err(e) => admin.flash(&s, false, format!("Not sent: {e}")),
    }
    Redirect::to("/admin/test-message").into_response()
}

async fn chat_page(State(admin): State<Admin>, Extension(s): Extension<SessionInfo>) -> Response {
    let lines = admin
        .0
        .transcripts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&s.id)
        .cloned()
        .unwrap_or_default();
    admin.page(&s, Page::Chat, "Try Sandra", pages::chat(&s.csrf, &lines))
}

#[derive(serde::Deserialize)]
struct ChatForm {
    message: String,
}

/// A photo (with an optional caption) or a voice note for the chat box.
async fn chat_upload(
    State(admin): State<Admin>,
    Extension(s): Extension<SessionInfo>,
    mut form: axum::extract::Multipart,
) -> Response {
    use sandra_actors::playground::PlaygroundInput;
    let (mut file, mut caption) = (None, None);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_string();
                let mime = field.content_type().unwrap_or("").to_string();
                match field.bytes().await {
                    Ok(b) if name == "file" && !b.is_empty() => file = Some((b.to_vec(), mime)),
                    Ok(b) if name == "caption" => {
                        caption = Some(String::from_utf8_lossy(&b).trim().to_string())
                            .filter(|c| !c.is_empty())
                    }
                    Ok(_) => {}
                    Err(e) => {
                        admin.flash(&s, false, format!("Upload failed: {e}"));
                        return Redirect::to("/admin/chat").into_response();
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                admin.flash(&s, false, format!("Upload failed: {e}"));
                return Redirect::to("/admin/chat").into_response();
            }
        }
    }
    let Some((bytes, mime)) = file else {
        admin.flash(&s, false, "Choose a photo or a voice note first.");
        return Redirect::to("/admin/chat").into_response();
    };
    let (shown, input) = if mime.starts_with("image/") {
        let shown = match &caption {
            Some(c) => format!("[photo] {c}"),
            None => "[photo]".to_string(),
        };
        (
            shown,
            PlaygroundInput::Image {
                bytes,
                mime,
                caption,
            },
        )
    } else if mime.starts_with("audio/") {
        (
            "[voice note]".to_string(),
            PlaygroundInput::Voice { bytes, mime },
        )
    } else {
        admin.flash(&s, false, format!("Not a photo or a voice note ({mime})."));
        return Redirect::to("/admin/chat").into_response();
    };
    admin.converse(&s, shown, input).await;
    Redirect::to("/admin/chat").into_response()
}

async fn chat_say(
    State(admin): State<Admin>,
    Extension(s): Extension<SessionInfo>,
    Form(form): Form<ChatForm>,
) -> Response {
    admin
        .converse(
            &s,
            form.message.clone(),
            sandra_actors::playground::PlaygroundInput::Text(form.message),
        )
        .await;
    Redirect::to("/admin/chat").into_response()
}

impl Admin {
    /// One message to Sandra through the playground; the exchange joins this session's
    /// transcript (a failure is flashed).
    async fn converse(
        &self,
        s: &SessionInfo,
        shown: String,
        input: sandra_actors::playground::PlaygroundInput,
    ) {
        let said = self.0.system.playground().say(PORTAL_CHAT, input).await;
        let mut lines = vec![ChatLine {
            from_sandra: false,
            text: shown,
        }];
        match said {
            Ok(replies) => lines.extend(replies.into_iter().map(|text| ChatLine {
                from_sandra: true,
                text,
            })),
            Err(e) => self.flash(s, false, format!("No answer: {e}")),
        }
        let mut t = self
            .0
            .transcripts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mine = t.entry(s.id.clone()).or_default();
        mine.extend(lines);
        let excess = mine.len().saturating_sub(MAX_TRANSCRIPT);
        mine.drain(..excess);
    }
}

/// What `sandra models list` shows: per role, what is in use and what is installed.
pub fn model_rows(cfg: &crate::config::Config) -> Vec<pages::ModelView> {
    use sandra_models::catalog::{self, Manifest, ModelRole};
    let dir = catalog::models_dir(&cfg.storage.data_dir);
    let manifest = Manifest::load(&dir).unwrap_or_default();
    [
        ModelRole::Chat,
        ModelRole::Transcription,
        ModelRole::Ocr,
        ModelRole::Vision,
    ]
    .into_iter()
    .map(|role| {
        let configured = match (role, cfg.llm.backend) {
            (ModelRole::Chat, crate::config::LlmBackend::Openai) => Some(format!(
                "remote {} at {}",
                cfg.llm.openai.model, cfg.llm.openai.base_url
            )),
            (ModelRole::Chat, crate::config::LlmBackend::None) => Some("none (placeholder)".into()),
            (ModelRole::Chat, _) if !cfg.llm.model.as_os_str().is_empty() => {
                Some(format!("{} (llm.model)", cfg.llm.model.display()))
            }
            _ => None,
        };
        let installed = manifest.get(role).map(|m| describe_installed(m, &dir));
        pages::ModelView {
            role: role.to_string(),
            uses: configured
                .or(installed.clone())
                .unwrap_or_else(|| "nothing installed".into()),
            installed,
        }
    })
    .chain(voice_rows(cfg, &manifest, &dir))
    .collect()
}

/// `id [format], size, verified` of an installed model (its files re-hashed).
fn describe_installed(m: &sandra_models::catalog::InstalledModel, dir: &std::path::Path) -> String {
    let ok = m
        .verify(dir)
        .map(|_| "verified")
        .unwrap_or("FILES MISSING OR CHANGED");
    let size: u64 = m.files.iter().map(|f| f.size).sum();
    format!("{} [{}], {:.0} MB, {ok}", m.id, m.format, size as f64 / 1e6)
}

/// One row per voice the speaker would load (the first of each language speaks it).
fn voice_rows(
    cfg: &crate::config::Config,
    manifest: &sandra_models::catalog::Manifest,
    dir: &std::path::Path,
) -> Vec<pages::ModelView> {
    use sandra_models::catalog;
    if cfg.voice.reply == crate::config::VoiceReplyMode::Never {
        return vec![pages::ModelView {
            role: "voice".into(),
            uses: "off (voice.reply = \"never\")".into(),
            installed: None,
        }];
    }
    let files = crate::app::voice_files(cfg);
    let origin = if cfg.voice.voices.is_empty() {
        ""
    } else {
        " (voice.voices)"
    };
    if files.is_empty() {
        return vec![pages::ModelView {
            role: "voice".into(),
            uses: format!(
                "nothing installed: replies are text only (`sandra models fetch --model {}`)",
                catalog::JOE_VOICE
            ),
            installed: None,
        }];
    }
    let mut speaking: Vec<String> = Vec::new();
    files
        .iter()
        .map(|path| {
            let (name, lang) = catalog::voice_name_and_language(path);
            let uses = if speaking.contains(&lang) {
                format!("{name}: not used, another {lang} voice comes first")
            } else {
                speaking.push(lang.clone());
                format!("{name}{origin}")
            };
            let installed = manifest
                .voice_with_file(dir, path)
                .map(|m| describe_installed(m, dir));
            pages::ModelView {
                role: format!("voice ({lang})"),
                uses,
                installed,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_windows() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14");
        let now = 1_700_000_000;
        assert!(window_open(now, Some(now - 3600), None));
        assert!(!window_open(now, Some(now - 25 * 3600), None));
        // Meta closed it after the last message: closed; a newer message reopens it.
        assert!(!window_open(now, Some(now - 3600), Some(now - 60)));
        assert!(window_open(now, Some(now - 60), Some(now - 3600)));
        assert!(!window_open(now, None, None));
    }

    #[test]
    fn origin_must_name_the_host_it_was_sent_to() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("sandra.example:8443"),
        );
        assert!(same_origin(&h), "no Origin: the CSRF token decides");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://sandra.example:8443"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}
