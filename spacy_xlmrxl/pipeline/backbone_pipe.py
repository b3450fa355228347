"""`BackbonePipe`: saving and loading components whose models contain torch backbones.

A component directory holds ``cfg`` (JSON), ``model`` (the thinc layers' msgpack, torch weights
left out), ``save.json`` (the id of the pipeline save it belongs to, `.saving`) and, per
backbone, a directory (``backbone``, ``backbone_1``, ...) that is an HF checkpoint:
``config.json``, (sharded) ``model*.safetensors``, ``sentencepiece.bpe.model``. The directory
is written into a temporary sibling and renamed into place
(`modeling.checkpoint.atomic_directory`); loading reads and checks every file before it changes
the component (a file that cannot be used raises an error naming it; a directory beside an
``xlmrxl_transformer`` of another save raises `MixedSaveError`; the host class checks ``cfg``
against the model, `_check_loaded`), and memory-maps the weights (no copy; a ``dtype`` setting
converts tensor by tensor). A backbone with ``quantize = "int8"`` saves its float weights, so
the directory stays a float HF checkpoint and loading quantises again (identical predictions).
A backbone with LoRA adapters is written as its base plus ``lora/``
(`spacy_xlmrxl.backbone.weights`), or, with ``lora_save = "adapters"``, as adapters + task head +
a reference to the base checkpoint (`spacy_xlmrxl.backbone.adapters`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import srsly
import torch
from spacy import util
from thinc.api import Model
from thinc.util import convert_recursive, is_xp_array

from modeling.checkpoint import atomic_directory
from modeling.lora import lora_layers

from ..backbone.adapters import load_backbone_dir, save_adapters_dir
from ..backbone.devices import torch_device
from ..backbone.nodes import backbone_nodes, backbone_shim, install_backbone
from ..backbone.source import TOKENIZER_FILE, load_tokenizer
from ..backbone.weights import save_module_dir
from .saving import SAVE_FILE, PipelineFileError, check_saved_together, save_stamp

PathLike = Union[str, os.PathLike]
ModelMsg = Dict[str, Any]  # a thinc model's `to_dict`, as its msgpack decodes


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
    (e.g. to rebuild label-derived state from ``cfg``) and `_check_loaded`.
    """

    vocab: Any
    model: Model
    cfg: Dict[str, Any]
    #: an ``xlmrxl_transformer`` whose backbone other components listen to (`.saving`)
    shares_backbone = False

    def _after_load(self) -> None:
        """Hook run after ``cfg`` and the model were loaded."""

    def _check_loaded(self, cfg: Dict[str, Any], model_msg: Optional[ModelMsg], *, origin: str) -> None:
        """Hook run before anything changes: raise if ``cfg`` (read from ``origin``, merged into
        the current one) does not fit ``model_msg`` (the model's decoded msgpack, None when
        excluded)."""

    # -- disk
    def to_disk(self, path: PathLike, *, exclude: Iterable[str] = tuple()) -> None:
        path = util.ensure_path(path)
        nodes = [node for node in backbone_nodes(self.model) if backbone_shim(node).has_module]
        stamp = save_stamp(self.vocab, path, shared_backbone=self.shares_backbone)
        with atomic_directory(path) as staging:
            serialize: Dict[str, Callable[[Path], Any]] = {
                "cfg": lambda p: srsly.write_json(p, self.cfg),
                "vocab": lambda p: self.vocab.to_disk(p, exclude=exclude),
                "model": lambda p: self._write_model(p, nodes),
            }
            for index, node in enumerate(nodes):
                serialize[backbone_dir_name(index)] = lambda p, node=node, index=index: _save_backbone(
                    node, p, final=path / backbone_dir_name(index))
            serialize[SAVE_FILE] = lambda p: srsly.write_json(p, stamp)  # last: the directory is complete
            util.to_disk(staging, serialize, exclude)

    def _write_model(self, path: Path, nodes: List[Model]) -> None:
        with _weights_left_out(nodes):
            data = self.model.to_bytes()
        path.write_bytes(data)

    def from_disk(self, path: PathLike, *, exclude: Iterable[str] = tuple()) -> "BackbonePipe":
        path = util.ensure_path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such component directory")
        check_saved_together(path)
        cfg = _read_json(path / "cfg") if "cfg" not in exclude else None
        model_msg = self._read_model_msg(_read(path / "model"), path / "model") if "model" not in exclude else None
        self._check_loaded({**self.cfg, **(cfg or {})}, model_msg, origin=str(path / "cfg"))
        loaded = self._read_backbones(path) if model_msg is not None else []
        # everything is read and checked: now change the component
        if cfg is not None:
            self.cfg.update(cfg)
        if "vocab" not in exclude and (path / "vocab").exists():
            self.vocab.from_disk(path / "vocab", exclude=exclude)
        if model_msg is not None:
            self._apply_model_msg(model_msg)
        for node, module, proto, base in loaded:
            install_backbone(node, module, proto, base=base)
        self._after_load()
        return self

    def _read_backbones(self, path: Path) -> List[Tuple[Model, torch.nn.Module, bytes, Any]]:
        """Each backbone directory of ``path``: its tokenizer checked, its weights loaded
        (memory-mapped)."""
        loaded: List[Tuple[Model, torch.nn.Module, bytes, Any]] = []
        for index, node in enumerate(backbone_nodes(self.model)):
            folder = path / backbone_dir_name(index)
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: the backbone weights of {path} are missing")
            proto = _read(folder / TOKENIZER_FILE)
            load_tokenizer(proto, origin=str(folder / TOKENIZER_FILE))  # names the file if it is no model
            shim = backbone_shim(node)
            # the layer's dtype setting (e.g. a dtype = "bfloat16" override at spacy.load) converts
            # tensor by tensor while loading; null keeps the saved dtype (memory-mapped, no copy)
            source = node.attrs.get("source")
            module, base = load_backbone_dir(shim.model_cls, folder, source=source, device=torch_device(self.model.ops),
                                             **shim.model_kwargs)
            loaded.append((node, module, proto, base))
        return loaded

    def _read_model_msg(self, data: bytes, origin: Union[Path, str]) -> ModelMsg:
        """The model's msgpack, decoded and checked against this model's layers."""
        msg = _msgpack_loads(data, origin)
        n_layers = len(list(self.model.walk()))
        if not isinstance(msg, dict) or not isinstance(msg.get("nodes"), list) or len(msg["nodes"]) != n_layers:
            raise PipelineFileError(f"{origin}: not the model of this component (expected {n_layers} layers as "
                                    "the component's config builds them)")
        return msg

    def _apply_model_msg(self, msg: ModelMsg) -> None:
        self.model.from_dict(convert_recursive(is_xp_array, self.model.ops.asarray, msg))

    # -- bytes (the weights travel inside the model's msgpack; fine below 4 GiB)
    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        serialize = {
            "cfg": lambda: srsly.json_dumps(self.cfg),
            "vocab": lambda: self.vocab.to_bytes(exclude=exclude),
            "model": lambda: self.model.to_bytes(),
        }
        return util.to_bytes(serialize, exclude)

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "BackbonePipe":
        origin = f"the bytes of component {getattr(self, 'name', type(self).__name__)!r}"
        parts = _unpack(bytes_data, origin)
        cfg = _json_loads(parts["cfg"], f"{origin}: cfg") if "cfg" in parts and "cfg" not in exclude else None
        model_msg = (self._read_model_msg(parts["model"], f"{origin}: model")
                     if "model" in parts and "model" not in exclude else None)
        self._check_loaded({**self.cfg, **(cfg or {})}, model_msg, origin=f"{origin}: cfg")
        # everything is read and checked: now change the component
        if cfg is not None:
            self.cfg.update(cfg)
        if "vocab" in parts and "vocab" not in exclude:
            self.vocab.from_bytes(parts["vocab"], exclude=exclude)
        if model_msg is not None:
            self._apply_model_msg(model_msg)
            for node in backbone_nodes(self.model):
                node.attrs["tokenizer"] = None  # rebuilt from the restored tokenizer model
                shim = backbone_shim(node)
                if shim.has_module:
                    install_backbone(node, shim.float_module, node.attrs["tokenizer_model"], base=shim.base)
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


def _json_loads(data: Union[bytes, str], origin: str) -> Dict[str, Any]:
    try:
        value = srsly.json_loads(data)
    except ValueError as err:  # "Expected object or value" for a truncated or empty file
        raise PipelineFileError(f"{origin}: not valid JSON ({err}); the file is truncated or corrupt") from err
    if not isinstance(value, dict):
        raise PipelineFileError(f"{origin}: expected a JSON object, got {type(value).__name__}")
    return value


def _read_json(path: Path) -> Dict[str, Any]:
    return _json_loads(_read(path), str(path))


def _msgpack_loads(data: bytes, origin: Union[Path, str]) -> Any:
    try:
        return srsly.msgpack_loads(data)
    except Exception as err:  # msgpack raises ValueError, ExtraData, TypeError, ... on bad data
        raise PipelineFileError(f"{origin}: cannot read it as msgpack ({err}); truncated or corrupt") from err


def _unpack(data: bytes, origin: str) -> Dict[str, Any]:
    """The fields of a component's ``to_bytes``."""
    parts = _msgpack_loads(data, origin)
    if not isinstance(parts, dict):
        raise PipelineFileError(f"{origin}: not a serialised component")
    return parts
