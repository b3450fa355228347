"""`XLMRobertaXLConfig`: the model's hyper-parameters, HF ``config.json`` I/O, validation, presets.

Owns every field of the documented HF signature (same names, same defaults), the fields that
task models need (labels, problem type, decoder switches), the output switches that HF's
``PretrainedConfig`` holds (``return_dict``, ``output_attentions``, ``output_hidden_states``:
defaults of every forward), reading and writing HF ``config.json`` without dropping keys we do
not know (they stay readable as attributes, as in HF), HF's label-map semantics (setting
``num_labels`` regenerates ``id2label`` / ``label2id``) and named size presets (``xl``, ``xxl``
and tiny ones for tests and demos).

Validation as HF's, with clearer errors: a value impossible on its own (a dropout outside
[0, 1), an unknown activation or position type) raises `ConfigError` naming it at construction;
the sizes and what they must agree on (heads dividing the hidden size, the padding id inside the
vocabulary, pruned heads) are checked by `validate`, when a model is built (HF checks them there
too), by `from_preset` and when a checkpoint's config is read for loading. HF ``PretrainedConfig``'s
own attribute names are accepted as keywords (`HF_CONFIG_ATTRIBUTES`, kept and written to
``config.json``); any other unknown keyword is a ``TypeError``, not a new attribute.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from .dtypes import DTYPE_NAMES, TORCH_DTYPE_NAMES, dtype_name
from .hub import hub_options, resolve_file

MODEL_TYPE = "xlm-roberta-xl"
CONFIG_NAME = "config.json"
_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
_ACTIVATIONS = ("gelu", "relu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish", "tanh")
#: ``absolute``: learned position embeddings added to the input (the released checkpoints);
#: ``relative_key`` / ``relative_key_query``: distance embeddings in each self-attention (HF's)
POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the setting."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """No ``config.json`` where one was asked for (an ``OSError`` too, as HF raises)."""


@dataclass
class XLMRobertaXLConfig:
    """Hyper-parameters of XLM-RoBERTa-XL/XXL; defaults are those of ``facebook/xlm-roberta-xl``."""

    # HF PretrainedConfig's class-level facts (not fields: never written by `to_dict`)
    model_type: ClassVar[str] = MODEL_TYPE
    is_encoder_decoder: ClassVar[bool] = False
    sub_configs: ClassVar[Dict[str, Any]] = {}
    #: what HF reports as the attention kernel: ours is ``scaled_dot_product_attention`` unless
    #: attention weights or a head mask need the explicit softmax (same results either way)
    _attn_implementation: ClassVar[str] = "sdpa"
    #: HF's flag for configs that need arguments (ours has defaults for everything)
    has_no_defaults_at_init: ClassVar[bool] = False

    vocab_size: int = 250880
    hidden_size: int = 2560
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    intermediate_size: int = 10240
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    position_embedding_type: str = "absolute"
    use_cache: bool = True
    classifier_dropout: Optional[float] = None
    # task-model fields (HF PretrainedConfig)
    num_labels: int = 2
    id2label: Optional[Dict[int, str]] = None
    label2id: Optional[Dict[str, int]] = None
    problem_type: Optional[str] = None
    is_decoder: bool = False
    add_cross_attention: bool = False
    #: the dtype the weights were saved in (a ``torch.dtype``, as in HF; written as its name)
    torch_dtype: Optional[torch.dtype] = None
    architectures: Optional[list] = None
    #: whether the LM decoder shares the word embeddings (HF's default); False: a decoder of its own
    tie_word_embeddings: bool = True
    #: HF's head pruning: ``{layer: [heads]}`` removed from the self-attentions (see `prune_heads`)
    pruned_heads: Dict[int, List[int]] = field(default_factory=dict)
    # HF PretrainedConfig's output switches: the defaults of every forward's arguments of that name
    return_dict: bool = True
    output_attentions: bool = False
    output_hidden_states: bool = False
    # keys of a config.json that we do not model; written back unchanged
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if self.label2id is None or len(self.label2id) != len(self.id2label):
            self.label2id = {v: k for k, v in self.id2label.items()}
        else:
            self.label2id = dict(self.label2id)  # as given (HF keeps it so)
        self._check_values()

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "torch_dtype":
            value = _model_dtype(value)
        elif name in HF_CONFIG_ATTRIBUTES and "extra" in self.__dict__:
            self.extra[name] = value  # kept with the config.json keys we do not model, saved with them
            return
        # HF's label semantics once the fields exist: a new label count replaces the label maps,
        # and new label maps set the count
        ready = "label2id" in self.__dict__
        if ready and name == "num_labels" and len(self.id2label or {}) != value:
            super().__setattr__("id2label", {i: f"LABEL_{i}" for i in range(value)})
            super().__setattr__("label2id", {f"LABEL_{i}": i for i in range(value)})
        elif ready and name == "id2label" and value is not None:
            value = {int(k): str(v) for k, v in value.items()}
            super().__setattr__("num_labels", len(value))
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        # reached only when no field or attribute has the name: the config.json keys we keep
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise `ConfigError` naming the first impossible setting: every value on its own (as at
        construction) and the sizes with what they must agree on. A model is built only from a
        config that passes."""
        self._check_values()
        self._check_architecture()

    def _check_architecture(self) -> None:
        """The sizes, and what the fields must agree on (HF checks these when a model is built)."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id ({self.pad_token_id}) must be inside vocab_size ({self.vocab_size})")
        if self.max_position_embeddings <= self.pad_token_id + 1:
            raise ConfigError(
                f"max_position_embeddings ({self.max_position_embeddings}) must exceed pad_token_id + 1"
            )
        if self.add_cross_attention and not self.is_decoder:
            raise ConfigError("add_cross_attention=True needs is_decoder=True")
        self.pruned_heads_by_layer()

    def _check_values(self) -> None:
        """The values that are impossible whatever the other fields hold (checked at construction)."""
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        if self.classifier_dropout is not None and not 0.0 <= float(self.classifier_dropout) < 1.0:
            raise ConfigError(f"classifier_dropout must be in [0, 1) or None, got {self.classifier_dropout!r}")
        if self.layer_norm_eps <= 0:
            raise ConfigError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ConfigError(f"hidden_act must be one of {_ACTIVATIONS}, got {self.hidden_act!r}")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ConfigError(f"position_embedding_type must be one of {POSITION_EMBEDDING_TYPES}, "
                              f"got {self.position_embedding_type!r}")
        if self.problem_type is not None and self.problem_type not in _PROBLEM_TYPES:
            raise ConfigError(f"problem_type must be one of {_PROBLEM_TYPES} or None, got {self.problem_type!r}")

    def pruned_heads_by_layer(self) -> Dict[int, List[int]]:
        """``pruned_heads`` with layer indices in ``0 .. L - 1`` (negative ones count from the end,
        as HF's indexing does) and each layer's heads sorted; `ConfigError` naming it otherwise."""
        return normalise_pruned_heads(self.pruned_heads, num_layers=self.num_hidden_layers,
                                      num_heads=self.num_attention_heads, setting="pruned_heads")

    # ------------------------------------------------------------------ derived
    def get_text_config(self, decoder: bool = False) -> "XLMRobertaXLConfig":
        """HF's accessor of a multimodal config's text part: a text model's config is its own."""
        return self

    @property
    def use_return_dict(self) -> bool:
        """HF's name for the ``return_dict`` default."""
        return self.return_dict

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_sequence_length(self) -> int:
        """Longest input in pieces, specials included (512 for the released checkpoints)."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @property
    def classifier_dropout_prob(self) -> float:
        return self.hidden_dropout_prob if self.classifier_dropout is None else float(self.classifier_dropout)

    def num_parameters(self, *, with_pooler: bool = True) -> int:
        """Parameter count of the backbone (tied LM head adds only its dense, LN and bias)."""
        h, f = self.hidden_size, self.intermediate_size
        emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h
        attn = 4 * (h * h + h) + 2 * h
        ffn = (h * f + f) + (f * h + h) + 2 * h
        cross = attn if self.add_cross_attention else 0
        distances = 0 if self.position_embedding_type == "absolute" else (2 * self.max_position_embeddings - 1) * self.head_dim
        layers = self.num_hidden_layers * (attn + ffn + cross + distances)
        d = self.head_dim  # each pruned head takes D rows (and biases) of query, key, value and D columns of the output
        pruned = sum(len(heads) for heads in self.pruned_heads_by_layer().values()) * (3 * (h * d + d) + d * h)
        return emb + layers - pruned + 2 * h + (h * h + h if with_pooler else 0)

    # ------------------------------------------------------------------ dict / json
    def to_dict(self) -> Dict[str, Any]:
        """The HF ``config.json`` content: our fields, the unknown keys we read, and ``model_type``."""
        data: Dict[str, Any] = dict(copy.deepcopy(self.extra))
        for f in fields(self):
            if f.name == "extra":
                continue
            value = copy.deepcopy(getattr(self, f.name))
            if f.name == "id2label":
                value = {str(k): v for k, v in value.items()}
            if f.name == "torch_dtype" and value is not None:
                value = dtype_name(value)
            if f.name == "architectures" and value is None:
                continue
            data[f.name] = value
        data["model_type"] = MODEL_TYPE
        return data

    def to_diff_dict(self) -> Dict[str, Any]:
        """`to_dict` without the output switches that hold HF's defaults (what ``config.json`` stores)."""
        return {k: v for k, v in self.to_dict().items() if k not in _SWITCHES or v != _SWITCHES[k]}

    @classmethod
    def from_dict(
        cls, config_dict: Dict[str, Any], *, return_unused_kwargs: bool = False, **kwargs: Any
    ) -> Union["XLMRobertaXLConfig", Tuple["XLMRobertaXLConfig", Dict[str, Any]]]:
        """A config from ``config.json`` content (keys we do not model are kept, see ``extra``).

        ``kwargs`` change fields (and keys of ``config_dict``); a new ``num_labels`` replaces the
        stored label maps, as HF's setter does. Other ``kwargs`` raise ``TypeError`` naming them,
        or with ``return_unused_kwargs=True`` come back: ``(config, unused)``.
        """
        known = CONFIG_FIELDS | HF_CONFIG_ATTRIBUTES | set(config_dict)
        unused = {k: v for k, v in kwargs.items() if k not in known}
        if unused and not return_unused_kwargs:
            raise TypeError(f"{', '.join(map(repr, unused))}: no field of {cls.__name__}")
        overrides = {k: v for k, v in kwargs.items() if k not in unused}
        data = {**config_dict, **overrides}
        if "num_labels" in overrides and "id2label" not in overrides:
            # a new label count replaces the stored label maps (as HF's num_labels setter does)
            stored = data.get("id2label")
            if stored is None or len(stored) != overrides["num_labels"]:
                data.pop("id2label", None)
                data.pop("label2id", None)
        if isinstance(data.get("pruned_heads"), dict):  # JSON object keys are strings; HF reads them as ints
            data["pruned_heads"] = {_layer_key(k): v for k, v in data["pruned_heads"].items()}
        model_type = data.get("model_type")
        if model_type not in (None, MODEL_TYPE):
            raise ConfigError(f"model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        extra = {k: v for k, v in data.items() if k not in CONFIG_FIELDS and k not in ("model_type", "extra")}
        extra.update(data.get("extra", {}) or {})
        config = cls(**{k: v for k, v in data.items() if k in CONFIG_FIELDS}, extra=extra)
        return (config, unused) if return_unused_kwargs else config

    def update(self, config_dict: Dict[str, Any]) -> None:
        """Set the given values (HF's ``update``): fields by attribute, other keys kept in ``extra``."""
        for key, value in config_dict.items():
            if key in CONFIG_FIELDS:
                setattr(self, key, value)
            elif key != "model_type":
                self.extra[key] = value

    def to_json_string(self, use_diff: bool = True) -> str:
        """JSON of `to_diff_dict` (``use_diff``, what ``config.json`` holds) or `to_dict`."""
        data = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def to_json_file(self, json_file_path: Union[str, os.PathLike], use_diff: bool = True) -> Path:
        path = Path(json_file_path)
        path.write_text(self.to_json_string(use_diff=use_diff), encoding="utf8")
        return path

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> Path:
        """Write ``config.json`` into ``save_directory`` (created if needed); returns the file."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        return self.to_json_file(path / CONFIG_NAME)

    @classmethod
    def from_json_file(cls, json_file: Union[str, os.PathLike], **kwargs: Any) -> Any:
        """Read a ``config.json`` file; ``kwargs`` as in `from_dict`."""
        path = Path(json_file)
        try:
            data = json.loads(path.read_text(encoding="utf8"))
        except FileNotFoundError as err:
            raise ConfigNotFoundError(f"{path}: no such config file") from err
        except (OSError, ValueError, RecursionError) as err:  # ValueError: not UTF-8 / JSON; too deep nesting
            raise ConfigError(f"cannot read config file {path}: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} does not hold a JSON object")
        try:
            return cls.from_dict(data, **kwargs)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err
        except TypeError as err:
            raise TypeError(f"{path}: {err}") from err

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: Union[str, os.PathLike], *, subfolder: str = "", **kwargs: Any
    ) -> Any:
        """Read ``config.json`` from a checkpoint directory (``subfolder`` inside it), the file
        itself, or a Hub repository (downloaded; the Hub options of `modeling.hub`); other
        ``kwargs`` as in `from_dict`."""
        options = hub_options(kwargs)
        path = resolve_file(pretrained_model_name_or_path, CONFIG_NAME, subfolder=subfolder, **options)
        if not path.exists():
            raise ConfigNotFoundError(f"no {CONFIG_NAME} at {path}")
        return cls.from_json_file(path, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "XLMRobertaXLConfig":
        """A named architecture (see `PRESETS`), optionally with fields changed."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        config = cls(**{**PRESETS[name], **overrides})
        config.validate()  # a preset is for building a model: its sizes are checked now
        return config

    def copy(self, **changes: Any) -> "XLMRobertaXLConfig":
        return XLMRobertaXLConfig.from_dict(self.to_dict(), **changes)


def normalise_pruned_heads(
    pruned: Any, *, num_layers: int, num_heads: int, setting: str
) -> Dict[int, List[int]]:
    """``{layer: [heads]}`` checked and normalised: layers in ``0 .. num_layers - 1`` (a negative
    index counts from the end), heads unique, sorted and in ``0 .. num_heads - 1``; layers with no
    heads left out. Raises `ConfigError` naming ``setting`` and the bad entry."""
    if not isinstance(pruned, Mapping):
        raise ConfigError(f"{setting} must map layer indices to lists of heads, got {pruned!r}")
    result: Dict[int, List[int]] = {}
    for layer, heads in pruned.items():
        index = _layer_key(layer)
        if not isinstance(index, int) or not -num_layers <= index < num_layers:
            raise ConfigError(f"{setting}: layer {layer!r} is not a layer index of the {num_layers} layers")
        if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
            raise ConfigError(f"{setting}[{layer!r}] must be a list of heads, got {heads!r}")
        heads = list(heads)
        bad = [h for h in heads if not isinstance(h, int) or isinstance(h, bool) or not 0 <= h < num_heads]
        if bad:
            raise ConfigError(f"{setting}[{layer!r}]: {bad[0]!r} is not a head index of the {num_heads} heads")
        merged = set(result.get(index % num_layers, ())) | set(heads)
        if merged:
            result[index % num_layers] = sorted(merged)
    return dict(sorted(result.items()))


def _layer_key(key: Any) -> Any:
    """A layer index from a ``pruned_heads`` key (JSON keys are strings: ``"3"``, ``"-1"``)."""
    if isinstance(key, str) and key.lstrip("-").isdigit():
        return int(key)
    return key


def _model_dtype(value: Any) -> Optional[torch.dtype]:
    """``torch_dtype`` as a ``torch.dtype`` (HF's type), from a dtype or its name (``"bfloat16"``,
    ``"torch.bfloat16"``); `ConfigError` naming the setting when it is no model dtype."""
    if value is None or (isinstance(value, torch.dtype) and dtype_name(value) is not None):
        return value
    name = str(value).replace("torch.", "")
    if name not in DTYPE_NAMES:
        raise ConfigError(f"torch_dtype must be one of {TORCH_DTYPE_NAMES} or None, got {value!r}")
    return DTYPE_NAMES[name]


#: HF ``PretrainedConfig`` attributes that these models do not read but accept as keywords, as HF
#: does: kept in ``extra`` (readable as attributes, written to ``config.json``). Legacy generation
#: defaults (read by `GenerationConfig.from_model_config`), TorchScript / TF switches, metadata,
#: tokenizer hints, encoder-decoder settings, ``chunk_size_feed_forward`` (HF's memory option: the
#: results are the same unchunked).
HF_CONFIG_ATTRIBUTES = frozenset({
    "torchscript", "use_bfloat16", "tf_legacy_loss", "chunk_size_feed_forward", "cross_attention_hidden_size",
    "tie_encoder_decoder", "finetuning_task", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "transformers_version", "gradient_checkpointing",
    # PretrainedConfig's legacy generation parameters
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
})


def _accept_hf_attributes(init: Any) -> Any:
    """Wrap the dataclass constructor: keywords named in `HF_CONFIG_ATTRIBUTES` go to ``extra``;
    any other unknown keyword stays a ``TypeError`` naming it."""

    @functools.wraps(init)
    def __init__(self: XLMRobertaXLConfig, *args: Any, **kwargs: Any) -> None:
        attributes = {name: kwargs.pop(name) for name in list(kwargs) if name in HF_CONFIG_ATTRIBUTES}
        init(self, *args, **kwargs)
        self.extra.update(attributes)

    return __init__


XLMRobertaXLConfig.__init__ = _accept_hf_attributes(XLMRobertaXLConfig.__init__)  # type: ignore[method-assign]

#: the names of the config's fields (``extra`` excepted)
CONFIG_FIELDS = frozenset(f.name for f in fields(XLMRobertaXLConfig)) - {"extra"}
# HF PretrainedConfig's output switches and their defaults (left out of config.json at these values)
_SWITCHES: Dict[str, bool] = {"return_dict": True, "output_attentions": False, "output_hidden_states": False}

# The vocabulary must hold every tokenizer id (250,002); the released checkpoints pad it to 250,880.
PRESETS: Dict[str, Dict[str, Any]] = {
    "xl": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, intermediate_size=10240),
    "xxl": dict(hidden_size=4096, num_hidden_layers=48, num_attention_heads=32, intermediate_size=16384),
    # random-init architectures with the real vocabulary, for tests, demos and the CPU workflow
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
}
