//! OCR on images rendered here with ImageMagick, through the real model (installed from PyPI on
//! first use) and the real pipeline: fonts, sizes, page rotations, skew, dark and light
//! backgrounds, English, Spanish, French and German. Each test checks the exact text, lines and
//! paragraphs in reading order.

use std::sync::OnceLock;

use sandra_models::testing_vision::{ocr_model_dir, render_rgb};
use sandra_models::vision::ocr::{Ocr, OcrError};

fn ocr() -> &'static Ocr {
    static OCR: OnceLock<Ocr> = OnceLock::new();
    OCR.get_or_init(|| Ocr::load(&ocr_model_dir()).expect("the installed OCR model loads"))
}

/// `text` (lines separated by '\n', paragraphs by a blank line) set in `font` at `size` points,
/// `fg` on `bg`, with a margin, then `extra` ImageMagick operations (rotations).
fn page(text: &str, font: &str, size: u32, fg: &str, bg: &str, extra: &[&str]) -> image::RgbImage {
    let label = format!("label:{text}");
    let size = size.to_string();
    let mut args = vec![
        "-background",
        bg,
        "-fill",
        fg,
        "-font",
        font,
        "-pointsize",
        &size,
        &label,
        "-bordercolor",
        bg,
        "-border",
        "40",
    ];
    args.extend_from_slice(extra);
    render_rgb(&args)
}

fn read(img: &image::RgbImage) -> String {
    ocr().read(img).expect("OCR runs").text()
}

const ENGLISH: &str = "Invoice #A-2291\nTotal: $1,234.56\n\nPayment due by 15 March 2026.\nThank you for your business!";

#[test]
fn reads_english_lines_and_paragraphs_in_order() {
    let img = page(ENGLISH, "DejaVu-Sans", 28, "black", "white", &[]);
    let out = ocr().read(&img).unwrap();
    assert_eq!(out.text(), ENGLISH);
    let lines: Vec<&str> = out.lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(
        lines,
        [
            "Invoice #A-2291",
            "Total: $1,234.56",
            "Payment due by 15 March 2026.",
            "Thank you for your business!"
        ]
    );
    // Lines are placed where they are: top to bottom, inside the image.
    for pair in out.lines.windows(2) {
        assert!(pair[0].quad[0].1 < pair[1].quad[0].1, "{:?}", out.lines);
    }
    assert!(out.lines.iter().all(|l| l.score > 0.8 && l.score <= 1.0));
}

#[test]
fn reads_spanish_with_inverted_marks_tildes_and_accents() {
    let text = "¿Dónde está la estación?\nMañana a las 10:30, señor.\n\nEl niño comió una piña.";
    let img = page(text, "Liberation-Serif", 30, "black", "white", &[]);
    assert_eq!(read(&img), text);
}

#[test]
fn reads_french_light_on_a_dark_background_in_a_monospace_font() {
    let text = "Où est la bibliothèque?\nJ'ai réservé une chambre.\n\nLe café coûte 12,50 €.";
    let img = page(text, "Liberation-Mono", 26, "white", "#1e2a3a", &[]);
    assert_eq!(read(&img), text);
}

#[test]
fn reads_german_umlauts_and_sharp_s_on_a_tinted_background() {
    let text = "Größe und Gewicht\nDie Straße ist schön.\n\nÜber 100 Äpfel für 5 €";
    let img = page(text, "DejaVu-Sans", 36, "#102060", "#f4f1e8", &[]);
    assert_eq!(read(&img), text);
}

#[test]
fn reads_small_and_large_type() {
    let small = page(
        "Small print: order 7731 ships Monday.",
        "DejaVu-Sans",
        16,
        "black",
        "white",
        &[],
    );
    assert_eq!(read(&small), "Small print: order 7731 ships Monday.");
    let big = page(
        "Big Sale 50%",
        "Liberation-Serif",
        72,
        "black",
        "white",
        &[],
    );
    assert_eq!(read(&big), "Big Sale 50%");
}

/// A photo taken sideways or upside down reads in the page's own order.
#[test]
fn reads_pages_turned_a_quarter_a_half_and_three_quarters() {
    for angle in ["90", "180", "270"] {
        let img = page(
            ENGLISH,
            "DejaVu-Sans",
            28,
            "black",
            "white",
            &["-rotate", angle],
        );
        assert_eq!(read(&img), ENGLISH, "page turned {angle}°");
    }
}

#[test]
fn reads_slightly_skewed_pages() {
    let text = "¿Dónde está la estación?\nMañana a las 10:30, señor.\n\nEl niño comió una piña.";
    for angle in ["3", "-3"] {
        let img = page(
            text,
            "Liberation-Serif",
            30,
            "black",
            "white",
            &["-rotate", angle],
        );
        assert_eq!(read(&img), text, "page skewed {angle}°");
    }
}

#[test]
fn a_blank_image_has_no_text() {
    let img = render_rgb(&["-size", "640x480", "xc:white"]);
    let out = ocr().read(&img).unwrap();
    assert!(out.lines.is_empty() && out.paragraphs.is_empty(), "{out:?}");
    // Tiny images are not an error either.
    assert!(
        ocr()
            .read(&image::RgbImage::new(2, 2))
            .unwrap()
            .lines
            .is_empty()
    );
}

#[test]
fn loading_from_a_directory_without_the_model_is_a_model_error() {
    let dir = tempfile::tempdir().unwrap();
    match Ocr::load(dir.path()) {
        Err(OcrError::Model(msg)) => assert!(msg.contains("ppocrv6_det.onnx"), "{msg}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded a model from an empty directory"),
    }
}
