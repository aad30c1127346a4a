//! Photos and documents end to end: webhook → two-hop media download from the fake Graph API
//! (bearer token on both hops) → in-memory decode → the REAL PP-OCR model → brain → reply. And
//! the failure paths: decompression bombs, corrupt files, nothing to read, the busy cap.
//!
//! The OCR model is the one the tests of `sandra-models` use
//! (`testing_vision::ocr_model_dir()`), placed where `sandra models fetch` installs it
//! (`<data_dir>/models/ppocr-v6-small`), so the app finds it exactly as in production.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandra_actors::brain::{Brain, BrainFuture, TurnInput};
use sandra_actors::texts::{self, Lang, MediaWord, SightProblem};
use sandra_models::testing_vision::{ocr_model_dir, render_png};

use crate::support::*;

/// A brain that records what it was given and answers "noted".
#[derive(Default)]
struct RecordingBrain {
    inputs: Mutex<Vec<TurnInput>>,
}

impl RecordingBrain {
    fn calls(&self) -> Vec<TurnInput> {
        self.inputs.lock().unwrap().clone()
    }
}

impl Brain for RecordingBrain {
    fn reply(&self, input: TurnInput) -> BrainFuture {
        self.inputs.lock().unwrap().push(input);
        Box::pin(async { Ok("noted".to_string().into()) })
    }
    fn describe(&self) -> String {
        "recording".into()
    }
}

/// The app with the real OCR model installed in its data dir, and the recording brain.
async fn app_with_ocr(
    tweak: impl FnOnce(&mut sandra::config::Config),
) -> (TestApp, Arc<RecordingBrain>) {
    let ocr = ocr_model_dir();
    assert!(
        ocr.is_dir(),
        "the OCR model is not installed at {} (see testing_vision::ocr_model_dir)",
        ocr.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("data/models");
    std::fs::create_dir_all(&models).unwrap();
    std::os::unix::fs::symlink(&ocr, models.join(sandra_models::catalog::PPOCR_V6_SMALL)).unwrap();
    let brain = Arc::new(RecordingBrain::default());
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let app = TestApp::spawn_in(dir, graph, tweak, brain.clone()).await;
    (app, brain)
}

/// A photo, sticker or document message as Meta sends it; `ts` is an offset from `base_ts`.
fn media_webhook(
    wamid: &str,
    from: &str,
    kind: &str,
    media_id: &str,
    mime: &str,
    caption: Option<&str>,
    filename: Option<&str>,
) -> Vec<u8> {
    let mut media = serde_json::json!({"mime_type": mime, "id": media_id});
    if let Some(c) = caption {
        media["caption"] = c.into();
    }
    if let Some(f) = filename {
        media["filename"] = f.into();
    }
    let mut msg = serde_json::json!({"from": from, "id": wamid,
        "timestamp": base_ts().to_string(), "type": kind});
    msg[kind] = media;
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Photo"}, "wa_id": from}],
            "messages": [msg]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

fn invoice_png() -> Vec<u8> {
    render_png(&[
        "-size",
        "1000x260",
        "xc:white",
        "-font",
        "DejaVu-Sans",
        "-pointsize",
        "44",
        "-fill",
        "black",
        "-annotate",
        "+40+90",
        "Invoice #A-2291",
        "-annotate",
        "+40+190",
        "Total: $1,234.56",
    ])
    .expect("ImageMagick is needed (scripts/install-test-deps.sh)")
}

/// The text of the `n`th reply Sandra sent (waiting for it).
async fn reply_text(app: &TestApp, n: usize) -> String {
    let sent = app.graph.wait_accepted(n, Duration::from_secs(120)).await;
    assert!(sent.len() >= n, "only {} replies", sent.len());
    sent[n - 1].body["text"]["body"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until every message left the inbox; then the one commit that answered each has put
/// every reply in the outbox, so the outbox holds exactly what was answered.
async fn drained(app: &TestApp) -> usize {
    let store = app.system.store.clone();
    assert!(
        eventually(Duration::from_secs(60), || store
            .unfinished()
            .unwrap()
            .is_empty())
        .await,
        "messages left in the inbox"
    );
    store.outbox_all().unwrap().len()
}

/// The issue's own case: an invoice photo captioned "What is the invoice total?" reaches the
/// model with the caption AND the figure read from the image (never the caption alone), the
/// reply is sent, and a later text turn still has the figure in history.
#[tokio::test]
async fn a_captioned_invoice_photo_reaches_the_model_with_the_figure_read() {
    let (app, brain) = app_with_ocr(|_| {}).await;
    app.graph.add_media("INVOICE", "image/png", invoice_png());
    let user = "15550005001";
    app.post_signed(&media_webhook(
        "wamid.photo1",
        user,
        "image",
        "INVOICE",
        "image/png",
        Some("What is the invoice total?"),
        None,
    ))
    .await;
    assert_eq!(reply_text(&app, 1).await, "noted");
    assert_eq!(app.graph.media_calls(), ["info:INVOICE", "bytes:INVOICE"]);
    let calls = brain.calls();
    assert_eq!(calls.len(), 1);
    let seen = &calls[0].inputs[0].text;
    assert!(seen.contains("$1,234.56"), "{seen}");
    assert!(seen.contains("A-2291"), "{seen}");
    assert!(
        seen.contains("My caption: What is the invoice total?"),
        "{seen}"
    );
    assert!(seen.contains("a tool read it for you"), "{seen}");

    app.post_signed(&text_webhook("wamid.photo2", user, "and the VAT?", 5))
        .await;
    assert_eq!(reply_text(&app, 2).await, "noted");
    let calls = brain.calls();
    assert!(
        calls[1]
            .history
            .iter()
            .any(|t| t.text.contains("$1,234.56")),
        "the figure is in history: {:?}",
        calls[1].history
    );
    assert_eq!(drained(&app).await, 2);
    assert!(app.metric("vision_ocr_seconds_count").await >= 1);
    app.stop().await;
}

/// A minimal PDF from its objects (numbered from 1; object 1 is the catalog), with a correct
/// xref. Written by hand because ImageMagick's default policy refuses to write PDFs.
fn pdf_from(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        pdf.extend_from_slice(o);
        pdf.extend_from_slice(b"\nendobj\n");
    }
    let xref = pdf.len();
    pdf.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        pdf.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    pdf
}

fn stream(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut o = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
    o.extend_from_slice(data);
    o.extend_from_slice(b"\nendstream");
    o
}

/// A one-page PDF whose text layer says `line` (Helvetica).
fn pdf_with_text(line: &str) -> Vec<u8> {
    let content = format!("BT /F1 18 Tf 72 700 Td ({line}) Tj ET");
    pdf_from(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>".to_vec(),
        stream("", content.as_bytes()),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
    ])
}

/// A one-page scanned PDF: only a JPEG of the page (`width`×`height`), no text layer.
fn scanned_pdf(jpeg: &[u8], width: u32, height: u32) -> Vec<u8> {
    let content = format!("q {width} 0 0 {height} 0 0 cm /Im1 Do Q");
    pdf_from(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] /Resources << /XObject << /Im1 5 0 R >> >> /Contents 4 0 R >>").into_bytes(),
        stream("", content.as_bytes()),
        stream(
            &format!("/Type /XObject /Subtype /Image /Width {width} /Height {height} /ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /DCTDecode"),
            jpeg,
        ),
    ])
}

