"""Tests of modeling/generation/ (search and config): ``generate`` against HF's on
the same weights (same tokens for greedy search, beam search and, with the same seed, sampling),
its outputs, settings, generation config files and errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
import torch
from torch import Tensor

from modeling.generation.config import GenerationConfig
from modeling.heads import XLMRobertaXLForCausalLM
from modeling.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

from .test_model import TINY, assert_close, make_pair, random_ids

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # HF warns about right padding; both sides get the same prompt


@pytest.fixture(scope="module")
def pair() -> Tuple[Any, XLMRobertaXLForCausalLM]:
    return make_pair("ForCausalLM", is_decoder=True)


def _prompt(padding: str = "none") -> Tuple[Tensor, Tensor]:
    ids, mask = random_ids(batch=3, length=6, seed=7)
    if padding == "right":
        ids[1, -2:] = 1
    elif padding == "left":
        ids[1, :2] = 1
    return ids, ids.ne(1).long()


def _frequent_token(hf: Any, ids: Tensor, mask: Tensor) -> int:
    """A token greedy search produces mid-way (as eos it ends some rows early)."""
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=4, eos_token_id=None)
    return int(out[0, ids.shape[1] + 1])


def _both(pair: Any, ids: Tensor, mask: Tensor, seed: int = 0, **kwargs: Any) -> Tuple[Any, Any]:
    hf, ours = pair
    torch.manual_seed(seed)
    expected = hf.generate(ids, attention_mask=mask, **kwargs)
    torch.manual_seed(seed)
    return expected, ours.generate(ids, attention_mask=mask, **kwargs)


GREEDY = {
    "max_new_tokens": dict(max_new_tokens=5),
    "max_length": dict(max_length=9),
    "no_cache": dict(max_new_tokens=4, use_cache=False),
    "processors": dict(max_new_tokens=5, repetition_penalty=1.3, bad_words_ids=[[1, 0], [17]], min_new_tokens=3,
                       remove_invalid_values=True),
}
BEAMS = {
    "beams": dict(max_new_tokens=6, num_beams=3),
    "returned": dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, length_penalty=2.0),
    "early_stopping": dict(max_new_tokens=6, num_beams=4, early_stopping=True),
    "never": dict(max_new_tokens=6, num_beams=2, early_stopping="never", length_penalty=0.5),
    "no_cache": dict(max_length=12, num_beams=3, use_cache=False),
}


@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("case", sorted(GREEDY))
def test_greedy_search_equals_hf(pair: Any, case: str, padding: str) -> None:
    ids, mask = _prompt(padding)
    expected, got = _both(pair, ids, mask, **GREEDY[case])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("case", sorted(BEAMS))
def test_beam_search_equals_hf(pair: Any, case: str) -> None:
    ids, mask = _prompt("left")
    expected, got = _both(pair, ids, mask, **BEAMS[case])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("beams", [1, 3])
def test_end_of_sequence_handling_equals_hf(pair: Any, beams: int) -> None:
    """Rows that reach eos stop (pads after it); one or several eos ids; the output ends early."""
    ids, mask = _prompt("right")
    eos = _frequent_token(pair[0], ids, mask)
    for eos_ids in (eos, [eos, 5]):
        expected, got = _both(pair, ids, mask, max_new_tokens=8, num_beams=beams, eos_token_id=eos_ids, pad_token_id=1)
        assert torch.equal(got, expected)
        assert (got == eos).any()


@pytest.mark.parametrize("case", ["sample", "returned", "beam_sample"])
def test_sampling_draws_hfs_tokens_with_the_same_seed(pair: Any, case: str) -> None:
    kwargs = {"sample": dict(do_sample=True, max_new_tokens=6, top_k=10, top_p=0.7, temperature=0.7),
              "returned": dict(do_sample=True, max_new_tokens=6, num_return_sequences=2),
              "beam_sample": dict(do_sample=True, max_new_tokens=5, num_beams=3, num_return_sequences=2, top_k=20)}
    ids, mask = _prompt()
    expected, got = _both(pair, ids, mask, seed=11, **kwargs[case])
    assert torch.equal(got, expected)
    _, other = _both(pair, ids, mask, seed=12, **kwargs[case])
    assert not torch.equal(other, got)  # the draw depends on the seed


def test_beam_dict_output_equals_hf(pair: Any) -> None:
    ids, mask = _prompt("left")
    eos = _frequent_token(pair[0], ids, mask)
    kwargs: Dict[str, Any] = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, output_scores=True,
                                  output_logits=True, return_dict_in_generate=True, eos_token_id=eos)
    expected, got = _both(pair, ids, mask, **kwargs)
    assert isinstance(got, GenerateBeamDecoderOnlyOutput)
    assert torch.equal(got.sequences, expected.sequences) and torch.equal(got.beam_indices, expected.beam_indices)
    assert_close(got.sequences_scores, expected.sequences_scores, what="sequences_scores")
    assert_close(got.scores, expected.scores, what="scores")
    assert_close(got.logits, expected.logits, what="logits")
    assert got.keys() == [k for k in expected.keys() if k != "past_key_values"] + ["past_key_values"]


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_dict_output_equals_hf(pair: Any, use_cache: bool) -> None:
    """Scores, logits, per-step attentions / hidden states and the final cache, as HF returns them."""
    ids, mask = _prompt("left")
    kwargs = dict(max_new_tokens=3, output_scores=True, output_logits=True, output_attentions=True,
                  output_hidden_states=True, return_dict_in_generate=True, use_cache=use_cache)
    expected, got = _both(pair, ids, mask, **kwargs)
    assert isinstance(got, GenerateDecoderOnlyOutput) and torch.equal(got.sequences, expected.sequences)
    for field in ("scores", "logits"):
        assert_close(getattr(got, field), getattr(expected, field), what=field)
    # HF's XL keeps its cache even with use_cache=False (its step inputs drop the switch): there its
    # later steps see the last position only, ours the whole recomputed sequence; compare that one
    last_query = lambda steps: tuple(tuple(t[..., -1:, :] for t in layers) for layers in steps)  # noqa: E731
    assert_close(last_query(got.attentions), last_query(expected.attentions), what="attentions")
    assert_close(got.attentions[0], expected.attentions[0], what="attentions of the prompt")
    last_position = lambda steps: tuple(tuple(t[:, -1:] for t in layers) for layers in steps)  # noqa: E731
    assert_close(last_position(got.hidden_states), last_position(expected.hidden_states), what="hidden_states")
    if use_cache:
        assert got.attentions[1][0].shape == (3, TINY["num_attention_heads"], 1, ids.shape[1] + 1)
        assert_close(got.past_key_values, tuple(tuple(layer) for layer in expected.past_key_values), what="cache")
        assert got.past_key_values[0][0].shape[2] == got.sequences.shape[1] - 1
    else:
        assert got.past_key_values is None
        assert got.attentions[2][0].shape == (3, TINY["num_attention_heads"], ids.shape[1] + 2, ids.shape[1] + 2)


def test_custom_logits_processor_and_stopping_criterion(pair: Any) -> None:
    hf, ours = pair
    ids, mask = _prompt()

    def favour_seven(input_ids: Tensor, scores: Tensor) -> Tensor:
        return scores + 100.0 * (torch.arange(scores.shape[-1]) == 7)

    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=3,
                           logits_processor=transformers.LogitsProcessorList([favour_seven]))
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=3, logits_processor=[favour_seven])
    assert torch.equal(got, expected) and (got[:, -3:] == 7).all()
    stop_after_two = lambda input_ids, scores: input_ids.shape[1] >= ids.shape[1] + 2  # noqa: E731
    assert ours.generate(ids, attention_mask=mask, max_new_tokens=6, stopping_criteria=[stop_after_two]).shape[1] == 8


def test_inputs_embeds_prompt_gives_the_new_tokens_of_the_ids_prompt(pair: Any) -> None:
    _, ours = pair
    ids, _ = _prompt()
    embeds = ours.get_input_embeddings()(ids).detach()
    for kwargs in (dict(max_new_tokens=4), dict(max_new_tokens=4, use_cache=False), dict(max_new_tokens=4, num_beams=2)):
        from_ids = ours.generate(ids, **kwargs)
        from_embeds = ours.generate(inputs_embeds=embeds, **kwargs)
        assert torch.equal(from_embeds, from_ids[:, ids.shape[1]:]), kwargs
    assert ours.generate(inputs_embeds=embeds, max_length=10).shape == (3, 10 - ids.shape[1])


def test_no_prompt_starts_from_bos_like_hf(pair: Any) -> None:
    hf, ours = pair
    assert torch.equal(ours.generate(max_new_tokens=4), hf.generate(max_new_tokens=4))


def _hf_generate(hf: Any, ids: Tensor, mask: Tensor, new: int, eos: Any) -> Tensor:
    return hf.generate(
        ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=new, eos_token_id=eos, pad_token_id=1
    )


@pytest.mark.parametrize("padded", [False, True])
def test_generate_matches_hf_greedy(padded: bool) -> None:
    hf, ours = make_pair("ForCausalLM", is_decoder=True)
    ids, mask = random_ids(batch=2, length=6)
    if padded:  # left padding, as for decoder-only batches
        ids[1, :2], mask[1, :2] = 1, 0
    ours_out = ours.generate(ids, max_new_tokens=7, attention_mask=mask)
    assert ours_out.shape == (2, 13) and torch.equal(ours_out[:, :6], ids)
    # an eos id that row 0 emits at its 3rd new token: row 0 then continues with pads
    eos = int(ours_out[0, 8])
    hf_out = _hf_generate(hf, ids, mask, 7, eos)
    ours_eos = ours.generate(ids, max_new_tokens=7, attention_mask=mask, eos_token_id=eos)
    assert torch.equal(ours_eos, hf_out)
    assert (ours_eos[0, 9:] == 1).all()
    # a never-produced eos: full length, identical to HF
    never = int(torch.arange(4, 1000)[~torch.isin(torch.arange(4, 1000), ours_out)][0])
    assert torch.equal(ours.generate(ids, max_new_tokens=7, attention_mask=mask, eos_token_id=never), ours_out)
    assert torch.equal(_hf_generate(hf, ids, mask, 7, never), ours_out)


def test_generate_uses_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    _, ours = make_pair("ForCausalLM", is_decoder=True)
    lengths = []
    original = ours.roberta.forward

    def spy(input_ids: Tensor = None, **kwargs: Any) -> Any:
        lengths.append(input_ids.shape[1])
        return original(input_ids, **kwargs)

    monkeypatch.setattr(ours.roberta, "forward", spy)
    ids, _ = random_ids(batch=2, length=5)
    ours.generate(ids, max_new_tokens=4)
    assert lengths == [5, 1, 1, 1]


# ------------------------------------------------------------------ settings and generation config files
def test_generation_config_defaults_arguments_and_files(pair: Any, tmp_path: Path) -> None:
    hf, ours = pair
    assert (ours.generation_config.eos_token_id, ours.generation_config.pad_token_id) == (2, 1)
    ids, mask = _prompt()
    settings = GenerationConfig(max_new_tokens=3, num_beams=2, pad_token_id=1, eos_token_id=2)
    expected = hf.generate(ids, attention_mask=mask, generation_config=transformers.GenerationConfig(**settings.to_dict()))
    assert torch.equal(ours.generate(ids, attention_mask=mask, generation_config=settings), expected)
    assert ours.generate(ids, generation_config=settings, max_new_tokens=1).shape[1] == ids.shape[1] + 1  # kwargs win
    ours.generation_config.max_new_tokens = 2
    ours.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "generation_config.json").read_text())
    assert written == {"bos_token_id": 0, "eos_token_id": 2, "max_new_tokens": 2, "pad_token_id": 1}
    assert transformers.GenerationConfig.from_pretrained(tmp_path).max_new_tokens == 2  # HF reads ours
    reloaded = XLMRobertaXLForCausalLM.from_pretrained(tmp_path)
    assert reloaded.generation_config.max_new_tokens == 2 and reloaded.generate(ids).shape[1] == ids.shape[1] + 2
    ours.generation_config.max_new_tokens = None
    transformers.GenerationConfig(num_beams=4, max_length=30, foo_from_hf=1).save_pretrained(tmp_path / "hf")
    assert GenerationConfig.from_pretrained(tmp_path / "hf") == GenerationConfig(num_beams=4, max_length=30)
    transformers.GenerationConfig(num_beams=4, num_beam_groups=2, diversity_penalty=1.0).save_pretrained(tmp_path / "x")
    assert GenerationConfig.from_pretrained(tmp_path / "x") == GenerationConfig(num_beams=4, num_beam_groups=2,
                                                                               diversity_penalty=1.0)
    transformers.GenerationConfig(cache_implementation="static").save_pretrained(tmp_path / "y")
    with pytest.raises(ValueError, match="cache_implementation"):
        GenerationConfig.from_pretrained(tmp_path / "y")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_beam_groups=2, num_beams=2), "num_beam_groups > 1 needs diversity_penalty"),
        (dict(cache_implementation="static"), "cache_implementation"),
        (dict(temprature=0.5), "'temprature'"),
        (dict(num_return_sequences=2), "num_return_sequences"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(early_stopping="sometimes", num_beams=2), "early_stopping"),
    ],
)
def test_bad_settings_are_refused_by_name(pair: Any, kwargs: Dict[str, Any], match: str) -> None:
    ids, _ = _prompt()
    with pytest.raises(ValueError, match=match):
        pair[1].generate(ids, max_new_tokens=2, **kwargs)


def test_missing_pad_token_falls_back_to_eos_and_encoder_config_warns() -> None:
    _, ours = make_pair("ForCausalLM", is_decoder=True, pad_token_id=1)
    ids, mask = _prompt()
    ours.generation_config.pad_token_id = None
    with pytest.warns(UserWarning, match="pad_token_id"):
        ours.generate(ids, max_new_tokens=2)
    encoder = XLMRobertaXLForCausalLM(ours.config.copy(is_decoder=False))
    with pytest.warns(UserWarning, match="is_decoder"):
        encoder.generate(ids, max_new_tokens=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_pair("ForCausalLM", is_decoder=True)[1].generate(ids, attention_mask=mask, max_new_tokens=1)
