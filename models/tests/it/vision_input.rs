//! What the vision actor is handed: photos decoded with limits (JPEG, PNG, WebP stickers,
//! EXIF orientation, decompression bombs, truncated files) and documents read in memory (PDF
//! text layers, scanned pages, page and character limits, plain text).
//!
//! Images are made by ImageMagick (`convert`, scripts/install-test-deps.sh); without it those
//! tests print a visible `skipped:` line and pass. PDFs are written here with lopdf's object
//! API: Debian's ImageMagick policy forbids writing PDF, and a hand-built file says exactly
//! which text layer and which page image it holds.

use std::process::Command;

use image::RgbImage;
use lopdf::content::{Content, Operation};
use lopdf::{Object, Stream, dictionary};
use sandra_models::vision::document::{self, DocError, DocLimits};
use sandra_models::vision::image::{ImageError, ImageLimits, decode};

/// Runs `convert args… out` (out like `jpg:-`) and returns what it wrote; `None` (after a
/// `skipped:` line) when ImageMagick is not installed.
fn magick(test: &str, args: &[&str], out: &str) -> Option<Vec<u8>> {
    let Ok(output) = Command::new("convert").args(args).arg(out).output() else {
        println!(
            "skipped: {test}: ImageMagick `convert` missing (run scripts/install-test-deps.sh)"
        );
        return None;
    };
    assert!(
        output.status.success(),
        "convert {args:?} {out} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(output.stdout)
}

/// A 40×20 white picture with a pure red 10×10 square in its top-left corner.
const RED_CORNER: &[&str] = &[
    "-size",
    "40x20",
    "xc:white",
    "-fill",
    "red",
    "-draw",
    "rectangle 0,0 9,9",
];

fn is_red(image: &RgbImage, x: u32, y: u32) -> bool {
    let [r, g, b] = image.get_pixel(x, y).0;
    r > 200 && g < 60 && b < 60
}

fn is_white(image: &RgbImage, x: u32, y: u32) -> bool {
    image.get_pixel(x, y).0.iter().all(|&c| c > 230)
}

fn limits() -> ImageLimits {
    ImageLimits::default()
}

#[test]
fn jpeg_png_and_webp_decode_to_rgb_whatever_the_mime_says() {
    for (out, mime) in [
        ("jpg:-", "image/jpeg"),
        ("png:-", "image/png"),
        ("webp:-", "image/webp"),
        // The magic number wins over a wrong label.
        ("png:-", "image/jpeg"),
        ("jpg:-", "application/octet-stream"),
    ] {
        let Some(bytes) = magick("image formats", RED_CORNER, out) else {
            return;
        };
        let image = decode(&bytes, mime, &limits()).unwrap_or_else(|e| panic!("{out}: {e}"));
        assert_eq!(image.dimensions(), (40, 20), "{out} as {mime}");
        assert!(is_red(&image, 2, 2), "{out}: red corner");
        assert!(is_white(&image, 35, 15), "{out}: white elsewhere");
    }
}

/// `jpeg` with an EXIF segment holding only `orientation`, as a phone camera writes it: the
/// pixels stay as the sensor stored them and the tag says how to turn them. (ImageMagick 6's
/// `-orient` writes no EXIF into a file that had none, so the segment is made here.)
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2A\0\0\0\x08".to_vec(); // big-endian TIFF, first IFD at 8
    tiff.extend(1u16.to_be_bytes()); // one entry
    tiff.extend(0x0112u16.to_be_bytes()); // Orientation
    tiff.extend(3u16.to_be_bytes()); // SHORT
    tiff.extend(1u32.to_be_bytes()); // one value
    tiff.extend(orientation.to_be_bytes());
    tiff.extend([0, 0]); // value padding
    tiff.extend(0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend([0xFF, 0xE1]);
    out.extend((app1.len() as u16 + 2).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_turns_the_photo_upright() {
    let Some(stored) = magick("exif orientation", RED_CORNER, "jpg:-") else {
        return;
    };
    // 6: shown turned 90° clockwise, so 20×40 with the red corner top-right.
    let jpeg = with_exif_orientation(&stored, 6);
    let image = decode(&jpeg, "image/jpeg", &limits()).unwrap();
    assert_eq!(image.dimensions(), (20, 40));
    assert!(is_red(&image, 17, 2), "orientation 6: red top-right");
    assert!(!is_red(&image, 2, 2));

    // 3: shown upside down, same size, red corner bottom-right.
    let jpeg = with_exif_orientation(&stored, 3);
    let image = decode(&jpeg, "image/jpeg", &limits()).unwrap();
    assert_eq!(image.dimensions(), (40, 20));
    assert!(is_red(&image, 37, 17), "orientation 3: red bottom-right");
    assert!(!is_red(&image, 2, 2));

    // 1 (or none): as stored.
    let image = decode(&with_exif_orientation(&stored, 1), "image/jpeg", &limits()).unwrap();
    assert_eq!(image.dimensions(), (40, 20));
    assert!(is_red(&image, 2, 2));
}

#[test]
fn transparent_sticker_is_composited_on_white() {
    let args = [
        "-size",
        "32x32",
        "xc:none",
        "-fill",
        "black",
        "-draw",
        "rectangle 8,8 23,23",
    ];
    for out in ["webp:-", "png:-"] {
        let Some(bytes) = magick("transparent sticker", &args, out) else {
            return;
        };
        let image = decode(&bytes, "image/webp", &limits()).unwrap();
        assert!(is_white(&image, 1, 1), "{out}: transparent corner is white");
        assert_eq!(
            image.get_pixel(16, 16).0,
            [0, 0, 0],
            "{out}: ink stays black"
        );
    }
}

#[test]
fn animated_webp_gives_its_first_frame() {
    let args = [
        "-size", "32x24", "xc:red", "xc:blue", "xc:lime", "-loop", "0",
    ];
    let Some(bytes) = magick("animated webp", &args, "webp:-") else {
        return;
    };
    assert!(
        bytes.windows(4).any(|w| w == b"ANIM"),
        "ImageMagick wrote an animated WebP"
    );
    let image = decode(&bytes, "image/webp", &limits()).unwrap();
    assert_eq!(image.dimensions(), (32, 24));
    assert!(is_red(&image, 16, 12), "first frame is the red one");
}

/// A PNG chunk: length, type, data, CRC-32 of type and data.
fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

#[test]
fn png_claiming_30000_squared_pixels_is_refused_from_its_header() {
    // 30000×30000 RGB would be 2.7 GB of pixels; the file is 70 bytes with an IDAT that holds
    // an empty zlib stream. Only a check on the header, before any pixel buffer and before
    // inflating, can name these dimensions.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(30_000u32.to_be_bytes());
    ihdr.extend(30_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive filter, no interlace
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut png, b"IEND", &[]);
    assert_eq!(
        decode(&png, "image/png", &limits()),
        Err(ImageError::TooLarge {
            width: 30_000,
            height: 30_000,
            max_pixels: 40_000_000
        })
    );
}

#[test]
fn pixel_cap_applies_to_real_images_too() {
    let Some(bytes) = magick("pixel cap", RED_CORNER, "jpg:-") else {
        return;
    };
    let tight = ImageLimits { max_pixels: 799 };
    assert!(matches!(
        decode(&bytes, "image/jpeg", &tight),
        Err(ImageError::TooLarge {
            width: 40,
            height: 20,
            ..
        })
    ));
    assert!(decode(&bytes, "image/jpeg", &ImageLimits { max_pixels: 800 }).is_ok());
}

#[test]
fn truncated_or_garbled_images_are_corrupt_not_a_panic() {
    let args = ["-size", "200x150", "plasma:red-blue", "-quality", "90"];
    let Some(jpeg) = magick("truncated jpeg", &args, "jpg:-") else {
        return;
    };
    assert!(decode(&jpeg, "image/jpeg", &limits()).is_ok());
    let half = &jpeg[..jpeg.len() / 2];
    assert!(
        matches!(
            decode(half, "image/jpeg", &limits()),
            Err(ImageError::Corrupt(_))
        ),
        "half a JPEG"
    );
    let png = magick("truncated png", &args, "png:-").unwrap();
    assert!(matches!(
        decode(&png[..png.len() / 2], "image/png", &limits()),
        Err(ImageError::Corrupt(_))
    ));
    // Valid magic numbers followed by junk, every length of them.
    let mut junk = jpeg[..4].to_vec();
    junk.extend((0..300u32).map(|i| (i * 37 % 251) as u8));
    for end in 2..junk.len() {
        assert!(decode(&junk[..end], "image/jpeg", &limits()).is_err());
    }
    assert!(matches!(
        decode(b"not an image", "image/jpeg", &limits()),
        Err(ImageError::Unsupported { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Documents

/// One page of a test PDF.
enum Page {
    /// Lines of Helvetica text, one `Td` move down each (one text object, as TeX and browsers
    /// write them).
    Text(Vec<&'static str>),
    /// A page image filling the page: its stream dictionary entries and data.
    Image(lopdf::Dictionary, Vec<u8>),
}

/// `text` as a PDF string in WinAnsiEncoding (the test's few non-ASCII characters).
fn win_ansi(text: &str) -> Object {
    let bytes = text
        .chars()
        .map(|c| match c {
            'á' => 0xE1,
            'é' => 0xE9,
            '–' => 0x96,
            '€' => 0x80,
            c if c.is_ascii() => c as u8,
            c => panic!("{c:?} not in the test's WinAnsi table"),
        })
        .collect();
    Object::String(bytes, lopdf::StringFormat::Literal)
}

/// A PDF with `pages`, written with lopdf's object API.
fn pdf(pages: Vec<Page>) -> Vec<u8> {
    save(pdf_document(pages))
}

fn save(mut doc: lopdf::Document) -> Vec<u8> {
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).unwrap();
    bytes
}

/// The same, encrypted (RC4 128-bit) with `user_password` to open it.
fn encrypted_pdf(pages: Vec<Page>, user_password: &str) -> Vec<u8> {
    use lopdf::{EncryptionState, EncryptionVersion, Permissions};
    let mut doc = pdf_document(pages);
    doc.trailer.set(
        "ID",
        vec![
            Object::string_literal("0123456789abcdef"),
            Object::string_literal("fedcba9876543210"),
        ],
    );
    let state = EncryptionState::try_from(EncryptionVersion::V2 {
        document: &doc,
        owner_password: "owner",
        user_password,
        key_length: 128,
        permissions: Permissions::all(),
    })
    .unwrap();
    doc.encrypt(&state).unwrap();
    save(doc)
}

fn pdf_document(pages: Vec<Page>) -> lopdf::Document {
    let mut doc = lopdf::Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
        "Encoding" => "WinAnsiEncoding",
    });
    let mut kids = Vec::new();
    for page in pages {
        let (ops, resources) = match page {
            Page::Text(lines) => {
                let mut ops = vec![
                    Operation::new("BT", vec![]),
                    Operation::new("Tf", vec!["F1".into(), 18.into()]),
                    Operation::new("Td", vec![72.into(), 720.into()]),
                ];
                for (i, line) in lines.iter().enumerate() {
                    if i > 0 {
                        ops.push(Operation::new("Td", vec![0.into(), (-24).into()]));
                    }
                    ops.push(Operation::new("Tj", vec![win_ansi(line)]));
                }
                ops.push(Operation::new("ET", vec![]));
                (
                    ops,
                    dictionary! { "Font" => dictionary! { "F1" => font_id } },
                )
            }
            Page::Image(mut dict, data) => {
                dict.set("Type", "XObject");
                dict.set("Subtype", "Image");
                let image_id = doc.add_object(Stream::new(dict, data));
                let ops = vec![
                    Operation::new("q", vec![]),
                    Operation::new(
                        "cm",
                        vec![
                            612.into(),
                            0.into(),
                            0.into(),
                            792.into(),
                            0.into(),
                            0.into(),
                        ],
                    ),
                    Operation::new("Do", vec!["Im1".into()]),
                    Operation::new("Q", vec![]),
                ];
                (
                    ops,
                    dictionary! { "XObject" => dictionary! { "Im1" => image_id } },
                )
            }
        };
        let content = Content { operations: ops }.encode().unwrap();
        let content_id = doc.add_object(Stream::new(dictionary! {}, content));
        kids.push(Object::from(doc.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => content_id,
            "Resources" => resources,
        })));
    }
    let count = kids.len() as i64;
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => kids,
            "Count" => count,
            "MediaBox" => vec![0.into(), 0.into(), 612.into(), 792.into()],
        }),
    );
    let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog_id);
    doc.compress();
    doc
}

