"""Tests of modeling/config.py: defaults, JSON round trips, validation, presets, HF config.json."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from modeling.checkpoint import CheckpointError
from modeling.config import PRESETS, ConfigError, XLMRobertaXLConfig
from modeling.model import XLMRobertaXLModel

# the documented signature of transformers.XLMRobertaXLConfig (../shared/reference/xlm-roberta-xl-docs.md)
DOCUMENTED_DEFAULTS = dict(
    vocab_size=250880,
    hidden_size=2560,
    num_hidden_layers=36,
    num_attention_heads=32,
    intermediate_size=10240,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=514,
    type_vocab_size=1,
    initializer_range=0.02,
    layer_norm_eps=1e-05,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    position_embedding_type="absolute",
    use_cache=True,
    classifier_dropout=None,
)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000)


def test_defaults_equal_documented_signature() -> None:
    config = XLMRobertaXLConfig()
    for name, value in DOCUMENTED_DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert (config.num_labels, config.problem_type, config.is_decoder, config.add_cross_attention) == (2, None, False, False)
    assert config.head_dim == 80 and config.max_sequence_length == 512
    assert config.classifier_dropout_prob == 0.1
    assert XLMRobertaXLConfig(classifier_dropout=0.3).classifier_dropout_prob == 0.3


def test_defaults_equal_installed_hf_signature() -> None:
    transformers = pytest.importorskip("transformers")
    signature = inspect.signature(transformers.XLMRobertaXLConfig.__init__)
    hf_defaults = {k: p.default for k, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}
    assert hf_defaults == DOCUMENTED_DEFAULTS


def test_json_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    config = XLMRobertaXLConfig.from_dict(
        {**TINY, "custom_flag": {"nested": [1, 2]}, "id2label": {"0": "NEG", "1": "POS", "2": "NEU"}}
    )
    assert config.num_labels == 3 and config.label2id == {"NEG": 0, "POS": 1, "NEU": 2}
    path = config.save_pretrained(tmp_path)
    data = json.loads(path.read_text())
    assert data["custom_flag"] == {"nested": [1, 2]} and data["model_type"] == "xlm-roberta-xl"
    assert data["id2label"] == {"0": "NEG", "1": "POS", "2": "NEU"}
    again = XLMRobertaXLConfig.from_pretrained(tmp_path)
    assert again == config and again.extra == {"custom_flag": {"nested": [1, 2]}}
    assert again.to_dict() == config.to_dict()
    assert XLMRobertaXLConfig.from_pretrained(path) == config


def test_num_labels_override_replaces_stored_label_maps(tmp_path: Path) -> None:
    XLMRobertaXLConfig(**TINY).save_pretrained(tmp_path)
    config = XLMRobertaXLConfig.from_pretrained(tmp_path, num_labels=5)
    assert config.num_labels == 5 and list(config.id2label) == [0, 1, 2, 3, 4]
    assert XLMRobertaXLConfig(**TINY, num_labels=4).copy(num_labels=7).num_labels == 7
    assert XLMRobertaXLConfig(**TINY, num_labels=4).copy(hidden_size=32).num_labels == 4


@pytest.mark.parametrize(
    "overrides,setting",
    [
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        ({"classifier_dropout": -0.1}, "classifier_dropout"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
        ({"hidden_act": "mish"}, "hidden_act"),
        ({"position_embedding_type": "relative"}, "position_embedding_type"),
        ({"problem_type": "ranking"}, "problem_type"),
        ({"torch_dtype": "int8"}, "torch_dtype"),
    ],
)
def test_impossible_values_raise_at_construction_naming_the_setting(overrides: dict, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        XLMRobertaXLConfig(**{**TINY, **overrides})


@pytest.mark.parametrize(
    "overrides,setting",
    [
        ({"hidden_size": 66}, "hidden_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"vocab_size": -3}, "vocab_size"),
        ({"pad_token_id": 5000}, "pad_token_id"),
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"pruned_heads": {"a": [1]}}, "pruned_heads"),
    ],
)
def test_impossible_sizes_raise_when_a_model_is_built_naming_the_setting(overrides: dict, setting: str, tmp_path: Path) -> None:
    """As in HF, a config holds them (it may be edited field by field); `validate`, building a
    model, a preset and loading a checkpoint with such a config.json refuse them."""
    config = XLMRobertaXLConfig(**{**TINY, **overrides})
    for refuse in (config.validate, lambda: XLMRobertaXLModel(config),
                   lambda: XLMRobertaXLConfig.from_preset("tiny", **overrides)):
        with pytest.raises(ConfigError, match=setting):
            refuse()
    XLMRobertaXLModel(XLMRobertaXLConfig(**TINY)).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**written, **overrides}))
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'config.json'}: .*{setting}"):
        XLMRobertaXLModel.from_pretrained(tmp_path)


def test_bad_files_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config.json"):
        XLMRobertaXLConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        XLMRobertaXLConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="model_type"):
        XLMRobertaXLConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"vocab_size": ' + "9" * 5000 + "}", "\udcff"],
                         ids=["deep", "long-number", "not-utf8"])
def test_unparsable_config_json_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text, encoding="utf8", errors="surrogateescape")
    with pytest.raises(ConfigError, match=f"cannot read config file {path}: "):
        XLMRobertaXLConfig.from_pretrained(tmp_path)


def test_presets() -> None:
    xl = XLMRobertaXLConfig.from_preset("xl")
    assert (xl.hidden_size, xl.num_hidden_layers, xl.num_attention_heads, xl.intermediate_size) == (2560, 36, 32, 10240)
    xxl = XLMRobertaXLConfig.from_preset("xxl")
    assert (xxl.hidden_size, xxl.num_hidden_layers, xxl.num_attention_heads, xxl.intermediate_size) == (4096, 48, 32, 16384)
    tiny = XLMRobertaXLConfig.from_preset("tiny", num_labels=4)
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads, tiny.num_labels) == (64, 2, 4, 4)
    assert XLMRobertaXLConfig.from_preset("small").hidden_size == 256
    assert set(PRESETS) >= {"xl", "xxl", "small", "tiny"}
    # parameter counts from the SPEC table (≈3.48 B and ≈10.7 B)
    assert abs(xl.num_parameters(with_pooler=False) / 1e9 - 3.48) < 0.01
    assert abs(xxl.num_parameters(with_pooler=False) / 1e9 - 10.7) < 0.05
    with pytest.raises(ConfigError, match="unknown preset"):
        XLMRobertaXLConfig.from_preset("huge")


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("positions", ["absolute", "relative_key_query"])
def test_num_parameters_counts_the_built_model(cross: bool, positions: str) -> None:
    config = XLMRobertaXLConfig(**TINY, is_decoder=cross, add_cross_attention=cross, position_embedding_type=positions)
    model = XLMRobertaXLModel(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()


def test_reads_and_writes_hf_config_json(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.XLMRobertaXLConfig(
        **TINY,
        type_vocab_size=2,
        is_decoder=True,
        id2label={0: "O", 1: "B-PER", 2: "I-PER"},
        label2id={"O": 0, "B-PER": 1, "I-PER": 2},
        problem_type="single_label_classification",
        classifier_dropout=0.2,
        architectures=["XLMRobertaXLForTokenClassification"],
    )
    hf.save_pretrained(tmp_path / "hf")
    ours = XLMRobertaXLConfig.from_pretrained(tmp_path / "hf")
    for name in [*DOCUMENTED_DEFAULTS, "num_labels", "problem_type", "is_decoder", "add_cross_attention", "architectures"]:
        assert getattr(ours, name) == getattr(hf, name), name
    assert ours.id2label == hf.id2label and ours.label2id == hf.label2id
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert {k: v for k, v in ours.to_dict().items() if k in written} == written  # nothing lost or changed
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.XLMRobertaXLConfig.from_pretrained(tmp_path / "ours")
    assert back.to_diff_dict() == hf.to_diff_dict()


# ------------------------------------------------------------------ HF PretrainedConfig behaviour
def test_setting_num_labels_regenerates_label_maps_like_hf(tmp_path: Path) -> None:
    """config.num_labels = n after construction regenerates id2label / label2id (HF's setter):
    the n-way model's checkpoint reloads in ours and in HF's classes."""
    transformers = pytest.importorskip("transformers")
    from modeling.heads import XLMRobertaXLForTokenClassification

    ours, hf = XLMRobertaXLConfig(**TINY), transformers.XLMRobertaXLConfig(**TINY)
    for config in (ours, hf):
        config.num_labels = 5
    assert ours.id2label == hf.id2label and ours.label2id == hf.label2id and ours.num_labels == 5
    for config in (ours, hf):
        config.num_labels = 5  # the same count keeps the maps
        config.id2label = {0: "O", 1: "B-X", 2: "I-X"}  # new maps set the count
    assert ours.num_labels == hf.num_labels == 3 and ours.id2label == hf.id2label
    ours.num_labels = 4
    model = XLMRobertaXLForTokenClassification(ours)
    assert model.classifier.out_features == 4
    model.save_pretrained(tmp_path)
    assert XLMRobertaXLForTokenClassification.from_pretrained(tmp_path).config.num_labels == 4
    reloaded = transformers.XLMRobertaXLForTokenClassification.from_pretrained(tmp_path)
    assert reloaded.num_labels == 4 and reloaded.config.id2label == {i: f"LABEL_{i}" for i in range(4)}


def test_output_switches_follow_hf_and_stay_out_of_config_json(tmp_path: Path) -> None:
    config = XLMRobertaXLConfig(**TINY)
    assert (config.return_dict, config.output_attentions, config.output_hidden_states) == (True, False, False)
    assert config.use_return_dict and "return_dict" in config.to_dict()
    written = json.loads(config.save_pretrained(tmp_path).read_text())
    assert not {"return_dict", "output_attentions", "output_hidden_states"} & set(written)
    config.output_hidden_states = True
    config.return_dict = False
    again = XLMRobertaXLConfig.from_pretrained(config.save_pretrained(tmp_path).parent)
    assert again.output_hidden_states and not again.use_return_dict


def test_dict_and_json_api(tmp_path: Path) -> None:
    """to_dict / from_dict / update / to_json_file / from_json_file as HF's PretrainedConfig."""
    config = XLMRobertaXLConfig.from_dict({**TINY, "custom_flag": 7})
    assert config.custom_flag == 7  # unknown config.json keys read as attributes, as in HF
    with pytest.raises(AttributeError, match="no_such_key"):
        config.no_such_key  # noqa: B018
    config.update({"hidden_dropout_prob": 0.3, "num_labels": 4, "finetuning_task": "ner"})
    assert config.hidden_dropout_prob == 0.3 and len(config.id2label) == 4 and config.finetuning_task == "ner"
    path = config.to_json_file(tmp_path / "c.json")
    assert XLMRobertaXLConfig.from_json_file(path).to_dict() == config.to_dict()
    full = json.loads(config.to_json_string(use_diff=False))
    assert full == json.loads(json.dumps(config.to_dict())) and full["return_dict"] is True
    again, unused = XLMRobertaXLConfig.from_dict(config.to_dict(), return_unused_kwargs=True, vocab_size=99, foo=1)
    assert again.vocab_size == 99 and unused == {"foo": 1}
    assert XLMRobertaXLConfig.from_dict(config.to_dict(), custom_flag=8).custom_flag == 8  # a key of the dict
    with pytest.raises(TypeError, match="'foo'"):
        XLMRobertaXLConfig.from_dict(config.to_dict(), foo=1)


def test_from_pretrained_subfolder_hub_options_and_missing_file(tmp_path: Path) -> None:
    XLMRobertaXLConfig(**TINY).save_pretrained(tmp_path / "sub")
    config = XLMRobertaXLConfig.from_pretrained(tmp_path, subfolder="sub", revision="main", cache_dir=str(tmp_path),
                                                token=None, local_files_only=True)
    assert config.hidden_size == TINY["hidden_size"]
    with pytest.raises(OSError, match="no config.json"):  # HF raises OSError; ours is a ConfigError too
        XLMRobertaXLConfig.from_pretrained(tmp_path / "missing")
    with pytest.raises(TypeError, match="'revisoin'"):
        XLMRobertaXLConfig.from_pretrained(tmp_path, subfolder="sub", revisoin="main")


def test_settings_changed_after_construction_are_checked_when_a_model_is_built() -> None:
    """An unknown position_embedding_type (and any impossible value) is refused at construction
    and when set later."""
    with pytest.raises(ConfigError, match="position_embedding_type"):
        XLMRobertaXLConfig(**TINY, position_embedding_type="rotary")
    config = XLMRobertaXLConfig(**TINY)
    config.position_embedding_type = "rotary"
    with pytest.raises(ConfigError, match="position_embedding_type"):
        XLMRobertaXLModel(config)
    config.position_embedding_type = "absolute"
    config.num_attention_heads = 5
    with pytest.raises(ConfigError, match="num_attention_heads"):
        XLMRobertaXLModel(config)


def test_class_level_facts_equal_hfs() -> None:
    transformers = pytest.importorskip("transformers")
    config = XLMRobertaXLConfig(**TINY)
    assert XLMRobertaXLConfig.model_type == transformers.XLMRobertaXLConfig.model_type == config.model_type
    assert config.is_encoder_decoder is False and config.get_text_config() is config
    assert config._attn_implementation == "sdpa"
    assert not {"is_encoder_decoder", "_attn_implementation", "sub_configs"} & set(config.to_dict())


def test_hf_config_attributes_are_kept_like_hf(tmp_path: Path) -> None:
    """HF PretrainedConfig's own attribute names are keywords (kept, readable, saved; HF reads them
    back); torch_dtype is a torch.dtype written as its name; label2id stays as given; a misspelt
    keyword is still a TypeError."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    attributes = {"torchscript": True, "chunk_size_feed_forward": 5, "finetuning_task": "ner", "max_length": 50,
                  "num_beams": 3, "temperature": 2.0, "bad_words_ids": [[5]], "tokenizer_class": "XLMRobertaTokenizer",
                  "sep_token_id": 2, "task_specific_params": {"ner": {}}, "tie_word_embeddings": False,
                  "torch_dtype": "float16", "id2label": {0: "A", 1: "B"}, "label2id": {"A": "0", "B": "1"},
                  "pruned_heads": {1: [0]}}
    ours, hf = XLMRobertaXLConfig(**TINY, **attributes), transformers.XLMRobertaXLConfig(**TINY, **attributes)
    for name in attributes:
        assert getattr(ours, name) == getattr(hf, name), name
    assert ours.torch_dtype is torch.float16 and ours.label2id == {"A": "0", "B": "1"}
    ours.prefix = "summarize: "  # set later: saved as well
    ours.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["torch_dtype"] == "float16" and written["max_length"] == 50 and written["prefix"] == "summarize: "
    again = transformers.XLMRobertaXLConfig.from_pretrained(tmp_path)
    for name in [*attributes, "prefix"]:
        assert getattr(again, name) == getattr(ours, name), name
    assert XLMRobertaXLConfig.from_pretrained(tmp_path) == ours
    assert XLMRobertaXLConfig.from_pretrained(tmp_path, num_beams=4).num_beams == 4
    with pytest.raises(TypeError, match="'num_beam'"):
        XLMRobertaXLConfig(**TINY, num_beam=4)
    with pytest.raises(TypeError, match="'num_beam'"):
        XLMRobertaXLConfig.from_pretrained(tmp_path, num_beam=4)
    with pytest.raises(ConfigError, match="torch_dtype"):
        ours.torch_dtype = torch.int8


def test_legacy_generation_attributes_are_generate_defaults() -> None:
    """As in HF, generation parameters given to the model config are generate's defaults."""
    from modeling.heads import XLMRobertaXLForCausalLM

    torch = pytest.importorskip("torch")
    model = XLMRobertaXLForCausalLM(XLMRobertaXLConfig(**TINY, is_decoder=True, max_length=7, eos_token_id=None)).eval()
    assert model.generation_config.max_length == 7
    assert model.generate(torch.tensor([[0, 5, 6]])).shape == (1, 7)
