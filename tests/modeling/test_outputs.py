"""Tests of modeling/outputs.py: the output records behave like HF's ModelOutput."""

from __future__ import annotations

import pytest
import torch

from modeling.outputs import BackboneOutput, SequenceClassifierOutput, task_tuple

transformers = pytest.importorskip("transformers")
from transformers.modeling_outputs import SequenceClassifierOutput as HFSequenceClassifierOutput  # noqa: E402


def _pair():
    logits, hidden = torch.randn(2, 3), (torch.randn(2, 4, 5),)
    return (SequenceClassifierOutput(logits=logits, hidden_states=hidden),
            HFSequenceClassifierOutput(logits=logits, hidden_states=hidden))


def test_model_output_behaves_like_hfs() -> None:
    ours, hf = _pair()
    assert list(ours.keys()) == list(hf.keys()) == ["logits", "hidden_states"]  # None fields skipped
    assert len(ours) == len(hf) == 2 and list(ours) == list(hf)
    assert ours[0] is hf[0] and ours["hidden_states"] is hf["hidden_states"] and ours[-1] is hf[-1]
    assert ours.to_tuple() == hf.to_tuple() and ours[:1] == hf[:1]
    assert [k for k, _ in ours.items()] == [k for k, _ in hf.items()] and ours.values()[0] is list(hf.values())[0]
    assert ("loss" in ours) == ("loss" in hf) is False and ours.get("loss") is None
    assert dict(ours).keys() == dict(hf).keys()
    for record in (ours, hf):
        with pytest.raises(KeyError):
            record["loss"]
    loss = torch.tensor(1.0)
    ours["loss"] = hf["loss"] = loss
    # a field set later takes its declared place (HF's OrderedDict appends it: a deliberate difference)
    assert ours.loss is loss and ours[0] is loss and set(ours.keys()) == set(hf.keys())
    with pytest.raises(KeyError, match="no field"):
        ours["no_such_field"] = 1


def test_tuple_outputs() -> None:
    hidden = torch.randn(2, 4, 5)
    backbone = BackboneOutput(last_hidden_state=hidden, hidden_states=(hidden,), past_key_values=((hidden, hidden),))
    assert backbone.to_tuple() == (hidden, (hidden,), ((hidden, hidden),))  # HF's dataclass order
    assert backbone.tuple_output() == (hidden, None, ((hidden, hidden),), (hidden,))  # HF's return_dict=False order
    result = SequenceClassifierOutput(loss=torch.tensor(0.5), logits=torch.randn(2, 3), hidden_states=(hidden,))
    assert task_tuple(result, backbone) == (result.loss, result.logits, ((hidden, hidden),), (hidden,))
