"""Tests of modeling/heads.py: the six task models against HF transformers, losses, tying, outputs."""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import pytest
import torch
from torch import Tensor, nn

from modeling.config import XLMRobertaXLConfig
from modeling.heads import (
    XLMRobertaXLForCausalLM,
    XLMRobertaXLForMaskedLM,
    XLMRobertaXLForSequenceClassification,
    compute_loss,
)
from modeling.outputs import MaskedLMOutput, QuestionAnsweringModelOutput

from .test_model import TINY, assert_close, assert_grads_close, assert_same_structure, make_pair, max_diff, random_ids

transformers = pytest.importorskip("transformers")

GENERATOR_SEED = 4


def _labels(*shape: int, high: int) -> Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(GENERATOR_SEED))


def _token_inputs(padded: bool = True) -> Dict[str, Any]:
    ids, mask = random_ids(pad_lengths=(0, 3, 1) if padded else ())
    return {"input_ids": ids, "attention_mask": mask}


def _mlm() -> Dict[str, Any]:
    inputs = _token_inputs()
    labels = inputs["input_ids"].clone()
    labels[:, ::2] = -100
    return {**inputs, "labels": labels}


def _causal() -> Dict[str, Any]:
    inputs = _token_inputs()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    return {**inputs, "labels": labels}


def _token_classification() -> Dict[str, Any]:
    inputs = _token_inputs()
    return {**inputs, "labels": _labels(3, 9, high=2)}


def _multiple_choice() -> Dict[str, Any]:
    ids, mask = random_ids(batch=6, pad_lengths=(0, 2, 0, 4, 1, 0))
    return {
        "input_ids": ids.view(2, 3, -1),
        "attention_mask": mask.view(2, 3, -1),
        "token_type_ids": (torch.arange(9) > 4).long().expand(2, 3, 9),
        "labels": torch.tensor([2, 0]),
    }


def _question_answering() -> Dict[str, Any]:
    # 40 is beyond the sequence (clamped to 9 and ignored); 3 is inside
    return {**_token_inputs(), "start_positions": torch.tensor([1, 40, 3]), "end_positions": torch.tensor([[4], [5], [40]])}


def _sequence(labels: Tensor) -> Callable[[], Dict[str, Any]]:
    return lambda: {**_token_inputs(), "labels": labels}


# name, config overrides, inputs builder, output fields to compare
CASES: Dict[str, Tuple[str, Dict[str, Any], Callable[[], Dict[str, Any]], Tuple[str, ...]]] = {
    "masked_lm": ("ForMaskedLM", {}, _mlm, ("logits",)),
    "causal_lm": ("ForCausalLM", {"is_decoder": True}, _causal, ("logits",)),
    "seq_single_label": ("ForSequenceClassification", {"num_labels": 3}, _sequence(torch.tensor([2, 0, 1])), ("logits",)),
    "seq_regression": ("ForSequenceClassification", {"num_labels": 1}, _sequence(torch.tensor([0.5, -1.0, 2.0])), ("logits",)),
    "seq_multi_label": (
        "ForSequenceClassification",
        {"num_labels": 3},
        _sequence(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])),
        ("logits",),
    ),
    "seq_regression_multi": (
        "ForSequenceClassification",
        {"num_labels": 2, "problem_type": "regression"},
        _sequence(torch.tensor([[0.5, 1.0], [-1.0, 0.0], [2.0, 3.0]])),
        ("logits",),
    ),
    "multiple_choice": ("ForMultipleChoice", {"type_vocab_size": 2}, _multiple_choice, ("logits",)),
    "token_classification": ("ForTokenClassification", {"num_labels": 5}, _token_classification, ("logits",)),
    "question_answering": ("ForQuestionAnswering", {}, _question_answering, ("start_logits", "end_logits")),
}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_task_model_parity_with_hf(case: str, attn: str) -> None:
    name, overrides, build, fields = CASES[case]
    hf, ours = make_pair(name, attn=attn, **overrides)
    assert set(ours.state_dict()) == set(hf.state_dict())
    inputs = build()
    hf_out = hf(**inputs, output_hidden_states=True, output_attentions=attn == "eager")
    our_out = ours(**inputs, output_hidden_states=True, output_attentions=attn == "eager")
    for field in fields:
        assert_close(getattr(our_out, field), getattr(hf_out, field), what=field)
    assert_close(our_out.hidden_states, hf_out.hidden_states, what="hidden_states")
    if attn == "eager":
        assert_close(our_out.attentions, hf_out.attentions, what="attentions")
    assert our_out.loss is not None and our_out.loss.dim() == 0
    assert_close(our_out.loss, hf_out.loss, what="loss")
    assert ours.config.problem_type == hf.config.problem_type
    hf_out.loss.backward()
    our_out.loss.backward()
    assert_grads_close(hf, ours)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tuple_output_equals_hf(case: str) -> None:
    """return_dict=False (argument, or config.return_dict=False) gives HF's tuple, loss first."""
    name, overrides, build, _ = CASES[case]
    hf, ours = make_pair(name, attn="eager", **overrides)
    inputs = build()
    kwargs = dict(output_hidden_states=True, output_attentions=True, return_dict=False)
    assert_same_structure(ours(**inputs, **kwargs), hf(**inputs, **kwargs))
    unlabelled = {k: v for k, v in inputs.items() if k not in ("labels", "start_positions", "end_positions")}
    ours.config.return_dict = hf.config.return_dict = False
    assert_same_structure(ours(**unlabelled), hf(**unlabelled))
    if name == "ForCausalLM":  # with the cache: logits, past_key_values
        got, expected = ours(**unlabelled, use_cache=True), hf(**unlabelled, use_cache=True)
        assert len(got) == len(expected) == 2 and len(got[1]) == TINY["num_hidden_layers"]
        assert_same_structure(got, expected)


