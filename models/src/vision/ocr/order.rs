//! Reading order: lines placed in the page's own frame (so a page photographed sideways or
//! upside down reads in the right order), pieces on the same baseline joined, rows grouped into
//! paragraphs by their vertical gaps.

use super::det::Pt;
use super::{OcrLine, OcrText};

/// One recognised piece of text. `quad` is in reading order: `quad[0]` is where the text starts
/// (its top-left as read), `quad[1]` its top-right, `quad[2]` bottom-right, `quad[3]`
/// bottom-left, in image pixels.
#[derive(Debug, Clone)]
pub(crate) struct Piece {
    pub text: String,
    pub score: f32,
    pub quad: [Pt; 4],
}

/// Pieces whose centres are closer than this many line heights (across the text) share a row.
const SAME_ROW: f32 = 0.5;
/// A row starts a new paragraph when its centre is further than this many line heights below
/// the previous row's (a blank line or more in between).
const PARAGRAPH_GAP: f32 = 1.6;

fn sub(a: Pt, b: Pt) -> Pt {
    (a.0 - b.0, a.1 - b.1)
}
fn dot(a: Pt, b: Pt) -> f32 {
    a.0 * b.0 + a.1 * b.1
}
fn norm(a: Pt) -> f32 {
    dot(a, a).sqrt()
}

/// The page's reading direction: the mean direction (weighted by text length) of the pieces
/// that read along the most common of the four axis directions. Unit length.
fn page_direction(pieces: &[Piece]) -> Pt {
    let dirs: Vec<(Pt, f32)> = pieces
        .iter()
        .map(|p| {
            let d = sub(p.quad[1], p.quad[0]);
            let d = (
                d.0 + p.quad[2].0 - p.quad[3].0,
                d.1 + p.quad[2].1 - p.quad[3].1,
            );
            let n = norm(d).max(f32::EPSILON);
            ((d.0 / n, d.1 / n), p.text.chars().count() as f32)
        })
        .collect();
    // 0: right, 1: down, 2: left, 3: up (image coordinates, y down).
    let bin = |d: Pt| ((d.1.atan2(d.0) / std::f32::consts::FRAC_PI_2).round() as i32).rem_euclid(4);
    let mut weight = [0f32; 4];
    for (d, w) in &dirs {
        weight[bin(*d) as usize] += w;
    }
    let best = (0..4)
        .max_by(|&a, &b| weight[a].total_cmp(&weight[b]).then(b.cmp(&a)))
        .unwrap_or(0) as i32;
    let sum = dirs
        .iter()
        .filter(|(d, _)| bin(*d) == best)
        .fold((0f32, 0f32), |acc, (d, w)| {
            (acc.0 + d.0 * w, acc.1 + d.1 * w)
        });
    let n = norm(sum);
    if n > 0.0 {
        (sum.0 / n, sum.1 / n)
    } else {
        (1.0, 0.0)
    }
}

/// A piece in the page frame: `u` along the reading direction, `v` down the page.
struct Placed {
    piece: Piece,
    u0: f32,
    u1: f32,
    v: f32,
    height: f32,
}

struct Row {
    pieces: Vec<Placed>,
}

impl Row {
    fn v(&self) -> f32 {
        self.pieces.iter().map(|p| p.v).sum::<f32>() / self.pieces.len() as f32
    }
    fn height(&self) -> f32 {
        self.pieces.iter().map(|p| p.height).sum::<f32>() / self.pieces.len() as f32
    }
}

