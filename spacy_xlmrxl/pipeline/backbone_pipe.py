"""`BackbonePipe`: saving and loading components whose models contain torch backbones.

A component directory holds ``cfg`` (JSON), ``model`` (the thinc layers' msgpack, torch weights
left out) and, per backbone, a directory (``backbone``, ``backbone_1``, ...) that is an HF
checkpoint: ``config.json``, (sharded) ``model*.safetensors``, ``sentencepiece.bpe.model``. The
directory is written into a temporary sibling and renamed into place
(`modeling.checkpoint.atomic_directory`); loading reads every file before it changes the
component, and memory-maps the weights (no copy; a ``dtype`` setting converts tensor by
tensor). A backbone with ``quantize = "int8"`` saves its float weights, so the directory stays a
float HF checkpoint and loading quantises again (identical predictions). A backbone with LoRA
adapters is written as its base plus ``lora/`` (`spacy_xlmrxl.backbone.weights`), or, with
``lora_save = "adapters"``, as adapters + task head + a reference to the base checkpoint
(`spacy_xlmrxl.backbone.adapters`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Tuple, Union

import srsly
import torch
from spacy import util
from thinc.api import Model

from modeling.checkpoint import atomic_directory
from modeling.lora import lora_layers

from ..backbone.adapters import load_backbone_dir, save_adapters_dir
from ..backbone.devices import torch_device
from ..backbone.nodes import backbone_nodes, backbone_shim, install_backbone
from ..backbone.source import TOKENIZER_FILE
from ..backbone.weights import save_module_dir

PathLike = Union[str, os.PathLike]


BACKBONE_DIR = "backbone"


def backbone_dir_name(index: int) -> str:
    return BACKBONE_DIR if index == 0 else f"{BACKBONE_DIR}_{index}"


@contextlib.contextmanager
def _weights_left_out(nodes: List[Model]) -> Iterator[None]:
    """While active, the model's msgpack omits torch weights and tokenizer models."""
    saved = []
    for node in nodes:
        shim = backbone_shim(node)
        saved.append((shim.external, node.attrs.get("tokenizer_model")))
        shim.external = True
        node.attrs["tokenizer_model"] = None
    try:
        yield
    finally:
        for node, (external, proto) in zip(nodes, saved):
            backbone_shim(node).external = external
            node.attrs["tokenizer_model"] = proto


class BackbonePipe:
    """Serialisation mixin for TrainablePipes with torch backbones (see the module docstring).

    The host class provides ``vocab``, ``model``, ``cfg`` and may override `_after_load`
    (e.g. to rebuild label-derived state from ``cfg``).
    """

    vocab: Any
    model: Model
    cfg: Dict[str, Any]

    def _after_load(self) -> None:
        """Hook run after ``cfg`` and the model were loaded."""

    # -- disk
    def to_disk(self, path: PathLike, *, exclude: Iterable[str] = tuple()) -> None:
        path = util.ensure_path(path)
        nodes = [node for node in backbone_nodes(self.model) if backbone_shim(node).has_module]
        with atomic_directory(path) as staging:
            serialize: Dict[str, Callable[[Path], Any]] = {
                "cfg": lambda p: srsly.write_json(p, self.cfg),
                "vocab": lambda p: self.vocab.to_disk(p, exclude=exclude),
                "model": lambda p: self._write_model(p, nodes),
            }
            for index, node in enumerate(nodes):
                serialize[backbone_dir_name(index)] = lambda p, node=node, index=index: _save_backbone(
                    node, p, final=path / backbone_dir_name(index))
            util.to_disk(staging, serialize, exclude)

    def _write_model(self, path: Path, nodes: List[Model]) -> None:
        with _weights_left_out(nodes):
            data = self.model.to_bytes()
        path.write_bytes(data)

    def from_disk(self, path: PathLike, *, exclude: Iterable[str] = tuple()) -> "BackbonePipe":
        path = util.ensure_path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such component directory")
        cfg = srsly.read_json(path / "cfg") if (path / "cfg").exists() and "cfg" not in exclude else None
        model_bytes = _read(path / "model") if "model" not in exclude else None
        loaded: List[Tuple[Model, torch.nn.Module, bytes, Any]] = []
        for index, node in enumerate(backbone_nodes(self.model)):
            folder = path / backbone_dir_name(index)
            if "model" in exclude or not folder.is_dir():
                if model_bytes is not None:
                    raise FileNotFoundError(f"{folder}: the backbone weights of {path} are missing")
                continue
            shim = backbone_shim(node)
            # the layer's dtype setting (e.g. a dtype = "bfloat16" override at spacy.load) converts
            # tensor by tensor while loading; null keeps the saved dtype (memory-mapped, no copy)
            source = node.attrs.get("source")
            module, base = load_backbone_dir(shim.model_cls, folder, source=source, device=torch_device(self.model.ops),
                                             **shim.model_kwargs)
            loaded.append((node, module, _read(folder / TOKENIZER_FILE), base))
        # everything is read: now change the component
        if cfg is not None:
            self.cfg.update(cfg)
        if "vocab" not in exclude and (path / "vocab").exists():
            self.vocab.from_disk(path / "vocab", exclude=exclude)
        if model_bytes is not None:
            self.model.from_bytes(model_bytes)
        for node, module, proto, base in loaded:
            install_backbone(node, module, proto, base=base)
        self._after_load()
        return self

    # -- bytes (the weights travel inside the model's msgpack; fine below 4 GiB)
    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        serialize = {
            "cfg": lambda: srsly.json_dumps(self.cfg),
            "vocab": lambda: self.vocab.to_bytes(exclude=exclude),
            "model": lambda: self.model.to_bytes(),
        }
        return util.to_bytes(serialize, exclude)

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "BackbonePipe":
        def load_model(data: bytes) -> None:
            self.model.from_bytes(data)
            for node in backbone_nodes(self.model):
                node.attrs["tokenizer"] = None  # rebuilt from the restored tokenizer model
                shim = backbone_shim(node)
                if shim.has_module:
                    install_backbone(node, shim.float_module, node.attrs["tokenizer_model"], base=shim.base)

        deserialize = {
            "cfg": lambda b: self.cfg.update(srsly.json_loads(b)),
            "vocab": lambda b: self.vocab.from_bytes(b, exclude=exclude),
            "model": load_model,
        }
        util.from_bytes(bytes_data, deserialize, exclude)
        self._after_load()
        return self


def _save_backbone(node: Model, path: Path, *, final: Path) -> None:
    """Write a backbone layer's module as ``path`` (staged; ``final``: where it will live)."""
    shim = backbone_shim(node)
    tokenizer_model = node.attrs.get("tokenizer_model")
    if shim.lora_save == "adapters" and lora_layers(shim.float_module):
        save_adapters_dir(shim.float_module, path, base=shim.base, tokenizer_model=tokenizer_model, replaces=final)
    else:
        save_module_dir(shim.float_module, path, tokenizer_model=tokenizer_model)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot read ({err.strerror or err})") from err