def test_forward_signatures_name_hfs_arguments() -> None:
    """HF's Trainer keeps the dataset columns that forward names: the same names, in HF's order."""
    import inspect

    for name in ("Model", *{case[0] for case in CASES.values()}):
        ours = getattr(__import__("modeling"), f"XLMRobertaXL{name}")
        expected = [p for p in inspect.signature(getattr(transformers, f"XLMRobertaXL{name}").forward).parameters
                    if p != "kwargs"]
        got = list(inspect.signature(ours.forward).parameters)
        assert got[: len(expected)] == expected, name
        assert not [p for p in inspect.signature(ours.forward).parameters.values() if p.kind is p.VAR_KEYWORD], name


def test_heads_without_labels_give_no_loss() -> None:
    for name, overrides, build, fields in CASES.values():
        hf, ours = make_pair(name, **overrides)
        inputs = {k: v for k, v in build().items() if k not in ("labels", "start_positions", "end_positions")}
        out = ours(**inputs)
        assert out.loss is None and "loss" not in out.keys()
        hf_out = hf(**inputs)
        for field in fields:
            assert_close(out[field], getattr(hf_out, field), what=f"{name}.{field}")


def test_inputs_embeds_and_head_mask_through_heads() -> None:
    hf, ours = make_pair("ForTokenClassification", num_labels=4)
    inputs = _token_inputs()
    embeds = ours.get_input_embeddings()(inputs.pop("input_ids")).detach()
    head_mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    expected = hf(inputs_embeds=embeds, head_mask=head_mask, **inputs).logits
    assert_close(ours(inputs_embeds=embeds, head_mask=head_mask, **inputs).logits, expected)
    hf, ours = make_pair("ForMultipleChoice", type_vocab_size=2)
    mc = _multiple_choice()
    embeds = ours.get_input_embeddings()(mc.pop("input_ids")).detach()
    assert_close(ours(inputs_embeds=embeds, **mc).logits, hf(inputs_embeds=embeds, **mc).logits)


def test_problem_type_inferred_and_written_to_config() -> None:
    expected = {
        (1, torch.float32): "regression",
        (3, torch.long): "single_label_classification",
        (3, torch.float32): "multi_label_classification",
    }
    for (num_labels, dtype), problem_type in expected.items():
        model = XLMRobertaXLForSequenceClassification(XLMRobertaXLConfig(**TINY, num_labels=num_labels)).eval()
        assert model.config.problem_type is None
        labels = torch.zeros(3, num_labels if problem_type.startswith("multi") else 1, dtype=dtype).squeeze(-1)
        model(_token_inputs()["input_ids"], labels=labels)
        assert model.config.problem_type == problem_type