fn read_pdf(bytes: &[u8], limits: &DocLimits) -> Result<document::Document, DocError> {
    document::read(bytes, "application/pdf", Some("file.pdf"), limits)
}

#[test]
fn text_layer_pdf_gives_exact_text_per_page() {
    let bytes = pdf(vec![
        Page::Text(vec!["Invoice #A-2291", "Total: $1,234.56"]),
        Page::Text(vec!["Thank you for your business.", "Página 2 – €"]),
    ]);
    let doc = read_pdf(&bytes, &DocLimits::default()).unwrap();
    assert_eq!(doc.page_count, 2);
    assert_eq!(
        doc.pages,
        [
            "Invoice #A-2291\nTotal: $1,234.56",
            "Thank you for your business.\nPágina 2 – €"
        ]
    );
    assert!(doc.scanned.is_empty());
    assert!(!doc.truncated);
}

#[test]
fn password_protected_pdf_is_encrypted_but_an_empty_password_opens() {
    let invoice = || vec![Page::Text(vec!["Invoice #A-2291", "Total: $1,234.56"])];
    assert_eq!(
        read_pdf(&encrypted_pdf(invoice(), "secret"), &DocLimits::default()).unwrap_err(),
        DocError::Encrypted
    );
    // Only an owner password ("no copying"): readers open it without asking, and so does
    // Sandra.
    let doc = read_pdf(&encrypted_pdf(invoice(), ""), &DocLimits::default()).unwrap();
    assert_eq!(doc.pages, ["Invoice #A-2291\nTotal: $1,234.56"]);
}

