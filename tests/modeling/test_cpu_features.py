"""Tests of modeling/cpu_features.py: detecting native bf16 matmuls from the CPU's flags."""

from __future__ import annotations

import pytest
import torch

from modeling import cpu_features
from modeling.cpu_features import BF16_MATMUL_ENV, native_bf16_matmul


@pytest.mark.parametrize("flags,capability,machine,expected", [
    ({"avx2", "fma"}, "AVX2", "x86_64", False),             # Zen 3: emulated
    ({"avx512f", "avx512bw"}, "AVX512", "x86_64", False),   # AVX-512 without BF16
    ({"avx512f", "avx512_bf16"}, "AVX512", "x86_64", True),
    ({"avx512f", "amx_bf16", "amx_tile"}, "AVX512", "x86_64", True),
    ({"fp", "asimd", "bf16"}, "DEFAULT", "aarch64", True),
    (None, "AVX2", "x86_64", False),                         # no /proc/cpuinfo: torch's capability
    (None, "AVX512", "x86_64", True),
])
def test_native_bf16_detection(monkeypatch, flags, capability, machine, expected):
    monkeypatch.delenv(BF16_MATMUL_ENV, raising=False)
    monkeypatch.setattr(cpu_features, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: machine)
    native_bf16_matmul.cache_clear()
    try:
        assert native_bf16_matmul() is expected
    finally:
        native_bf16_matmul.cache_clear()


@pytest.mark.parametrize("flags", [{"avx2"}, {"avx512_bf16"}])
def test_the_environment_overrides_the_detection(monkeypatch, flags):
    monkeypatch.setattr(cpu_features, "_cpu_flags", lambda: flags)
    try:
        for value, expected in (("emulated", False), ("native", True), (" Native ", True)):
            monkeypatch.setenv(BF16_MATMUL_ENV, value)
            native_bf16_matmul.cache_clear()
            assert native_bf16_matmul() is expected
        monkeypatch.setenv(BF16_MATMUL_ENV, "fast")
        native_bf16_matmul.cache_clear()
        with pytest.raises(ValueError, match=f"{BF16_MATMUL_ENV} must be 'native' or 'emulated', got 'fast'"):
            native_bf16_matmul()
    finally:
        native_bf16_matmul.cache_clear()
