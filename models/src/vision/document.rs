//! Documents users forward: PDFs (text layer; scanned pages handed to OCR as images) and plain
//! text, read in memory with page and size limits.
//!
//! PDFs go through `lopdf`, which bounds every stream it inflates: object streams while the
//! file loads, page content while the text is extracted, and page images here, where the
//! declared width × height is checked against the pixel cap before the image is inflated to
//! exactly that many bytes at most. A small file therefore cannot take memory by decompressing
//! (design: "every decoder is bounded by what it produces").

use std::collections::BTreeMap;

use lopdf::{DecompressError, LoadOptions, Object};

use super::image::{self, ImageLimits};

/// Limits on one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocLimits {
    /// Pages read at most; the rest is ignored and `truncated` set.
    pub max_pages: usize,
    /// Scanned pages (no text layer) handed to OCR at most.
    pub max_ocr_pages: usize,
    /// Characters of text kept at most.
    pub max_chars: usize,
    /// Limits on each page image.
    pub image: ImageLimits,
}

impl Default for DocLimits {
    fn default() -> Self {
        Self {
            max_pages: 50,
            max_ocr_pages: 5,
            max_chars: 20_000,
            image: ImageLimits::default(),
        }
    }
}

/// What was read from a document.
#[derive(Debug, Clone, Default)]
pub struct Document {
    /// The text layer (PDF) or the text (plain documents), page by page, trimmed to the limits.
    pub pages: Vec<String>,
    /// Pages without a text layer, as images for OCR: (page number from 1, image).
    pub scanned: Vec<(usize, ::image::RgbImage)>,
    /// Pages in the document.
    pub page_count: usize,
    /// Something was left out (pages or characters over the limits).
    pub truncated: bool,
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DocError {
    #[error("unsupported document type {mime}")]
    Unsupported { mime: String },
    #[error("the document is encrypted")]
    Encrypted,
    #[error("corrupt document: {0}")]
    Corrupt(String),
}

/// Largest size one PDF object or cross-reference stream may inflate to while the file loads.
/// Real ones are kilobytes to a few megabytes; lopdf's own default (256 MiB) is a lot of memory
/// for one forwarded file on a small server.
const MAX_OBJECT_STREAM_BYTES: usize = 32 * 1024 * 1024;
/// Largest size one page's content streams may inflate to when its text is extracted. A dense
/// vector drawing (a map, a chart) can reach several megabytes; text pages are far smaller.
const MAX_PAGE_CONTENT_BYTES: usize = 16 * 1024 * 1024;
/// Page images smaller than this on either side are logos and rules, not scanned text.
const MIN_SCAN_SIDE: u32 = 32;

/// Reads a document from memory. `mime` and `filename` are what WhatsApp said.
pub fn read(
    bytes: &[u8],
    mime: &str,
    filename: Option<&str>,
    limits: &DocLimits,
) -> Result<Document, DocError> {
    match kind(bytes, mime, filename) {
        Kind::Pdf => read_pdf(bytes, limits),
        Kind::Text => Ok(read_text(bytes, limits)),
        Kind::Other => Err(DocError::Unsupported { mime: mime.into() }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pdf,
    Text,
    Other,
}

/// Mime types read as plain text.
const TEXT_MIMES: &[&str] = &[
    "text/plain",
    "text/csv",
    "text/markdown",
    "text/x-markdown",
    "text/tab-separated-values",
    "application/json",
];
/// File extensions read as plain text when the mime type says nothing.
const TEXT_EXTENSIONS: &[&str] = &["txt", "csv", "md", "markdown", "json", "tsv", "log"];

/// What a document is: a PDF by its magic number whatever the label (the spec lets the header
/// sit anywhere in the first kilobyte), else plain text by mime, or by the file's extension
/// when the mime type is a generic one (phones label many files `application/octet-stream`).
fn kind(bytes: &[u8], mime: &str, filename: Option<&str>) -> Kind {
    let head = &bytes[..bytes.len().min(1024)];
    if head.windows(5).any(|w| w == b"%PDF-") {
        return Kind::Pdf;
    }
    let mime = mime
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime == "application/pdf" {
        // Labelled a PDF but without its header: reading it is still lopdf's call (it reports
        // the file as corrupt rather than us calling it unsupported).
        return Kind::Pdf;
    }
    if TEXT_MIMES.contains(&mime.as_str()) {
        return Kind::Text;
    }
    let generic = matches!(
        mime.as_str(),
        "" | "application/octet-stream" | "binary/octet-stream" | "application/unknown"
    );
    let extension = filename
        .and_then(|f| f.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase());
    match extension {
        Some(ext) if generic && ext == "pdf" => Kind::Pdf,
        Some(ext) if generic && TEXT_EXTENSIONS.contains(&ext.as_str()) => Kind::Text,
        _ => Kind::Other,
    }
}

/// A plain-text document: UTF-8 (invalid sequences replaced), or UTF-16 when it starts with a
/// byte-order mark (Windows Notepad's "Unicode"), cut at `max_chars`.
fn read_text(bytes: &[u8], limits: &DocLimits) -> Document {
    let text = decode_text(bytes);
    let (text, truncated) = take_chars(&text, limits.max_chars);
    Document {
        pages: vec![text.to_owned()],
        scanned: Vec::new(),
        page_count: 1,
        truncated,
    }
}

fn decode_text(bytes: &[u8]) -> String {
    let utf16 = |bytes: &[u8], from: fn([u8; 2]) -> u16| {
        let units = bytes.chunks_exact(2).map(|c| from([c[0], c[1]]));
        char::decode_utf16(units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8_lossy(rest).into_owned(),
        [0xFF, 0xFE, rest @ ..] => utf16(rest, u16::from_le_bytes),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, u16::from_be_bytes),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The first `max` characters of `text`, and whether anything was cut.
fn take_chars(text: &str, max: usize) -> (&str, bool) {
    match text.char_indices().nth(max) {
        Some((at, _)) => (&text[..at], true),
        None => (text, false),
    }
}

fn read_pdf(bytes: &[u8], limits: &DocLimits) -> Result<Document, DocError> {
    let options = LoadOptions {
        max_decompressed_size: Some(MAX_OBJECT_STREAM_BYTES),
        ..LoadOptions::default()
    };
    let pdf = lopdf::Document::load_mem_with_options(bytes, options).map_err(load_error)?;
    // lopdf opens files encrypted with an empty user password (common: "no copying" PDFs from
    // banks); the /Encrypt entry stays only when a password is really needed.
    if pdf.is_encrypted() {
        return Err(DocError::Encrypted);
    }
    let pages = pdf.get_pages();
    if pages.is_empty() {
        return Err(DocError::Corrupt("no pages".into()));
    }

    let mut doc = Document {
        page_count: pages.len(),
        truncated: pages.len() > limits.max_pages,
        ..Document::default()
    };
    let mut chars_left = limits.max_chars;
    for (&number, &page_id) in pages.iter().take(limits.max_pages) {
        let text = page_text(&pdf, page_id);
        if text.is_empty() {
            doc.pages.push(String::new());
            if doc.scanned_pages() >= limits.max_ocr_pages {
                doc.truncated = true;
                continue;
            }
            for image in page_images(&pdf, page_id, &limits.image) {
                doc.scanned.push((number as usize, image));
            }
            continue;
        }
        let (kept, cut) = take_chars(&text, chars_left);
        chars_left -= kept.chars().count();
        doc.pages.push(kept.to_owned());
        if cut {
            doc.truncated = true;
            break;
        }
    }
    Ok(doc)
}

impl Document {
    /// Distinct pages in `scanned` (a page may hold several images).
    fn scanned_pages(&self) -> usize {
        let mut pages: Vec<usize> = self.scanned.iter().map(|(page, _)| *page).collect();
        pages.dedup();
        pages.len()
    }
}

fn load_error(e: lopdf::Error) -> DocError {
    match e {
        lopdf::Error::InvalidPassword | lopdf::Error::Decryption(_) => DocError::Encrypted,
        lopdf::Error::Decompress(DecompressError::MemoryLimitExceeded { limit }) => {
            DocError::Corrupt(format!("a stream inflates past {limit} bytes"))
        }
        e => DocError::Corrupt(e.to_string()),
    }
}

/// A page's text layer, line ends trimmed and blank lines dropped; empty when the page has
/// none. A font lopdf cannot decode loses its own text only, not the page's.
///
/// lopdf's `extract_text` decodes the characters well but only breaks lines at `ET` and `T*`:
/// measured on TeX and DocBook manuals (one BT…ET a page), each page came out as one run-on
/// line, and an invoice's "Invoice #A-2291" and "Total: …" lines ran together. So the text
/// operators are walked here (with lopdf's font encodings) and a line break is written where
/// the text moves down, a space where it jumps along the same line (table cells).
fn page_text(pdf: &lopdf::Document, page_id: lopdf::ObjectId) -> String {
    let content = pdf
        .get_page_content_with_limit(page_id, MAX_PAGE_CONTENT_BYTES)
        .and_then(|data| lopdf::content::Content::decode(&data));
    let content = match content {
        Ok(content) => content,
        Err(e) => {
            tracing::debug!(error = %e, "pdf page content unreadable");
            return String::new();
        }
    };
    let fonts = pdf.get_page_fonts(page_id).unwrap_or_default();
    let encodings: BTreeMap<&[u8], lopdf::Encoding<'_>> = fonts
        .iter()
        .filter_map(|(name, font)| {
            let encoding = font.get_font_encoding_with_limit(pdf, MAX_PAGE_CONTENT_BYTES);
            encoding.ok().map(|e| (name.as_slice(), e))
        })
        .collect();

    let mut out = TextOut::default();
    let mut encoding = None;
    for op in &content.operations {
        let number = |i: usize| op.operands.get(i).and_then(|o| o.as_float().ok());
        match op.operator.as_str() {
            "BT" => out.line_y = 0.0,
            "Tf" => {
                encoding = op
                    .operands
                    .first()
                    .and_then(|o| o.as_name().ok())
                    .and_then(|name| encodings.get(name));
            }
            "Td" | "TD" => {
                out.line_y += number(1).unwrap_or(0.0);
                out.gap(Gap::Space);
            }
            "Tm" => {
                out.line_y = number(5).unwrap_or(out.line_y);
                out.gap(Gap::Space);
            }
            "T*" => out.gap(Gap::Line),
            "'" | "\"" => {
                out.gap(Gap::Line);
                if let (Some(enc), Some(text)) = (encoding, op.operands.last()) {
                    out.show(enc, text);
                }
            }
            "Tj" | "TJ" => {
                if let (Some(enc), Some(text)) = (encoding, op.operands.first()) {
                    out.show(enc, text);
                }
            }
            "ET" => out.gap(Gap::Space),
            _ => {}
        }
    }
    normalize_lines(&out.text)
}

/// What separates the next shown text from the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
enum Gap {
    #[default]
    None,
    Space,
    Line,
}

/// The text being written out of a page's content stream.
#[derive(Default)]
struct TextOut {
    text: String,
    /// The vertical position of the text line being drawn (text space; `BT` resets it).
    line_y: f32,
    /// Where the last text shown sat: text drawn on another baseline starts a new line.
    last_y: Option<f32>,
    /// A move seen since the last text shown.
    gap: Gap,
}

impl TextOut {
    fn gap(&mut self, gap: Gap) {
        self.gap = self.gap.max(gap);
    }

    fn show(&mut self, encoding: &lopdf::Encoding<'_>, operand: &Object) {
        match operand {
            Object::String(bytes, _) => match encoding.bytes_to_string(bytes) {
                Ok(text) if !text.is_empty() => self.push(&text),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "pdf string undecodable"),
            },
            // TJ: strings with kerning in thousandths of an em between them; a gap wider than
            // about a fifth of an em is a word space (TeX writes no space characters).
            Object::Array(items) => {
                for item in items {
                    match item.as_float() {
                        Ok(kern) if kern < -200.0 => self.gap(Gap::Space),
                        Ok(_) => {}
                        Err(_) => self.show(encoding, item),
                    }
                }
            }
            _ => {}
        }
    }

    fn push(&mut self, text: &str) {
        let moved_down = self.last_y.is_some_and(|y| (y - self.line_y).abs() > 0.5);
        let gap = if moved_down { Gap::Line } else { self.gap };
        let ends_blank = self.text.is_empty() || self.text.ends_with(char::is_whitespace);
        match gap {
            Gap::Line if !self.text.is_empty() => self.text.push('\n'),
            Gap::Space if !ends_blank && !text.starts_with(char::is_whitespace) => {
                self.text.push(' ')
            }
            _ => {}
        }
        self.text.push_str(text);
        self.gap = Gap::None;
        self.last_y = Some(self.line_y);
    }
}

/// Lines trimmed at the end, blank ones dropped, and the typographic ligatures TeX and
/// DocBook fonts map to (U+FB00–FB06) spelled out, so "ﬁle" reads and searches as "file".
fn normalize_lines(raw: &str) -> String {
    let raw = expand_ligatures(raw);
    raw.lines()
        .map(str::trim_end)
        .filter(|line| !line.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The images a page shows that are large enough to be a scan, decoded within the limits.
/// Images in a format Sandra does not decode (JBIG2, CCITT fax, JPEG 2000) are skipped.
fn page_images(
    pdf: &lopdf::Document,
    page_id: lopdf::ObjectId,
    limits: &ImageLimits,
) -> Vec<::image::RgbImage> {
    let images = match pdf.get_page_images(page_id) {
        Ok(images) => images,
        Err(e) => {
            tracing::debug!(error = %e, "pdf page images unreadable");
            return Vec::new();
        }
    };
    images
        .into_iter()
        .filter_map(|pi| match page_image(pdf, &pi, limits) {
            Ok(image) => image,
            Err(e) => {
                tracing::debug!(error = %e, "pdf page image skipped");
                None
            }
        })
        .collect()
}

fn page_image(
    pdf: &lopdf::Document,
    pi: &lopdf::xobject::PdfImage<'_>,
    limits: &ImageLimits,
) -> Result<Option<::image::RgbImage>, image::ImageError> {
    let (Ok(width), Ok(height)) = (u32::try_from(pi.width), u32::try_from(pi.height)) else {
        return Err(image::ImageError::Corrupt(format!(
            "image size {}×{}",
            pi.width, pi.height
        )));
    };
    if width < MIN_SCAN_SIDE || height < MIN_SCAN_SIDE {
        return Ok(None);
    }
    // Declared size first: neither a JPEG nor a raw bitmap is touched beyond its dictionary
    // when it claims more pixels than the cap.
    limits.check(width, height)?;
    let filters = pi.filters.as_deref().unwrap_or_default();
    match filters {
        [only] if only == "DCTDecode" => image::decode(pi.content, "image/jpeg", limits).map(Some),
        _ if filters
            .iter()
            .all(|f| INFLATE_FILTERS.contains(&f.as_str())) =>
        {
            raw_image(pdf, pi, width, height).map(Some)
        }
        _ => Ok(None),
    }
}

/// Filters lopdf decodes (with a bound on their output).
const INFLATE_FILTERS: &[&str] = &[
    "FlateDecode",
    "LZWDecode",
    "ASCII85Decode",
    "ASCIIHexDecode",
    "RunLengthDecode",
];

/// How the samples of a raw (not JPEG) page image are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawLayout {
    /// Colour components a pixel: 1 (gray) or 3 (RGB).
    components: u8,
    /// 1 (bilevel scans) or 8.
    bits: u8,
}

impl RawLayout {
    fn from_dict(pdf: &lopdf::Document, dict: &lopdf::Dictionary) -> Option<Self> {
        let bits = match dict.get(b"BitsPerComponent").and_then(Object::as_i64) {
            Ok(8) => 8,
            Ok(1) => 1,
            _ => return None,
        };
        // A mask has no colour space and 1 bit a pixel: treat it as gray.
        if dict
            .get(b"ImageMask")
            .and_then(Object::as_bool)
            .unwrap_or(false)
        {
            return Some(Self {
                components: 1,
                bits: 1,
            });
        }
        let components = color_components(pdf, dict.get(b"ColorSpace").ok()?)?;
        if bits == 1 && components != 1 {
            return None;
        }
        Some(Self { components, bits })
    }

    /// Bytes of one row of `width` pixels (rows start on a byte boundary).
    fn row_bytes(&self, width: u32) -> usize {
        (width as usize * usize::from(self.components) * usize::from(self.bits)).div_ceil(8)
    }

    /// The RGB image from unpacked samples (`data` holds exactly `row_bytes × height` bytes).
    /// `invert` swaps dark and light (/Decode [1 0]).
    fn to_rgb(self, data: &[u8], width: u32, height: u32, invert: bool) -> ::image::RgbImage {
        let row_bytes = self.row_bytes(width);
        ::image::RgbImage::from_fn(width, height, |x, y| {
            let row = &data[y as usize * row_bytes..][..row_bytes];
            let x = x as usize;
            let rgb = match (self.components, self.bits) {
                (3, _) => [row[3 * x], row[3 * x + 1], row[3 * x + 2]],
                (_, 8) => [row[x]; 3],
                _ => {
                    let bit = (row[x / 8] >> (7 - x % 8)) & 1;
                    [if bit == 1 { 255 } else { 0 }; 3]
                }
            };
            ::image::Rgb(if invert { rgb.map(|v| 255 - v) } else { rgb })
        })
    }
}

/// Colour components of a gray or RGB colour space (named, an ICC profile with its /N, or a
/// calibrated one); `None` for the others (indexed, CMYK, Lab, separations), which are skipped.
fn color_components(pdf: &lopdf::Document, space: &Object) -> Option<u8> {
    let space = match space {
        Object::Reference(id) => pdf.get_object(*id).ok()?,
        other => other,
    };
    match space {
        Object::Name(name) => match name.as_slice() {
            b"DeviceGray" | b"CalGray" | b"G" => Some(1),
            b"DeviceRGB" | b"CalRGB" | b"RGB" => Some(3),
            _ => None,
        },
        Object::Array(array) => match array.first()?.as_name().ok()? {
            b"CalGray" => Some(1),
            b"CalRGB" => Some(3),
            b"ICCBased" => {
                let profile = match array.get(1)? {
                    Object::Reference(id) => pdf.get_object(*id).ok()?,
                    other => other,
                };
                match profile
                    .as_stream()
                    .ok()?
                    .dict
                    .get(b"N")
                    .and_then(Object::as_i64)
                {
                    Ok(1) => Some(1),
                    Ok(3) => Some(3),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

/// A raw bitmap page image (Flate and friends), inflated to at most the bytes its declared
/// size needs: a stream that inflates further is a bomb or a lie and is refused.
fn raw_image(
    pdf: &lopdf::Document,
    pi: &lopdf::xobject::PdfImage<'_>,
    width: u32,
    height: u32,
) -> Result<::image::RgbImage, image::ImageError> {
    let layout = RawLayout::from_dict(pdf, pi.origin_dict).ok_or_else(|| {
        image::ImageError::Unsupported {
            mime: format!("pdf image colour space {:?}", pi.color_space),
        }
    })?;
    let needed = layout.row_bytes(width) * height as usize;
    let data = pdf
        .get_object(pi.id)
        .and_then(Object::as_stream)
        .and_then(|stream| stream.decompressed_content_with_limit(needed))
        .map_err(|e| image::ImageError::Corrupt(e.to_string()))?;
    if data.len() < needed {
        return Err(image::ImageError::Corrupt(format!(
            "image data {} bytes, {needed} needed",
            data.len()
        )));
    }
    // /Decode [1 0] swaps dark and light (masks then paint their 1 bits, some bilevel scans
    // store ink as 1); by default 0 is black, which for a mask is also the painted ink.
    let inverted = match pi.origin_dict.get(b"Decode").and_then(Object::as_array) {
        Ok(d) => d.first().and_then(|v| v.as_float().ok()) == Some(1.0),
        Err(_) => false,
    };
    Ok(layout.to_rgb(&data, width, height, inverted))
}

fn expand_ligatures(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(|c| ('\u{FB00}'..='\u{FB06}').contains(&c)) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{FB00}' => out.push_str("ff"),
            '\u{FB01}' => out.push_str("fi"),
            '\u{FB02}' => out.push_str("fl"),
            '\u{FB03}' => out.push_str("ffi"),
            '\u{FB04}' => out.push_str("ffl"),
            '\u{FB05}' | '\u{FB06}' => out.push_str("st"),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_prefers_the_pdf_magic_then_mime_then_extension() {
        assert_eq!(kind(b"%PDF-1.7\n", "text/plain", None), Kind::Pdf);
        assert_eq!(kind(b"\xEF\xBB\xBF%PDF-1.4", "", None), Kind::Pdf);
        assert_eq!(
            kind(b"a,b\n", "text/csv; charset=utf-8", Some("x.bin")),
            Kind::Text
        );
        assert_eq!(
            kind(b"{}", "application/octet-stream", Some("data.JSON")),
            Kind::Text
        );
        // A specific, non-text mime is not overridden by a hopeful extension.
        assert_eq!(
            kind(b"PK\x03\x04", "application/zip", Some("notes.txt")),
            Kind::Other
        );
        assert_eq!(
            kind(b"PK\x03\x04", "application/octet-stream", Some("a.docx")),
            Kind::Other
        );
        assert_eq!(kind(b"PK", "application/octet-stream", None), Kind::Other);
    }

    #[test]
    fn text_decoding_handles_boms_and_bad_bytes() {
        assert_eq!(decode_text(b"\xEF\xBB\xBFhola"), "hola");
        assert_eq!(decode_text(b"\xFF\xFEh\0\xF3\0"), "hó");
        assert_eq!(decode_text(b"\xFE\xFF\0h\0\xF3"), "hó");
        assert_eq!(decode_text(b"a\xFFb"), "a\u{FFFD}b");
    }

    #[test]
    fn take_chars_cuts_on_characters_not_bytes() {
        assert_eq!(take_chars("año nuevo", 3), ("año", true));
        assert_eq!(take_chars("año", 3), ("año", false));
        assert_eq!(take_chars("", 0), ("", false));
    }

    #[test]
    fn lines_are_trimmed_and_blank_ones_dropped() {
        assert_eq!(normalize_lines("  a  \n\n \nb\n"), "  a\nb");
        assert_eq!(normalize_lines("\n \n"), "");
        assert_eq!(
            normalize_lines("the \u{FB01}le o\u{FB03}ce"),
            "the file office"
        );
    }

    #[test]
    fn raw_layout_unpacks_gray_rgb_and_bits() {
        let gray = RawLayout {
            components: 1,
            bits: 8,
        };
        let img = gray.to_rgb(&[0, 200], 2, 1, false);
        assert_eq!(img.get_pixel(1, 0).0, [200, 200, 200]);
        let rgb = RawLayout {
            components: 3,
            bits: 8,
        };
        assert_eq!(
            rgb.to_rgb(&[1, 2, 3], 1, 1, false).get_pixel(0, 0).0,
            [1, 2, 3]
        );
        let bits = RawLayout {
            components: 1,
            bits: 1,
        };
        // 10 pixels a row take 2 bytes; rows start on a byte boundary.
        assert_eq!(bits.row_bytes(10), 2);
        let img = bits.to_rgb(&[0b1000_0000, 0, 0b0100_0000, 0], 10, 2, false);
        assert_eq!(img.get_pixel(0, 0).0, [255; 3]);
        assert_eq!(img.get_pixel(1, 0).0, [0; 3]);
        assert_eq!(img.get_pixel(1, 1).0, [255; 3]);
        assert_eq!(bits.to_rgb(&[0], 1, 1, true).get_pixel(0, 0).0, [255; 3]);
    }
}
