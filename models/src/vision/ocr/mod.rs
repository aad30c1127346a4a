//! Text in images: PP-OCR detection, orientation and recognition, run by tract.

use std::path::Path;

/// One line of text read.
#[derive(Debug, Clone, PartialEq)]
pub struct OcrLine {
    pub text: String,
    /// Mean character confidence, 0..1.
    pub score: f32,
    /// The line's corners in the upright image (clockwise from top-left), in pixels.
    pub quad: [(f32, f32); 4],
}

/// Everything read in one image, in reading order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OcrText {
    pub lines: Vec<OcrLine>,
    /// Lines grouped into paragraphs (lines joined by '\n').
    pub paragraphs: Vec<String>,
}

impl OcrText {
    /// The paragraphs, separated by blank lines.
    pub fn text(&self) -> String {
        self.paragraphs.join("\n\n")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    #[error("OCR model: {0}")]
    Model(String),
    #[error("OCR inference: {0}")]
    Inference(String),
}

/// The three PP-OCR networks and the recognizer's character list.
pub struct Ocr {
    _private: (),
}

impl Ocr {
    /// Loads `det.onnx`-style files from `dir` (the installed `ppocr-v6-small`).
    pub fn load(dir: &Path) -> Result<Self, OcrError> {
        Err(OcrError::Model(format!("not built yet: {}", dir.display())))
    }

    /// Reads the text in an upright RGB image.
    pub fn read(&self, image: &::image::RgbImage) -> Result<OcrText, OcrError> {
        let _ = image;
        Err(OcrError::Inference("not built yet".into()))
    }
}
