"""Tests of modeling/model.py and the network parts (embeddings, masks, attention, layers): the backbone against HF transformers.

HF's ``XLMRobertaXLModel`` is the numerical reference (test-only); both models get the same
random weights (HF's state dict, perturbed so that biases and LayerNorms are not trivial). The
helpers here are reused by test_heads.py.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import pytest
import torch
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

from modeling import heads as our_heads  # noqa: E402
from modeling.config import XLMRobertaXLConfig  # noqa: E402
from modeling.embeddings import position_ids_from_input_ids  # noqa: E402
from modeling.masks import attention_bias  # noqa: E402
from modeling.model import XLMRobertaXLModel, XLMRobertaXLPreTrainedModel  # noqa: E402
from modeling.outputs import BackboneOutput  # noqa: E402

TINY = dict(
    vocab_size=1000,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=40,
)
ATOL = 1e-5
GRAD_ATOL = 1e-4
PAD = 1


# ---------------------------------------------------------------------------------- helpers
def hf_config(attn: str = "sdpa", **overrides: Any) -> Any:
    return transformers.XLMRobertaXLConfig(**{**TINY, **overrides}, attn_implementation=attn)


def make_pair(name: str = "Model", *, attn: str = "sdpa", seed: int = 0, **overrides: Any) -> Tuple[nn.Module, nn.Module]:
    """HF ``XLMRobertaXL<name>`` and ours with identical (perturbed) weights, both in eval mode."""
    torch.manual_seed(seed)
    config = hf_config(attn, **overrides)
    hf = getattr(transformers, f"XLMRobertaXL{name}")(config).eval()
    assert hf.config._attn_implementation == attn
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    our_cls = XLMRobertaXLModel if name == "Model" else getattr(our_heads, f"XLMRobertaXL{name}")
    ours = our_cls(XLMRobertaXLConfig.from_dict(config.to_dict())).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return hf, ours


def random_ids(batch: int = 3, length: int = 9, *, seed: int = 1, pad_lengths: Sequence[int] = ()) -> Tuple[Tensor, Tensor]:
    """Ids avoiding the special ids 0-3, right-padded by ``pad_lengths[i]`` in row i; and the mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, TINY["vocab_size"], (batch, length), generator=generator)
    for row, pads in enumerate(pad_lengths):
        if pads:
            ids[row, length - pads:] = PAD
    return ids, ids.ne(PAD).long()


def max_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.detach().double() - b.detach().double()).abs().max().item()


def assert_close(a: Any, b: Any, atol: float = ATOL, what: str = "") -> None:
    """Tensors, or (nested) tuples of tensors, equal within ``atol`` (max-abs-diff)."""
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), f"{what}: {type(b)} / length differs"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, atol, f"{what}[{i}]")
        return
    diff = max_diff(a, b)
    assert diff <= atol, f"{what}: max-abs-diff {diff:.3g} > {atol}"


def assert_grads_close(hf: nn.Module, ours: nn.Module, atol: float = GRAD_ATOL) -> None:
    """Every parameter gradient of ours equals HF's parameter of the same name."""
    hf_params = dict(hf.named_parameters(remove_duplicate=False))
    compared = 0
    for name, param in ours.named_parameters(remove_duplicate=False):
        reference = hf_params[name]
        assert (param.grad is None) == (reference.grad is None), name
        if param.grad is not None:
            assert_close(param.grad, reference.grad, atol, f"grad {name}")
            compared += 1
    assert compared > 0


def weighted_sum(tensors: Iterable[Optional[Tensor]], seed: int = 5) -> Tensor:
    """A loss-like scalar (a weighted mean with fixed random weights) over every element of
    ``tensors``, for backward."""
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(())
    for tensor in tensors:
        if tensor is not None:
            total = total + (tensor * torch.randn(tensor.shape, generator=generator)).mean()
    return total


