//! Text detection: the DB network's input, and its probability map turned into text-line boxes.
//!
//! Post-processing as PaddleOCR's `DBPostProcess` does it: threshold the map, take each
//! 8-connected region, its minimum-area rotated rectangle, drop weak or tiny ones, expand
//! ("unclip") by `area * ratio / perimeter` on every side (the network predicts shrunk text
//! kernels), and scale back to the image. Crops are then sampled from the image along each box.

use image::{Rgb, RgbImage};
use tract_onnx::prelude::Tensor;

/// The longest side the detector sees; larger images are scaled down (PaddleOCR's default).
pub(crate) const LIMIT_SIDE: u32 = 960;
const BIN_THRESH: f32 = 0.3;
const BOX_THRESH: f32 = 0.6;
const UNCLIP_RATIO: f32 = 1.5;
/// Regions whose rectangle's short side is below this (in detector pixels) are noise.
const MIN_SIDE: f32 = 3.0;
const MAX_CANDIDATES: usize = 1000;
/// ImageNet statistics, applied to B, G, R in that order as PaddleOCR does (it feeds OpenCV's BGR
/// with the RGB constants; the network was trained that way).
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

pub(crate) type Pt = (f32, f32);

/// The detector's input size for an image: the long side at most [`LIMIT_SIDE`], both sides
/// rounded to multiples of 32 (the network downsamples 32×).
pub(crate) fn input_size(w: u32, h: u32) -> (u32, u32) {
    let long = w.max(h) as f32;
    let ratio = if long > LIMIT_SIDE as f32 {
        LIMIT_SIDE as f32 / long
    } else {
        1.0
    };
    let round32 = |v: u32| (((v as f32 * ratio) / 32.0).round() as u32 * 32).max(32);
    (round32(w), round32(h))
}

