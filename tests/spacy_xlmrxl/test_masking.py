"""Tests of spacy_xlmrxl.masking: 15 % selection, 80/10/10 split, specials never touched."""

import pytest
import torch

from spacy_xlmrxl.pipeline.fill_mask.masking import IGNORE_INDEX, MaskingConfig, mask_pieces

MASK_ID = 1000


def _batch(n_rows=64, length=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, MASK_ID, (n_rows, length), generator=gen)
    ids[:, 0] = 0
    lengths = torch.randint(length // 2, length + 1, (n_rows,), generator=gen)
    positions = torch.arange(length)[None, :]
    ids[positions == (lengths[:, None] - 1)] = 2
    ids[positions >= lengths[:, None]] = 1
    maskable = (ids != 0) & (ids != 1) & (ids != 2)
    return ids, maskable


def test_statistics_80_10_10():
    ids, maskable = _batch()
    config = MaskingConfig(mask_id=MASK_ID)
    masked, labels = mask_pieces(ids, maskable, config, generator=torch.Generator().manual_seed(1))
    selected = labels != IGNORE_INDEX
    rate = selected.sum().item() / maskable.sum().item()
    assert 0.14 < rate < 0.16
    n = selected.sum().item()
    as_mask = (masked == MASK_ID) & selected
    changed = (masked != ids) & selected & ~as_mask
    kept = (masked == ids) & selected
    assert 0.77 < as_mask.sum().item() / n < 0.83
    # a random replacement can hit the original id (then it counts as "kept"): ~10 % each
    assert 0.08 < changed.sum().item() / n < 0.12
    assert 0.08 < kept.sum().item() / n < 0.12
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])  # nothing outside the selection changes
    assert not selected[~maskable].any()  # specials and padding never selected
    replaced = masked[changed]
    assert ((replaced >= 4) & (replaced < MASK_ID)).all()


def test_seeded_is_reproducible_and_dynamic():
    ids, maskable = _batch(8, 64)
    config = MaskingConfig(mask_id=MASK_ID)
    a = mask_pieces(ids, maskable, config, generator=torch.Generator().manual_seed(5))
    b = mask_pieces(ids, maskable, config, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    c1 = mask_pieces(ids, maskable, config, generator=gen)
    c2 = mask_pieces(ids, maskable, config, generator=gen)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(c1[1], a[1])
    assert not torch.equal(c1[1], c2[1])  # a fresh mask on every call


def test_short_rows_get_at_least_min_masked():
    ids = torch.tensor([[0, 50, 2, 1, 1], [0, 60, 61, 62, 2], [0, 2, 1, 1, 1]])
    maskable = torch.tensor(
        [[False, True, False, False, False], [False, True, True, True, False], [False] * 5]
    )
    for seed in range(20):
        _, labels = mask_pieces(ids, maskable, MaskingConfig(mask_id=MASK_ID), generator=torch.Generator().manual_seed(seed))
        counts = (labels != IGNORE_INDEX).sum(dim=1).tolist()
        assert counts[0] == 1 and counts[1] >= 1 and counts[2] == 0
        assert labels[0, 1] == 50


def test_input_not_modified_and_config_validated():
    ids, maskable = _batch(2, 32)
    before = ids.clone()
    mask_pieces(ids, maskable, MaskingConfig(mask_id=MASK_ID), generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, before)
    with pytest.raises(ValueError):
        MaskingConfig(mask_id=MASK_ID, mlm_probability=0.0)
    with pytest.raises(ValueError):
        MaskingConfig(mask_id=MASK_ID, mask_fraction=0.9, random_fraction=0.2)
    with pytest.raises(ValueError):
        MaskingConfig(mask_id=4)
    with pytest.raises(ValueError):
        mask_pieces(ids, maskable[:, :3], MaskingConfig(mask_id=MASK_ID))