def compare_backbone(hf_out: Any, our_out: BackboneOutput, *, attentions: bool = False, hidden: bool = True) -> None:
    assert_close(our_out.last_hidden_state, hf_out.last_hidden_state, what="last_hidden_state")
    if hf_out.pooler_output is not None:
        assert_close(our_out.pooler_output, hf_out.pooler_output, what="pooler_output")
    if hidden:
        assert_close(our_out.hidden_states, hf_out.hidden_states, what="hidden_states")
    if attentions:
        assert_close(our_out.attentions, hf_out.attentions, what="attentions")


# ---------------------------------------------------------------------------------- structure
def test_state_dict_keys_equal_hf() -> None:
    for overrides in ({}, {"is_decoder": True, "add_cross_attention": True}):
        hf, ours = make_pair(**overrides)
        assert set(ours.state_dict()) == set(hf.state_dict())
        for key, value in hf.state_dict().items():
            assert ours.state_dict()[key].shape == value.shape, key
    hf, ours = make_pair()
    assert not [name for name, _ in ours.named_buffers()]
    hf_nopool = transformers.XLMRobertaXLModel(hf_config(), add_pooling_layer=False)
    ours_nopool = XLMRobertaXLModel(XLMRobertaXLConfig(**TINY), add_pooling_layer=False)
    assert set(ours_nopool.state_dict()) == set(hf_nopool.state_dict())


def test_meta_construction_allocates_nothing() -> None:
    config = XLMRobertaXLConfig(**TINY)
    with torch.device("meta"):
        model = XLMRobertaXLModel(config)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights(seed=0)
    reference = XLMRobertaXLModel(config)
    reference.init_weights(seed=0)
    for (name, param), (_, expected) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(param, expected), name


# ---------------------------------------------------------------------------------- parity
CASES = ["plain", "padding", "token_type", "inputs_embeds", "head_mask", "attentions", "position_ids", "mask_3d"]


def _case_inputs(case: str, hf: nn.Module) -> Dict[str, Any]:
    ids, mask = random_ids(pad_lengths=(0, 3, 5))
    inputs: Dict[str, Any] = {"input_ids": ids}
    if case != "plain":
        inputs["attention_mask"] = mask
    if case == "token_type":
        inputs["token_type_ids"] = (torch.arange(ids.shape[1]) >= 4).long().expand_as(ids)
    elif case == "inputs_embeds":
        inputs["inputs_embeds"] = hf.embeddings.word_embeddings(inputs.pop("input_ids")).detach() + 0.01
    elif case == "head_mask":
        inputs["head_mask"] = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0]])
        inputs["output_attentions"] = True
    elif case == "attentions":
        inputs["output_attentions"] = True
    elif case == "position_ids":
        inputs["position_ids"] = torch.arange(5, 5 + ids.shape[1]).expand_as(ids)
    elif case == "mask_3d":
        inputs["attention_mask"] = mask[:, None, :].expand(-1, ids.shape[1], -1).tril(3)
    return inputs


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("case", CASES)
def test_backbone_parity_with_hf(case: str, attn: str) -> None:
    hf, ours = make_pair(attn=attn, type_vocab_size=2 if case == "token_type" else 1)
    inputs = _case_inputs(case, hf)
    hf_out = hf(**inputs, output_hidden_states=True)
    our_out = ours(**inputs, output_hidden_states=True)
    attentions = bool(inputs.get("output_attentions"))
    compare_backbone(hf_out, our_out, attentions=attentions)
    assert len(our_out.hidden_states) == TINY["num_hidden_layers"] + 1
    assert (our_out.attentions is not None) == attentions
    weighted_sum([hf_out.last_hidden_state, hf_out.pooler_output]).backward()
    weighted_sum([our_out.last_hidden_state, our_out.pooler_output]).backward()
    assert_grads_close(hf, ours)


