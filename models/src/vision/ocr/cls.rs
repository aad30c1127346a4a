//! The text-line orientation classifier (0° or 180°): its input is a recognizer-style batch,
//! fixed at 48×192.

use image::RgbImage;
use tract_onnx::prelude::Tensor;

use super::rec;

pub(crate) const WIDTH: u32 = 192;
/// How sure the classifier must be before a line is turned (PaddleOCR's `cls_thresh`).
const THRESH: f32 = 0.9;

pub(crate) fn batch(crops: &[&RgbImage]) -> Tensor {
    rec::batch(crops, WIDTH)
}

/// For each row of the classifier's `[n, 2]` output (0°, 180°): whether to turn the line.
pub(crate) fn upside_down(probs: &[f32]) -> Vec<bool> {
    probs
        .chunks_exact(2)
        .map(|p| p[1] > p[0] && p[1] > THRESH)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_confident_180_turns_a_line() {
        assert_eq!(
            super::upside_down(&[0.1, 0.95, 0.95, 0.05, 0.15, 0.85]),
            [true, false, false]
        );
    }
}
