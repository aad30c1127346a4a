//! Linking a number to an account by email code, end to end: webhooks in, replies through the
//! fake Graph API, and code mails through a real SMTP server on loopback (`mailin-embedded`).

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailin_embedded::{Handler, Response, Server, response};
use sandra::config::Config;
use sandra_actors::accounts::{Flow, link_key};
use sandra_actors::brain::{Brain, BrainFuture, TurnInput};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

/// One mail as the SMTP server received it.
#[derive(Debug, Clone)]
struct Mail {
    to: Vec<String>,
    body: String,
}

impl Mail {
    /// The 6-digit code: the line of the body that is 6 digits and nothing else.
    fn code(&self) -> String {
        self.body
            .lines()
            .map(str::trim)
            .find(|l| l.len() == 6 && l.chars().all(|c| c.is_ascii_digit()))
            .unwrap_or_else(|| panic!("no code in {}", self.body))
            .to_string()
    }
}

#[derive(Clone, Default)]
struct Inbox {
    mails: Arc<Mutex<Vec<Mail>>>,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for Inbox {
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.mails.lock().unwrap().push(Mail {
            to: std::mem::take(&mut self.to),
            body: String::from_utf8_lossy(&self.data).into_owned(),
        });
        response::OK
    }
}

/// A real SMTP server on `listener` (in a thread of its own; it serves until the test process
/// ends). Returns what it receives.
fn smtp_server(listener: TcpListener) -> Arc<Mutex<Vec<Mail>>> {
    let inbox = Inbox::default();
    let mails = inbox.mails.clone();
    let mut server = Server::new(inbox);
    server.with_name("smtp.test").with_tcp_listener(listener);
    std::thread::spawn(move || {
        if let Err(e) = server.serve() {
            eprintln!("test SMTP server stopped: {e}");
        }
    });
    mails
}

fn with_smtp(port: u16) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.email.smtp_url = format!("smtp://127.0.0.1:{port}").into();
        c.email.from = "Sandra <sandra@example.org>".into();
        c.email.send_attempts = 2;
        c.email.retry_delay = Duration::from_millis(50);
        c.email.timeout = Duration::from_secs(5);
        // These chats are longer than the per-sender rate allows in a burst.
        c.limits.messages_per_minute = 0;
    }
}

/// A brain that answers with the notes of the profile it was given, so a test sees what
/// personalises the prompt.
#[derive(Default)]
struct ProfileBrain {
    calls: AtomicUsize,
}

impl Brain for ProfileBrain {
    fn reply(&self, input: TurnInput) -> BrainFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let p = input.profile.unwrap_or_default();
            let notes: Vec<String> = p.notes.into_iter().map(|n| n.text).collect();
            Ok(format!(
                "name={} notes=[{}]",
                p.name.unwrap_or_default(),
                notes.join("; ")
            )
            .into())
        })
    }
    fn describe(&self) -> String {
        "profile".into()
    }
}

/// Sends `body` from `from` and returns the `replies` texts it got.
struct Chat<'a> {
    app: &'a TestApp,
    n: AtomicUsize,
}