def test_explicit_attention_path_equals_sdpa_path() -> None:
    _, ours = make_pair()
    ids, mask = random_ids(pad_lengths=(0, 4, 2))
    fused = ours(ids, attention_mask=mask, output_hidden_states=True)
    explicit = ours(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert_close(fused.hidden_states, explicit.hidden_states)
    ones = torch.ones(TINY["num_attention_heads"])
    assert_close(ours(ids, attention_mask=mask, head_mask=ones).last_hidden_state, fused.last_hidden_state)
    # attention weights are distributions over the real keys only
    weights = explicit.attentions[0]
    assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert weights[1, :, :, -4:].abs().max() == 0


def test_hidden_states_layout() -> None:
    """hidden_states = embeddings, raw output of layers 1..L-1, final-LN output of layer L."""
    _, ours = make_pair()
    raw = []
    hooks = [layer.register_forward_hook(lambda m, a, out: raw.append(out.hidden_states)) for layer in ours.encoder.layer]
    ids, mask = random_ids(pad_lengths=(0, 2, 0))
    out = ours(ids, attention_mask=mask, output_hidden_states=True)
    for hook in hooks:
        hook.remove()
    assert torch.equal(out.hidden_states[0], ours.embeddings(ids))
    for index in range(TINY["num_hidden_layers"] - 1):
        assert torch.equal(out.hidden_states[index + 1], raw[index])
    assert torch.equal(out.hidden_states[-1], ours.encoder.LayerNorm(raw[-1]))
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)


def test_position_ids_follow_fairseq() -> None:
    ids = torch.tensor([[0, 5, 6, 2, PAD, PAD], [PAD, 0, 7, PAD, 8, 2]])
    assert position_ids_from_input_ids(ids, padding_idx=PAD).tolist() == [[2, 3, 4, 5, 1, 1], [1, 2, 3, 1, 4, 5]]
    assert position_ids_from_input_ids(ids[:, :2], padding_idx=PAD, past_length=3).tolist() == [[5, 6], [1, 5]]


def test_attention_bias_in_compute_dtype() -> None:
    mask = torch.tensor([[1, 1, 0]])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        bias = attention_bias(mask, query_length=3, dtype=dtype, device=torch.device("cpu"))
        assert bias.dtype == dtype and bias.shape == (1, 1, 1, 3)
        assert bias[0, 0, 0].tolist() == [0.0, 0.0, torch.finfo(dtype).min]
    assert attention_bias(torch.ones(2, 3), query_length=3, dtype=torch.float32, device=torch.device("cpu")) is None
    causal = attention_bias(None, query_length=2, past_length=2, causal=True, dtype=torch.float32, device=torch.device("cpu"))
    assert (causal[0, 0] == 0).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_padded_batch_equals_each_sequence_alone() -> None:
    _, ours = make_pair()
    ids, mask = random_ids(pad_lengths=(0, 3, 6))
    batch = ours(ids, attention_mask=mask)
    for row in range(ids.shape[0]):
        length = int(mask[row].sum())
        alone = ours(ids[row : row + 1, :length])
        assert_close(batch.last_hidden_state[row, :length], alone.last_hidden_state[0])
        assert_close(batch.pooler_output[row], alone.pooler_output[0])


