//! Reads the text in images with the PP-OCR pipeline, timing it (used by `scripts/bench-ocr.sh`).
//!
//! `cargo run --release -p sandra-models --example ocr -- MODEL_DIR [--runs N] [--json] IMAGE...`
//!
//! Prints each image's text, or with `--json` one JSON object per image: the text, the first
//! run's latency (plans are optimised then), the median of the following runs, and the process's
//! peak RSS so far.

use std::path::PathBuf;
use std::time::Instant;

use sandra_models::vision::ocr::Ocr;

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: ocr MODEL_DIR [--runs N] [--json] IMAGE...")?,
    );
    let (mut runs, mut json, mut images) = (1usize, false, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().ok_or("--runs N")?.parse()?,
            "--json" => json = true,
            _ => images.push(PathBuf::from(a)),
        }
    }
    let t = Instant::now();
    let ocr = Ocr::load(&dir)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    for path in images {
        let img = image::open(&path)?.to_rgb8();
        let mut times = Vec::new();
        let mut text = None;
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            let out = ocr.read(&img)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            text = Some(out);
        }
        let text = text.expect("at least one run");
        let first = times[0];
        let mut rest = if times.len() > 1 {
            times[1..].to_vec()
        } else {
            times.clone()
        };
        rest.sort_by(f64::total_cmp);
        let median = rest[rest.len() / 2];
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "image": path.display().to_string(),
                    "text": text.text(),
                    "load_ms": load_ms,
                    "first_ms": first,
                    "median_ms": median,
                    "runs": times.len(),
                    "peak_rss_kb": peak_rss_kb(),
                })
            );
        } else {
            println!(
                "== {} (first {first:.0} ms, median {median:.0} ms)",
                path.display()
            );
            for l in &text.lines {
                println!("{:.3} {:?}", l.score, l.text);
            }
            println!("--\n{}", text.text());
        }
    }
    Ok(())
}
