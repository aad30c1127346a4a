//! The Admin Portal over plain HTTP (no browser): who gets in, cookies, CSRF, the login limit,
//! settings applied without a restart, and what the pages never show. The real-browser walk
//! through every page is `portal_browser.rs`.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::redirect::Policy;

use crate::support::*;

pub const PASSWORD: &str = "correct horse battery staple";

/// `application/x-www-form-urlencoded` bodies, as a browser's form sends them (the workspace's
/// reqwest is built without its `form` feature).
trait FormBody {
    fn form(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form(self, pairs: &[(&str, &str)]) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(pairs).unwrap())
    }
}

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// The app with a portal password set.
pub async fn portal_app(tweak: impl FnOnce(&mut sandra::config::Config)) -> TestApp {
    let app = TestApp::spawn_with(tweak, std::sync::Arc::new(EchoBrain::default())).await;
    sandra::admin::auth::set_password(&app.dir.path().join("data"), PASSWORD).unwrap();
    app
}

/// Logs in; returns the `Cookie` header value and the response's `Set-Cookie`.
async fn login(app: &TestApp, c: &reqwest::Client) -> (String, String) {
    let r = c
        .post(app.url("/admin/login"))
        .form(&[("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let pair = set.split(';').next().unwrap().to_string();
    (pair, set)
}

/// The CSRF token in the page at `path`.
async fn csrf(app: &TestApp, c: &reqwest::Client, cookie: &str, path: &str) -> String {
    let page = c
        .get(app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_string()
}

const PAGES: &[&str] = &[
    "/admin",
    "/admin/settings",
    "/admin/conversations",
    "/admin/accounts",
    "/admin/models",
    "/admin/test-message",
    "/admin/chat",
];
const POSTS: &[&str] = &[
    "/admin/settings",
    "/admin/accounts/unlink",
    "/admin/test-message",
    "/admin/chat",
    "/admin/logout",
];

#[tokio::test]
async fn without_a_password_there_is_no_portal() {
    let app = TestApp::spawn().await;
    let c = client();
    for path in PAGES.iter().chain(["/admin/login"].iter()) {
        let r = c.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let r = c
        .post(app.url("/admin/login"))
        .form(&[("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_route_refuses_anyone_not_logged_in() {
    let app = portal_app(|_| {}).await;
    let c = client();
    for path in PAGES {
        let r = c.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers()["location"], "/admin/login", "{path}");
        // A made-up or ended session is no session.
        let r = c
            .get(app.url(path))
            .header("cookie", format!("sandra_admin={}", "ab".repeat(32)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
    }
    for path in POSTS {
        let r = c
            .post(app.url(path))
            .form(&[("csrf", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // The login page itself is open.
    assert_eq!(
        c.get(app.url("/admin/login"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_session_cookie_is_http_only_strict_and_secure_behind_tls() {
    let app = portal_app(|c| c.server.trust_proxy = true).await;
    let c = client();
    let (_, set) = login(&app, &c).await;
    assert!(set.starts_with("sandra_admin="), "{set}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    assert!(!set.contains("Secure"), "plain http: no Secure ({set})");
    let r = c
        .post(app.url("/admin/login"))
        .header("x-forwarded-proto", "https")
        .form(&[("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let set = r.headers()["set-cookie"].to_str().unwrap();
    assert!(set.contains("; Secure"), "behind TLS: Secure ({set})");
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_logins_are_rate_limited() {
    let app = portal_app(|_| {}).await;
    let c = client();
    for _ in 0..5 {
        let r = c
            .post(app.url("/admin/login"))
            .form(&[("password", "guess")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get("set-cookie").is_none());
        assert!(r.text().await.unwrap().contains("Wrong password"));
    }
    // The sixth attempt within the minute is not even checked, right password or not.
    let r = c
        .post(app.url("/admin/login"))
        .form(&[("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn posts_without_the_csrf_token_or_from_another_origin_are_refused() {
    let app = portal_app(|_| {}).await;
    let c = client();
    let (cookie, _) = login(&app, &c).await;
    let token = csrf(&app, &c, &cookie, "/admin/settings").await;
    let new_verify = "a-brand-new-verify-token";
    // (form fields, Origin header)
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: [Case<'_>; 3] = [
        (&[("whatsapp.verify_token", new_verify)], None),
        (
            &[
                ("whatsapp.verify_token", new_verify),
                ("csrf", &"0".repeat(64)),
            ],
            None,
        ),
        (
            &[("whatsapp.verify_token", new_verify), ("csrf", &token)],
            Some("http://evil.example"),
        ),
    ];
    for (form, origin) in cases {
        let mut req = c
            .post(app.url("/admin/settings"))
            .header("cookie", &cookie)
            .form(form);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{form:?} {origin:?}");
    }
    // Nothing was applied: the old verify token still answers the handshake.
    assert!(handshake(&app, VERIFY_TOKEN).await);
    assert!(!handshake(&app, new_verify).await);
}

/// Meta's subscription handshake with `token`: whether it was accepted.
async fn handshake(app: &TestApp, token: &str) -> bool {
    app.client
        .get(app.url("/api/channels/whatsapp"))
        .query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", token),
            ("hub.challenge", "42"),
        ])
        .send()
        .await
        .unwrap()
        .status()
        == StatusCode::OK
}

#[tokio::test]
async fn settings_apply_without_a_restart_and_secrets_are_never_shown() {
    let app = portal_app(|_| {}).await;
    let c = client();
    let (cookie, _) = login(&app, &c).await;
    let token = csrf(&app, &c, &cookie, "/admin/settings").await;
    let (new_secret, new_verify) = ("rotated-app-secret-77", "rotated-verify-token-77");
    let r = c
        .post(app.url("/admin/settings"))
        .header("cookie", &cookie)
        .header("origin", format!("http://{}", app.addr))
        .form(&[
            ("csrf", token.as_str()),
            ("whatsapp.app_secret", new_secret),
            ("whatsapp.verify_token", new_verify),
            ("whatsapp.access_token", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // The handshake and webhook signatures use the new values at once.
    assert!(handshake(&app, new_verify).await);
    assert!(!handshake(&app, VERIFY_TOKEN).await);
    let body = text_webhook("wamid.portal1", "15551230001", "hello", 0);
    assert_eq!(
        app.post_signed(&body).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let sig = {
        use hmac::{Hmac, KeyInit, Mac};
        let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(new_secret.as_bytes()).unwrap();
        m.update(&body);
        format!("sha256={}", hex::encode(m.finalize().into_bytes()))
    };
    assert_eq!(
        app.post_with(&body, Some(&sig)).await.status(),
        StatusCode::OK
    );
    // The page says "set", never the value.
    let page = c
        .get(app.url("/admin/settings"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Saved and applied"), "{page}");
    for secret in [new_secret, new_verify, ACCESS_TOKEN] {
        assert!(
            !page.contains(secret),
            "{secret} shown on the settings page"
        );
    }
    assert!(page.contains(PHONE_NUMBER_ID));
    // A bad value names its key and changes nothing.
    let token = csrf(&app, &c, &cookie, "/admin/settings").await;
    c.post(app.url("/admin/settings"))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str()), ("whatsapp.api_version", "26")])
        .send()
        .await
        .unwrap();
    let page = c
        .get(app.url("/admin/settings"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("whatsapp.api_version"), "{page}");
    assert!(page.contains("Not saved"), "{page}");
    assert!(page.contains("v26.0"), "{page}");

    // Saved for the next start too (encrypted in the vault): after a restart with the old
    // values in the config, the new ones still hold.
    let (dir, graph) = app.stop().await;
    let app = TestApp::spawn_in(
        dir,
        graph,
        |_| {},
        std::sync::Arc::new(EchoBrain::default()),
    )
    .await;
    assert!(handshake(&app, new_verify).await);
    assert!(!handshake(&app, VERIFY_TOKEN).await);
    let data = app.dir.path().join("data");
    let mut stack = vec![data];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                let plain = String::from_utf8_lossy(&bytes);
                assert!(
                    !plain.contains(new_secret),
                    "the app secret in plain in {p:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn conversations_show_metadata_never_bodies_and_test_messages_go_out() {
    let app = portal_app(|_| {}).await;
    let c = client();
    let (cookie, _) = login(&app, &c).await;
    let said = "my-private-words-5521";
    app.post_signed(&text_webhook("wamid.portal2", "15551230002", said, 0))
        .await;
    assert_eq!(
        app.graph
            .wait_accepted(1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    let page = c
        .get(app.url("/admin/conversations"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("15551230002"), "{page}");
    assert!(
        !page.contains(said),
        "a message body on the conversations page"
    );
    assert!(
        !page.contains("echo["),
        "a reply body on the conversations page"
    );

    let token = csrf(&app, &c, &cookie, "/admin/test-message").await;
    let r = c
        .post(app.url("/admin/test-message"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("to", "+1 555 123 0003"),
            ("text", "portal test message"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let sent = app.graph.wait_accepted(2, Duration::from_secs(10)).await;
    let test = sent
        .iter()
        .find(|s| s.body["text"]["body"] == "portal test message")
        .expect("the test message reached the Graph API");
    assert_eq!(test.body["to"], "15551230003");
}

#[tokio::test]
async fn held_replies_are_listed_without_their_text() {
    let app = portal_app(|_| {}).await;
    let c = client();
    let (cookie, _) = login(&app, &c).await;
    // Meta refuses the reply: the window is closed (131047), so Sandra holds it.
    app.graph.inject([Fault::Error {
        http: 400,
        code: 131047,
        retry_after: None,
    }]);
    app.post_signed(&text_webhook(
        "wamid.portal3",
        "15551230004",
        "are you there",
        0,
    ))
    .await;
    let store = app.system.store.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            store.held_replies().is_ok_and(|h| h.len() == 1)
        })
        .await,
        "the reply was never held"
    );
    let page = c
        .get(app.url("/admin/conversations"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let held = &page[page.find("id=\"held\"").expect("a held replies table")..];
    assert!(held.contains("15551230004"), "{held}");
    assert!(
        !page.contains("are you there"),
        "a body on the conversations page"
    );
    assert!(
        !page.contains("echo["),
        "a held reply's text on the conversations page"
    );
}

#[tokio::test]
async fn an_account_is_listed_and_a_number_unlinked() {
    use sandra_actors::accounts::{Account, IdentityChange, NumberRecord, link_key};
    use sandra_actors::session::SessionState;
    use sandra_actors::whatsapp::{ChatId, ConversationKey, ReplyTarget};
    let app = portal_app(|_| {}).await;
    let c = client();
    let (cookie, _) = login(&app, &c).await;
    // A linked number, written the way a turn commits a link.
    let key = link_key("15551230005");
    let email = "ana@example.org".to_string();
    let account = Account {
        email: email.clone(),
        profile: Default::default(),
        links: vec![key.clone()],
        created_at: 1_700_000_000,
    };
    let change = IdentityChange {
        key: key.clone(),
        number: Some(NumberRecord {
            linked: Some(email.clone()),
            ..Default::default()
        }),
        accounts: [(email.clone(), Some(account))].into(),
        account_bases: [(email.clone(), None)].into(),
        email_sends: Default::default(),
    };
    let conv = ConversationKey::new(PHONE_NUMBER_ID, &ChatId::Phone("15551230005".into()));
    let session = SessionState::new(
        conv,
        ReplyTarget {
            group_id: None,
            phone: Some("15551230005".into()),
            user_id: None,
        },
    );
    app.system
        .store
        .commit_turn_with(&session, &[], &[], Some(&change))
        .unwrap();

    let page = c
        .get(app.url("/admin/accounts"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&email) && page.contains(&key), "{page}");
    let token = csrf(&app, &c, &cookie, "/admin/accounts").await;
    let r = c
        .post(app.url("/admin/accounts/unlink"))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str()), ("key", key.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let number = app.system.store.number_record(&key).unwrap().unwrap();
    assert_eq!(number.linked, None);
    assert!(
        app.system
            .store
            .account(&email)
            .unwrap()
            .unwrap()
            .links
            .is_empty()
    );
    let page = c
        .get(app.url("/admin/accounts"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Unlinked"), "{page}");
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = portal_app(|_| {}).await;
    let c = client();
    let (cookie, _) = login(&app, &c).await;
    let token = csrf(&app, &c, &cookie, "/admin").await;
    let r = c
        .post(app.url("/admin/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let r = c
        .get(app.url("/admin"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/admin/login");
}

/// `sandra admin set-password` with `input` on stdin, in a fresh directory whose config puts
/// the data directory at `data`.
fn set_password_cli(extra: &[&str], input: &str) -> (std::process::Output, tempfile::TempDir) {
    use std::process::Command;
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config.toml");
    std::fs::write(&config, "[storage]\ndata_dir = \"data\"\n").unwrap();
    let mut args = vec![
        "admin",
        "set-password",
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandra"));
    cmd.args(&args)
        .current_dir(home.path())
        .env_remove("SANDRA_DATA_DIR");
    (crate::support::run_with_stdin(cmd, input.as_bytes()), home)
}

#[test]
fn set_password_through_the_binary() {
    use sandra::admin::auth::{PASSWORD_FILE, verify_password};
    // --stdin: one line.
    let (out, home) = set_password_cli(&["--stdin"], &format!("{PASSWORD}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phc = std::fs::read_to_string(home.path().join("data").join(PASSWORD_FILE)).unwrap();
    assert!(verify_password(&phc, PASSWORD));
    assert!(!phc.contains(PASSWORD));
    // Asked twice: two different answers change nothing.
    let (out, home) = set_password_cli(&[], &format!("{PASSWORD}\nsomething else\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("differ"));
    assert!(!home.path().join("data").join(PASSWORD_FILE).exists());
    // Asked twice, the same: set. Too short: refused, naming the minimum.
    let (out, _home) = set_password_cli(&[], &format!("{PASSWORD}\n{PASSWORD}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, _home) = set_password_cli(&["--stdin"], "short\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 10 characters"));
}