def real_positions(tensor: Tensor, mask: Tensor) -> Tensor:
    """(B, S, X) -> (R, X): the rows where ``mask`` is 1."""
    return tensor[mask.bool()]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_skip_padding_equals_padded_forward_and_hf(checkpointing: bool) -> None:
    """Real positions (states, pooler, every parameter's gradient) equal HF's padded forward;
    padded positions come out 0 and get no gradient."""
    hf, ours = make_pair(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids, mask = random_ids(batch=4, length=11, pad_lengths=(0, 4, 9, 2))
    if checkpointing:
        ours.gradient_checkpointing_enable()
    hf.train(), ours.train()
    expected = hf(ids, attention_mask=mask)
    actual = ours(ids, attention_mask=mask, skip_padding=True)
    assert_close(real_positions(actual.last_hidden_state, mask), real_positions(expected.last_hidden_state, mask))
    assert_close(actual.pooler_output, expected.pooler_output, what="pooler_output")
    assert float(actual.last_hidden_state.detach()[~mask.bool()].abs().max()) == 0.0
    for model, out in ((hf, expected), (ours, actual)):
        weighted_sum([real_positions(out.last_hidden_state, mask), out.pooler_output]).backward()
    assert_grads_close(hf, ours)


def test_skip_padding_runs_only_the_real_positions() -> None:
    _, ours = make_pair()
    ids, mask = random_ids(batch=3, length=10, pad_lengths=(0, 6, 8))
    rows = []
    ours.encoder.layer[0].intermediate.register_forward_hook(lambda module, args, out: rows.append(out.shape[:-1]))
    ours(ids, attention_mask=mask, skip_padding=True)
    assert rows == [torch.Size([int(mask.sum())])]  # 10 + 4 + 2 positions, not 30
    ours(ids, attention_mask=torch.ones_like(mask), skip_padding=True)  # nothing to skip: padded layout
    ours(ids, skip_padding=True)
    assert rows[1:] == [torch.Size([3, 10])] * 2
    plain = ours(ids, attention_mask=torch.ones_like(mask)).last_hidden_state
    assert_close(ours(ids, skip_padding=True).last_hidden_state, plain)


def test_skip_padding_refuses_what_needs_the_padded_grid() -> None:
    _, ours = make_pair()
    ids, mask = random_ids(pad_lengths=(0, 3, 0))
    for kwargs, named in ((dict(output_attentions=True), "output_attentions"),
                          (dict(output_hidden_states=True), "output_hidden_states"),
                          (dict(head_mask=torch.ones(TINY["num_attention_heads"])), "head_mask")):
        with pytest.raises(ValueError, match=f"skip_padding cannot be combined with {named}"):
            ours(ids, attention_mask=mask, skip_padding=True, **kwargs)
    _, decoder = make_pair(is_decoder=True)
    with pytest.raises(ValueError, match="a decoder config"):
        decoder(ids, attention_mask=mask, skip_padding=True)
    with pytest.raises(ValueError, match=r"\(B, S\) attention_mask"):
        ours(ids, attention_mask=mask[:, None, :].expand(-1, ids.shape[1], -1), skip_padding=True)


def test_train_mode_dropout_matches_hf() -> None:
    """Same seed, same dropout masks: the dropouts sit where HF's do (none after the FFN)."""
    hf, ours = make_pair(attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.2)
    hf.train(), ours.train()
    ids, mask = random_ids(pad_lengths=(0, 2, 0))
    torch.manual_seed(7)
    expected = hf(ids, attention_mask=mask).last_hidden_state
    torch.manual_seed(7)
    actual = ours(ids, attention_mask=mask).last_hidden_state
    assert_close(actual, expected)
    assert max_diff(actual, ours.eval()(ids, attention_mask=mask).last_hidden_state) > 1e-3


def test_input_errors() -> None:
    _, ours = make_pair()
    ids, _ = random_ids()
    with pytest.raises(ValueError, match="exactly one"):
        ours(ids, inputs_embeds=ours.embeddings.word_embeddings(ids))
    with pytest.raises(ValueError, match="exactly one"):
        ours()
    _, decoder = make_pair(is_decoder=True)
    with pytest.raises(ValueError, match="add_cross_attention"):
        decoder(ids, encoder_hidden_states=torch.randn(3, 4, TINY["hidden_size"]))


# ---------------------------------------------------------------------------------- decoder
def test_decoder_is_causal() -> None:
    _, ours = make_pair(is_decoder=True)
    ids, _ = random_ids(length=8)
    changed = ids.clone()
    changed[:, 5:] = torch.randint(4, 1000, (3, 3))
    a, b = ours(ids).last_hidden_state, ours(changed).last_hidden_state
    assert_close(a[:, :5], b[:, :5])
    assert max_diff(a[:, 5:], b[:, 5:]) > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_decoder_parity_with_hf(attn: str) -> None:
    hf, ours = make_pair(attn=attn, is_decoder=True)
    ids, mask = random_ids(pad_lengths=(0, 3, 1))
    for extra in ({}, {"output_attentions": True}):
        hf_out = hf(ids, attention_mask=mask, output_hidden_states=True, **extra)
        our_out = ours(ids, attention_mask=mask, output_hidden_states=True, **extra)
        compare_backbone(hf_out, our_out, attentions=bool(extra))
        assert_close(our_out.past_key_values, hf_out.past_key_values, what="past_key_values")
    assert ours(ids, use_cache=False).past_key_values is None


def _incremental(model: nn.Module, ids: Tensor, mask: Tensor, splits: Sequence[int], **kwargs: Any) -> Tuple[Tensor, Any]:
    """Feed ``ids`` in chunks ending at ``splits`` through the cache; the concatenated states."""
    past, states, start = None, [], 0
    for end in list(splits) + [ids.shape[1]]:
        out = model(ids[:, start:end], attention_mask=mask[:, :end], past_key_values=past, use_cache=True, **kwargs)
        states.append(out.last_hidden_state)
        past, start = out.past_key_values, end
    return torch.cat(states, dim=1), past


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_incremental_decoding_equals_full_forward_and_hf(attn: str) -> None:
    hf, ours = make_pair(attn=attn, is_decoder=True)
    ids, mask = random_ids(length=10, pad_lengths=(0, 0, 0))
    mask[1, 0] = 0  # a masked key inside the cached part
    full = ours(ids, attention_mask=mask)
    states, past = _incremental(ours, ids, mask, splits=(4, 7, 8))
    assert_close(states[mask.bool()], full.last_hidden_state[mask.bool()])
    assert_close(_real_cache(past, mask), _real_cache(full.past_key_values, mask), what="cache")
    hf_states, hf_past = _incremental(hf, ids, mask, splits=(4, 7, 8))
    assert_close(states[mask.bool()], hf_states[mask.bool()])
    assert_close(past, tuple(tuple(layer) for layer in hf_past), what="cache vs HF")


def _real_cache(cache: Any, mask: Tensor) -> Any:
    """The cached keys/values at the unmasked positions only: (B, N, T, D) -> (n_real, N, D).

    A masked position has no real key to attend to in a causal decoder, so its state (and the
    keys/values computed from it in later layers) is arbitrary."""
    return [[tensor.transpose(1, 2)[mask.bool()] for tensor in layer] for layer in cache]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cross_attention_parity_with_hf(attn: str) -> None:
    hf, ours = make_pair(attn=attn, is_decoder=True, add_cross_attention=True)
    ids, mask = random_ids(pad_lengths=(0, 2, 0))
    encoder_states = torch.randn(3, 6, TINY["hidden_size"], generator=torch.Generator().manual_seed(3))
    encoder_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0]])
    kwargs = dict(attention_mask=mask, encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask)
    for extra in ({}, {"output_attentions": True}):
        hf_out = hf(ids, output_hidden_states=True, **kwargs, **extra)
        our_out = ours(ids, output_hidden_states=True, **kwargs, **extra)
        compare_backbone(hf_out, our_out, attentions=bool(extra))
        assert_close(our_out.past_key_values, hf_out.past_key_values, what="past_key_values")
        assert all(len(layer) == 4 for layer in our_out.past_key_values)
        if extra:
            assert_close(our_out.cross_attentions, hf_out.cross_attentions, what="cross_attentions")
    weighted_sum([hf_out.last_hidden_state]).backward()
    weighted_sum([our_out.last_hidden_state]).backward()
    assert_grads_close(hf, ours)
    # incremental decoding reuses the cached cross keys/values
    cross = dict(encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask)
    states, _ = _incremental(ours, ids, mask, splits=(3, 5), **cross)
    full = ours(ids, attention_mask=mask, **cross).last_hidden_state
    assert_close(states[mask.bool()], full[mask.bool()])


