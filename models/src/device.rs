//! The one [`DeviceChoice`]: where a local model runs, as `config.toml` spells it (`auto`, `cpu`,
//! `cuda`), shared by the chat model, Whisper and the configuration.

use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

/// Where a local model runs. `auto` = CUDA when compiled in (feature `cuda`) and present, else CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "cuda:0" | "gpu" => Ok(Self::Cuda),
            other => Err(format!("unknown device `{other}` (auto, cpu, cuda)")),
        }
    }
}

/// Resolves the configured device, logging the choice.
pub fn select_device(choice: DeviceChoice) -> Result<Device, String> {
    let dev = match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => {
            if !cfg!(feature = "cuda") {
                return Err(
                    "device = \"cuda\" but sandra-models was built without the `cuda` feature"
                        .into(),
                );
            }
            Device::new_cuda(0).map_err(|e| format!("opening CUDA device 0: {e}"))?
        }
        DeviceChoice::Auto => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).unwrap_or(Device::Cpu)
            } else {
                Device::Cpu
            }
        }
    };
    tracing::info!(requested = ?choice, device = device_name(&dev), "chat model device");
    Ok(dev)
}

pub(crate) fn device_name(d: &Device) -> &'static str {
    if d.is_cuda() {
        "cuda"
    } else if d.is_metal() {
        "metal"
    } else {
        "cpu"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config.toml` spells the device in lowercase; chat and Whisper read the same values.
    #[test]
    fn device_choice_keeps_its_config_spelling() {
        for (text, choice) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda),
        ] {
            let json = format!("\"{text}\"");
            assert_eq!(serde_json::from_str::<DeviceChoice>(&json).unwrap(), choice);
            assert_eq!(serde_json::to_string(&choice).unwrap(), json);
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice);
        }
        assert_eq!("GPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda);
        assert!(serde_json::from_str::<DeviceChoice>("\"tpu\"").is_err());
        assert_eq!(DeviceChoice::default(), DeviceChoice::Auto);
    }
}
