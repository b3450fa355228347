"""Dtype names: the one table of the dtypes that modeling reads, writes and accepts by name.

Owns the mapping between torch dtypes, their codes in a safetensors header (``"BF16"``) and the
names that ``dtype=`` arguments and ``config.json``'s ``torch_dtype`` use (``"bfloat16"``,
``"bf16"``, ...); every lookup below is derived from `DTYPE_TABLE`.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import torch


class DTypeRow(NamedTuple):
    """One dtype: its safetensors code and the names it is accepted under as a model dtype
    (HF's ``torch_dtype`` name first; none for dtypes a model is never built in)."""

    dtype: torch.dtype
    safetensors: str
    names: Tuple[str, ...] = ()


def _table() -> Tuple[DTypeRow, ...]:
    rows = [
        DTypeRow(torch.float64, "F64"),
        DTypeRow(torch.float32, "F32", ("float32", "float", "fp32")),
        DTypeRow(torch.float16, "F16", ("float16", "half", "fp16")),
        DTypeRow(torch.bfloat16, "BF16", ("bfloat16", "bf16")),
        DTypeRow(torch.int64, "I64"),
        DTypeRow(torch.int32, "I32"),
        DTypeRow(torch.int16, "I16"),
        DTypeRow(torch.int8, "I8"),
        DTypeRow(torch.uint8, "U8"),
        DTypeRow(torch.bool, "BOOL"),
    ]
    for code, attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                       ("U32", "uint32"), ("U64", "uint64")):
        if hasattr(torch, attr):  # newer torch releases only
            rows.append(DTypeRow(getattr(torch, attr), code))
    return tuple(rows)


DTYPE_TABLE: Tuple[DTypeRow, ...] = _table()
# safetensors header code -> dtype, and back
SAFETENSORS_DTYPES: Dict[str, torch.dtype] = {row.safetensors: row.dtype for row in DTYPE_TABLE}
SAFETENSORS_CODES: Dict[torch.dtype, str] = {row.dtype: row.safetensors for row in DTYPE_TABLE}
# every name a model dtype is accepted under -> dtype
DTYPE_NAMES: Dict[str, torch.dtype] = {name: row.dtype for row in DTYPE_TABLE for name in row.names}
# the values ``config.json``'s ``torch_dtype`` may hold
TORCH_DTYPE_NAMES: Tuple[str, ...] = tuple(row.names[0] for row in DTYPE_TABLE if row.names)


def dtype_name(dtype: torch.dtype) -> Optional[str]:
    """HF's ``torch_dtype`` name of ``dtype`` (``"bfloat16"``); ``None`` when it is no model dtype."""
    return next((row.names[0] for row in DTYPE_TABLE if row.dtype == dtype and row.names), None)


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()
