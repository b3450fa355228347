"""Tests of modeling/checkpoint/: every checkpoint layout, HF parity after round trips, the
low-memory load path, and the promised errors for faulty files."""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import re
import struct
from pathlib import Path
from typing import Dict

import pytest
import torch

from modeling import checkpoint as ck
from modeling.checkpoint import CheckpointError, load_pretrained, load_state_dict, save_pretrained
from modeling.checkpoint import safetensors as st
from modeling.config import XLMRobertaXLConfig
from modeling.heads import (
    XLMRobertaXLForCausalLM,
    XLMRobertaXLForMaskedLM,
    XLMRobertaXLForMultipleChoice,
    XLMRobertaXLForQuestionAnswering,
    XLMRobertaXLForSequenceClassification,
    XLMRobertaXLForTokenClassification,
)
from modeling.model import XLMRobertaXLModel

transformers = pytest.importorskip("transformers")

TASK_MODELS = [
    XLMRobertaXLForMaskedLM,
    XLMRobertaXLForCausalLM,
    XLMRobertaXLForSequenceClassification,
    XLMRobertaXLForMultipleChoice,
    XLMRobertaXLForTokenClassification,
    XLMRobertaXLForQuestionAnswering,
]
HEAD_PREFIXES = ("lm_head.", "classifier.", "qa_outputs.", "roberta.pooler.")
LOGGER = "modeling.checkpoint"
NOTHING_LEFT = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}


# ------------------------------------------------------------------------------- helpers
def tiny_config(**changes) -> XLMRobertaXLConfig:
    values = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=40, num_labels=3)
    values.update(changes)
    return XLMRobertaXLConfig(**values)