#[test]
fn pdf_limits_cut_pages_and_characters() {
    let bytes = pdf(vec![
        Page::Text(vec!["one"]),
        Page::Text(vec!["two"]),
        Page::Text(vec!["three"]),
    ]);
    let limits = DocLimits {
        max_pages: 2,
        ..DocLimits::default()
    };
    let doc = read_pdf(&bytes, &limits).unwrap();
    assert_eq!(doc.page_count, 3);
    assert_eq!(doc.pages, ["one", "two"]);
    assert!(doc.truncated);

    let limits = DocLimits {
        max_chars: 5,
        ..DocLimits::default()
    };
    let doc = read_pdf(&bytes, &limits).unwrap();
    assert_eq!(doc.pages, ["one", "tw"]);
    assert!(doc.truncated);
}

/// A JPEG page image of `size` with a line of text, as a scanner or a phone app makes them.
fn scan_jpeg(test: &str, size: &str) -> Option<Vec<u8>> {
    let args = [
        "-size",
        size,
        "xc:white",
        "-fill",
        "black",
        // Named: ImageMagick's default font (Helvetica, from Ghostscript's fonts) is not on a
        // machine with only scripts/install-test-deps.sh's fonts.
        "-font",
        "DejaVu-Sans",
        "-pointsize",
        "40",
        "-draw",
        "text 40,100 'Invoice #A-2291'",
    ];
    magick(test, &args, "jpg:-")
}

