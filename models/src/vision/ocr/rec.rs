//! Text-line recognition (and the orientation classifier's input, which is prepared the same
//! way): crops scaled to 48 px high, normalised, right-padded into a batch; CTC decoding.

use image::RgbImage;
use tract_onnx::prelude::Tensor;

/// The recognizer's (and classifier's) input height.
pub(crate) const HEIGHT: u32 = 48;
/// Narrowest batch width (PaddleOCR's 320 for a 48-px height): short lines are padded to it.
pub(crate) const MIN_WIDTH: u32 = 320;
/// Batch widths are rounded up to a multiple of this, so that few distinct plans are built.
pub(crate) const WIDTH_STEP: u32 = 64;
/// Lines wider than this (after scaling to 48 px high) are squeezed; bounds memory and time for
/// absurd aspect ratios.
pub(crate) const MAX_WIDTH: u32 = 3200;

/// The width a crop takes at the input height, keeping its aspect ratio, at most `max`.
pub(crate) fn scaled_width(crop: &RgbImage, max: u32) -> u32 {
    let w = (HEIGHT as f32 * crop.width() as f32 / crop.height().max(1) as f32).ceil() as u32;
    w.clamp(1, max)
}

/// The padded batch width for crops whose widest scaled width is `widest`.
pub(crate) fn batch_width(widest: u32) -> u32 {
    widest.max(MIN_WIDTH).div_ceil(WIDTH_STEP) * WIDTH_STEP
}

/// An NCHW batch `[n, 3, 48, width]`: each crop scaled to 48 px high (at most `width` wide),
/// `(x/255 - 0.5) / 0.5` in B, G, R order, the rest zero (PaddleOCR's padding).
pub(crate) fn batch(crops: &[&RgbImage], width: u32) -> Tensor {
    let (h, w) = (HEIGHT as usize, width as usize);
    let plane = h * w;
    let mut data = vec![0f32; crops.len() * 3 * plane];
    for (n, crop) in crops.iter().enumerate() {
        let cw = scaled_width(crop, width);
        let scaled =
            image::imageops::resize(*crop, cw, HEIGHT, image::imageops::FilterType::Triangle);
        let base = n * 3 * plane;
        for (x, y, p) in scaled.enumerate_pixels() {
            let [r, g, b] = p.0;
            let i = y as usize * w + x as usize;
            for (c, v) in [b, g, r].into_iter().enumerate() {
                data[base + c * plane + i] = v as f32 / 127.5 - 1.0;
            }
        }
    }
    Tensor::from_shape(&[crops.len(), 3, h, w], &data).expect("shape matches data")
}

/// The recognizer's classes: 0 is the CTC blank, then the metadata's characters, then a space
/// (PaddleOCR's `use_space_char`).
pub(crate) struct Charset {
    chars: Vec<String>,
}

impl Charset {
    /// From the model's `character` metadata (one per line) and its number of output classes.
    pub(crate) fn new(list: &str, classes: usize) -> Result<Self, String> {
        let mut chars: Vec<String> = list.split('\n').map(str::to_string).collect();
        if chars.len() + 2 == classes {
            chars.push(" ".into());
        }
        if chars.len() + 1 != classes {
            return Err(format!(
                "{} characters in the metadata for {classes} output classes",
                chars.len()
            ));
        }
        Ok(Self { chars })
    }

    /// Greedy CTC: the best class per time step, repeats merged, blanks dropped. Returns the
    /// text and the mean probability of the characters kept (0 when none).
    pub(crate) fn decode(&self, probs: &[f32], classes: usize) -> (String, f32) {
        let mut text = String::new();
        let (mut sum, mut n) = (0f32, 0u32);
        let mut prev = 0usize;
        for step in probs.chunks_exact(classes) {
            let (best, p) =
                step.iter().enumerate().fold(
                    (0, f32::MIN),
                    |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                );
            if best != 0 && best != prev {
                text.push_str(&self.chars[best - 1]);
                sum += p;
                n += 1;
            }
            prev = best;
        }
        (text, if n == 0 { 0.0 } else { sum / n as f32 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn onehot(steps: &[usize], classes: usize) -> Vec<f32> {
        let mut v = vec![0.0; steps.len() * classes];
        for (t, &c) in steps.iter().enumerate() {
            v[t * classes + c] = 0.8;
        }
        v
    }

    #[test]
    fn ctc_merges_repeats_and_drops_blanks_keeping_multibyte_characters() {
        // Classes: blank, ¿, ñ, o, 中, space.
        let cs = Charset::new("¿\nñ\no\n中", 6).unwrap();
        let probs = onehot(&[1, 1, 0, 2, 2, 3, 0, 3, 5, 4, 4, 0], 6);
        let (text, score) = cs.decode(&probs, 6);
        assert_eq!(text, "¿ñoo 中");
        assert!((score - 0.8).abs() < 1e-6);
        assert_eq!(cs.decode(&onehot(&[0, 0], 6), 6), (String::new(), 0.0));
    }

    #[test]
    fn charset_must_match_the_output_classes() {
        assert!(Charset::new("a\nb", 4).is_ok()); // blank, a, b, space
        assert!(Charset::new("a\nb", 3).is_ok()); // blank, a, b
        assert!(Charset::new("a\nb", 7).is_err());
    }

    #[test]
    fn batches_pad_to_a_bucketed_width_with_zeros() {
        assert_eq!(batch_width(10), 320);
        assert_eq!(batch_width(321), 384);
        let white = RgbImage::from_pixel(24, 12, image::Rgb([255; 3]));
        let t = batch(&[&white], batch_width(96));
        assert_eq!(t.shape(), &[1, 3, 48, 320]);
        let v = t.as_slice::<f32>().unwrap();
        // Scaled to 96×48: white (1.0) up to x = 95, zero padding after.
        assert_eq!(v[95], 1.0);
        assert_eq!(v[96], 0.0);
    }
}
