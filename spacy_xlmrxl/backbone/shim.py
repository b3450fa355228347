"""`TorchModuleShim`: the thinc ``Shim`` that owns a backbone's torch module.

Owns what thinc needs from a torch module: optimizer steps (`finish_update`), ``use_params``,
device moves, byte serialisation (safetensors files, never pickle), copies; and the training
switches applied to the module it is given: LoRA adapters (`spacy_xlmrxl.backbone.adapters`),
``freeze``, ``freeze_word_embeddings``, gradient checkpointing, mixed precision
(`spacy_xlmrxl.backbone.precision`) and the int8 inference copy (`spacy_xlmrxl.backbone.quantize`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional, Sequence, Type, Union

import numpy
import torch
from thinc.api import CupyOps, get_current_ops
from thinc.shims import Shim
from thinc.util import torch2xp, xp2torch

from modeling.lora import LoraConfig, apply_lora, lora_config_of, lora_layers
from modeling.upcast import compute_in_float32

from .adapters import LORA_SAVE_MODES, BaseReference, attach_lora, check_no_adapters
from .devices import torch_device
from .precision import LossScaler, autocast, emulated_bf16_weights, normalise_mixed_precision, warn_if_bf16_emulated
from .quantize import check_quantize_precision, normalise_quantize, quantize_linear_int8
from .source import BackboneError
from .weights import module_from_bytes, module_to_bytes


# --------------------------------------------------------------------------- the shim
class TorchModuleShim(Shim):
    """Gives a torch module to thinc: optimizer steps, ``use_params``, device moves, bytes.

    The module may be absent until the owning thinc model's ``init`` creates it
    (`set_module`). Forward passes are run by the owning layer inside `run` (train or
    inference mode, autocast, freezing); backward passes call `backward`, which applies the
    loss scale. `finish_update` hands every parameter with a gradient to the thinc optimizer.
    Byte serialisation uses safetensors; `external` makes ``to_bytes`` skip the weights when a
    component writes them as files of their own (`save_module_dir`).

    ``quantize = "int8"``: every module given to `set_module` (at initialise, ``from_disk``,
    ``from_bytes``, copies) gets a dynamic-int8 copy (`quantize_linear_int8`) that `module`
    returns and the forward passes run; the float weights stay in `float_module` and are what
    is saved, exported and copied, so a saved pipeline is a float HF checkpoint and loading it
    quantises again, identically. Inference only: a training forward raises `BackboneError`.
    ``lora`` (a `modeling.lora.LoraConfig`): every module given to `set_module` gets those
    adapters (`attach_lora`: a module that has adapters already must have these), its backbone
    frozen, so `finish_update` hands the optimizer the adapters and the task head only (the
    other Parameters get no gradient); ``lora_save`` says how `BackbonePipe` writes them (see
    `spacy_xlmrxl.backbone.adapters`) and ``base`` is the `BaseReference` of the checkpoint the
    base was loaded from (None for a preset).

    Memory: the int8 Linear weights (one byte per Linear parameter) on top of
    the float weights, whose Linear pages are handed back to the kernel after quantisation
    (`quantize_linear_int8`): when they are memory-mapped (``spacy.load``, or ``initialize`` from
    a float32 checkpoint) they leave the resident set and cost page cache only; built in memory
    (a preset, a dtype conversion) they stay resident. Quantising takes time at load (README:
    bench/xl_load.py).
    """

    def __init__(self, module: Optional[torch.nn.Module] = None, *, mixed_precision: Union[str, bool, None] = None,
                 frozen: bool = False, grad_checkpointing: bool = False,
                 model_cls: Optional[Type[torch.nn.Module]] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None, quantize: Union[str, bool, None] = None,
                 freeze_word_embeddings: bool = False, lora: Optional[LoraConfig] = None, lora_save: str = "full",
                 lora_seed: Optional[int] = None) -> None:
        super().__init__(module, config={})
        self.precision = normalise_mixed_precision(mixed_precision)
        self.quantize = normalise_quantize(quantize)
        check_quantize_precision(self.quantize, self.precision)
        if lora is not None and self.quantize is not None:
            raise BackboneError(f"lora cannot be combined with quantize = {self.quantize!r} (an inference-only int8 "
                                "copy): train the adapters with quantize = null")
        if lora_save not in LORA_SAVE_MODES:
            raise BackboneError(f"lora_save must be one of {LORA_SAVE_MODES}, got {lora_save!r}")
        self.lora = lora
        self.lora_save = lora_save
        self.lora_seed = lora_seed
        self.base: Optional[BaseReference] = None
        self._runner: Optional[torch.nn.Module] = None  # the quantised copy, when quantize is set
        self.frozen = frozen
        self.freeze_word_embeddings = bool(freeze_word_embeddings)
        self.grad_checkpointing = grad_checkpointing
        self.scaler = LossScaler(enabled=self.precision == "fp16")
        self.model_cls = model_cls
        self.model_kwargs = dict(model_kwargs or {})
        self.external = False
        if isinstance(get_current_ops(), CupyOps):  # pragma: no cover - GPU only
            from thinc.backends import context_pools, set_gpu_allocator

            if "pytorch" not in context_pools.get():  # one memory pool for cupy and torch, as thinc does
                set_gpu_allocator("pytorch")
        if module is not None:
            self.set_module(module)

    # -- module
    @property
    def module(self) -> torch.nn.Module:
        """The module forward passes run: the int8 copy with ``quantize = "int8"``, else the weights."""
        if self._model is None:
            raise BackboneError("the backbone has no weights yet: call nlp.initialize() or load a saved pipeline")
        return self._runner if self._runner is not None else self._model

    @property
    def float_module(self) -> torch.nn.Module:
        """The module with the (float) weights: what is saved, exported and trained."""
        if self._model is None:
            raise BackboneError("the backbone has no weights yet: call nlp.initialize() or load a saved pipeline")
        return self._model

    @property
    def has_module(self) -> bool:
        return self._model is not None

    def set_module(self, module: torch.nn.Module, *, config: Optional[Dict[str, Any]] = None) -> None:
        """Install ``module`` (freezing, checkpointing, the int8 copy); installing the module the shim
        already holds keeps its int8 copy (the weights did not change)."""
        keep_runner = module is self._model and self._runner is not None
        self._model = module
        if config is not None:
            self.cfg = dict(config)
        elif hasattr(module, "config") and hasattr(module.config, "to_dict"):
            self.cfg = module.config.to_dict()
        if self.lora is not None:
            attach_lora(module, self.lora, seed=self.lora_seed, float32_head=self.precision != "none")
        else:
            check_no_adapters(module)
        if self.frozen:
            module.requires_grad_(False)
        if self.freeze_word_embeddings:
            freeze_word_embeddings(module)
        if self.grad_checkpointing and hasattr(module, "gradient_checkpointing_enable"):
            module.gradient_checkpointing_enable()
        if keep_runner:
            return
        self._runner = None
        if emulated_bf16_weights(module):
            compute_in_float32(module)
        param = next(module.parameters(), None)
        if param is not None:
            warn_if_bf16_emulated(param.device, mixed_precision=self.precision)
        if self.quantize is not None:
            self._runner = quantize_linear_int8(module)

    @property
    def device(self) -> torch.device:
        param = next(self.module.parameters(), None)
        return param.device if param is not None else torch_device()

    # -- running
    @contextlib.contextmanager
    def run(self, is_train: bool) -> Iterator[bool]:
        """Context for a forward pass; yields whether a backward pass will follow."""
        module = self.module
        if is_train and self._runner is not None:
            raise BackboneError(
                f"this backbone is set to quantize = {self.quantize!r}, which is for inference only: it cannot be "
                "trained (update() was called). Set quantize = null to train or fine-tune (e.g. "
                "--components.transformer.model.backbone.quantize null, or the component's own backbone block), "
                "and quantize the trained pipeline for inference"
            )
        grads = is_train and not self.frozen
        module.train(grads)
        if grads:
            with autocast(self.precision, self.device):
                yield True
        else:
            with torch.inference_mode(), autocast(self.precision, self.device):
                yield False

    def backward(self, outputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        """Backpropagate ``grads`` (same shapes as ``outputs``) into the module's parameters."""
        pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs],
                                    [self.scaler.scale_grad(g).to(o.dtype) for o, g in pairs])

    def finish_update(self, optimizer: Any) -> None:
        if self._model is None or self.frozen:
            return
        named = [(n, p) for n, p in self._model.named_parameters() if p.grad is not None]
        found_inf = self.scaler.unscale_([p.grad for _, p in named])
        for name, param in named:
            if not found_inf:
                if param.dtype != torch.float32:
                    hint = (" (with lora, mixed_precision = \"bf16\" alone keeps a bf16 base and trains the head "
                            "in float32)" if self.lora is not None else "")
                    raise BackboneError(
                        f"training needs float32 weights, {name} is {param.dtype}: set dtype = "
                        f"\"float32\" and use mixed_precision = \"bf16\" or \"fp16\" instead{hint}"
                    )
                new_data, _ = optimizer((self.id, name), torch2xp(param.data), torch2xp(param.grad))
                if not shares_memory(param.data, new_data):
                    param.data.copy_(xp2torch(new_data, device=param.device))
            param.grad = None
        self.scaler.update(found_inf)

    @contextlib.contextmanager
    def use_params(self, params: Dict[Any, Any]) -> Iterator[None]:
        prefix = f"pytorch_{self.id}_"
        state = {k[len(prefix):]: v for k, v in params.items() if isinstance(k, str) and k.startswith(prefix)}
        if not state or self._model is None:
            yield
            return
        current = self._model.state_dict()
        backup = {k: current[k].detach().clone() for k in state if k in current}  # e.g. the adapters only
        self._model.load_state_dict({k: xp2torch(v, device=self.device) for k, v in state.items()}, strict=False)
        self._requantize()
        try:
            yield
        finally:
            self._model.load_state_dict(backup, strict=False)
            self._requantize()

    def _requantize(self) -> None:
        if self.quantize is not None and self._model is not None:
            self._runner = quantize_linear_int8(self._model)

    def to_device(self, device_type: str, device_id: int) -> None:  # pragma: no cover - GPU only
        if self._model is None:
            return
        if device_type == "cpu":
            self._model.cpu()
        elif device_type == "gpu":
            if self.quantize is not None:
                raise BackboneError(f"quantize = {self.quantize!r} runs on the CPU only: set quantize = null on a GPU")
            self._model.cuda(device_id)
        else:
            raise ValueError(f"invalid device_type {device_type!r}; use 'cpu' or 'gpu'")

    # -- bytes (nlp.to_bytes, pickling); to_disk writes `save_module_dir` files instead
    def to_bytes(self) -> bytes:
        import srsly

        files = None
        if self._model is not None and not self.external:
            files = module_to_bytes(self._model)
        base = self.base.to_dict() if self.base is not None else None
        return srsly.msgpack_dumps({"config": self.cfg, "files": files, "base": base})

    def from_bytes(self, data: bytes) -> "TorchModuleShim":
        import srsly

        msg = srsly.msgpack_loads(data)
        if not msg.get("files"):  # the weights live in files of their own, or were never made
            return self
        if self.model_cls is None:
            raise BackboneError("cannot restore a backbone from bytes: the shim has no model class")
        self.set_module(module_from_bytes(self.model_cls, msg["files"], **self.model_kwargs), config=msg["config"])
        self.base = BaseReference(**msg["base"]) if msg.get("base") else None
        return self

    def __deepcopy__(self, memo: Dict[int, Any]) -> "TorchModuleShim":
        clone = TorchModuleShim(None, mixed_precision=self.precision, frozen=self.frozen,
                                grad_checkpointing=self.grad_checkpointing, model_cls=self.model_cls,
                                model_kwargs=self.model_kwargs, quantize=self.quantize,
                                freeze_word_embeddings=self.freeze_word_embeddings, lora=self.lora,
                                lora_save=self.lora_save, lora_seed=self.lora_seed)
        clone.base = self.base
        if self._model is not None:
            clone.set_module(self._compact_module(), config=dict(self.cfg))
        return clone

    def __getstate__(self) -> Dict[str, Any]:
        """Pickle a compact copy: loaded weights are views into one memory map, and pickle
        would otherwise write the whole file once per tensor."""
        state = dict(self.__dict__)
        state["_runner"] = None  # rebuilt from the float weights by __setstate__
        if self._model is not None:
            state["_model"] = self._compact_module()
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("quantize", None)
        self.__dict__.setdefault("freeze_word_embeddings", False)
        self.__dict__.setdefault("_runner", None)
        for name, default in (("lora", None), ("lora_save", "full"), ("lora_seed", None), ("base", None)):
            self.__dict__.setdefault(name, default)
        self._requantize()

    def _compact_module(self) -> torch.nn.Module:
        if self.model_cls is None:
            import copy

            return copy.deepcopy(self._model)
        return clone_module(self._model, self.model_cls, **self.model_kwargs)  # type: ignore[arg-type]