fn jpeg_image_dict(width: i64, height: i64) -> lopdf::Dictionary {
    dictionary! {
        "Width" => width,
        "Height" => height,
        "ColorSpace" => "DeviceRGB",
        "BitsPerComponent" => 8,
        "Filter" => "DCTDecode",
    }
}

#[test]
fn scanned_pdf_hands_its_page_image_to_ocr() {
    let Some(jpeg) = scan_jpeg("scanned pdf", "620x200") else {
        return;
    };
    let bytes = pdf(vec![Page::Image(jpeg_image_dict(620, 200), jpeg)]);
    let doc = read_pdf(&bytes, &DocLimits::default()).unwrap();
    assert_eq!(doc.page_count, 1);
    assert_eq!(doc.pages, [""], "no text layer");
    assert_eq!(doc.scanned.len(), 1);
    let (page, image) = &doc.scanned[0];
    assert_eq!(*page, 1);
    assert_eq!(image.dimensions(), (620, 200));
    assert!(is_white(image, 5, 5));
    // Some ink where the text was drawn.
    let dark = image.pixels().filter(|p| p.0[0] < 100).count();
    assert!(dark > 500, "{dark} dark pixels");
}

#[test]
fn raw_flate_gray_page_image_is_unpacked() {
    // 64×48 gray, a black left half: FlateDecode raw samples, the other common scan encoding.
    let (w, h) = (64usize, 48usize);
    let samples: Vec<u8> = (0..w * h)
        .map(|i| if i % w < w / 2 { 0 } else { 255 })
        .collect();
    let mut stream = Stream::new(
        dictionary! {
            "Width" => w as i64,
            "Height" => h as i64,
            "ColorSpace" => "DeviceGray",
            "BitsPerComponent" => 8,
        },
        samples,
    );
    stream.compress().unwrap();
    let bytes = pdf(vec![Page::Image(
        stream.dict.clone(),
        stream.content.clone(),
    )]);
    let doc = read_pdf(&bytes, &DocLimits::default()).unwrap();
    let (_, image) = &doc.scanned[0];
    assert_eq!(image.dimensions(), (64, 48));
    assert_eq!(image.get_pixel(3, 40).0, [0, 0, 0]);
    assert_eq!(image.get_pixel(60, 2).0, [255, 255, 255]);
}

