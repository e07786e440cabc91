"""What device and dtype this run gets. One place decides; configs may override.

T4 (sm_75) and P100 (sm_60) have no bf16 (it is emulated and slow there): fp16. Ampere and newer
(sm_80+): bf16. CPU: bf16 only when the CPU really computes it fast (AVX512-BF16 / AMX); otherwise
fp32, because emulated bf16 matmul runs ~100x slower than fp32 on an AVX2-only CPU (0.95 vs 184 GFLOP/s,
measured on one), while an AVX512-BF16 CPU (Zen 4) runs it at 2.2x fp32 (429 vs 193 GFLOP/s on another:
python bench/matmul_peak.py).
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field

from .errors import ConfigError

log = logging.getLogger("kaggle_kit")

DTYPES = ("float32", "float16", "bfloat16")
QUANTS = ("nf4", "int8", "none")  # how a base model's weights are held: 4-bit, 8-bit, or the run's dtype


@dataclass(frozen=True)
class Profile:
    """The hardware decision for one run."""

    device: str  # "cuda" or "cpu"
    dtype: str  # weights and activations for inference
    compute_dtype: str  # bitsandbytes 4-bit compute dtype and autocast dtype for training
    gpu_name: str = ""
    capability: tuple[int, int] | None = None
    n_gpus: int = 0
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    explicit: bool = False  # the dtype was asked for (--dtype), not picked for the hardware

    def bnb_4bit(self) -> dict:
        """Keyword arguments for transformers.BitsAndBytesConfig: NF4, double quantisation."""
        return {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": self.compute_dtype,
        }

    def quantization(self, quant: str):
        """transformers.BitsAndBytesConfig for 'nf4' (QLoRA: 4-bit NF4, double quantisation) or 'int8'
        (LLM.int8; several LMSYS teams found an 8-bit base faster than 4-bit on a T4); None for 'none'."""
        if quant == "none":
            return None
        if quant not in QUANTS:
            raise ConfigError("quant", f"{quant!r} is not one of {list(QUANTS)}")
        import torch
        from transformers import BitsAndBytesConfig

        if quant == "int8":
            if self.capability is not None and self.capability < (7, 5):
                raise ConfigError(
                    "quant",
                    f"int8 needs sm_75 or newer (bitsandbytes' int8 matmul uses cuBLASLt IMMA); this GPU is "
                    f"sm_{self.capability[0]}{self.capability[1]} ({self.gpu_name}): use nf4",
                )
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(**{**self.bnb_4bit(), "bnb_4bit_compute_dtype": getattr(torch, self.compute_dtype)})

    def torch_dtype(self):
        """The torch dtype object for `dtype`."""
        import torch

        return getattr(torch, self.dtype)


def dtype_for_capability(major: int, minor: int) -> str:
    """fp16 below sm_80 (T4 sm_75, P100 sm_60, V100 sm_70), bf16 from Ampere (sm_80) on."""
    return "bfloat16" if major >= 8 else "float16"


def cpu_has_native_bf16(cpuinfo: str) -> bool:
    """True when /proc/cpuinfo's flags name a bf16 dot-product unit (AVX512-BF16 or AMX-BF16)."""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """True when the CPU has AMX-BF16 tiles (Intel Sapphire Rapids on): torch's own CPU flash attention
    runs bf16 on them, faster than the kit's blocked attention (infer/fast/attention.py)."""
    return "amx_bf16" in cpu_flags()


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_fast() -> bool:
    """True when the CPU has native bf16 and torch's oneDNN will use it.

    Decided from flags only, never by timing: worker processes and ensemble members each decide again,
    and a timing race under load once gave one worker bf16 and the other fp32 (different submissions).
    """
    try:
        with open("/proc/cpuinfo") as fh:
            native = cpu_has_native_bf16(fh.read())
    except OSError:
        native = False
    return native and onednn_has_bf16()


@functools.lru_cache(maxsize=1)
def onednn_has_bf16() -> bool:
    """True when torch's oneDNN has bf16 kernels on this CPU (AVX512BW/VL/DQ or AVX-NE-CONVERT; on an
    AVX2-only CPU it refuses bf16 ops such as packing a bf16 weight). Not the same as native bf16:
    AVX512 without AVX512-BF16 has the kernels but computes bf16 slowly."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def detect(dtype: str | None = None, device: str | None = None) -> Profile:
    """Pick device and dtype for this machine; `dtype`/`device` override the choice."""
    import torch

    if dtype is not None and dtype not in DTYPES:
        raise ConfigError("dtype", f"{dtype!r} is not one of {DTYPES}")
    if device not in (None, "cpu", "cuda"):
        raise ConfigError("device", f"{device!r} is not one of cpu, cuda")
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda requested but torch sees no GPU")
    if use_cuda:
        major, minor = torch.cuda.get_device_capability(0)
        check_cuda_arch(major, minor, torch.cuda.get_arch_list())
        chosen = dtype_for_capability(major, minor)
        return Profile(
            "cuda",
            dtype or chosen,
            dtype or chosen,
            torch.cuda.get_device_name(0),
            (major, minor),
            torch.cuda.device_count(),
            reason=f"sm_{major}{minor} -> {chosen}",
            explicit=dtype is not None,
        )
    fast = cpu_bf16_is_fast()
    chosen = "bfloat16" if fast else "float32"
    reason = "CPU with native bf16" if fast else "CPU without native bf16 (emulated bf16 is slow)"
    return Profile("cpu", dtype or chosen, dtype or chosen, reason=reason, explicit=dtype is not None)


# Model families whose activations overflow fp16's range (65,504) to inf / NaN: Gemma 2 and Gemma 3 were
# trained in bf16 and their residual stream grows past it (transformers issues #29271, #31806, #36822).
FP16_OVERFLOWS = ("gemma2", "gemma3", "gemma3_text")


def guard_half(profile: Profile, model_type: str) -> Profile:
    """The profile with fp32 instead of fp16 for a model family known to overflow in fp16 (a T4 or
    P100 profile), said once in the log; an fp16 the user asked for is refused, naming why."""
    from dataclasses import replace

    if model_type not in FP16_OVERFLOWS or "float16" not in (profile.dtype, profile.compute_dtype):
        return profile
    why = f"{model_type} models overflow to NaN in float16"
    if profile.explicit:
        raise ConfigError("dtype", f"{why}; use float32 (or bfloat16 on sm_80+ / a CPU with native bf16)")
    log.warning("%s: computing in float32 instead (%s); quantise the weights (nf4) to fit", why, profile.reason)
    return replace(profile, dtype="float32", compute_dtype="float32", reason=f"{profile.reason}; {why} -> float32")


def check_cuda_arch(major: int, minor: int, arch_list: list[str]) -> None:
    """Fail fast when this torch build has no kernels for the GPU (P100 sm_60 on CUDA 12.8+ builds)."""
    if not arch_list:
        return
    have = {int(re.sub(r"\D", "", a.split("_")[1])) for a in arch_list if a.startswith("sm_")}  # sm_90a too
    if have and major * 10 + minor not in have and not any(h // 10 == major and h <= major * 10 + minor for h in have):
        from .errors import KitError

        raise KitError(
            f"this torch build has no kernels for sm_{major}{minor} (it has {sorted(have)}); "
            "on Kaggle's P100 pick the T4 x2 accelerator or install a torch build with sm_60"
        )