/// The NCHW input tensor for `image` resized to `(w, h)`.
pub(crate) fn input(image: &RgbImage, (w, h): (u32, u32)) -> Tensor {
    let resized = image::imageops::resize(image, w, h, image::imageops::FilterType::Triangle);
    let plane = (w * h) as usize;
    let mut data = vec![0f32; 3 * plane];
    for (i, Rgb([r, g, b])) in resized.pixels().enumerate() {
        for (c, v) in [*b, *g, *r].into_iter().enumerate() {
            data[c * plane + i] = (v as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    Tensor::from_shape(&[1, 3, h as usize, w as usize], &data).expect("shape matches data")
}

/// A rotated rectangle: centre, unit axis `u` (the other axis is `u` turned +90°), half sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RotRect {
    pub c: Pt,
    pub u: Pt,
    pub half: (f32, f32),
}

impl RotRect {
    fn v(&self) -> Pt {
        (-self.u.1, self.u.0)
    }

    /// Corners, in no particular order relative to the text.
    pub fn corners(&self) -> [Pt; 4] {
        let (u, v, (a, b)) = (self.u, self.v(), self.half);
        let at = |s: f32, t: f32| {
            (
                self.c.0 + s * a * u.0 + t * b * v.0,
                self.c.1 + s * a * u.1 + t * b * v.1,
            )
        };
        [at(-1., -1.), at(1., -1.), at(1., 1.), at(-1., 1.)]
    }

    /// Grown by `d` on every side.
    pub fn expand(&self, d: f32) -> Self {
        Self {
            half: (self.half.0 + d, self.half.1 + d),
            ..*self
        }
    }

    fn contains(&self, p: Pt) -> bool {
        let (dx, dy) = (p.0 - self.c.0, p.1 - self.c.1);
        let v = self.v();
        (dx * self.u.0 + dy * self.u.1).abs() <= self.half.0
            && (dx * v.0 + dy * v.1).abs() <= self.half.1
    }
}

/// Convex hull (Andrew's monotone chain), counter-clockwise in a y-up frame; collinear points
/// dropped.
pub(crate) fn convex_hull(mut pts: Vec<Pt>) -> Vec<Pt> {
    pts.sort_by(|a, b| a.partial_cmp(b).expect("finite points"));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let cross = |o: Pt, a: Pt, b: Pt| (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0);
    let mut hull: Vec<Pt> = Vec::with_capacity(pts.len() * 2);
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &Pt>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for &p in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// The minimum-area rectangle enclosing `pts` (rotating calipers over the hull's edges: the
/// optimal rectangle has a side on one of them). Degenerate inputs give a zero-size rectangle.
pub(crate) fn min_area_rect(pts: Vec<Pt>) -> RotRect {
    let hull = convex_hull(pts);
    let mut best: Option<(f32, RotRect)> = None;
    let n = hull.len();
    for i in 0..n.max(1) {
        let (a, b) = (hull[i], hull[(i + 1) % n]);
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let u = if len > 0.0 {
            ((b.0 - a.0) / len, (b.1 - a.1) / len)
        } else {
            (1.0, 0.0)
        };
        let v = (-u.1, u.0);
        let (mut s0, mut s1, mut t0, mut t1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in &hull {
            let s = p.0 * u.0 + p.1 * u.1;
            let t = p.0 * v.0 + p.1 * v.1;
            (s0, s1, t0, t1) = (s0.min(s), s1.max(s), t0.min(t), t1.max(t));
        }
        let area = (s1 - s0) * (t1 - t0);
        if best.as_ref().is_none_or(|(a, _)| area < *a) {
            let (sc, tc) = ((s0 + s1) / 2.0, (t0 + t1) / 2.0);
            let rect = RotRect {
                c: (sc * u.0 + tc * v.0, sc * u.1 + tc * v.1),
                u,
                half: ((s1 - s0) / 2.0, (t1 - t0) / 2.0),
            };
            best = Some((area, rect));
        }
    }
    best.map(|(_, r)| r).unwrap_or(RotRect {
        c: (0.0, 0.0),
        u: (1.0, 0.0),
        half: (0.0, 0.0),
    })
}

/// Orders corners as PaddleOCR does: the two leftmost are top-left/bottom-left by y, the two
/// rightmost top-right/bottom-right; returns `[tl, tr, br, bl]`.
pub(crate) fn order_corners(mut pts: [Pt; 4]) -> [Pt; 4] {
    pts.sort_by(|a, b| a.0.partial_cmp(&b.0).expect("finite"));
    let (l0, l1) = if pts[0].1 <= pts[1].1 {
        (pts[0], pts[1])
    } else {
        (pts[1], pts[0])
    };
    let (r0, r1) = if pts[2].1 <= pts[3].1 {
        (pts[2], pts[3])
    } else {
        (pts[3], pts[2])
    };
    [l0, r0, r1, l1]
}

/// Text-line boxes from the detector's probability map (`w`×`h`, row-major), in the coordinates
/// of an image of `img_w`×`img_h`, each `[tl, tr, br, bl]`.
pub(crate) fn boxes(prob: &[f32], w: usize, h: usize, img_w: u32, img_h: u32) -> Vec<[Pt; 4]> {
    let mut label = vec![0u32; w * h];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    let (sx, sy) = (img_w as f32 / w as f32, img_h as f32 / h as f32);
    let mut regions = 0;
    for start in 0..w * h {
        if label[start] != 0 || prob[start] <= BIN_THRESH {
            continue;
        }
        regions += 1;
        if regions > MAX_CANDIDATES {
            break;
        }
        // Flood fill; per row only the extreme pixels matter for the hull.
        let mut extremes: std::collections::HashMap<usize, (usize, usize)> = Default::default();
        label[start] = regions as u32;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            let e = extremes.entry(y).or_insert((x, x));
            *e = (e.0.min(x), e.1.max(x));
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if label[j] == 0 && prob[j] > BIN_THRESH {
                        label[j] = regions as u32;
                        stack.push(j);
                    }
                }
            }
        }
        let pts: Vec<Pt> = extremes
            .iter()
            .flat_map(|(&y, &(x0, x1))| [(x0 as f32, y as f32), (x1 as f32, y as f32)])
            .collect();
        let rect = min_area_rect(pts);
        if rect.half.0.min(rect.half.1) * 2.0 < MIN_SIDE {
            continue;
        }
        if box_score(prob, w, h, &rect) < BOX_THRESH {
            continue;
        }
        let (rw, rh) = (rect.half.0 * 2.0, rect.half.1 * 2.0);
        let grown = rect.expand(rw * rh * UNCLIP_RATIO / (2.0 * (rw + rh)));
        if grown.half.0.min(grown.half.1) * 2.0 < MIN_SIDE + 2.0 {
            continue;
        }
        let corners = grown.corners().map(|(x, y)| {
            (
                (x * sx).clamp(0.0, img_w as f32),
                (y * sy).clamp(0.0, img_h as f32),
            )
        });
        out.push(order_corners(corners));
    }
    out
}

/// Mean probability inside the rectangle (pixel centres).
fn box_score(prob: &[f32], w: usize, h: usize, rect: &RotRect) -> f32 {
    let cs = rect.corners();
    let (x0, x1) = cs
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = cs
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let clampi = |v: f32, hi: usize| (v.round().max(0.0) as usize).min(hi - 1);
    let (mut sum, mut n) = (0f32, 0u32);
    for y in clampi(y0, h)..=clampi(y1, h) {
        for x in clampi(x0, w)..=clampi(x1, w) {
            if rect.expand(0.5).contains((x as f32, y as f32)) {
                sum += prob[y * w + x];
                n += 1;
            }
        }
    }
    if n == 0 { 0.0 } else { sum / n as f32 }
}

fn dist(a: Pt, b: Pt) -> f32 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// The quad `[q0, q1, q2, q3]` sampled into an upright image: `q0` lands top-left, `q1`
/// top-right, `q2` bottom-right, `q3` bottom-left (bilinear mapping of the quad, bilinear
/// sampling, edge pixels repeated outside the image).
pub(crate) fn crop(image: &RgbImage, q: &[Pt; 4]) -> RgbImage {
    let w = dist(q[0], q[1]).max(dist(q[3], q[2])).round().max(1.0) as u32;
    let h = dist(q[0], q[3]).max(dist(q[1], q[2])).round().max(1.0) as u32;
    let mut out = RgbImage::new(w, h);
    let (iw, ih) = (image.width() as i64, image.height() as i64);
    let px = |x: i64, y: i64| {
        image
            .get_pixel(x.clamp(0, iw - 1) as u32, y.clamp(0, ih - 1) as u32)
            .0
    };
    for j in 0..h {
        let t = (j as f32 + 0.5) / h as f32;
        for i in 0..w {
            let s = (i as f32 + 0.5) / w as f32;
            let x = (1.0 - t) * (q[0].0 * (1.0 - s) + q[1].0 * s)
                + t * (q[3].0 * (1.0 - s) + q[2].0 * s)
                - 0.5;
            let y = (1.0 - t) * (q[0].1 * (1.0 - s) + q[1].1 * s)
                + t * (q[3].1 * (1.0 - s) + q[2].1 * s)
                - 0.5;
            let (x0, y0) = (x.floor(), y.floor());
            let (fx, fy) = (x - x0, y - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let (a, b, c, d) = (
                px(x0, y0),
                px(x0 + 1, y0),
                px(x0, y0 + 1),
                px(x0 + 1, y0 + 1),
            );
            let mut p = [0u8; 3];
            for k in 0..3 {
                let v = (a[k] as f32 * (1.0 - fx) + b[k] as f32 * fx) * (1.0 - fy)
                    + (c[k] as f32 * (1.0 - fx) + d[k] as f32 * fx) * fy;
                p[k] = v.round().clamp(0.0, 255.0) as u8;
            }
            out.put_pixel(i, j, Rgb(p));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_size_limits_the_long_side_to_multiples_of_32() {
        assert_eq!(input_size(1080, 2340), (448, 960));
        assert_eq!(input_size(900, 260), (896, 256));
        assert_eq!(input_size(10, 10), (32, 32));
    }

    #[test]
    fn min_area_rect_of_a_rotated_rectangle_is_that_rectangle() {
        // A 40×10 rectangle turned 30°, sampled densely.
        let (c, s) = (30f32.to_radians().cos(), 30f32.to_radians().sin());
        let mut pts = Vec::new();
        for i in 0..=40 {
            for j in 0..=10 {
                let (x, y) = (i as f32 - 20.0, j as f32 - 5.0);
                pts.push((100.0 + x * c - y * s, 50.0 + x * s + y * c));
            }
        }
        let r = min_area_rect(pts);
        let (long, short) = (r.half.0.max(r.half.1), r.half.0.min(r.half.1));
        assert!(
            (long - 20.0).abs() < 0.01 && (short - 5.0).abs() < 0.01,
            "{r:?}"
        );
        assert!((r.c.0 - 100.0).abs() < 0.01 && (r.c.1 - 50.0).abs() < 0.01);
        let axis = if r.half.0 > r.half.1 {
            r.u
        } else {
            (-r.u.1, r.u.0)
        };
        assert!((axis.0 * c + axis.1 * s).abs() > 0.9999, "{axis:?}");
    }

    #[test]
    fn a_region_becomes_an_unclipped_box_in_image_coordinates() {
        // One 20×4 blob in a 40×20 map, image twice the map's size.
        let (w, h) = (40, 20);
        let mut prob = vec![0.0; w * h];
        for y in 8..12 {
            for x in 10..30 {
                prob[y * w + x] = 0.9;
            }
        }
        let b = boxes(&prob, w, h, 80, 40);
        assert_eq!(b.len(), 1);
        // Pixel centres span 19×3; d = 19·3·1.5 / (2·22) ≈ 1.94 on every side, then ×2.
        let [tl, tr, br, bl] = b[0];
        let d = 19.0 * 3.0 * 1.5 / 44.0;
        assert!(
            (tl.0 - (10.0 - d) * 2.0).abs() < 0.01 && (tl.1 - (8.0 - d) * 2.0).abs() < 0.01,
            "{tl:?}"
        );
        assert!(
            (br.0 - (29.0 + d) * 2.0).abs() < 0.01 && (br.1 - (11.0 + d) * 2.0).abs() < 0.01,
            "{br:?}"
        );
        assert!(tr.0 > tl.0 && tr.1 < br.1 && bl.1 > tl.1 && bl.0 < br.0);
    }

    #[test]
    fn weak_and_tiny_regions_are_dropped() {
        let (w, h) = (40, 20);
        let mut prob = vec![0.0; w * h];
        for x in 5..35 {
            prob[3 * w + x] = 0.9; // one pixel tall
        }
        for y in 10..16 {
            for x in 5..35 {
                prob[y * w + x] = 0.4; // above the binarisation threshold, below the box score
            }
        }
        assert!(boxes(&prob, w, h, 40, 20).is_empty());
    }

    #[test]
    fn crop_rectifies_a_quad_into_an_upright_image() {
        // Left half black, right half white; the quad listed from the right edge going left
        // turns the crop around.
        let img = RgbImage::from_fn(
            20,
            10,
            |x, _| if x < 10 { Rgb([0; 3]) } else { Rgb([255; 3]) },
        );
        let q = [(0.0, 0.0), (20.0, 0.0), (20.0, 10.0), (0.0, 10.0)];
        let c = crop(&img, &q);
        assert_eq!((c.width(), c.height()), (20, 10));
        assert_eq!(c.get_pixel(2, 5).0, [0; 3]);
        assert_eq!(c.get_pixel(17, 5).0, [255; 3]);
        let flipped = crop(&img, &[q[2], q[3], q[0], q[1]]);
        assert_eq!(flipped.get_pixel(2, 5).0, [255; 3]);
        // A tall quad read from its top-right corner downwards comes out wide.
        let tall = crop(&img, &[(20.0, 0.0), (20.0, 10.0), (0.0, 10.0), (0.0, 0.0)]);
        assert_eq!((tall.width(), tall.height()), (10, 20));
        assert_eq!(tall.get_pixel(5, 2).0, [255; 3]);
        assert_eq!(tall.get_pixel(5, 17).0, [0; 3]);
    }
}
