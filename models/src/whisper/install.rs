//! Installing Whisper weights shipped in CTranslate2 format (faster-whisper's layout).

use std::path::Path;

use super::WhisperError;
use super::ct2::{OutDType, convert_with};
use super::gguf::{QuantPlan, quantize_dir};

/// Converts the CTranslate2 model in `src` (`model.bin`, `config.json`, `tokenizer.json`) into a
/// directory [`super::Transcriber::load`] accepts: `dst/model.safetensors` (f16), `config.json`,
/// `tokenizer.json`, plus `dst/model.gguf` (decoder in q8_0, encoder in f16), which the
/// transcriber prefers by default. Returns the derived config.
pub fn install_from_ct2_dir(src: &Path, dst: &Path) -> Result<super::Config, WhisperError> {
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
    quantize_dir(dst, &dst.join("model.gguf"), QuantPlan::default())?;
    Ok(cfg)
}
