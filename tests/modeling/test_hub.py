"""Tests of modeling/hub.py: Hub names resolve through huggingface_hub, against the local Hub of
tests/hub_server.py (the ``local_hub`` fixture; nothing here reaches the internet).

Checkpoints saved by our ``save_pretrained`` and by HF's are served and downloaded; the loaded
models equal the local ones (ours bit for bit, HF's within 1e-5), only the needed files are
fetched, the cache is reused, offline mode reads it, and every failure names what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from modeling import hub
from modeling.checkpoint import CheckpointError
from modeling.config import XLMRobertaXLConfig
from modeling.heads import XLMRobertaXLForCausalLM, XLMRobertaXLForMaskedLM
from modeling.hub import HubError
from modeling.tokenizer import XLMRobertaTokenizer

from .test_model import assert_close, make_pair, random_ids

transformers = pytest.importorskip("transformers")

IDS, MASK = random_ids(2, 7, pad_lengths=(0, 2))


def _logits(model: Any) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=IDS, attention_mask=MASK).logits


@pytest.fixture(scope="module")
def pair() -> Any:
    return make_pair("ForMaskedLM")


@pytest.fixture(scope="module")
def ours_dir(pair: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny masked LM saved by our save_pretrained (config.json + model.safetensors)."""
    directory = tmp_path_factory.mktemp("ours") / "tiny"
    pair[1].save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_dir(pair: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights saved by HF's save_pretrained."""
    directory = tmp_path_factory.mktemp("hf") / "tiny"
    pair[0].save_pretrained(directory)
    return directory


@pytest.fixture()
def served(local_hub: Any, ours_dir: Path) -> Any:
    local_hub.add_repo("org/tiny", ours_dir)
    return local_hub


# ------------------------------------------------------------------ downloads
def test_download_equals_the_local_model_and_fetches_only_config_and_weights(served: Any, ours_dir: Path) -> None:
    model = XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")
    assert torch.equal(_logits(model), _logits(XLMRobertaXLForMaskedLM.from_pretrained(ours_dir)))
    assert served.files_fetched() == ["config.json", "model.safetensors"]
    assert XLMRobertaXLConfig.from_pretrained("org/tiny").to_dict() == XLMRobertaXLConfig.from_pretrained(ours_dir).to_dict()


def test_checkpoint_saved_by_hf_downloads_and_matches_hf(local_hub: Any, hf_dir: Path, pair: Any) -> None:
    local_hub.add_repo("org/tiny-hf", hf_dir)
    model = XLMRobertaXLForMaskedLM.from_pretrained("org/tiny-hf")
    assert_close(_logits(model), _logits(pair[0]), what="logits of the HF-saved checkpoint")


def test_hf_downloads_the_same_files_from_the_local_hub(served: Any, pair: Any) -> None:
    """The local Hub is faithful enough for HF's own loader, which fetches what ours fetches."""
    hf = transformers.XLMRobertaXLForMaskedLM.from_pretrained("org/tiny").eval()
    assert served.files_fetched() == ["config.json", "model.safetensors"]
    assert_close(_logits(hf), _logits(XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")), what="HF vs ours")
    assert served.files_fetched() == ["config.json", "model.safetensors"]  # ours found HF's download in the cache


def test_second_load_reads_the_cache_without_fetching_weights(served: Any) -> None:
    first = XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")
    served.reset()
    second = XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")
    assert served.count("GET") == 0  # only HEAD requests that find the cached commit unchanged
    assert served.count("HEAD", filename="model.safetensors") == 0  # later files come at the pinned commit
    assert torch.equal(_logits(first), _logits(second))
    served.reset()
    XLMRobertaXLForMaskedLM.from_pretrained("org/tiny", force_download=True)
    assert served.files_fetched() == ["config.json", "model.safetensors"]


def test_shards_named_by_the_index_are_fetched(local_hub: Any, pair: Any, tmp_path: Path) -> None:
    pair[1].save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 2
    local_hub.add_repo("org/sharded", tmp_path / "sharded")
    model = XLMRobertaXLForMaskedLM.from_pretrained("org/sharded")
    assert torch.equal(_logits(model), _logits(pair[1]))
    fetched = local_hub.files_fetched()
    assert fetched[:2] == ["config.json", "model.safetensors.index.json"] and sorted(fetched[2:]) == shards


def test_safetensors_preferred_and_other_formats_never_fetched(local_hub: Any, ours_dir: Path, pair: Any,
                                                                 tmp_path: Path) -> None:
    pair[1].save_pretrained(tmp_path / "bin", safe_serialization=False)
    files = {p.name: p.read_bytes() for p in ours_dir.iterdir()}
    files.update({"pytorch_model.bin": (tmp_path / "bin" / "pytorch_model.bin").read_bytes(),
                  "tf_model.h5": b"not for torch", "flax_model.msgpack": b"not for torch", "README.md": b"# tiny\n"})
    local_hub.add_repo("org/everything", files)
    XLMRobertaXLForMaskedLM.from_pretrained("org/everything")
    assert local_hub.files_fetched() == ["config.json", "model.safetensors"]
    assert local_hub.count(filename="pytorch_model.bin") == 0

    local_hub.add_repo("org/bin-only", tmp_path / "bin")  # no safetensors: the .bin is found next
    local_hub.reset()
    model = XLMRobertaXLForMaskedLM.from_pretrained("org/bin-only")
    assert torch.equal(_logits(model), _logits(pair[1]))
    assert local_hub.files_fetched() == ["config.json", "pytorch_model.bin"]


def test_revision_subfolder_and_cache_dir(local_hub: Any, ours_dir: Path, tmp_path: Path) -> None:
    other = XLMRobertaXLForMaskedLM(XLMRobertaXLConfig.from_pretrained(ours_dir)).eval()
    other.init_weights(seed=5)
    other.save_pretrained(tmp_path / "v1")
    local_hub.add_repo("org/tiny", ours_dir)
    commit = local_hub.add_repo("org/tiny", tmp_path / "v1", revision="v1")
    local_hub.add_repo("org/nested", {f"sub/{p.name}": p.read_bytes() for p in (tmp_path / "v1").iterdir()})
    expected = _logits(other)
    assert torch.equal(_logits(XLMRobertaXLForMaskedLM.from_pretrained("org/tiny", revision="v1")), expected)
    assert torch.equal(_logits(XLMRobertaXLForMaskedLM.from_pretrained("org/tiny", revision=commit)), expected)
    assert torch.equal(_logits(XLMRobertaXLForMaskedLM.from_pretrained("org/nested", subfolder="sub")), expected)
    assert not torch.equal(_logits(XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")), expected)  # main
    XLMRobertaXLForMaskedLM.from_pretrained("org/tiny", cache_dir=tmp_path / "own-cache")
    assert list((tmp_path / "own-cache").glob("models--org--tiny/snapshots/*/model.safetensors"))


def test_generation_config_is_fetched_for_models_that_generate(local_hub: Any, tmp_path: Path) -> None:
    model = XLMRobertaXLForCausalLM(XLMRobertaXLConfig.from_preset("tiny", vocab_size=512, is_decoder=True))
    model.save_pretrained(tmp_path / "lm")
    (tmp_path / "lm" / "generation_config.json").write_text('{"max_new_tokens": 7, "do_sample": false}')
    local_hub.add_repo("org/lm", tmp_path / "lm")
    assert XLMRobertaXLForCausalLM.from_pretrained("org/lm").generation_config.max_new_tokens == 7
    assert "generation_config.json" in local_hub.files_fetched()
    local_hub.reset()
    XLMRobertaXLForMaskedLM.from_pretrained("org/lm", local_files_only=True)
    XLMRobertaXLForMaskedLM.from_pretrained("org/lm", force_download=True)
    assert local_hub.count(filename="generation_config.json") == 0  # a model that does not generate never asks


def test_tokenizer_downloads_its_sentencepiece_model(local_hub: Any, ours_dir: Path, spm_model_path: Path) -> None:
    local_hub.add_repo("org/tiny", {**{p.name: p.read_bytes() for p in ours_dir.iterdir()},
                                    "sentencepiece.bpe.model": spm_model_path.read_bytes()})
    text = "Paris is the <mask> of France."
    got = XLMRobertaTokenizer.from_pretrained("org/tiny")
    assert got([text])["input_ids"] == XLMRobertaTokenizer.from_pretrained(spm_model_path)([text])["input_ids"]
    assert local_hub.files_fetched() == ["sentencepiece.bpe.model"]
    local_hub.add_repo("org/no-tokenizer", ours_dir)
    with pytest.raises(HubError, match="'org/no-tokenizer' has no file 'sentencepiece.bpe.model'"):
        XLMRobertaTokenizer.from_pretrained("org/no-tokenizer")


def test_progress_bar_is_huggingface_hubs(served: Any, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub: show bars even without a terminal
    enable_progress_bars()
    try:
        XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")
    finally:
        if was_disabled:
            disable_progress_bars()
    assert "model.safetensors" in capsys.readouterr().err


# ------------------------------------------------------------------ names
def test_the_seeds_name_resolves_to_facebook_xlm_roberta_xl(local_hub: Any, ours_dir: Path) -> None:
    local_hub.add_repo("facebook/xlm-roberta-xl", ours_dir)
    assert hub.hub_repo_id("xlm-roberta-xlarge") == "facebook/xlm-roberta-xl"
    model = XLMRobertaXLForMaskedLM.from_pretrained("xlm-roberta-xlarge")
    assert torch.equal(_logits(model), _logits(XLMRobertaXLForMaskedLM.from_pretrained(ours_dir)))
    assert local_hub.count(repo_id="xlm-roberta-xlarge") == 0 and local_hub.count(repo_id="facebook/xlm-roberta-xl") > 0


def test_renamed_repository_follows_the_hubs_redirect(served: Any, ours_dir: Path) -> None:
    served.add_redirect("tiny-legacy", "org/tiny")  # as the Hub answers for names moved into an organisation
    model = XLMRobertaXLForMaskedLM.from_pretrained("tiny-legacy")
    assert torch.equal(_logits(model), _logits(XLMRobertaXLForMaskedLM.from_pretrained(ours_dir)))
    assert served.count("HEAD", repo_id="tiny-legacy", status=307) >= 1


def test_local_paths_win_and_are_never_looked_up(served: Any, ours_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ours_dir, tmp_path / "org" / "tiny")
    monkeypatch.chdir(tmp_path)
    XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")  # the directory ./org/tiny, not the repository
    with pytest.raises(CheckpointError, match="no such file or directory"):
        XLMRobertaXLForMaskedLM.from_pretrained("./nowhere")  # no repository id: a path
    assert hub.hub_repo_id("./nowhere") is None and hub.hub_repo_id("/a/b/c") is None
    assert served.requests == []


# ------------------------------------------------------------------ offline and failures
def test_offline_reads_the_cache_and_names_what_is_not_cached(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")
    XLMRobertaXLConfig.from_pretrained("org/tiny", revision="main")
    served.reset()
    XLMRobertaXLForMaskedLM.from_pretrained("org/tiny", local_files_only=True)
    served.add_repo("org/other", {"config.json": b"{}"})
    with pytest.raises(HubError, match=r"'org/other' \(revision 'main'\) has no weights in the HF cache .*local_files_only"):
        XLMRobertaXLForMaskedLM.from_pretrained("org/other", local_files_only=True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1, as huggingface_hub read it
    XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")
    with pytest.raises(HubError, match=r"'config.json' in the HF cache .*HF_HUB_OFFLINE=1"):
        XLMRobertaXLConfig.from_pretrained("org/other")
    assert served.requests == []


def test_hf_hub_offline_variable_in_a_new_process(served: Any) -> None:
    """``HF_HUB_OFFLINE=1`` as users set it: in the environment of a process, read at import."""
    XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")
    served.reset()
    load = "import sys; from modeling import XLMRobertaXLForMaskedLM as M; M.from_pretrained(sys.argv[1])"
    root = str(Path(hub.__file__).resolve().parents[1])  # this copy of modeling
    env = {**os.environ, "HF_HUB_OFFLINE": "1",  # HF_HOME and HF_ENDPOINT: the local Hub's (the fixture's)
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    cached = subprocess.run([sys.executable, "-c", load, "org/tiny"], env=env, capture_output=True, text=True,
                            check=False)
    assert cached.returncode == 0, cached.stderr
    missing = subprocess.run([sys.executable, "-c", load, "org/missing"], env=env, capture_output=True, text=True,
                             check=False)
    assert "HubError: 'org/missing' is not a local directory or file" in missing.stderr
    assert "downloads are off (HF_HUB_OFFLINE=1" in missing.stderr
    assert served.requests == []


def test_missing_repository_revision_and_weights_are_named(served: Any) -> None:
    with pytest.raises(HubError, match="'org/missing' is not a local directory or file, and the Hub repository "
                                       "'org/missing' was not found") as caught:
        XLMRobertaXLForMaskedLM.from_pretrained("org/missing")
    assert isinstance(caught.value, OSError) and caught.value.__suppress_context__
    with pytest.raises(HubError, match="'org/tiny' has no revision 'v9'"):
        XLMRobertaXLForMaskedLM.from_pretrained("org/tiny", revision="v9")
    served.add_repo("org/empty", {"config.json": b"{}", "README.md": b"nothing\n"})
    with pytest.raises(HubError, match="'org/empty' has no weights .looked for model.safetensors, "):
        XLMRobertaXLForMaskedLM.from_pretrained("org/empty")
    served.add_repo("org/weights-only", {"model.safetensors": b"..."})
    with pytest.raises(HubError, match="'org/weights-only' has no file 'config.json'"):
        XLMRobertaXLConfig.from_pretrained("org/weights-only")


def test_hub_errors_fall_back_to_the_cache_or_say_the_download_failed(served: Any) -> None:
    XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")
    served.fail("org/tiny", 429)  # too many requests (huggingface_hub retries 5xx answers for seconds)
    XLMRobertaXLForMaskedLM.from_pretrained("org/tiny")  # huggingface_hub falls back to the cached commit
    served.add_repo("org/down", {"config.json": b"{}"})
    served.fail("org/down", 429)
    with pytest.raises(HubError, match=r"'org/down' \(revision 'main'\) has no weights in the HF cache .*, and "
                                       r"downloading from http://127.0.0.1:\d+ failed \(429 Client Error"):
        XLMRobertaXLForMaskedLM.from_pretrained("org/down")


def test_private_repository_needs_its_token(local_hub: Any, ours_dir: Path) -> None:
    local_hub.add_repo("org/private", ours_dir, token="hf_secret")
    with pytest.raises(HubError, match="'org/private' was not found .*token="):
        XLMRobertaXLForMaskedLM.from_pretrained("org/private")
    with pytest.raises(HubError, match="'org/private' was not found"):
        XLMRobertaXLForMaskedLM.from_pretrained("org/private", token="hf_wrong")
    XLMRobertaXLForMaskedLM.from_pretrained("org/private", token="hf_secret")
    XLMRobertaXLConfig.from_pretrained("org/private", use_auth_token="hf_secret")  # HF's older name
    with pytest.raises(ValueError, match="token or use_auth_token"):
        XLMRobertaXLConfig.from_pretrained("org/private", token="a", use_auth_token="b")