impl<'a> Chat<'a> {
    fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            n: AtomicUsize::new(0),
        }
    }

    async fn say(&self, from: &str, body: &str, replies: usize) -> Vec<String> {
        let i = self.n.fetch_add(1, Ordering::SeqCst);
        let before = self.app.graph.accepted().len();
        let status = self
            .app
            .post_signed(&text_webhook(
                &format!("wamid.acc{i}"),
                from,
                body,
                i as i64,
            ))
            .await
            .status();
        assert_eq!(status, 200);
        let sent = self.app.graph.wait_accepted(before + replies, WAIT).await;
        assert!(sent.len() >= before + replies, "no reply to {body:?}");
        sent[before..]
            .iter()
            .filter(|r| r.body["to"] == from)
            .map(|r| {
                r.body["text"]["body"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }
}

async fn wait_mails(mails: &Arc<Mutex<Vec<Mail>>>, n: usize) -> Vec<Mail> {
    assert!(
        eventually(WAIT, || mails.lock().unwrap().len() >= n).await,
        "no mail"
    );
    mails.lock().unwrap().clone()
}

/// Links `from` to `email` (the flow's happy path), returning the replies.
async fn link(chat: &Chat<'_>, mails: &Arc<Mutex<Vec<Mail>>>, from: &str, email: &str) {
    let n = mails.lock().unwrap().len();
    assert!(chat.say(from, "/link", 1).await[0].contains("Which email address"));
    assert!(chat.say(from, email, 1).await[0].starts_with("I sent a 6-digit code"));
    let code = wait_mails(mails, n + 1).await[n].code();
    assert!(chat.say(from, &code, 1).await[0].starts_with("Done: this number is linked"));
}

/// The five steps: a message, the offer, an address, the mailed code, the code back; a wrong
/// code on the way costs one try; the offer is made once; nothing reveals the code.
#[tokio::test]
async fn a_number_is_linked_in_five_steps_and_offered_it_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails = smtp_server(listener);
    let app = TestApp::spawn_with(with_smtp(port), Arc::new(EchoBrain::default())).await;
    let chat = Chat::new(&app);
    let ana = "34600111222";

    // 1–2: the first reply carries the offer, once.
    let r = chat.say(ana, "hello", 2).await;
    assert_eq!(r[0], "echo[0]: hello");
    assert!(r[1].contains("/link"), "{}", r[1]);
    // 3: /link asks for the address; a bad one is refused plainly.
    assert!(chat.say(ana, "/link", 1).await[0].contains("Which email address"));
    assert!(chat.say(ana, "ana@example", 1).await[0].contains("doesn't look like an email"));
    // A sentence meanwhile is just conversation; the address is still awaited.
    assert_eq!(
        chat.say(ana, "what is a code?", 1).await,
        vec!["echo[2]: what is a code?"]
    );
    // 4: the code is mailed to the address.
    let r = chat.say(ana, " Ana@Example.ORG ", 1).await;
    assert_eq!(
        r[0],
        "I sent a 6-digit code to A***@example.org. Send it to me here within 10 minutes. (/cancel to stop.)"
    );
    let mail = wait_mails(&mails, 1).await.remove(0);
    assert!(
        mail.to.iter().any(|t| t.contains("Ana@example.org")),
        "{:?}",
        mail.to
    );
    let code = mail.code();
    // A wrong code costs a try; the stored flow never holds the digits.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(
        chat.say(ana, wrong, 1).await[0],
        "That code is not right. Tries left: 4."
    );
    let stored = app
        .system
        .store
        .number_record(&link_key(ana))
        .unwrap()
        .unwrap();
    assert!(!serde_json::to_string(&stored).unwrap().contains(&code));
    // 5: the code back links the number.
    assert_eq!(
        chat.say(ana, &code, 1).await[0],
        "Done: this number is linked to A***@example.org."
    );
    assert!(chat.say(ana, "/whoami", 1).await[0].contains("linked to A***@example.org"));
    // No second offer; the account messages stayed out of the conversation's history.
    assert_eq!(chat.say(ana, "thanks", 1).await, vec!["echo[4]: thanks"]);
    let account = app
        .system
        .store
        .account("Ana@example.org")
        .unwrap()
        .unwrap();
    assert_eq!(account.links, vec![link_key(ana)]);
    app.stop().await;
}

/// A flow survives a restart; an expired code is refused; codes are limited per hour per number
/// and per address; `/link` says so plainly when email is not set up.
#[tokio::test]
async fn expiry_restart_and_rate_limits() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails = smtp_server(listener);
    let app = TestApp::spawn_with(with_smtp(port), Arc::new(EchoBrain::default())).await;
    let bob = "4915112345678";
    {
        let chat = Chat::new(&app);
        chat.say(bob, "/link", 1).await;
        chat.say(bob, "bob@example.org", 1).await;
    }
    let code = wait_mails(&mails, 1).await[0].code();
    // Restart mid-flow: the code is still awaited.
    let (dir, graph) = app.stop().await;
    let app = TestApp::spawn_in(dir, graph, with_smtp(port), Arc::new(EchoBrain::default())).await;
    let chat = Chat::new(&app);
    chat.n.store(100, Ordering::SeqCst);
    // Ten minutes pass: the stored flow's expiry is moved into the past.
    let key = link_key(bob);
    let mut rec = app.system.store.number_record(&key).unwrap().unwrap();
    let Flow::AwaitingCode { expires_at_ms, .. } = &mut rec.flow else {
        panic!("the flow did not survive the restart: {:?}", rec.flow);
    };
    *expires_at_ms = 0;
    app.system.store.put_number_record(&key, &rec).unwrap();
    assert_eq!(
        chat.say(bob, &code, 1).await[0],
        "That code has expired. Send /link for a new one."
    );
    assert!(
        app.system
            .store
            .number_record(&key)
            .unwrap()
            .unwrap()
            .linked
            .is_none()
    );

    // Three codes an hour per number (the first one counts): two more, then a refusal.
    for _ in 0..2 {
        chat.say(bob, "/link", 1).await;
        assert!(chat.say(bob, "bob@example.org", 1).await[0].starts_with("I sent"));
    }
    chat.say(bob, "/link", 1).await;
    assert!(chat.say(bob, "other@example.org", 1).await[0].starts_with("Too many codes"));
    // The address is limited too, whoever asks for it; the answer is the same.
    let eve = "33612345678";
    chat.say(eve, "/link", 1).await;
    assert!(chat.say(eve, "bob@example.org", 1).await[0].starts_with("Too many codes"));
    assert_eq!(wait_mails(&mails, 3).await.len(), 3, "no fourth mail");
    app.stop().await;

    // Without [email], linking says it is not set up, and is never offered.
    let app = TestApp::spawn().await;
    let chat = Chat::new(&app);
    assert_eq!(chat.say(bob, "hi", 1).await, vec!["echo[0]: hi"]);
    assert_eq!(
        chat.say(bob, "/link", 1).await,
        vec!["Linking by email is not set up on this server."]
    );
    app.stop().await;
}

