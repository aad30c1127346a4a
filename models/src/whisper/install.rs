//! Installing Whisper weights shipped in CTranslate2 format (faster-whisper's layout).

use std::path::Path;

use super::WhisperError;
use super::ct2::{OutDType, convert_with};

/// Converts the CTranslate2 model in `src` (`model.bin`, `config.json`, `tokenizer.json`) into a
/// directory [`super::Transcriber::load`] accepts: `dst/model.safetensors` (f16), `config.json`,
/// `tokenizer.json`. Returns the derived config. (A quantized `model.gguf` can be added with
/// [`super::gguf::quantize_dir`]; on CPU it measured slower than dense weights, so it is not
/// written by default.)
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
    Ok(cfg)
}