/// A PDF with a text layer, captioned with a question: the model gets the document's text and
/// the question; a second, scanned PDF (an image only) is read by OCR.
#[tokio::test]
async fn pdfs_reach_the_model_with_their_text() {
    let (app, brain) = app_with_ocr(|_| {}).await;
    app.graph.add_media(
        "BILL",
        "application/pdf",
        pdf_with_text("Amount due: 88.20 EUR"),
    );
    let user = "15550005002";
    app.post_signed(&media_webhook(
        "wamid.pdf1",
        user,
        "document",
        "BILL",
        "application/pdf",
        Some("How much do I have to pay?"),
        Some("bill.pdf"),
    ))
    .await;
    assert_eq!(reply_text(&app, 1).await, "noted");
    let seen = brain.calls()[0].inputs[0].text.clone();
    assert!(seen.contains("88.20 EUR"), "{seen}");
    assert!(seen.contains("\"bill.pdf\""), "{seen}");
    assert!(
        seen.contains("My caption: How much do I have to pay?"),
        "{seen}"
    );

    let out = std::process::Command::new("convert")
        .args([
            "-size",
            "1200x400",
            "xc:white",
            "-font",
            "DejaVu-Sans",
            "-pointsize",
            "48",
            "-fill",
            "black",
            "-annotate",
            "+60+200",
            "Total: 42.75 EUR",
            "-quality",
            "95",
            "jpg:-",
        ])
        .output()
        .expect("ImageMagick is needed (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.graph.add_media(
        "SCAN",
        "application/pdf",
        scanned_pdf(&out.stdout, 1200, 400),
    );
    app.post_signed(&media_webhook(
        "wamid.pdf2",
        user,
        "document",
        "SCAN",
        "application/pdf",
        None,
        Some("scan.pdf"),
    ))
    .await;
    assert_eq!(reply_text(&app, 2).await, "noted");
    let seen = brain.calls()[1].inputs[0].text.clone();
    assert!(seen.contains("42.75"), "{seen}");
    assert!(seen.ends_with("summarise it for me."), "{seen}");
    assert_eq!(drained(&app).await, 2);
    app.stop().await;
}