/// Orders the pieces, joins rows and groups paragraphs.
pub(crate) fn arrange(pieces: Vec<Piece>) -> OcrText {
    if pieces.is_empty() {
        return OcrText::default();
    }
    let d = page_direction(&pieces);
    let n = (-d.1, d.0);
    let mut placed: Vec<Placed> = pieces
        .into_iter()
        .map(|piece| {
            let q = piece.quad;
            let us = q.map(|p| dot(p, d));
            let vs = q.map(|p| dot(p, n));
            let u0 = us.iter().copied().fold(f32::MAX, f32::min);
            let u1 = us.iter().copied().fold(f32::MIN, f32::max);
            let v0 = vs.iter().copied().fold(f32::MAX, f32::min);
            let v1 = vs.iter().copied().fold(f32::MIN, f32::max);
            // The height across the text, not across the (possibly skewed) bounding box.
            let height = (norm(sub(q[3], q[0])) + norm(sub(q[2], q[1]))) / 2.0;
            Placed {
                piece,
                u0,
                u1,
                v: (v0 + v1) / 2.0,
                height: height.min(v1 - v0).max(1.0),
            }
        })
        .collect();
    placed.sort_by(|a, b| a.v.total_cmp(&b.v).then(a.u0.total_cmp(&b.u0)));

    let mut rows: Vec<Row> = Vec::new();
    for p in placed {
        if let Some(row) = rows.last_mut()
            && (p.v - row.v()).abs() < SAME_ROW * p.height.min(row.height())
        {
            row.pieces.push(p);
            continue;
        }
        rows.push(Row { pieces: vec![p] });
    }

    let mut text = OcrText::default();
    let mut paragraph: Vec<String> = Vec::new();
    let mut prev: Option<(f32, f32)> = None;
    for mut row in rows {
        row.pieces.sort_by(|a, b| a.u0.total_cmp(&b.u0));
        let (v, height) = (row.v(), row.height());
        if let Some((pv, ph)) = prev
            && v - pv > PARAGRAPH_GAP * (height + ph) / 2.0
            && !paragraph.is_empty()
        {
            text.paragraphs.push(paragraph.join("\n"));
            paragraph.clear();
        }
        prev = Some((v, height));
        let line_text = row
            .pieces
            .iter()
            .map(|p| p.piece.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let chars: f32 = row
            .pieces
            .iter()
            .map(|p| p.piece.text.chars().count() as f32)
            .sum();
        let score = row
            .pieces
            .iter()
            .map(|p| p.piece.score * p.piece.text.chars().count() as f32)
            .sum::<f32>()
            / chars.max(1.0);
        let u0 = row.pieces.iter().map(|p| p.u0).fold(f32::MAX, f32::min);
        let u1 = row.pieces.iter().map(|p| p.u1).fold(f32::MIN, f32::max);
        let (v0, v1) = (v - height / 2.0, v + height / 2.0);
        let at = |u: f32, v: f32| (u * d.0 + v * n.0, u * d.1 + v * n.1);
        paragraph.push(line_text.clone());
        text.lines.push(OcrLine {
            text: line_text,
            score,
            quad: [at(u0, v0), at(u1, v0), at(u1, v1), at(u0, v1)],
        });
    }
    if !paragraph.is_empty() {
        text.paragraphs.push(paragraph.join("\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A piece `w`×`h` at (x, y) on an upright page, then the page turned by `quarter`×90°
    /// clockwise (page size 1000×1000).
    fn piece(text: &str, x: f32, y: f32, w: f32, h: f32, quarter: u32) -> Piece {
        let turn = |p: Pt| match quarter % 4 {
            0 => p,
            1 => (1000.0 - p.1, p.0),
            2 => (1000.0 - p.0, 1000.0 - p.1),
            _ => (p.1, 1000.0 - p.0),
        };
        Piece {
            text: text.into(),
            score: 0.9,
            quad: [(x, y), (x + w, y), (x + w, y + h), (x, y + h)].map(turn),
        }
    }

    fn page(quarter: u32) -> Vec<Piece> {
        // Given out of order: two paragraphs; "Total:" and "$12.00" share a baseline.
        vec![
            piece("$12.00", 600.0, 402.0, 150.0, 30.0, quarter),
            piece("second line", 100.0, 140.0, 300.0, 30.0, quarter),
            piece("Hello world", 100.0, 100.0, 300.0, 30.0, quarter),
            piece("Total:", 100.0, 400.0, 120.0, 30.0, quarter),
            piece("Thanks", 100.0, 440.0, 160.0, 30.0, quarter),
        ]
    }

    #[test]
    fn rows_join_and_paragraphs_split_in_every_page_orientation() {
        for quarter in 0..4 {
            let t = arrange(page(quarter));
            assert_eq!(
                t.paragraphs,
                ["Hello world\nsecond line", "Total: $12.00\nThanks"],
                "page turned {quarter}×90°"
            );
            assert_eq!(t.lines.len(), 4);
        }
    }

    #[test]
    fn slightly_skewed_lines_keep_their_order() {
        // Lines 3° off horizontal: the right end of a line is lower than the next line's left.
        let a = 3f32.to_radians();
        let skew = |p: Pt| (p.0 * a.cos() - p.1 * a.sin(), p.0 * a.sin() + p.1 * a.cos());
        let pieces: Vec<Piece> = ["one", "two", "three"]
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut p = piece(t, 100.0, 100.0 + 36.0 * i as f32, 800.0, 30.0, 0);
                p.quad = p.quad.map(skew);
                p
            })
            .rev()
            .collect();
        assert_eq!(arrange(pieces).paragraphs, ["one\ntwo\nthree"]);
    }

    #[test]
    fn row_quads_are_in_image_coordinates() {
        let t = arrange(vec![piece("abc", 100.0, 100.0, 300.0, 30.0, 0)]);
        let q = t.lines[0].quad;
        for (got, want) in q.iter().zip([
            (100.0, 100.0),
            (400.0, 100.0),
            (400.0, 130.0),
            (100.0, 130.0),
        ]) {
            assert!(
                (got.0 - want.0).abs() < 0.01 && (got.1 - want.1).abs() < 0.01,
                "{q:?}"
            );
        }
    }
}
