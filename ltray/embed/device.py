"""Device and precision choice for the text encoder, as pure functions.

Kept free of torch calls so that the GPU and bf16 branches are testable on any
machine: the caller passes in what the hardware offers (``probe_hardware``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Device = Literal["cpu", "cuda"]
DType = Literal["fp32", "bf16", "fp16"]

# Whether `auto` may pick bf16 on a CPU with native bf16 matmul. Set from the
# benchmark's accuracy check (benchmarks/embed_throughput.py): every MovieLens
# vector must keep cosine >= 0.999 to its fp32 vector. Measured with the default
# all-MiniLM-L6-v2 on all 9,742 items: min cosine 0.99992 (AVX512-BF16/AMX Xeon).
# Another model may differ: set embed.dtype=fp32 to opt out.
CPU_BF16_VALIDATED = True


@dataclass(frozen=True)
class Hardware:
    cuda_available: bool
    cpu_bf16: bool  # native bf16 matmul (AVX512-BF16 or AMX)
    cuda_bf16: bool = False


def probe_hardware() -> Hardware:
    import torch

    cuda = torch.cuda.is_available()
    cpu_bf16 = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return Hardware(cuda_available=cuda, cpu_bf16=cpu_bf16,
                    cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()))


def choose_device(requested: str, hw: Hardware) -> Device:
    if requested == "cuda" and not hw.cuda_available:
        raise ValueError("embed.device=cuda was asked for but no CUDA device is visible")
    if requested == "auto":
        return "cuda" if hw.cuda_available else "cpu"
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {requested!r}; use auto, cpu or cuda")
    return requested  # type: ignore[return-value]


def choose_dtype(requested: str, device: Device, hw: Hardware,
                 cpu_bf16_validated: bool = CPU_BF16_VALIDATED) -> DType:
    """``auto``: fp16 on a GPU; bf16 on a CPU with native bf16 once validated; else fp32."""
    if requested == "auto":
        if device == "cuda":
            return "fp16"
        return "bf16" if (hw.cpu_bf16 and cpu_bf16_validated) else "fp32"
    if requested not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown dtype {requested!r}; use auto, fp32, bf16 or fp16")
    return requested  # type: ignore[return-value]