/// CRC-32 (PNG's chunk checksum).
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A small PNG whose header claims 60000×60000 pixels (3.6 gigapixels): a decompression bomb.
fn bomb_png() -> Vec<u8> {
    let mut png = render_png(&["-size", "8x8", "xc:white"]).expect("ImageMagick is needed");
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A decompression bomb and a corrupt JPEG each get a clear answer, without the model; each
/// message is answered once and leaves the inbox (nothing lost, nothing replayed).
#[tokio::test]
async fn bombs_and_corrupt_photos_get_a_clear_answer_and_nothing_is_lost() {
    let (app, brain) = app_with_ocr(|_| {}).await;
    app.graph.add_media("BOMB", "image/png", bomb_png());
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    jpeg.extend((0..4000u32).map(|i| (i * 7 % 251) as u8));
    app.graph.add_media("BROKEN", "image/jpeg", jpeg);
    app.post_signed(&media_webhook(
        "wamid.bomb",
        "15550005003",
        "image",
        "BOMB",
        "image/png",
        None,
        None,
    ))
    .await;
    let bomb = reply_text(&app, 1).await;
    assert_eq!(
        bomb,
        texts::sight_problem(Lang::En, &SightProblem::TooLarge, MediaWord::Photo)
    );
    app.post_signed(&media_webhook(
        "wamid.broken",
        "15550005004",
        "image",
        "BROKEN",
        "image/jpeg",
        None,
        None,
    ))
    .await;
    let broken = reply_text(&app, 2).await;
    assert_eq!(
        broken,
        texts::sight_problem(Lang::En, &SightProblem::Undecodable, MediaWord::Photo)
    );
    assert_eq!(drained(&app).await, 2, "one answer each");
    assert!(
        brain.calls().is_empty(),
        "the model never saw the captionless failures"
    );
    app.stop().await;
}

/// A photo with no text in it and no scene model: an honest canned answer, and the model is
/// not asked (it would describe a photo it never saw).
#[tokio::test]
async fn a_photo_without_text_and_no_scene_model_is_answered_honestly() {
    let (app, brain) = app_with_ocr(|c| c.vision.scene = sandra::config::SceneBackend::None).await;
    let blank = render_png(&["-size", "400x300", "xc:skyblue"]).expect("ImageMagick is needed");
    app.graph.add_media("SKY", "image/png", blank);
    app.post_signed(&media_webhook(
        "wamid.sky",
        "15550005005",
        "image",
        "SKY",
        "image/png",
        Some("What is this?"),
        None,
    ))
    .await;
    assert_eq!(
        reply_text(&app, 1).await,
        texts::nothing_seen(Lang::En, MediaWord::Photo)
    );
    assert!(brain.calls().is_empty());
    assert_eq!(drained(&app).await, 1);
    app.stop().await;
}

/// The vision actor runs at most `vision.max_jobs` files at once: one over the cap waits for the
/// slot (counted) and is then read and answered; nobody is asked to send it again.
#[tokio::test]
async fn photos_over_the_vision_cap_wait_their_turn() {
    let (app, _brain) = app_with_ocr(|c| c.vision.max_jobs = 1).await;
    app.graph.add_media("SLOWPIC", "image/png", invoice_png());
    app.graph.lie_about_media(
        "SLOWPIC",
        MediaLie {
            delay: Some(Duration::from_secs(3)),
            ..Default::default()
        },
    );
    app.graph.add_media("SECONDPIC", "image/png", invoice_png());
    app.post_signed(&media_webhook(
        "wamid.slow",
        "15550005006",
        "image",
        "SLOWPIC",
        "image/png",
        None,
        None,
    ))
    .await;
    let graph = &app.graph;
    assert!(
        eventually(Duration::from_secs(5), || graph
            .media_calls()
            .contains(&"info:SLOWPIC".to_string()))
        .await
    );
    app.post_signed(&media_webhook(
        "wamid.second",
        "15550005007",
        "image",
        "SECONDPIC",
        "image/png",
        None,
        None,
    ))
    .await;
    let mut waited = 0;
    for _ in 0..250 {
        waited = app.metric("vision_busy").await;
        if waited == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(waited, 1, "the second photo waits for the slot");
    // The photo in progress is answered first (hop 1 outlasts the Graph client's timeout),
    // then the one that waited, read like any other.
    let sent = app.graph.wait_accepted(2, Duration::from_secs(30)).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0].body["to"], "15550005006");
    assert_eq!(
        sent[0].body["text"]["body"].as_str().unwrap(),
        texts::sight_problem(Lang::En, &SightProblem::Download, MediaWord::Photo)
    );
    assert_eq!(sent[1].body["to"], "15550005007");
    let calls = app.graph.media_calls();
    let pos = |c: &str| calls.iter().position(|x| x == c);
    assert!(pos("info:SLOWPIC") < pos("info:SECONDPIC"), "{calls:?}");
    assert_eq!(drained(&app).await, 2);
    app.stop().await;
}