# ---------------------------------------------------------------------------------- init
def test_init_is_seeded_and_leaves_global_rng_alone() -> None:
    config = XLMRobertaXLConfig(**TINY)
    a, b = XLMRobertaXLModel(config), XLMRobertaXLModel(config)
    state = torch.random.get_rng_state()
    a.init_weights(seed=11)
    b.init_weights(seed=11)
    assert torch.equal(state, torch.random.get_rng_state())
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), name
    b.init_weights(seed=12)
    assert not torch.equal(a.encoder.layer[0].attention.self.query.weight, b.encoder.layer[0].attention.self.query.weight)


def test_init_matches_hf_scheme() -> None:
    config = XLMRobertaXLConfig(**{**TINY, "vocab_size": 4000})
    model = XLMRobertaXLModel(config)
    model.init_weights(seed=0)
    embeddings = model.embeddings
    assert embeddings.word_embeddings.weight[PAD].abs().max() == 0
    assert embeddings.position_embeddings.weight[PAD].abs().max() == 0
    for name, param in model.named_parameters():
        if "LayerNorm" in name or "layer_norm" in name:
            assert torch.all(param == (1.0 if name.endswith("weight") else 0.0)), name
        elif name.endswith("bias"):
            assert torch.all(param == 0), name
    weights = embeddings.word_embeddings.weight.detach()
    weights = torch.cat([weights[:PAD], weights[PAD + 1 :]]).flatten()
    assert abs(weights.mean().item()) < 1e-3
    assert abs(weights.std().item() - config.initializer_range) < 1e-3
    query = model.encoder.layer[1].attention.self.query.weight.detach()
    assert abs(query.std().item() - config.initializer_range) < 2e-3