/// Two numbers on one account share its notes and name (in the prompt too); re-linking moves a
/// number; `/unlink` and `/forget` (confirmed) remove what they say.
#[tokio::test]
async fn two_numbers_share_an_account_then_relink_unlink_and_forget() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails = smtp_server(listener);
    let app = TestApp::spawn_with(with_smtp(port), Arc::new(ProfileBrain::default())).await;
    let chat = Chat::new(&app);
    let (a, b) = ("351912345678", "351934567890");
    chat.say(a, "hi", 2).await;
    link(&chat, &mails, a, "ana@example.org").await;
    let r = chat.say(a, "remember that I'm vegetarian", 1).await;
    assert!(r[0].starts_with("Noted: “I'm vegetarian”"), "{r:?}");
    assert!(chat.say(a, "call me Ana", 1).await[0].contains("Ana"));
    // The second number, linked to the same address, has the same memory.
    chat.say(b, "/link", 1).await;
    let n = mails.lock().unwrap().len();
    chat.say(b, "ana@example.org", 1).await;
    let code = wait_mails(&mails, n + 1).await[n].code();
    chat.say(b, &code, 1).await;
    assert_eq!(
        chat.say(b, "/notes", 1).await,
        vec!["What I remember about you:\n1. I'm vegetarian"]
    );
    assert_eq!(
        chat.say(b, "what should I cook?", 1).await,
        vec!["name=Ana notes=[I'm vegetarian]"],
        "the account personalises the prompt on every linked number"
    );
    // Re-linking moves a number to another account; the first keeps its notes for b.
    link(&chat, &mails, a, "ana@work.example").await;
    assert!(chat.say(a, "/whoami", 1).await[0].contains("a***@work.example"));
    let r = chat.say(a, "/notes", 1).await;
    assert!(r[0].starts_with("I have no notes"), "{r:?}");
    assert!(chat.say(b, "/notes", 1).await[0].contains("vegetarian"));
    // /unlink.
    assert!(chat.say(a, "/unlink", 1).await[0].contains("no longer linked"));
    assert!(chat.say(a, "/whoami", 1).await[0].contains("not linked"));
    // /forget asks first, then erases the number's history, link and (last link) account.
    assert!(chat.say(b, "/forget", 1).await[0].contains("/forget yes"));
    assert!(
        app.system
            .store
            .number_record(&link_key(b))
            .unwrap()
            .is_some()
    );
    assert!(chat.say(b, "/forget yes", 1).await[0].contains("erased"));
    assert!(
        app.system
            .store
            .account("ana@example.org")
            .unwrap()
            .is_none()
    );
    let rec = app.system.store.number_record(&link_key(b)).unwrap();
    assert!(rec.is_none_or(|r| r.linked.is_none() && r.profile.is_empty()));
    let session = app
        .system
        .store
        .load_session(&sandra_actors::whatsapp::ConversationKey::new(
            PHONE_NUMBER_ID,
            &sandra_actors::whatsapp::ChatId::Phone(b.into()),
        ))
        .unwrap()
        .unwrap();
    assert!(session.history.is_empty() && session.summary.is_none());
    assert_eq!(
        chat.say(b, "who am I?", 1).await,
        vec!["name= notes=[]"],
        "nothing of the account is left for b"
    );
    app.stop().await;
}

/// The mail server is down: the user is told plainly, nothing counts against them, and once
/// it is back the same flow goes on.
#[tokio::test]
async fn an_smtp_server_that_is_down_gets_an_honest_answer_and_linking_works_after() {
    // A port nobody listens on (bound, then released), where the server starts later.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::spawn_with(with_smtp(port), Arc::new(EchoBrain::default())).await;
    let chat = Chat::new(&app);
    let ana = "5511987654321";
    chat.say(ana, "/link", 1).await;
    let r = chat.say(ana, "ana@example.org", 1).await;
    assert!(
        r[0].contains("the mail server is not answering"),
        "{}",
        r[0]
    );
    let rec = app
        .system
        .store
        .number_record(&link_key(ana))
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.flow,
        Flow::AwaitingEmail,
        "the address can be sent again"
    );
    assert!(
        rec.code_sends_ms.is_empty(),
        "a mail that never left is not counted"
    );
    assert_eq!(app.metric("link_mail_failures").await, 1);

    let mails = smtp_server(TcpListener::bind(("127.0.0.1", port)).unwrap());
    assert!(chat.say(ana, "ana@example.org", 1).await[0].starts_with("I sent"));
    let code = wait_mails(&mails, 1).await[0].code();
    assert!(chat.say(ana, &code, 1).await[0].starts_with("Done: this number is linked"));
    assert_eq!(app.metric("link_codes_mailed").await, 1);
    app.stop().await;
}