def test_token_classification_ignores_labels_at_masked_positions() -> None:
    _, ours = make_pair("ForTokenClassification", num_labels=5)
    inputs = _token_classification()
    labels, mask = inputs["labels"], inputs["attention_mask"]
    loss = ours(**inputs).loss
    logits = ours(**inputs).logits
    assert_close(loss, torch.nn.functional.cross_entropy(logits[mask.bool()], labels[mask.bool()]))
    changed = labels.masked_fill(mask == 0, 4)
    assert_close(ours(**{**inputs, "labels": changed}).loss, loss)


def test_question_answering_ignores_positions_outside_sequence() -> None:
    _, ours = make_pair("ForQuestionAnswering")
    inputs = _question_answering()
    out = ours(**inputs)
    assert isinstance(out, QuestionAnsweringModelOutput) and out.start_logits.shape == (3, 9)
    ce = torch.nn.functional.cross_entropy
    start = ce(out.start_logits[[0, 2]], torch.tensor([1, 3]))
    end = ce(out.end_logits[[0, 1]], torch.tensor([4, 5]))
    assert_close(out.loss, (start + end) / 2)


def test_compute_loss_causal_shift_and_errors() -> None:
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 2, 3, -100, 4], [5, 6, -100, -100, -100]])
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert_close(compute_loss(logits, labels, problem_type="causal_lm"), expected)
    with pytest.raises(ValueError, match="problem_type"):
        compute_loss(logits, labels, problem_type="ranking")


# ---------------------------------------------------------------------------------- tying
def _assert_tied(model: nn.Module) -> None:
    embeddings = model.roberta.embeddings.word_embeddings.weight
    assert model.lm_head.decoder.weight is embeddings
    assert model.lm_head.decoder.bias is model.lm_head.bias


@pytest.mark.parametrize("cls", [XLMRobertaXLForMaskedLM, XLMRobertaXLForCausalLM])
def test_lm_head_tied_through_load_and_moves(cls: Any) -> None:
    config = XLMRobertaXLConfig(**TINY)
    model = cls(config)
    _assert_tied(model)
    assert model.get_output_embeddings() is model.lm_head.decoder
    assert model.roberta.embeddings.word_embeddings.weight[1].abs().max() == 0  # padding row survives init
    assert model.lm_head.bias.abs().max() == 0
    source = cls(config)
    source.init_weights(seed=3)
    model.load_state_dict(source.state_dict(), assign=True)
    _assert_tied(model)
    assert torch.equal(model.lm_head.decoder.weight, source.roberta.embeddings.word_embeddings.weight)
    model.to(torch.float64)
    _assert_tied(model)
    assert model.lm_head.decoder.weight.dtype == torch.float64
    with torch.device("meta"):
        meta_model = cls(config)
    _assert_tied(meta_model)
    assert all(p.is_meta for p in meta_model.parameters())
    meta_model.to_empty(device="cpu")
    _assert_tied(meta_model)
    # every parameter is initialised once; the tied copy is not re-initialised over its original
    with torch.no_grad():
        for param in meta_model.parameters():
            param.fill_(float("nan"))
    meta_model.init_weights(seed=0)
    assert all(torch.isfinite(param).all() for param in meta_model.parameters())
    assert meta_model.roberta.embeddings.word_embeddings.weight[1].abs().max() == 0
    # gradients of the shared weight collect both uses
    ids, _ = random_ids()
    meta_model(ids).logits.sum().backward()
    assert meta_model.lm_head.decoder.weight.grad is meta_model.roberta.embeddings.word_embeddings.weight.grad


