//! Vision: what Sandra can see in photos and documents, locally.
//!
//! - [`image`]: decoding JPEG/PNG/WebP in memory, EXIF orientation, a pixel cap checked before
//!   any pixel buffer is allocated (decompression bombs).
//! - [`document`]: PDFs (text layer, scanned pages as images) and plain-text documents.
//! - [`ocr`]: PP-OCR text detection, orientation and recognition (ONNX graphs run by tract).
//! - [`scene`]: captions and visual questions from a vision-language model (local candle, or a
//!   remote OpenAI-compatible server).
//!
//! The facade that puts the models on their own thread behind a bounded queue lives here too;
//! the vision actor (in `sandra-actors`) is its only user.

pub mod document;
pub mod image;
pub mod ocr;
pub mod scene;
