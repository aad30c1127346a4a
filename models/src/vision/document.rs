//! Documents users forward: PDFs (text layer; scanned pages handed to OCR as images) and plain
//! text, read in memory with page and size limits.

use super::image::ImageLimits;

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

/// Reads a document from memory. `mime` and `filename` are what WhatsApp said.
pub fn read(
    bytes: &[u8],
    mime: &str,
    filename: Option<&str>,
    limits: &DocLimits,
) -> Result<Document, DocError> {
    let _ = (bytes, filename, limits);
    Err(DocError::Unsupported { mime: mime.into() })
}