def freeze_word_embeddings(module: torch.nn.Module) -> None:
    """Stop training the word-embedding matrix of ``module`` (vocab x hidden, the largest single
    matrix). No gradient is computed for it and the optimizer keeps no state for it: on a GPU that
    saves its fp32 gradient and Adam moments; on a CPU, the dense gradient and optimizer update of
    every vocabulary row per step. Position embeddings, LayerNorms and every
    layer still train."""
    get = getattr(module, "get_input_embeddings", None)
    if not callable(get):
        raise BackboneError(f"freeze_word_embeddings: {type(module).__name__} has no get_input_embeddings()")
    get().weight.requires_grad_(False)


def empty_like(module: torch.nn.Module, model_cls: Type[torch.nn.Module], **model_kwargs: Any) -> torch.nn.Module:
    """A ``model_cls`` of ``module``'s config and structure (its LoRA layers too) on the meta
    device, ready for ``load_state_dict(module's state, assign=True)``."""
    from modeling.checkpoint import parameters_on_meta

    with parameters_on_meta():
        empty = model_cls(module.config.copy(), **model_kwargs)  # type: ignore[union-attr]
    if lora_layers(module):
        apply_lora(empty, lora_config_of(module), freeze_base=False)
    return empty


def clone_module(module: torch.nn.Module, model_cls: Type[torch.nn.Module], **model_kwargs: Any) -> torch.nn.Module:
    """A copy of ``module`` whose tensors own exactly their data (no shared memory maps)."""
    clone = empty_like(module, model_cls, **model_kwargs)
    state = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
    clone.load_state_dict(state, assign=True)
    for theirs, mine in zip(module.parameters(), clone.parameters()):
        mine.requires_grad_(theirs.requires_grad)
    return clone.train(module.training)


def shares_memory(tensor: torch.Tensor, array: Any) -> bool:
    if isinstance(array, numpy.ndarray):
        return tensor.device.type == "cpu" and array.__array_interface__["data"][0] == tensor.data_ptr()
    ptr = getattr(getattr(array, "data", None), "ptr", None)  # cupy
    return ptr is not None and ptr == tensor.data_ptr()
