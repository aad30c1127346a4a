//! Text in images: PP-OCR detection, orientation and recognition, run by tract.
//!
//! The pipeline is PaddleOCR's: the detector's probability map gives rotated text-line boxes
//! ([`det`]), each is cut out and rectified, lines taller than wide are turned a quarter, the
//! orientation classifier decides which of them are upside down ([`cls`]), the recognizer reads
//! them in batches of similar width and CTC-decodes them with the model's own character list
//! ([`rec`]), and the lines are put in reading order and paragraphs ([`order`]). The networks
//! run in [`engine`] (tract, one optimised plan per input shape), with Sandra's own [`kernels`] for
//! the ops where tract's generic code was the bottleneck.

mod cls;
mod det;
mod engine;
mod gemm;
mod kernels;
mod order;
mod rec;

use std::path::Path;

use rayon::prelude::*;

use engine::Net;
use order::Piece;

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
///
/// `Send + Sync`: [`Ocr::read`] takes `&self`, the plan caches are behind a lock.
pub struct Ocr {
    det: Net,
    cls: Net,
    rec: Net,
    charset: rec::Charset,
    classes: usize,
}

/// The files of the installed `ppocr-v6-small` directory.
pub const DET_FILE: &str = "ppocrv6_det.onnx";
pub const REC_FILE: &str = "ppocrv6_rec.onnx";
pub const CLS_FILE: &str = "ppocr_cls.onnx";

/// Lines recognised per batch (PaddleOCR's `rec_batch_num`); batches run in parallel.
const REC_BATCH: usize = 6;
/// Lines classified per batch.
const CLS_BATCH: usize = 8;
/// Lines read with less mean confidence are dropped (PaddleOCR's `drop_score`).
const DROP_SCORE: f32 = 0.5;
/// A box this many times taller than wide is a line of vertical-reading text (a page turned a
/// quarter): its crop is turned so the text runs left to right.
const TALL: f32 = 1.5;

impl Ocr {
    /// Loads the three networks from `dir` (the installed `ppocr-v6-small`).
    pub fn load(dir: &Path) -> Result<Self, OcrError> {
        use engine::Dim::{Fixed, MultipleOf};
        let (det, _) = Net::load(
            "det",
            &dir.join(DET_FILE),
            [Fixed(1), Fixed(3), MultipleOf(32), MultipleOf(32)],
            false,
        )?;
        let (cls, _) = Net::load(
            "cls",
            &dir.join(CLS_FILE),
            [
                MultipleOf(1),
                Fixed(3),
                Fixed(rec::HEIGHT as usize),
                Fixed(cls::WIDTH as usize),
            ],
            false,
        )?;
        let (rec, meta) = Net::load(
            "rec",
            &dir.join(REC_FILE),
            [
                MultipleOf(1),
                Fixed(3),
                Fixed(rec::HEIGHT as usize),
                MultipleOf(rec::WIDTH_STEP as usize),
            ],
            true,
        )?;
        let list = meta
            .get("character")
            .ok_or_else(|| OcrError::Model(format!("{REC_FILE} has no `character` metadata")))?;
        // The class count is the last dimension of the recognizer's output.
        let probe = rec.run(rec::batch(&[&::image::RgbImage::new(8, 8)], rec::MIN_WIDTH))?;
        let classes = *probe.shape().last().unwrap_or(&0);
        let charset =
            rec::Charset::new(list, classes, rec.outputs_logits()).map_err(OcrError::Model)?;
        Ok(Self {
            det,
            cls,
            rec,
            charset,
            classes,
        })
    }

    /// Reads the text in an upright RGB image.
    pub fn read(&self, image: &::image::RgbImage) -> Result<OcrText, OcrError> {
        if image.width() < 4 || image.height() < 4 {
            return Ok(OcrText::default());
        }
        let quads = self.detect(image)?;
        // Each quad as [text start top, top end, bottom end, bottom start]; a tall box reads
        // downwards from its top-right corner (a page turned clockwise) until the classifier says
        // otherwise.
        let mut quads: Vec<[det::Pt; 4]> = quads
            .into_iter()
            .map(|[tl, tr, br, bl]| {
                let (w, h) = (dist(tl, tr), dist(tl, bl));
                if h >= TALL * w {
                    [tr, br, bl, tl]
                } else {
                    [tl, tr, br, bl]
                }
            })
            .collect();
        let mut crops: Vec<::image::RgbImage> =
            quads.par_iter().map(|q| det::crop(image, q)).collect();

        let idx: Vec<usize> = (0..crops.len()).collect();
        let flips: Vec<Vec<bool>> = idx
            .par_chunks(CLS_BATCH)
            .map(|chunk| {
                let batch: Vec<&::image::RgbImage> = chunk.iter().map(|&i| &crops[i]).collect();
                let out = self.cls.run(cls::batch(&batch))?;
                Ok(cls::upside_down(slice(&out)?))
            })
            .collect::<Result<_, OcrError>>()?;
        for (i, flip) in flips.into_iter().flatten().enumerate() {
            if flip {
                let [a, b, c, d] = quads[i];
                quads[i] = [c, d, a, b];
                ::image::imageops::rotate180_in_place(&mut crops[i]);
            }
        }

        // Lines of similar width share a batch, so padding wastes little.
        let mut by_width = idx;
        by_width.sort_by_key(|&i| rec::scaled_width(&crops[i], rec::MAX_WIDTH));
        let read: Vec<Vec<(usize, String, f32)>> = by_width
            .par_chunks(REC_BATCH)
            .map(|chunk| {
                let batch: Vec<&::image::RgbImage> = chunk.iter().map(|&i| &crops[i]).collect();
                let widest = batch
                    .iter()
                    .map(|c| rec::scaled_width(c, rec::MAX_WIDTH))
                    .max()
                    .unwrap_or(1);
                let out = self.rec.run(rec::batch(&batch, rec::batch_width(widest)))?;
                let probs = slice(&out)?;
                let per_line = probs.len() / chunk.len();
                Ok(chunk
                    .iter()
                    .zip(probs.chunks_exact(per_line))
                    .map(|(&i, p)| {
                        let (text, score) = self.charset.decode(p, self.classes);
                        (i, text, score)
                    })
                    .collect())
            })
            .collect::<Result<_, OcrError>>()?;
        let pieces = read
            .into_iter()
            .flatten()
            .filter(|(_, text, score)| *score >= DROP_SCORE && !text.trim().is_empty())
            .map(|(i, text, score)| Piece {
                text: text.trim().to_string(),
                score,
                quad: quads[i],
            })
            .collect();
        Ok(order::arrange(pieces))
    }

    /// Text-line boxes `[tl, tr, br, bl]` in image coordinates.
    fn detect(&self, image: &::image::RgbImage) -> Result<Vec<[det::Pt; 4]>, OcrError> {
        let (w, h) = det::input_size(image.width(), image.height());
        let out = self.det.run(det::input(image, (w, h)))?;
        let prob = slice(&out)?;
        if prob.len() != (w * h) as usize {
            return Err(OcrError::Inference(format!(
                "det: output {:?} for a {w}×{h} input",
                out.shape()
            )));
        }
        Ok(det::boxes(
            prob,
            w as usize,
            h as usize,
            image.width(),
            image.height(),
        ))
    }
}

fn dist(a: det::Pt, b: det::Pt) -> f32 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

fn slice(t: &tract_onnx::prelude::Tensor) -> Result<&[f32], OcrError> {
    t.as_slice::<f32>()
        .map_err(|e| OcrError::Inference(format!("output is not f32: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ocr_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Ocr>();
    }
}
