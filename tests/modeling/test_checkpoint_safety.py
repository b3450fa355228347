"""Tests of the checkpoint package's guards: non-finite weights refused at load
(`modeling.checkpoint.loading`), hostile JSON in a safetensors header, a shard index or
``config.json`` naming the file (`safetensors`, `discovery`, `modeling.config`), and
`atomic_directory` never reading through symbolic links, replacing a directory exactly when
asked to, and removing what interrupted saves left (`saving`)."""

from __future__ import annotations

import os
import re
import struct
import time

import pytest
import torch

import modeling.checkpoint.saving as saving
from modeling.checkpoint import CheckpointError, atomic_directory, load_pretrained, save_pretrained
from modeling.checkpoint.saving import remove_leftovers
from modeling.config import XLMRobertaXLConfig
from modeling.model import XLMRobertaXLModel

DEEP_JSON = "[" * 100_000 + "]" * 100_000

def tiny_model(seed: int = 0) -> XLMRobertaXLModel:
    torch.manual_seed(seed)
    config = XLMRobertaXLConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, max_position_embeddings=40)
    return XLMRobertaXLModel(config).eval()


# ------------------------------------------------------------------------------- non-finite weights
def test_nan_in_safetensors_is_refused_naming_file_and_key(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.encoder.LayerNorm.weight[5] = float("nan")
    save_pretrained(model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    with pytest.raises(CheckpointError, match=r"tensor 'encoder\.LayerNorm\.weight' has 1 NaN/inf value\(s\); "
                                              r"the checkpoint is corrupt\. Pass check_finite=False") as err:
        XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt")
    assert str(err.value).startswith(f"{weights}: ")
    with pytest.raises(CheckpointError, match="NaN/inf"):  # a cast copy is checked as well
        XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)
    loaded = XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt", check_finite=False)
    assert torch.isnan(loaded.encoder.LayerNorm.weight[5])
    assert torch.equal(loaded.encoder.LayerNorm.weight[:5], model.encoder.LayerNorm.weight[:5])


def test_inf_in_bin_is_refused_naming_file_and_key(tmp_path):
    model = tiny_model()
    state = dict(model.state_dict())
    state["encoder.layer.1.output.dense.weight"] = state["encoder.layer.1.output.dense.weight"].clone()
    state["encoder.layer.1.output.dense.weight"][3, :2] = torch.tensor([float("inf"), -float("inf")])
    torch.save(state, tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"tensor 'encoder\.layer\.1\.output\.dense\.weight' has 2 NaN/inf") as err:
        load_pretrained(XLMRobertaXLModel, tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'pytorch_model.bin'}: ")
    loaded = load_pretrained(XLMRobertaXLModel, tmp_path, check_finite=False)
    assert torch.isinf(loaded.encoder.layer[1].output.dense.weight[3, :2]).all()


def test_value_overflowing_the_cast_dtype_is_told_apart_from_corruption(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[7, 0] = 1e6  # finite in float32, inf in float16
    save_pretrained(model, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"'embeddings\.word_embeddings\.weight' has 1 value\(s\) beyond the "
                                              r"range of torch\.float16 once cast from torch\.float32"):
        XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt", dtype=torch.float16)
    assert XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16) is not None


def test_huge_finite_values_whose_sum_overflows_are_accepted(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.encoder.LayerNorm.weight.fill_(3e38)  # finite, but their float32 sum is inf
    save_pretrained(model, tmp_path / "ckpt")
    loaded = XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded.encoder.LayerNorm.weight, model.encoder.LayerNorm.weight)


def test_finite_check_cost_on_a_small_preset_load(tmp_path):
    """Not a limit: prints what the check adds to loading the 'small' preset (fp32 zero-copy and
    a bf16 cast), for the record."""
    model = XLMRobertaXLModel(XLMRobertaXLConfig.from_preset("small"))
    save_pretrained(model, tmp_path / "small")
    del model
    for dtype in (torch.float32, torch.bfloat16):
        timings = {}
        for check in (False, True, False, True):
            start = time.perf_counter()
            loaded = XLMRobertaXLModel.from_pretrained(tmp_path / "small", dtype=dtype, check_finite=check)
            timings.setdefault(check, []).append(time.perf_counter() - start)
            del loaded
        print(f"small preset, {dtype}: load {min(timings[False]) * 1e3:.0f} ms without the finite check, "
              f"{min(timings[True]) * 1e3:.0f} ms with it")


# ------------------------------------------------------------------------------- nested JSON
def test_deeply_nested_safetensors_header_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    raw = DEEP_JSON.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError, match="corrupt safetensors header") as err:
        XLMRobertaXLModel.from_pretrained(path, config=tiny_model().config)
    assert str(err.value).startswith(f"{path}: ")


def test_nesting_inside_a_header_entry_is_refused_by_the_library(tmp_path):
    """Nesting where the header's schema allows any JSON: the library's own recursion limit
    refuses it, and the error names the file and gives the library's reason."""
    path = tmp_path / "model.safetensors"
    deep = "[" * 10_000 + "]" * 10_000
    raw = ('{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": ' + deep + "}}").encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"recursion limit") as err:
        XLMRobertaXLModel.from_pretrained(path, config=tiny_model().config)
    assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize("claimed, message", [(100_000_001, "it claims 100000001 header bytes"),
                                              (100_000_000, "the header needs 100000008 bytes, the file has 24")])
