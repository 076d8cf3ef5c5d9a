//! `--device` and `--dtype`: the only place that knows which Burn devices
//! this binary was built with (feature flags `wgpu` and `cuda`).

use anyhow::{Result, bail};
use ember_model::{DType, Device};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// Burn's CPU backend (always built).
    Flex,
    /// wgpu: Vulkan, Metal or DX12 (build with `--features wgpu`).
    Wgpu,
    /// NVIDIA CUDA (build with `--features cuda`).
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeChoice {
    F32,
    F16,
    Bf16,
}

impl DtypeChoice {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

impl DeviceChoice {
    pub fn device(self) -> Result<Device> {
        match self {
            Self::Flex => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            other => bail!(
                "device `{}` is not built into this binary; rebuild with `--features {}`",
                other.name(),
                other.name()
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }
}
