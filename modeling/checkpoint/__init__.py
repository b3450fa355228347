"""Checkpoint I/O: reading HF and fairseq weight files, building models from them, writing HF files.

Owns everything between files on disk and model parameters, one module per concern:

- `files`: `CheckpointError`, the `TensorFile` interface of a weights file, the weight-file
  names (``model.safetensors``, ``pytorch_model.bin``, their shard indexes, fairseq
  ``model.pt``) and the shared type aliases;
- `safetensors`: the format through the ``safetensors`` library: `SafetensorsFile`
  (``safe_open``: a private, copy-on-write memory map; tensors in the wanted dtype are zero-copy
  views, others are cast piece by piece through short-lived maps) and the writer
  (`write_safetensors` with the library's ``save_file``, `write_shards`, `TensorSpec`,
  `parse_size`);
- `torch_pickle`: `PickledFile`, read only through ``torch.load(weights_only=True)``, and the
  messages refusing pickles that need more than tensors;
- `fairseq`: the fairseq -> HF key map and what fairseq leaves implicit;
- `discovery`: `open_checkpoint` finds the weights of a directory or file (shards and indexes
  checked) and returns a `Checkpoint`, every tensor under its HF key; `checkpoint_files` lists
  a checkpoint's files without opening them;
- `inference`: config values read from tensor shapes (`find_key`, `shape_facts`,
  `infer_config`, `check_config`);
- `building`: `parameters_on_meta` and the load plan (which key fills which tied parameters);
- `loading`: `load_pretrained`, `resolve_dtype`, `load_state_dict`;
- `saving`: `save_pretrained` and `atomic_directory`.

The dtype names and safetensors dtype codes are `modeling.dtypes`'. Every failure is a
`CheckpointError` whose message names the file and, where there is one, the key.
"""

from .building import parameters_on_meta
from .discovery import Checkpoint, checkpoint_files, open_checkpoint
from .fairseq import GeneratedTensors, fairseq_to_hf_key
from .files import (
    FAIRSEQ_NAME,
    PT_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHT_FILE_NAMES,
    CheckpointError,
    DTypeLike,
    PathLike,
    Shape,
    TensorFile,
)
from .inference import check_config, find_key, infer_config, shape_facts
from .loading import load_pretrained, load_state_dict, resolve_dtype
from .safetensors import SafetensorsFile, TensorSpec, parse_size, write_safetensors, write_shards
from .saving import atomic_directory, save_pretrained
from .torch_pickle import PickledFile

__all__ = [
    "FAIRSEQ_NAME", "PT_INDEX_NAME", "PT_WEIGHTS_NAME", "SAFE_INDEX_NAME", "SAFE_WEIGHTS_NAME", "WEIGHT_FILE_NAMES",
    "CheckpointError", "DTypeLike", "PathLike", "Shape", "TensorFile", "SafetensorsFile", "PickledFile",
    "GeneratedTensors", "Checkpoint", "open_checkpoint", "checkpoint_files", "fairseq_to_hf_key", "find_key", "shape_facts",
    "infer_config", "check_config", "resolve_dtype", "parameters_on_meta", "load_pretrained", "load_state_dict",
    "TensorSpec", "parse_size", "write_safetensors", "write_shards", "save_pretrained", "atomic_directory",
]