def test_header_size_limit_is_the_librarys_100_mb(tmp_path, claimed, message):
    """A length field over 100 MB is refused before anything is read; up to it, a file shorter
    than its header is refused as truncated (nothing of that size is allocated either way)."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", claimed) + b"{}" + b" " * 14)
    with pytest.raises(CheckpointError, match=re.escape(message)) as err:
        XLMRobertaXLModel.from_pretrained(path, config=tiny_model().config)
    assert str(err.value).startswith(f"{path}: ")
    assert "header too large" in str(err.value) if claimed > 100_000_000 else "invalid header length" in str(err.value)


def test_deeply_nested_shard_index_names_the_file(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(DEEP_JSON)
    with pytest.raises(CheckpointError, match="not a readable shard index") as err:
        XLMRobertaXLModel.from_pretrained(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'model.safetensors.index.json'}: ")


def test_deeply_nested_config_json_names_the_file(tmp_path):
    save_pretrained(tiny_model(), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(DEEP_JSON)
    with pytest.raises(CheckpointError, match=r"config\.json") as err:
        XLMRobertaXLModel.from_pretrained(tmp_path / "ckpt")
    assert str(tmp_path / "ckpt" / "config.json") in str(err.value)


# ------------------------------------------------------------------------------- symlinks
def test_atomic_directory_refuses_a_symlinked_target(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.txt").write_text("not yours")
    link = tmp_path / "ckpt"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(link))}: is a symbolic link"):
        save_pretrained(tiny_model(), link)
    assert link.is_symlink() and os.readlink(link) == str(outside)
    assert sorted(p.name for p in outside.iterdir()) == ["private.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "outside"], "no staging directory left behind"


def test_symlinks_inside_the_directory_are_kept_as_links_not_followed(tmp_path):
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.txt").write_text("secret")
    (outside / "folder" / "inner.txt").write_text("inner")
    target = tmp_path / "ckpt"
    save_pretrained(tiny_model(), target)
    (target / "tokenizer.json").write_text("{}")
    (target / "file-link").symlink_to(outside / "secret.txt")
    (target / "dir-link").symlink_to(outside / "folder", target_is_directory=True)
    (target / "dangling").symlink_to(tmp_path / "nowhere")
    save_pretrained(tiny_model(seed=1), target)
    assert (target / "tokenizer.json").read_text() == "{}"
    for name, points_to in (("file-link", outside / "secret.txt"), ("dir-link", outside / "folder"),
                            ("dangling", tmp_path / "nowhere")):
        assert (target / name).is_symlink() and os.readlink(target / name) == str(points_to)
    # the outside files were neither linked in nor touched
    assert (outside / "secret.txt").stat().st_nlink == 1 and (outside / "folder" / "inner.txt").stat().st_nlink == 1
    assert (outside / "secret.txt").read_text() == "secret"


def test_atomic_directory_carries_a_symlinked_entry_of_a_subfolder_as_a_link(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "own.txt").write_text("own")
    (target / "sub" / "link").symlink_to(outside)
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert (target / "sub" / "link").is_symlink() and (target / "sub" / "own.txt").read_text() == "own"
    assert outside.stat().st_nlink == 1


# ------------------------------------------------------------------------------- swaps and leftovers
def _write(directory, name: str, text: str) -> None:
    (directory / name).write_text(text)


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_atomic_directory_without_carrying_replaces_exactly(exchange, tmp_path, monkeypatch):
    if not exchange:
        monkeypatch.setattr(saving, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        _write(staging, "old.txt", "old")
    with atomic_directory(target, keep_other_files=False) as staging:
        _write(staging, "new.txt", "new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


def test_atomic_directory_removes_what_interrupted_saves_left(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    for name in (".out.tmp-0123456789ab", ".out.old-0123456789ab", ".out.tmp-mine", ".other.tmp-0123456789ab"):
        (tmp_path / name).mkdir()
    with atomic_directory(target) as staging:
        _write(staging, "a.txt", "a")
    # only the staging and retired directories of this target, by their exact names
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-0123456789ab", ".out.tmp-mine", "out"]


def test_a_retired_directory_is_kept_while_it_is_the_only_copy(tmp_path):
    """Killed between the two renames of a swap without RENAME_EXCHANGE: the target is gone and
    ``.<name>.old-*`` is the complete old directory; it stays until a new one is in place."""
    retired = tmp_path / ".out.old-0123456789ab"
    retired.mkdir()
    _write(retired, "old.txt", "old")
    remove_leftovers(tmp_path / "out")
    assert (retired / "old.txt").read_text() == "old"

    class Interrupted(Exception):
        pass

    with pytest.raises(Interrupted):
        with atomic_directory(tmp_path / "out"):
            raise Interrupted
    assert retired.is_dir()  # a failed save keeps it too
    with atomic_directory(tmp_path / "out") as staging:
        _write(staging, "new.txt", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
