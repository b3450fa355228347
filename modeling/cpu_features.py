"""What the CPU computes natively: its feature flags and whether it multiplies bf16 natively.

Owns `native_bf16_matmul`, read by the LoRA layers (`modeling.lora`: a frozen bf16 base weight
is multiplied in float32 where bf16 matmuls are emulated) and by spacy_xlmrxl's slow-bf16
warning (`spacy_xlmrxl.backbone.precision`).
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Optional

import torch

__all__ = ["BF16_MATMUL_ENV", "native_bf16_matmul"]

#: environment variable that overrides the detection: ``native`` or ``emulated`` (e.g. to measure
#: on a bf16 CPU what a CPU without it does)
BF16_MATMUL_ENV = "XLMRXL_BF16_MATMUL"


def _cpu_flags() -> Optional[set]:
    """The CPU feature flags of ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``); None if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def native_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 natively: AVX-512 BF16 or AMX-BF16 on x86 (``/proc/cpuinfo``
    flags ``avx512_bf16`` / ``amx_bf16``), the ``bf16`` feature on Arm. Without them torch's bf16
    matmul is emulated, many times slower than fp32 (bench/backbone_forward.py). Where the
    flags cannot be read, torch's CPU capability decides (``AVX2``/``DEFAULT`` on x86: not native)
    and anything else counts as native (no warning when unsure). ``$XLMRXL_BF16_MATMUL``
    (``native`` / ``emulated``) overrides the detection; any other value is a ``ValueError``."""
    forced = os.environ.get(BF16_MATMUL_ENV, "").strip().lower()
    if forced:
        if forced not in ("native", "emulated"):
            raise ValueError(f"{BF16_MATMUL_ENV} must be 'native' or 'emulated', got {forced!r}")
        return forced == "native"
    flags = _cpu_flags()
    if flags is not None:
        return bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX", "AVX2")
    return True
