//! The portal's HTML: server-rendered with maud (escaped by default), one small stylesheet,
//! no script. Laid out for a 390 px phone screen first; tables scroll sideways inside their
//! box rather than widening the page.

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The one stylesheet, served at `/admin/style.css`.
pub const CSS: &str = r#"
:root{--fg:#1c2430;--muted:#5d6b7a;--line:#dde3ea;--bg:#f5f7fa;--card:#fff;--ok:#16794c;--okbg:#e5f5ec;--bad:#b42318;--badbg:#fdecea;--accent:#0b6e6e}
*{box-sizing:border-box}
body{margin:0;font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:var(--accent);color:#fff;padding:.6rem 1rem}
header b{font-size:1.1rem}
nav{display:flex;flex-wrap:wrap;gap:.3rem .9rem;margin-top:.4rem}
nav a,nav button{color:#fff;text-decoration:none;font-size:.95rem;background:none;border:0;padding:0;cursor:pointer;font:inherit}
nav a[aria-current]{text-decoration:underline}
nav form,form.inline{display:inline;margin:0}
main{max-width:60rem;margin:0 auto;padding:1rem}
h1{font-size:1.35rem;margin:.2rem 0 1rem}
h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:1rem;margin-bottom:1rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.45rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:.9rem}
.ok{color:var(--ok);background:var(--okbg);border-radius:4px;padding:0 .4rem;font-weight:600;white-space:nowrap}
.fail{color:var(--bad);background:var(--badbg);border-radius:4px;padding:0 .4rem;font-weight:600;white-space:nowrap}
.muted{color:var(--muted);font-size:.9rem}
.msg{padding:.6rem .8rem;border-radius:6px;margin-bottom:1rem;background:var(--okbg);color:var(--ok)}
.msg.err{background:var(--badbg);color:var(--bad)}
label{display:block;font-weight:600;margin:.8rem 0 .25rem}
input[type=text],input[type=password],input[type=tel],textarea{width:100%;padding:.55rem;border:1px solid var(--line);border-radius:6px;font:inherit}
button.primary,input[type=submit]{display:block;margin-top:1rem;background:var(--accent);color:#fff;border:0;border-radius:6px;padding:.6rem 1.1rem;font:inherit;cursor:pointer}
button.small{background:none;border:1px solid var(--bad);color:var(--bad);border-radius:5px;padding:.15rem .5rem;cursor:pointer}
.chat{display:flex;flex-direction:column;gap:.5rem}
.bubble{max-width:85%;padding:.5rem .75rem;border-radius:12px;white-space:pre-wrap;word-wrap:break-word}
.me{align-self:flex-end;background:#dcf8c6}
.sandra{align-self:flex-start;background:#eef1f4}
.login{max-width:24rem;margin:3rem auto}
code{font-size:.9em;word-break:break-all}
"#;

/// One row of a pass/fail table (the status page, the doctor's checks).
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

/// Which nav entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Status,
    Settings,
    Conversations,
    Accounts,
    Models,
    Test,
    Chat,
}

const NAV: &[(Page, &str, &str)] = &[
    (Page::Status, "/admin", "Status"),
    (Page::Settings, "/admin/settings", "WhatsApp"),
    (Page::Conversations, "/admin/conversations", "Conversations"),
    (Page::Accounts, "/admin/accounts", "Accounts"),
    (Page::Models, "/admin/models", "Models"),
    (Page::Test, "/admin/test-message", "Test message"),
    (Page::Chat, "/admin/chat", "Try Sandra"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="same-origin";
            title { (title) " · Sandra admin" }
            link rel="stylesheet" href="/admin/style.css";
        }
    }
}

/// A logged-in page: header, navigation (logout is a CSRF-protected POST), `body`.
pub fn layout(page: Page, title: &str, csrf: &str, flash: Option<&Flash>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    b { "Sandra admin" }
                    nav {
                        @for (p, href, label) in NAV {
                            @if *p == page {
                                a href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                        form method="post" action="/admin/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" id="logout" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(f) = flash {
                        div class=(if f.ok { "msg" } else { "msg err" }) id="flash" { (f.text) }
                    }
                    (body)
                }
            }
        }
    }
}

/// A one-time message shown at the top of a page after a form was handled.
#[derive(Debug, Clone)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body {
                header { b { "Sandra admin" } }
                main.login {
                    div.card {
                        h1 { "Log in" }
                        @if let Some(e) = error {
                            div.msg.err id="flash" { (e) }
                        }
                        form method="post" action="/admin/login" {
                            label for="password" { "Password" }
                            input type="password" id="password" name="password"
                                autocomplete="current-password" required autofocus;
                            button.primary type="submit" id="login" { "Log in" }
                        }
                    }
                }
            }
        }
    }
}

