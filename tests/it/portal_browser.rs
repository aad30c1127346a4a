//! The Admin Portal in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven through chromedriver by fantoccini. Logs in (a wrong password
//! first), replaces an access token Meta refuses, sees the status turn green, talks to Sandra
//! in the chat box, and logs out. Every page is saved as a PNG at phone size (390×844) and
//! desktop size under `target/portal-screenshots/` (CI can keep that folder as artifacts;
//! copies of the phone-sized ones are in `docs/portal/`).
//!
//! Skips, saying why, only when chromium or chromedriver is not installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use crate::portal::{PASSWORD, portal_app};
use crate::support::*;

/// Kills chromedriver when the test ends, however it ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

async fn start_driver() -> Option<(Driver, String)> {
    let Some(driver) = on_path("chromedriver") else {
        println!(
            "SKIPPED portal browser test: chromedriver not found (apt install chromium-driver)"
        );
        return None;
    };
    let Some(browser) = on_path("chromium").or_else(|| on_path("chromium-browser")) else {
        println!("SKIPPED portal browser test: chromium not found (apt install chromium)");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let guard = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    let up = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while up.get(format!("{url}/status")).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "chromedriver did not start within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = browser;
    Some((guard, url))
}

async fn browser(driver_url: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=390,844"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver_url)
        .await
        .expect("a chromium session")
}

fn shots_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/portal-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Saves the current page at phone size and at desktop size.
async fn shoot(b: &Client, name: &str) {
    for (size, w, h) in [("phone", 390, 844), ("desktop", 1280, 900)] {
        b.set_window_size(w, h).await.unwrap();
        let png = b.screenshot().await.unwrap();
        let path = shots_dir().join(format!("{name}-{size}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
    }
    b.set_window_size(390, 844).await.unwrap();
}

async fn text_of(b: &Client, css: &str) -> String {
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_operator_logs_in_fixes_the_token_chats_and_logs_out() {
    let Some((_driver, driver_url)) = start_driver().await else {
        return;
    };
    // Sandra starts with a token Meta no longer accepts.
    let app = portal_app(|c| c.whatsapp.access_token = "EAAG-expired-token".into()).await;
    app.post_signed(&text_webhook("wamid.browser1", "15551239999", "hi", 0))
        .await;
    let system = app.system.clone();
    assert!(
        eventually(Duration::from_secs(10), || system.token_invalid()).await,
        "the sender never met error 190"
    );

    let b = browser(&driver_url).await;
    let base = app.url("");

    // Logged out, /admin leads to the login page.
    b.goto(&format!("{base}/admin")).await.unwrap();
    assert!(
        b.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/admin/login")
    );
    shoot(&b, "login").await;

    // A wrong password is refused.
    b.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys("not the password")
        .await
        .unwrap();
    b.find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text_of(&b, "#flash").await.contains("Wrong password"));
    shoot(&b, "login-refused").await;

    b.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    b.find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let token_row = "tr[data-check='Access token']";
    assert!(
        text_of(&b, &format!("{token_row} .fail"))
            .await
            .contains("fail")
    );
    shoot(&b, "status-token-refused").await;

    // Paste the valid token on the settings page.
    b.goto(&format!("{base}/admin/settings")).await.unwrap();
    b.find(Locator::Css("[name='whatsapp.access_token']"))
        .await
        .unwrap()
        .send_keys(ACCESS_TOKEN)
        .await
        .unwrap();
    b.find(Locator::Id("save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text_of(&b, "#flash").await.contains("Saved and applied"));
    let page = b.source().await.unwrap();
    assert!(!page.contains(ACCESS_TOKEN), "the token was echoed back");
    shoot(&b, "settings").await;

    // The status turns green (the sender resumes: the held reply goes out with the new token).
    let mut green = false;
    for _ in 0..100 {
        b.goto(&format!("{base}/admin")).await.unwrap();
        if b.find(Locator::Css(&format!("{token_row} .ok")))
            .await
            .is_ok()
        {
            green = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(green, "the token row never turned ok");
    assert_eq!(
        app.graph
            .wait_accepted(1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    shoot(&b, "status").await;

    for (path, name, marker) in [
        ("/admin/conversations", "conversations", "#conversations"),
        ("/admin/accounts", "accounts", "#accounts"),
        ("/admin/models", "models", "#models"),
        ("/admin/test-message", "test-message", "#send"),
    ] {
        b.goto(&format!("{base}{path}")).await.unwrap();
        text_of(&b, marker).await;
        shoot(&b, name).await;
    }

    // The chat box talks to the same conversations (the scripted brain echoes).
    b.goto(&format!("{base}/admin/chat")).await.unwrap();
    b.find(Locator::Id("message"))
        .await
        .unwrap()
        .send_keys("hello from the browser")
        .await
        .unwrap();
    b.find(Locator::Id("say"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let reply = text_of(&b, "[data-from='sandra']").await;
    assert!(reply.contains("hello from the browser"), "{reply}");
    // A photo goes through the same pipeline (no vision model in tests: Sandra says politely
    // that she cannot look at it, which is still her answer to the photo).
    let photo = shots_dir().join("login-phone.png");
    b.find(Locator::Id("file"))
        .await
        .unwrap()
        .send_keys(&photo.display().to_string())
        .await
        .unwrap();
    b.find(Locator::Id("upload"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let mut answered = false;
    for _ in 0..100 {
        let bubbles = b
            .find_all(Locator::Css("[data-from='sandra']"))
            .await
            .unwrap();
        if bubbles.len() >= 2 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "no answer to the photo");
    assert!(b.source().await.unwrap().contains("[photo]"));
    shoot(&b, "chat").await;

    // Log out: /admin is the login page again.
    b.find(Locator::Id("logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_of(&b, "#password").await;
    b.goto(&format!("{base}/admin")).await.unwrap();
    assert!(
        b.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/admin/login")
    );
    b.close().await.unwrap();
}