@pytest.mark.parametrize("name", ["ForMaskedLM", "ForCausalLM"])
def test_untied_lm_decoder_equals_hf(name: str, tmp_path: Any) -> None:
    """tie_word_embeddings=False (HF's): the decoder has a weight of its own (the bias stays
    shared), initialised, trained, saved and loaded as HF does; resizing grows it too."""
    hf, ours = make_pair(name, tie_word_embeddings=False, is_decoder=name == "ForCausalLM")
    decoder = ours.lm_head.decoder
    assert decoder.weight is not ours.roberta.embeddings.word_embeddings.weight and decoder.bias is ours.lm_head.bias
    assert not torch.equal(decoder.weight, ours.roberta.embeddings.word_embeddings.weight)
    ids, mask = random_ids(pad_lengths=(0, 2, 0))
    assert_close(ours(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits)
    for model in (hf, ours):
        model(ids, attention_mask=mask).logits.mean().backward()
    assert_grads_close(hf, ours)
    fresh = type(ours)(ours.config)
    assert fresh.lm_head.decoder.weight.abs().max() > 0 and torch.isfinite(fresh.lm_head.decoder.weight).all()
    ours.save_pretrained(tmp_path / "ours")
    hf.save_pretrained(tmp_path / "hf")
    by_hf = getattr(transformers, f"XLMRobertaXL{name}").from_pretrained(tmp_path / "ours").eval()
    by_ours = type(ours).from_pretrained(tmp_path / "hf")
    assert by_ours.loading_info["missing_keys"] == [] and by_ours.config.tie_word_embeddings is False
    for model in (by_hf, by_ours):
        assert_close(model(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits)
    vocab = TINY["vocab_size"]
    for model in (by_hf, by_ours):
        model.resize_token_embeddings(vocab + 10)
    for model in (by_hf, by_ours):
        out = model.get_output_embeddings()
        assert out.weight.shape == (vocab + 10, TINY["hidden_size"]) and out.bias.shape == (vocab + 10,)
        assert out.weight is not model.get_input_embeddings().weight
    assert_close(by_ours.lm_head.decoder.weight[:vocab], by_hf.lm_head.decoder.weight[:vocab])
    assert_close(by_ours.lm_head.bias[vocab:], by_hf.lm_head.bias[vocab:])  # the old biases' mean
    assert_close(by_ours(ids).logits[..., :vocab], by_hf(ids).logits[..., :vocab])


def test_head_init_keeps_backbone_and_is_seeded() -> None:
    config = XLMRobertaXLConfig(**TINY, num_labels=3)
    a = XLMRobertaXLForSequenceClassification(config)
    backbone = {k: v.clone() for k, v in a.roberta.state_dict().items()}
    a.init_weights(seed=5, modules=[a.classifier])
    assert all(torch.equal(v, a.roberta.state_dict()[k]) for k, v in backbone.items())
    b = XLMRobertaXLForSequenceClassification(config)
    b.init_weights(seed=5, modules=[b.classifier])
    assert torch.equal(a.classifier.dense.weight, b.classifier.dense.weight)
    assert a.classifier.out_proj.bias.abs().max() == 0
    assert abs(a.classifier.dense.weight.std().item() - 0.02) < 5e-3


def test_classifier_dropout_setting() -> None:
    config = XLMRobertaXLConfig(**TINY, classifier_dropout=0.3, hidden_dropout_prob=0.05)
    assert XLMRobertaXLForSequenceClassification(config).classifier.dropout.p == 0.3


# ---------------------------------------------------------------------------------- causal LM
def test_causal_lm_incremental_logits_and_cache_match_hf() -> None:
    hf, ours = make_pair("ForCausalLM", is_decoder=True)
    ids, mask = random_ids(length=8)
    full = ours(ids, attention_mask=mask)
    hf_full = hf(ids, attention_mask=mask)
    assert_close(full.logits, hf_full.logits)
    assert_close(full.past_key_values, hf_full.past_key_values, what="cache")
    first = ours(ids[:, :5], attention_mask=mask[:, :5])
    step = ours(ids[:, 5:], attention_mask=mask, past_key_values=first.past_key_values)
    assert_close(torch.cat([first.logits, step.logits], dim=1), full.logits)
    assert ours(ids, labels=ids).past_key_values is None  # labels switch the cache off, as in HF


def test_output_access() -> None:
    _, ours = make_pair("ForMaskedLM")
    out = ours(**_mlm())
    assert isinstance(out, MaskedLMOutput)
    assert out["logits"] is out.logits and out[0] is out.loss and out.to_tuple() == (out.loss, out.logits)
    assert "hidden_states" not in out
    with pytest.raises(KeyError):
        out["hidden_states"]
    assert max_diff(out.logits, ours(**_mlm()).logits) == 0


# ------------------------------------------------------------------ QA head: num_labels as HF
def test_question_answering_head_has_num_labels_outputs_like_hf() -> None:
    for num_labels in (2, 3, 1):
        hf, ours = make_pair("ForQuestionAnswering", num_labels=num_labels)
        assert ours.qa_outputs.weight.shape == hf.qa_outputs.weight.shape == (num_labels, TINY["hidden_size"])
        assert ours.num_labels == hf.num_labels == num_labels


@pytest.mark.parametrize("num_labels", [1, 3])
def test_question_answering_other_num_labels_round_trips_through_hf(tmp_path, num_labels: int) -> None:
    from modeling.heads import XLMRobertaXLForQuestionAnswering

    model = XLMRobertaXLForQuestionAnswering(XLMRobertaXLConfig(**TINY, num_labels=num_labels)).eval()
    model.save_pretrained(tmp_path / "ours")
    reference, info = transformers.XLMRobertaXLForQuestionAnswering.from_pretrained(
        tmp_path / "ours", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert reference.config.num_labels == num_labels
    torch.testing.assert_close(reference.qa_outputs.weight, model.qa_outputs.weight, rtol=0, atol=0)
    reference.save_pretrained(tmp_path / "hf")
    again = XLMRobertaXLForQuestionAnswering.from_pretrained(tmp_path / "hf")
    assert again.config.num_labels == num_labels and again.loading_info["missing_keys"] == []
    torch.testing.assert_close(again.qa_outputs.bias, model.qa_outputs.bias, rtol=0, atol=0)
    inputs = _token_inputs()
    with pytest.raises(ValueError):  # HF cannot unpack such a head into (start, end)
        reference(**inputs)
    if num_labels < 2:
        with pytest.raises(ValueError, match="num_labels >= 2"):
            model(**inputs)
        return
    # ours: the first two columns are start / end, as for a 2-label head
    out = model(**inputs, output_hidden_states=True)
    two = torch.nn.functional.linear(out.hidden_states[-1], model.qa_outputs.weight[:2], model.qa_outputs.bias[:2])
    assert_close(out.start_logits, two[..., 0])
    assert_close(out.end_logits, two[..., 1])


def test_question_answering_checkpoint_with_two_row_head_and_other_num_labels_still_loads(tmp_path) -> None:
    """Files written before the head followed num_labels: a 2-row qa_outputs, config num_labels 9."""
    import json

    from modeling.checkpoint import CheckpointError
    from modeling.heads import XLMRobertaXLForQuestionAnswering

    hf, ours = make_pair("ForQuestionAnswering")
    ours.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    config = json.loads(config_file.read_text())
    config["id2label"] = {str(i): f"T{i}" for i in range(9)}
    config["label2id"] = {f"T{i}": i for i in range(9)}
    config_file.write_text(json.dumps(config))
    loaded = XLMRobertaXLForQuestionAnswering.from_pretrained(tmp_path / "old")
    assert loaded.config.num_labels == 2 and loaded.loading_info["missing_keys"] == []
    inputs = _token_inputs()
    expected = hf(**inputs)
    out = loaded(**inputs)
    assert_close(out.start_logits, expected.start_logits)
    assert_close(out.end_logits, expected.end_logits)
    with pytest.raises(CheckpointError, match="qa_outputs.weight"):  # an explicit num_labels is not overridden
        XLMRobertaXLForQuestionAnswering.from_pretrained(tmp_path / "old", num_labels=3)


def test_question_answering_num_labels_inferred_from_bare_weights(tmp_path) -> None:
    from safetensors.torch import save_file

    from modeling.heads import XLMRobertaXLForQuestionAnswering

    model = XLMRobertaXLForQuestionAnswering(XLMRobertaXLConfig(**TINY, num_labels=3))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    loaded = XLMRobertaXLForQuestionAnswering.from_pretrained(tmp_path / "weights.safetensors",
                                                              num_attention_heads=TINY["num_attention_heads"])
    assert loaded.config.num_labels == 3
    torch.testing.assert_close(loaded.qa_outputs.weight, model.qa_outputs.weight, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["masked_lm", "token_classification", "question_answering", "multiple_choice"])
def test_skip_padding_through_task_models(case: str) -> None:
    """Our ``skip_padding`` (not HF's) reaches the backbone from every encoder task model, and the
    real positions' results equal the padded forward's."""
    name, overrides, build, fields = CASES[case]
    _, ours = make_pair(name, **overrides)
    inputs = {k: v for k, v in build().items() if k not in ("labels", "start_positions", "end_positions")}
    padded, skipped = ours(**inputs), ours(**inputs, skip_padding=True)
    real = inputs["attention_mask"].bool()
    for field in fields:
        expected, got = getattr(padded, field), getattr(skipped, field)
        if case != "multiple_choice":  # per-position outputs: compare the real positions
            expected, got = expected[real], got[real]
        assert_close(got, expected, what=field)