pub fn checks_table(id: &str, rows: &[Row]) -> Markup {
    html! {
        div.card.scroll {
            table id=(id) {
                tr { th { "Check" } th { "" } th { "Detail" } }
                @for r in rows {
                    tr data-check=(r.name) {
                        td { (r.name) }
                        td {
                            @if r.ok { span.ok { "ok" } } @else { span.fail { "fail" } }
                        }
                        td {
                            (r.detail)
                            @if let Some(fix) = &r.fix {
                                br; span.muted { "Fix: " (fix) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The five WhatsApp settings: values of the two plain ones, only "set"/"not set" for secrets.
pub struct SettingView {
    pub key: &'static str,
    pub label: &'static str,
    pub secret: bool,
    /// Plain settings only.
    pub value: String,
    pub set: bool,
    /// Set in the environment: the environment wins at the next start.
    pub from_env: bool,
}

pub fn settings(csrf: &str, items: &[SettingView], stored_note: &str) -> Markup {
    html! {
        div.card {
            p.muted {
                "Leave a field empty to keep its value. Secrets are never shown again; they are "
                "applied at once (no restart). " (stored_note)
            }
            form method="post" action="/admin/settings" autocomplete="off" {
                input type="hidden" name="csrf" value=(csrf);
                @for s in items {
                    label for=(s.key) {
                        (s.label) " "
                        @if s.set { span.ok data-state="set" { "set" } } @else { span.fail data-state="not set" { "not set" } }
                        @if s.from_env { " " span.muted { "(from the environment)" } }
                    }
                    @if s.secret {
                        input type="password" id=(s.key) name=(s.key) autocomplete="new-password"
                            placeholder="new value";
                    } @else {
                        input type="text" id=(s.key) name=(s.key) placeholder=(s.value);
                        @if !s.value.is_empty() { span.muted { "now: " code { (s.value) } } }
                    }
                }
                button.primary type="submit" id="save" { "Save and apply" }
            }
        }
    }
}

pub struct ConversationView {
    pub key: String,
    pub kind: &'static str,
    pub last_activity: String,
    pub turns: u64,
    pub window: String,
}

pub fn conversations(rows: &[ConversationView]) -> Markup {
    html! {
        p.muted { "Metadata only: Sandra's portal never shows what was said." }
        div.card.scroll {
            table id="conversations" {
                tr { th { "Conversation" } th { "Kind" } th { "Last message" } th { "Turns" } th { "24 h window" } }
                @for c in rows {
                    tr { td { code { (c.key) } } td { (c.kind) } td { (c.last_activity) } td { (c.turns) } td { (c.window) } }
                }
                @if rows.is_empty() { tr { td colspan="5" { "No conversations yet." } } }
            }
        }
    }
}

/// A reply held because the conversation's 24-hour window closed (metadata only).
pub struct HeldView {
    pub key: String,
    pub since: String,
    pub reason: String,
    pub template_queued: bool,
}

pub fn held(rows: &[HeldView]) -> Markup {
    html! {
        p.muted {
            "Replies Meta would refuse because the 24-hour window closed. They go out when the "
            "person writes again (or after the reopen template, when one is configured)."
        }
        div.card.scroll {
            table id="held" {
                tr { th { "Conversation" } th { "Held since" } th { "Why" } th { "Template" } }
                @for h in rows {
                    tr {
                        td { code { (h.key) } }
                        td { (h.since) }
                        td { (h.reason) }
                        td { @if h.template_queued { "sent" } @else { "none" } }
                    }
                }
                @if rows.is_empty() { tr { td colspan="4" { "No held replies." } } }
            }
        }
    }
}

pub struct AccountView {
    pub email: String,
    pub name: Option<String>,
    pub links: Vec<String>,
    pub created: String,
}

pub fn accounts(csrf: &str, rows: &[AccountView]) -> Markup {
    html! {
        div.card.scroll {
            table id="accounts" {
                tr { th { "Email" } th { "Name" } th { "Linked numbers" } th { "Created" } }
                @for a in rows {
                    tr {
                        td { (a.email) }
                        td { (a.name.as_deref().unwrap_or("")) }
                        td {
                            @for l in &a.links {
                                div {
                                    code { (l) } " "
                                    form.inline method="post" action="/admin/accounts/unlink" {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="key" value=(l);
                                        button.small type="submit" { "Unlink" }
                                    }
                                }
                            }
                        }
                        td { (a.created) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="4" { "No linked accounts." } } }
            }
        }
    }
}

#[derive(Debug)]
pub struct ModelView {
    pub role: String,
    pub uses: String,
    pub installed: Option<String>,
}

pub fn models(dir: &str, rows: &[ModelView]) -> Markup {
    html! {
        p.muted { "Models directory: " code { (dir) } ". Install with " code { "sandra models fetch" } "." }
        div.card.scroll {
            table id="models" {
                tr { th { "Role" } th { "In use" } th { "Installed" } }
                @for m in rows {
                    tr { td { (m.role) } td { (m.uses) } td { (m.installed.as_deref().unwrap_or("nothing installed")) } }
                }
            }
        }
    }
}

pub fn test_message(csrf: &str) -> Markup {
    html! {
        div.card {
            p.muted {
                "Sent through the outbox like any reply. Meta delivers free-form text only within "
                "24 hours of that person's last message to your number."
            }
            form method="post" action="/admin/test-message" {
                input type="hidden" name="csrf" value=(csrf);
                label for="to" { "Number (digits, with country code)" }
                input type="tel" id="to" name="to" placeholder="4915112345678" required;
                label for="text" { "Text" }
                textarea id="text" name="text" rows="3" required { "Hello from Sandra's Admin Portal." }
                button.primary type="submit" id="send" { "Send" }
            }
        }
    }
}

/// One line of the chat box's transcript.
#[derive(Debug, Clone)]
pub struct ChatLine {
    pub from_sandra: bool,
    pub text: String,
}

pub fn chat(csrf: &str, lines: &[ChatLine]) -> Markup {
    html! {
        p.muted {
            "Talks to the same brain, memory and photo/voice pipeline as WhatsApp, in a local "
            "conversation of its own. Nothing is sent to Meta."
        }
        div.card {
            div.chat id="transcript" {
                @for l in lines {
                    @if l.from_sandra {
                        div.bubble.sandra data-from="sandra" { (l.text) }
                    } @else {
                        div.bubble.me data-from="me" { (l.text) }
                    }
                }
                @if lines.is_empty() { p.muted { "Say hello." } }
            }
            form method="post" action="/admin/chat" {
                input type="hidden" name="csrf" value=(csrf);
                label for="message" { "Message" }
                input type="text" id="message" name="message" autocomplete="off" required;
                button.primary type="submit" id="say" { "Send" }
            }
            form method="post" action={ "/admin/chat/upload?csrf=" (csrf) } enctype="multipart/form-data" {
                label for="file" { "Or a photo or voice note" }
                input type="file" id="file" name="file" accept="image/*,audio/*" required;
                label for="caption" { "Caption (photos)" }
                input type="text" id="caption" name="caption" autocomplete="off";
                button.primary type="submit" id="upload" { "Send file" }
            }
        }
    }
}

/// Plain text, escaped (for pages built from a [`Row`] list and a heading).
pub fn section(title: &str, inner: Markup) -> Markup {
    html! { h2 { (title) } (inner) }
}

/// Marks up nothing (an empty optional section).
pub fn nothing() -> Markup {
    PreEscaped(String::new())
}