# ---------------------------------------------------------------------------------- training helpers
def test_gradient_checkpointing_same_gradients() -> None:
    _, ours = make_pair(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids, mask = random_ids(pad_lengths=(0, 2, 0))
    calls = []
    ours.encoder.layer[0].attention.register_forward_hook(lambda *args: calls.append(1))

    def grads() -> Dict[str, Tensor]:
        ours.zero_grad()
        weighted_sum([ours(ids, attention_mask=mask).last_hidden_state]).backward()
        return {name: p.grad.clone() for name, p in ours.named_parameters() if p.grad is not None}

    ours.train()
    plain = grads()
    assert len(calls) == 1 and not ours.is_gradient_checkpointing
    ours.gradient_checkpointing_enable()
    assert ours.is_gradient_checkpointing
    checkpointed = grads()
    assert len(calls) == 3  # forward + recomputation in backward
    for name, grad in plain.items():
        assert_close(checkpointed[name], grad, 1e-6, name)
    ours.eval()
    with torch.no_grad():
        ours(ids)
    assert len(calls) == 4  # no checkpointing in eval
    ours.gradient_checkpointing_disable()
    assert not ours.is_gradient_checkpointing


@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 0.15), (torch.float16, 0.02)])
def test_low_precision_forward_close_to_fp32(dtype: torch.dtype, atol: float) -> None:
    _, ours = make_pair(is_decoder=True)
    ids, mask = random_ids(pad_lengths=(0, 3, 0))
    expected = ours(ids, attention_mask=mask, output_attentions=True)
    low = ours.to(dtype)
    assert low.dtype == dtype
    for kwargs in ({}, {"output_attentions": True}):
        out = low(ids, attention_mask=mask, **kwargs)
        assert out.last_hidden_state.dtype == dtype
        assert torch.isfinite(out.last_hidden_state).all()
        real = mask.bool()
        assert max_diff(out.last_hidden_state[real].float(), expected.last_hidden_state[real]) < atol
        assert out.past_key_values[0][0].dtype == dtype