#[test]
fn scanned_pages_past_max_ocr_pages_are_left_out() {
    let Some(jpeg) = scan_jpeg("ocr page limit", "300x200") else {
        return;
    };
    let scan = || Page::Image(jpeg_image_dict(300, 200), jpeg.clone());
    let bytes = pdf(vec![scan(), Page::Text(vec!["typed page"]), scan(), scan()]);
    let limits = DocLimits {
        max_ocr_pages: 2,
        ..DocLimits::default()
    };
    let doc = read_pdf(&bytes, &limits).unwrap();
    assert_eq!(doc.page_count, 4);
    assert_eq!(doc.pages, ["", "typed page", "", ""]);
    let pages: Vec<usize> = doc.scanned.iter().map(|(page, _)| *page).collect();
    assert_eq!(pages, [1, 3]);
    assert!(doc.truncated);
}

#[test]
fn page_image_bombs_are_refused_before_inflating() {
    // A 20000×20000 gray page image (400 MB of samples) from a few hundred kilobytes of
    // zeros: over the pixel cap, so it is never inflated and the page yields no image.
    let zeros = vec![0u8; 4 * 1024 * 1024];
    let mut stream = Stream::new(
        dictionary! {
            "Width" => 20_000,
            "Height" => 20_000,
            "ColorSpace" => "DeviceGray",
            "BitsPerComponent" => 8,
        },
        zeros,
    );
    stream.compress().unwrap();
    assert!(stream.content.len() < 64 * 1024);
    let bytes = pdf(vec![Page::Image(
        stream.dict.clone(),
        stream.content.clone(),
    )]);
    let doc = read_pdf(&bytes, &DocLimits::default()).unwrap();
    assert_eq!(doc.page_count, 1);
    assert!(doc.scanned.is_empty());

    // Within the cap by its declared size (64×64) but inflating far past it: refused too.
    let mut stream = Stream::new(
        dictionary! {
            "Width" => 64,
            "Height" => 64,
            "ColorSpace" => "DeviceGray",
            "BitsPerComponent" => 8,
        },
        vec![0u8; 4 * 1024 * 1024],
    );
    stream.compress().unwrap();
    let bytes = pdf(vec![Page::Image(
        stream.dict.clone(),
        stream.content.clone(),
    )]);
    let doc = read_pdf(&bytes, &DocLimits::default()).unwrap();
    assert!(doc.scanned.is_empty());
}

#[test]
fn corrupt_and_unsupported_documents_say_so() {
    let good = pdf(vec![Page::Text(vec!["hello"])]);
    let cut = &good[..good.len() / 3];
    assert!(matches!(
        read_pdf(cut, &DocLimits::default()),
        Err(DocError::Corrupt(_))
    ));
    assert!(matches!(
        read_pdf(b"%PDF-1.4\ngarbage", &DocLimits::default()),
        Err(DocError::Corrupt(_))
    ));
    assert_eq!(
        document::read(
            b"PK\x03\x04rest",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            Some("cv.docx"),
            &DocLimits::default()
        )
        .unwrap_err(),
        DocError::Unsupported {
            mime: "application/vnd.openxmlformats-officedocument.wordprocessingml.document".into()
        }
    );
}

#[test]
fn plain_text_and_csv_are_read_with_the_char_limit() {
    let doc = document::read(
        "Lista: café, jalapeño\n".as_bytes(),
        "text/plain",
        Some("lista.txt"),
        &DocLimits::default(),
    )
    .unwrap();
    assert_eq!(doc.pages, ["Lista: café, jalapeño\n"]);
    assert_eq!(doc.page_count, 1);
    assert!(!doc.truncated);

    // A CSV with a generic mime type, known by its extension; invalid UTF-8 is replaced.
    let csv = b"item,total\nt\xE9,12.50\n";
    let doc = document::read(
        csv,
        "application/octet-stream",
        Some("Gastos.CSV"),
        &DocLimits::default(),
    )
    .unwrap();
    assert_eq!(doc.pages, ["item,total\nt\u{FFFD},12.50\n"]);

    let limits = DocLimits {
        max_chars: 8,
        ..DocLimits::default()
    };
    let doc = document::read("añoñoño añoñoño".as_bytes(), "text/markdown", None, &limits).unwrap();
    assert_eq!(doc.pages, ["añoñoño "]);
    assert!(doc.truncated);

    assert!(matches!(
        document::read(
            b"\x00\x01",
            "application/octet-stream",
            None,
            &DocLimits::default()
        ),
        Err(DocError::Unsupported { .. })
    ));
}