def build(cls, config=None, seed: int = 0):
    torch.manual_seed(seed)
    model = cls(config or tiny_config()).eval()
    with torch.no_grad():  # non-trivial values everywhere (biases and LayerNorms included)
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def hf_model(cls_name: str, config: XLMRobertaXLConfig, seed: int = 0):
    torch.manual_seed(seed)
    hf_config = transformers.XLMRobertaXLConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"})
    model = getattr(transformers, cls_name)(hf_config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    torch.manual_seed(1)
    ids = torch.randint(3, 1000, (2, 9))
    ids[1, -3:] = 1  # padding
    return ids


def mask(ids: torch.Tensor) -> torch.Tensor:
    return ids.ne(1).long()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def hidden(model, ids) -> torch.Tensor:
    if isinstance(model, XLMRobertaXLForMultipleChoice):
        ids = ids[None]  # (batch 1, choices 2, length)
    with torch.no_grad():
        out = model(ids, attention_mask=mask(ids))
    for field in ("logits", "start_logits", "last_hidden_state"):
        if getattr(out, field, None) is not None:
            return getattr(out, field)
    raise AssertionError(f"no output tensor in {type(out).__name__}")


def rewrite_header(path: Path, edit) -> None:
    """Apply ``edit(header_dict)`` to a safetensors header in place (data left as is)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


HF_TO_FAIRSEQ_LAYER = {
    "attention.self_attn_layer_norm": "self_attn_layer_norm",
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "LayerNorm": "final_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
}


def to_fairseq(state: Dict[str, torch.Tensor], top: str = "encoder") -> Dict[str, torch.Tensor]:
    """The fairseq names of an HF XLMRobertaXLForMaskedLM / ForSequenceClassification state dict."""
    out = {f"{top}.sentence_encoder.version": torch.tensor([2.0])}
    enc = f"{top}.sentence_encoder."
    for key, value in state.items():
        key = key.removeprefix("roberta.")
        if key.startswith("encoder.layer."):
            _, _, index, rest = key.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            out[f"{enc}layers.{index}.{HF_TO_FAIRSEQ_LAYER[module]}.{kind}"] = value
        elif key == "embeddings.word_embeddings.weight":
            out[enc + "embed_tokens.weight"] = value
        elif key == "embeddings.position_embeddings.weight":
            out[enc + "embed_positions.weight"] = value
        elif key.startswith("encoder.LayerNorm."):
            out[enc + "layer_norm." + key.rsplit(".", 1)[1]] = value
        elif key == "lm_head.decoder.weight":
            out[f"{top}.lm_head.weight"] = value
        elif key.startswith("lm_head.") and not key.startswith("lm_head.decoder"):
            out[f"{top}.{key}"] = value
        elif key.startswith("classifier."):
            out["classification_heads.mnli." + key[len("classifier."):]] = value
    return out


# ------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("shard", [None, 30_000], ids=["single", "sharded"])
def test_our_save_loads_in_hf_and_ours(tmp_path, ids, shard):
    model = build(XLMRobertaXLForMaskedLM)
    kwargs = {"max_shard_size": shard} if shard else {}
    save_pretrained(model, tmp_path / "ckpt", **kwargs)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    if shard:
        index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        assert index["metadata"]["total_size"] == sum(
            t.numel() * t.element_size() for k, t in model.state_dict().items() if not k.startswith("lm_head.decoder")
        )
    else:
        assert files == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["architectures"] == ["XLMRobertaXLForMaskedLM"] and config["torch_dtype"] == "float32"
    stored = load_state_dict(tmp_path / "ckpt")
    assert "lm_head.decoder.weight" not in stored and "roberta.embeddings.word_embeddings.weight" in stored

    reference = transformers.XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "ckpt").eval()
    ours = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "ckpt")
    assert max_diff(hidden(reference, ids), hidden(model, ids)) <= 1e-5
    assert max_diff(hidden(ours, ids), hidden(model, ids)) == 0.0
    assert ours.lm_head.decoder.weight is ours.roberta.embeddings.word_embeddings.weight
    assert ours.loading_info == NOTHING_LEFT
    assert not ours.training


@pytest.mark.parametrize("cls", [XLMRobertaXLModel, *TASK_MODELS], ids=lambda c: c.__name__)
def test_every_class_round_trips_through_hf(tmp_path, ids, cls):
    # HF's QA head has config.num_labels outputs (2 for QA)
    config = tiny_config(is_decoder=cls is XLMRobertaXLForCausalLM,
                         num_labels=2 if cls is XLMRobertaXLForQuestionAnswering else 3)
    ours = build(cls, config)
    save_pretrained(ours, tmp_path / "ours")
    reference = getattr(transformers, cls.__name__).from_pretrained(tmp_path / "ours").eval()
    inputs = ids[None] if cls is XLMRobertaXLForMultipleChoice else ids
    with torch.no_grad():
        expected = reference(inputs, attention_mask=mask(inputs))
    expected = expected[0] if cls is not XLMRobertaXLForQuestionAnswering else expected.start_logits
    assert max_diff(hidden(ours, ids), expected) <= 1e-5
    reference.save_pretrained(tmp_path / "hf")
    again = cls.from_pretrained(tmp_path / "hf")
    assert max_diff(hidden(again, ids), hidden(ours, ids)) <= 1e-5
    assert again.loading_info == NOTHING_LEFT


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("shard", [None, "30KB"], ids=["single", "sharded"])
def test_hf_save_loads_in_ours(tmp_path, ids, safe, shard):
    config = tiny_config()
    reference = hf_model("XLMRobertaXLForMaskedLM", config)
    kwargs = {"max_shard_size": shard} if shard else {}
    reference.save_pretrained(tmp_path / "hf", safe_serialization=safe, **kwargs)
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    expected = {
        (True, None): "model.safetensors", (True, "30KB"): "model.safetensors.index.json",
        (False, None): "pytorch_model.bin", (False, "30KB"): "pytorch_model.bin.index.json",
    }[(safe, shard)]
    assert expected in names
    ours = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "hf")
    assert max_diff(hidden(ours, ids), hidden(reference, ids)) <= 1e-5
    assert ours.loading_info["missing_keys"] == [] and ours.loading_info["unexpected_keys"] == []


def test_single_file_paths(tmp_path, ids):
    model = build(XLMRobertaXLModel)
    save_pretrained(model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    # config.json beside the file
    assert max_diff(hidden(XLMRobertaXLModel.from_pretrained(weights), ids), hidden(model, ids)) == 0
    # the file alone: config given, or inferred from the shapes with the heads as an override
    alone = tmp_path / "alone" / "weights.safetensors"
    alone.parent.mkdir()
    alone.write_bytes(weights.read_bytes())
    given = load_pretrained(XLMRobertaXLModel, alone, config=model.config)
    inferred = XLMRobertaXLModel.from_pretrained(alone, num_attention_heads=4)
    assert inferred.config.hidden_size == 64 and inferred.config.num_hidden_layers == 2
    assert inferred.config.intermediate_size == 128 and inferred.config.max_position_embeddings == 40
    for loaded in (given, inferred):
        assert max_diff(hidden(loaded, ids), hidden(model, ids)) == 0
    with pytest.raises(CheckpointError, match="num_attention_heads"):
        XLMRobertaXLModel.from_pretrained(alone)
    # a .bin file
    torch.save(model.state_dict(), tmp_path / "alone" / "weights.bin")
    from_bin = XLMRobertaXLModel.from_pretrained(tmp_path / "alone" / "weights.bin", config=model.config)
    assert max_diff(hidden(from_bin, ids), hidden(model, ids)) == 0


@pytest.mark.parametrize("top, settings", [("encoder", "args"), ("decoder", "cfg")])
def test_fairseq_masked_lm(tmp_path, ids, top, settings):
    model = build(XLMRobertaXLForMaskedLM)
    state = to_fairseq(model.state_dict(), top=top)
    if settings == "args":  # older fairseq: argparse.Namespace
        extra = {"args": argparse.Namespace(encoder_attention_heads=4, encoder_layers=2, arch="xlm_roberta_xl")}
    else:  # newer fairseq: the omegaconf config saved as plain containers
        extra = {"args": None, "cfg": {"model": {"encoder_attention_heads": 4, "_name": "xlm_roberta_xl"}}}
    torch.save({"model": state, **extra, "extra_state": {"epoch": 3}}, tmp_path / "model.pt")
    loaded = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path)
    assert loaded.config.num_attention_heads == 4 and loaded.config.num_hidden_layers == 2
    assert loaded.config.vocab_size == 1000 and loaded.config.max_position_embeddings == 40
    assert torch.equal(loaded.roberta.embeddings.token_type_embeddings.weight, torch.zeros(1, 64))
    with torch.no_grad():  # fairseq has no token types: compare with the HF model whose are zero
        model.roberta.embeddings.token_type_embeddings.weight.zero_()
    assert max_diff(hidden(loaded, ids), hidden(model, ids)) == 0
    assert loaded.loading_info == NOTHING_LEFT


def test_fairseq_without_args_needs_heads_and_keeps_classification_head(tmp_path, ids):
    model = build(XLMRobertaXLForSequenceClassification)
    torch.save({"model": to_fairseq(model.state_dict())}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt.*num_attention_heads"):
        XLMRobertaXLForSequenceClassification.from_pretrained(tmp_path / "model.pt")
    loaded = XLMRobertaXLForSequenceClassification.from_pretrained(tmp_path / "model.pt", num_attention_heads=4)
    assert loaded.config.num_labels == 3
    with torch.no_grad():
        model.roberta.embeddings.token_type_embeddings.weight.zero_()
    assert max_diff(hidden(loaded, ids), hidden(model, ids)) == 0


class FairseqSettings:
    """Stands for the fairseq / omegaconf config classes of real ``model.pt`` files."""

    heads = 4


def test_fairseq_config_objects_other_than_namespace_are_refused(tmp_path):
    torch.save({"model": {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(10, 8)}, "cfg": FairseqSettings()},
               tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt.*convert"):
        XLMRobertaXLModel.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------- bare <-> task
@pytest.mark.parametrize("cls", TASK_MODELS, ids=lambda c: c.__name__)
def test_base_checkpoint_into_task_model(tmp_path, ids, caplog, cls):
    config = tiny_config(is_decoder=cls is XLMRobertaXLForCausalLM)
    base = build(XLMRobertaXLModel, config)
    save_pretrained(base, tmp_path / "base")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        task = cls.from_pretrained(tmp_path / "base")
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1, "missing/unexpected keys are reported once"
    info = task.loading_info
    assert info["missing_keys"] and all(k.startswith(HEAD_PREFIXES) for k in info["missing_keys"])
    assert all(k in warnings[0].getMessage() for k in info["missing_keys"])
    if cls is not XLMRobertaXLForMultipleChoice:
        # file order, which the safetensors library writes by name: HF's (sorted) order as well
        assert info["unexpected_keys"] == ["pooler.dense.bias", "pooler.dense.weight"]
    # backbone equals the checkpoint; heads are initialised like the reference
    for name, tensor in base.state_dict().items():
        if not name.startswith("pooler.") or cls is XLMRobertaXLForMultipleChoice:
            assert torch.equal(task.roberta.state_dict()[name], tensor), name
    params = dict(task.named_parameters())
    assert all(not p.is_meta and torch.isfinite(p).all() for p in params.values())
    for name in info["missing_keys"]:
        if name.endswith(".bias"):
            assert not params[name].any(), name
        elif name.endswith("layer_norm.weight"):
            assert torch.equal(params[name], torch.ones(64)), name
        else:  # N(0, initializer_range = 0.02)
            assert 0.01 < params[name].std().item() < 0.03, name
    if hasattr(task, "lm_head"):
        assert task.lm_head.decoder.weight is task.roberta.embeddings.word_embeddings.weight
        assert task.lm_head.decoder.bias is task.lm_head.bias
    assert torch.isfinite(hidden(task, ids)).all()


def test_task_checkpoint_into_bare_model(tmp_path, ids, caplog):
    task = build(XLMRobertaXLForMaskedLM)
    save_pretrained(task, tmp_path / "mlm")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        bare = XLMRobertaXLModel.from_pretrained(tmp_path / "mlm", add_pooling_layer=False)
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1
    assert bare.pooler is None
    assert sorted(bare.loading_info["unexpected_keys"]) == sorted(
        ["lm_head.bias", "lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight", "lm_head.layer_norm.bias"]
    )
    assert max_diff(hidden(bare, ids), task.roberta(ids, attention_mask=mask(ids)).last_hidden_state.detach()) == 0


# ------------------------------------------------------------------------------- dtype / device / memory
def test_bf16_and_auto_dtype(tmp_path, ids):
    model = build(XLMRobertaXLForMaskedLM)
    save_pretrained(model, tmp_path / "ckpt")
    bf16 = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "ckpt", dtype="bfloat16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert torch.equal(bf16.lm_head.dense.weight, model.lm_head.dense.weight.to(torch.bfloat16))
    assert bf16.lm_head.decoder.weight is bf16.roberta.embeddings.word_embeddings.weight
    save_pretrained(bf16, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    auto = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert auto.dtype == torch.bfloat16
    assert XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "bf16").dtype == torch.float32
    assert XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "ckpt", dtype="int3")


class ModelWithBuffers(XLMRobertaXLModel):
    """A model with buffers its checkpoint does not hold (computed at construction)."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.register_buffer("scale", torch.full((3,), 3.0), persistent=False)
        self.register_buffer("steps", torch.arange(4))


def test_buffers_are_computed_not_left_on_meta_and_position_ids_ignored(tmp_path, caplog):
    model = build(XLMRobertaXLModel)
    state = dict(model.state_dict())
    state["embeddings.position_ids"] = torch.arange(40)[None]  # old HF files hold it
    torch.save(state, tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loaded = ModelWithBuffers.from_pretrained(tmp_path, dtype="bfloat16")
    assert not [r for r in caplog.records if r.name == LOGGER]
    assert loaded.loading_info == NOTHING_LEFT
    assert torch.equal(loaded.scale, torch.full((3,), 3.0, dtype=torch.bfloat16))
    assert torch.equal(loaded.steps, torch.arange(4))


def test_device_argument(tmp_path, ids):
    model = build(XLMRobertaXLForMaskedLM)
    save_pretrained(model, tmp_path / "ckpt")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        loaded = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "ckpt", device=device, dtype="bfloat16")
        assert {p.device.type for p in loaded.parameters()} == {device}
        assert {b.device.type for b in loaded.buffers()} <= {device}
        assert loaded.lm_head.decoder.weight is loaded.roberta.embeddings.word_embeddings.weight


def test_fp32_load_is_copy_on_write_view_of_the_file(tmp_path):
    model = build(XLMRobertaXLModel)
    save_pretrained(model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    before = weights.read_bytes()
    loaded = XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        for param in loaded.parameters():
            param.add_(1.0)  # writes go to private pages, never to the file
    assert weights.read_bytes() == before
    again = XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(again.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)


def test_chunked_cast_equals_plain_cast(tmp_path):
    tensor = torch.randn(1000, 37)
    ck.write_safetensors(tmp_path / "t.safetensors", [ck.TensorSpec("t", tensor.dtype, tuple(tensor.shape))],
                         lambda name: tensor)
    file = ck.SafetensorsFile(tmp_path / "t.safetensors")
    file.chunk_bytes, file.window_bytes = 4096 + 12, 3 * 4096  # many pieces and maps, none page aligned
    pieces = list(file.chunks("t"))
    assert len(pieces) == 38 and torch.equal(torch.cat(pieces), tensor.reshape(-1))  # 27 rows of 148 bytes each
    cast = file.materialize("t", dtype=torch.bfloat16, device=torch.device("cpu"))
    assert torch.equal(cast, tensor.to(torch.bfloat16))
    assert torch.equal(file.view("t"), tensor)
    assert file.materialize("t", dtype=torch.float32, device=torch.device("cpu")).data_ptr() == file.view("t").data_ptr()


def test_scalars_empty_and_misaligned_tensors(tmp_path):
    """A file written by another tool whose header length is not a multiple of 8 puts tensors at
    addresses their dtype may not be read from: they come back as aligned copies."""
    tensors = {"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "row": torch.arange(6, dtype=torch.float32)}
    header = {"__metadata__": {"format": "pt"}}
    data, offset = b"", 0
    for name, tensor in tensors.items():
        raw = tensor.numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((1 - len(text)) % 4)  # 8 + len(text) is 1 modulo 4: every float32 misaligned
    (tmp_path / "odd.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data)
    file = ck.SafetensorsFile(tmp_path / "odd.safetensors")
    assert file.metadata == {"format": "pt"}
    for name, tensor in tensors.items():
        view = file.view(name)
        assert view.data_ptr() % 4 == 0 and torch.equal(view, tensor)
        assert torch.equal(file.materialize(name, dtype=torch.float64, device=torch.device("cpu")), tensor.double())
        assert sum(piece.numel() for piece in file.chunks(name)) == tensor.numel()


def _resident_bytes(path: Path) -> int:
    """Resident bytes of this process's memory maps of ``path`` (Linux ``/proc/self/smaps``)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", fields[0]):
                inside = len(fields) >= 6 and fields[5] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


linux_only = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")


@linux_only
def test_a_cast_holds_one_window_of_the_file(tmp_path):
    tensor = torch.randn(4096, 1024)  # 16 MiB
    path = tmp_path / "big.safetensors"
    ck.write_safetensors(path, [ck.TensorSpec("t", tensor.dtype, tuple(tensor.shape))], lambda name: tensor)
    file = ck.SafetensorsFile(path)
    file.chunk_bytes, file.window_bytes = 2**20, 2 * 2**20
    peak = 0
    for piece in file.chunks("t"):
        float(piece.sum())  # read: its pages become resident
        peak = max(peak, _resident_bytes(path))
        del piece
    # a window and a piece (and the kernel's read-around: it maps up to a 2 MiB folio beyond a
    # fault), not the 16 MiB read
    assert 2**20 <= peak <= 5 * 2**20 + 65536
    file.close()
    assert _resident_bytes(path) == 0


@linux_only
def test_finite_check_leaves_no_weights_resident(tmp_path):
    """The NaN check reads every float32 weight of a zero-copy load; it reads them through
    short-lived maps, so the model's own map stays untouched until the model uses it."""
    model = build(XLMRobertaXLModel, tiny_config(vocab_size=20_000))  # 5 MiB of embeddings
    save_pretrained(model, tmp_path / "ckpt")
    weights = (tmp_path / "ckpt" / "model.safetensors").resolve()
    loaded = XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt", check_finite=True)
    assert _resident_bytes(weights) < weights.stat().st_size // 10
    assert torch.equal(loaded.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)
    assert _resident_bytes(weights) > weights.stat().st_size // 2  # the weights read are resident again


# ------------------------------------------------------------------------------- faulty files
@pytest.fixture()
def saved(tmp_path) -> Path:
    save_pretrained(build(XLMRobertaXLModel), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_truncated_safetensors(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated file: the data of '[\w.]+' ends") as err:
        XLMRobertaXLModel.from_pretrained(saved)
    assert str(weights) in str(err.value)
    weights.write_bytes(b"\x10\x00")
    with pytest.raises(CheckpointError, match="truncated"):
        XLMRobertaXLModel.from_pretrained(saved)


@pytest.mark.parametrize(
    "corruption, message",
    [
        (lambda raw: raw[:8] + b"{not json" + raw[17:], "corrupt safetensors header"),
        (lambda raw: struct.pack("<Q", 2**40) + raw[8:], "corrupt safetensors header"),
        (lambda raw: raw + b"trailing", "bytes after the last tensor"),
    ],
    ids=["json", "length", "trailing"],
)
def test_corrupt_safetensors(saved, corruption, message):
    weights = saved / "model.safetensors"
    weights.write_bytes(corruption(weights.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as err:
        XLMRobertaXLModel.from_pretrained(saved)
    assert str(weights) in str(err.value)


def test_unreadable_dtype_and_bad_offsets(saved):
    weights = saved / "model.safetensors"
    original = weights.read_bytes()
    rewrite_header(weights, lambda h: h["pooler.dense.bias"].update(dtype="Q7"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 'pooler\.dense\.bias' has dtype 'Q7'"):
        XLMRobertaXLModel.from_pretrained(saved)
    weights.write_bytes(original)
    rewrite_header(weights, lambda h: h["pooler.dense.bias"].update(shape=[65]))
    with pytest.raises(CheckpointError, match=r"corrupt safetensors header: 'pooler\.dense\.bias'"):
        XLMRobertaXLModel.from_pretrained(saved)


def test_a_dtype_the_library_reads_but_we_do_not_is_named(tmp_path):
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(2), "phases": torch.zeros(2, dtype=torch.complex64)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(CheckpointError, match=r"c\.safetensors: 'phases' has dtype 'C64', which cannot be read"):
        ck.SafetensorsFile(tmp_path / "c.safetensors")


def test_wrong_shape_names_file_and_key(saved):
    def swap(header):
        header["encoder.LayerNorm.weight"]["shape"] = [8, 8]

    rewrite_header(saved / "model.safetensors", swap)
    with pytest.raises(CheckpointError, match=r"model\.safetensors \(key 'encoder\.LayerNorm\.weight'\): shape \[8, 8\]"):
        XLMRobertaXLModel.from_pretrained(saved)


def test_missing_backbone_key(tmp_path):
    model = build(XLMRobertaXLModel)
    state = {k: v for k, v in model.state_dict().items() if k != "encoder.layer.1.output.dense.weight"}
    torch.save(state, tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"missing weight 'encoder\.layer\.1\.output\.dense\.weight'") as err:
        XLMRobertaXLModel.from_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize("field, value", [("hidden_size", 128), ("num_hidden_layers", 3), ("num_hidden_layers", 1),
                                          ("intermediate_size", 96), ("vocab_size", 1200)])
def test_config_not_matching_weights(saved, field, value):
    config = json.loads((saved / "config.json").read_text())
    config[field] = value
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"config\.json does not match .*model\.safetensors.*{field}={value}"):
        XLMRobertaXLModel.from_pretrained(saved)


def test_surplus_layer_with_matching_config_is_fatal(tmp_path):
    """A key the model does not have inside the backbone is an error, not a warning."""
    model = build(XLMRobertaXLModel)
    state = dict(model.state_dict())
    state["encoder.layer.0.attention.self.extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin \(key 'encoder\.layer\.0\.attention\.self\.extra"):
        XLMRobertaXLModel.from_pretrained(tmp_path)


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name, writer", [("pytorch_model.bin", "torch"), ("model.pt", "torch"), ("pytorch_model.bin", "pickle")])
def test_pickle_with_code_is_refused(tmp_path, name, writer):
    target = tmp_path / "pwned"
    payload = {"model": {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(4, 4)}, "args": _Evil(target)}
    path = tmp_path / "ckpt" / name
    path.parent.mkdir()
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(CheckpointError, match="refused") as err:
        XLMRobertaXLModel.from_pretrained(path.parent)
    assert str(path) in str(err.value)
    assert not target.exists()


def test_truncated_bin(tmp_path):
    model = build(XLMRobertaXLModel)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    raw = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: truncated or corrupt"):
        XLMRobertaXLModel.from_pretrained(tmp_path, config=model.config)


def test_missing_shard_and_key_missing_from_shard(tmp_path):
    save_pretrained(build(XLMRobertaXLModel), tmp_path / "ckpt", max_shard_size=30_000)
    index_path = tmp_path / "ckpt" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["encoder.ghost.weight"] = first
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"{first}: key 'encoder\.ghost\.weight' is missing"):
        XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt")
    last = sorted((tmp_path / "ckpt").glob("model-*.safetensors"))[-1]
    last.unlink()
    with pytest.raises(CheckpointError, match=rf"{last.name}: shard file is missing .*index"):
        XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt")


def test_no_weights(tmp_path):
    with pytest.raises(CheckpointError, match="no weights found"):
        XLMRobertaXLModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        XLMRobertaXLModel.from_pretrained(tmp_path / "nothing")


# ------------------------------------------------------------------------------- saving
def test_save_is_atomic_and_keeps_other_files(tmp_path, ids, monkeypatch):
    first, second = build(XLMRobertaXLModel, seed=0), build(XLMRobertaXLModel, seed=1)
    target = tmp_path / "ckpt"
    save_pretrained(first, target)
    (target / "sentencepiece.bpe.model").write_bytes(b"spm")
    real_write = ck.write_safetensors

    def failing(path, specs, produce, **kwargs):
        real_write(path, specs[:1], produce, **kwargs)
        raise KeyboardInterrupt("interrupted in the middle of the save")

    monkeypatch.setattr(st, "write_safetensors", failing)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(second, target, max_shard_size=30_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no staging directory left behind"
    assert max_diff(hidden(XLMRobertaXLModel.from_pretrained(target), ids), hidden(first, ids)) == 0
    monkeypatch.setattr(st, "write_safetensors", real_write)
    save_pretrained(second, target, max_shard_size=30_000)
    assert not (target / "model.safetensors").exists()
    assert (target / "sentencepiece.bpe.model").read_bytes() == b"spm"
    assert max_diff(hidden(XLMRobertaXLModel.from_pretrained(target), ids), hidden(second, ids)) == 0


def test_save_over_the_directory_it_was_loaded_from(tmp_path, ids):
    model = build(XLMRobertaXLForMaskedLM)
    save_pretrained(model, tmp_path / "ckpt")
    loaded = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "ckpt")  # memory-mapped from there
    save_pretrained(loaded, tmp_path / "ckpt")
    assert max_diff(hidden(XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "ckpt"), ids), hidden(model, ids)) == 0


def test_writer_takes_views_of_one_storage_and_non_contiguous_tensors(tmp_path):
    """``safetensors.torch.save_file`` refuses tensors sharing memory and non-contiguous ones; our
    writer copies just those before handing the file's tensors to it."""
    from safetensors.torch import load_file

    storage = torch.randn(6, 4)
    tensors = {"top": storage[:3], "bottom": storage[3:], "transposed": storage.t(), "int": torch.arange(5)}
    specs = [ck.TensorSpec(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    ck.write_safetensors(tmp_path / "w.safetensors", specs, tensors.__getitem__)
    back = load_file(str(tmp_path / "w.safetensors"))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], t) for k, t in tensors.items())
    assert ck.SafetensorsFile(tmp_path / "w.safetensors").metadata == {"format": "pt"}


def test_writer_errors_name_file_and_key(tmp_path):
    value = torch.zeros(2, dtype=torch.complex64)
    with pytest.raises(CheckpointError, match=r"w\.safetensors: cannot store 'c' with dtype torch\.complex64"):
        ck.write_safetensors(tmp_path / "w.safetensors", [ck.TensorSpec("c", value.dtype, (2,))], lambda name: value)
    with pytest.raises(CheckpointError, match=r"w\.safetensors: 'c' changed while saving"):
        ck.write_safetensors(tmp_path / "w.safetensors", [ck.TensorSpec("c", torch.float32, (3,))],
                             lambda name: torch.zeros(2))
    target = tmp_path / "missing" / "w.safetensors"
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(target))}: cannot write the safetensors file"):
        ck.write_safetensors(target, [ck.TensorSpec("c", torch.float32, (2,))], lambda name: torch.zeros(2))


@pytest.mark.parametrize("size, expected", [(123, 123), ("5GB", 5 * 10**9), ("200MB", 200 * 10**6),
                                            ("1GiB", 2**30), ("10kb", 10_000), ("1.5MB", 1_500_000)])
def test_parse_size(size, expected):
    assert ck.parse_size(size) == expected


@pytest.mark.parametrize("size", ["big", "0GB", -1, "5XB"])
def test_parse_size_rejects(size):
    with pytest.raises(ValueError, match="max_shard_size"):
        ck.parse_size(size)


def test_fairseq_key_map():
    assert ck.fairseq_to_hf_key("encoder.sentence_encoder.layers.3.self_attn.k_proj.bias") == (
        "encoder.layer.3.attention.self.key.bias"
    )
    assert ck.fairseq_to_hf_key("decoder.sentence_encoder.layers.0.final_layer_norm.weight") == (
        "encoder.layer.0.LayerNorm.weight"
    )
    assert ck.fairseq_to_hf_key("encoder.sentence_encoder.layer_norm.bias") == "encoder.LayerNorm.bias"
    assert ck.fairseq_to_hf_key("encoder.lm_head.weight") == "lm_head.decoder.weight"
    assert ck.fairseq_to_hf_key("encoder.lm_head.layer_norm.bias") == "lm_head.layer_norm.bias"
    assert ck.fairseq_to_hf_key("classification_heads.mnli.out_proj.weight") == "classifier.out_proj.weight"
    assert ck.fairseq_to_hf_key("classification_heads.mnli.out_proj.weight", single_head=False) == (
        "classification_heads.mnli.out_proj.weight"
    )
    assert ck.fairseq_to_hf_key("encoder.sentence_encoder.version") is None