def test_checkpoint_methods_delegate(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import sys
    import types

    calls = []
    stub = XLMRobertaXLModel(XLMRobertaXLConfig(**TINY))
    fake = types.ModuleType("modeling.checkpoint")
    fake.load_pretrained = lambda cls, path, **kw: calls.append(("load", cls, path, kw)) or stub
    fake.save_pretrained = lambda model, directory, **kw: calls.append(("save", model, directory, kw))
    monkeypatch.setitem(sys.modules, "modeling.checkpoint", fake)
    assert XLMRobertaXLModel.from_pretrained(tmp_path, dtype=torch.bfloat16, num_labels=3) is stub
    assert calls[-1] == (
        "load",
        XLMRobertaXLModel,
        tmp_path,
        {"dtype": torch.bfloat16, "device": None, "config": None, "check_finite": True,
         "ignore_mismatched_sizes": False, "num_labels": 3},
    )
    model = XLMRobertaXLModel(XLMRobertaXLConfig(**TINY))
    model.save_pretrained(tmp_path, max_shard_size="1MB")
    assert calls[-1] == ("save", model, tmp_path, {"max_shard_size": "1MB", "safe_serialization": True})
    assert isinstance(model, XLMRobertaXLPreTrainedModel) and model.base_model_prefix == "roberta"
    with pytest.raises(TypeError, match="XLMRobertaXLConfig"):
        XLMRobertaXLModel(TINY)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- HF output conventions
def assert_same_structure(ours: Any, reference: Any, what: str = "output") -> None:
    """Tuples / tensors / None nested alike, tensors equal within ATOL."""
    if reference is None or ours is None:
        assert ours is None and reference is None, f"{what}: {type(ours)} vs {type(reference)}"
    elif isinstance(reference, (tuple, list)):
        assert isinstance(ours, tuple) and len(ours) == len(reference), f"{what}: length {len(ours)} vs {len(reference)}"
        for index, (a, b) in enumerate(zip(ours, reference)):
            assert_same_structure(a, b, f"{what}[{index}]")
    else:
        assert_close(ours, reference, what=what)


@pytest.mark.parametrize("decoder", [False, True])
def test_tuple_output_equals_hf(decoder: bool) -> None:
    """return_dict=False gives HF's tuple: with a cache, past_key_values right after the pooled output."""
    overrides = dict(is_decoder=True, add_cross_attention=True) if decoder else {}
    hf, ours = make_pair(attn="eager", **overrides)
    ids, mask = random_ids(pad_lengths=(0, 2, 0))
    kwargs: Dict[str, Any] = dict(attention_mask=mask, output_hidden_states=True, output_attentions=True, return_dict=False)
    if decoder:
        kwargs.update(encoder_hidden_states=torch.randn(3, 4, TINY["hidden_size"], generator=torch.Generator().manual_seed(2)),
                      use_cache=True)
    expected, got = hf(ids, **kwargs), ours(ids, **kwargs)
    assert isinstance(got, tuple) and len(got) == len(expected) == (6 if decoder else 4)
    assert_same_structure(got, expected)
    if decoder:
        assert len(got[2]) == TINY["num_hidden_layers"] and len(got[2][0]) == 4  # the cache, right after pooled
    plain = ours(ids, attention_mask=mask, return_dict=False)
    assert_same_structure(plain, hf(ids, attention_mask=mask, return_dict=False))


def test_config_switches_are_forward_defaults() -> None:
    """config.return_dict / output_attentions / output_hidden_states act as HF's defaults."""
    hf, ours = make_pair(attn="eager")
    ids, mask = random_ids()
    for model in (hf, ours):
        model.config.output_attentions = True
        model.config.output_hidden_states = True
    out, expected = ours(ids, attention_mask=mask), hf(ids, attention_mask=mask)
    assert len(out.attentions) == len(out.hidden_states) - 1 == TINY["num_hidden_layers"]
    assert_close(out.attentions, expected.attentions)
    assert ours(ids, output_attentions=False).attentions is None  # the argument wins
    for model in (hf, ours):
        model.config.return_dict = False
    assert_same_structure(ours(ids, attention_mask=mask), hf(ids, attention_mask=mask))
    assert isinstance(ours(ids, return_dict=True), BackboneOutput)
    assert not ours.config.use_return_dict


def test_dict_output_order_equals_hf() -> None:
    """to_tuple() / keys() of the returned record follow HF's field order (hidden states before the cache)."""
    hf, ours = make_pair(is_decoder=True)
    ids, mask = random_ids()
    expected, got = hf(ids, attention_mask=mask, output_hidden_states=True), ours(ids, attention_mask=mask, output_hidden_states=True)
    assert list(got.keys()) == list(expected.keys())
    assert len(got) == len(expected)
    assert_same_structure(got.to_tuple(), expected.to_tuple())
    assert_same_structure(got[1:3], expected[1:3])
