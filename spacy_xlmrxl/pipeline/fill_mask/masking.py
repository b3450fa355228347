"""Dynamic masking for the masked-LM objective (BERT/RoBERTa 80/10/10), fresh on every call.

Owns the choice of positions a masked-LM update predicts: each non-special position is selected
with probability ``mlm_probability`` (15 %); of the selected ones 80 % become ``<mask>``, 10 % a
random ordinary piece and 10 % stay unchanged. Specials and padding are never selected. Labels
are the original ids at selected positions and ``ignore_index`` (-100) elsewhere, as HF's
``DataCollatorForLanguageModeling`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MaskingConfig:
    """Settings of `mask_pieces`.

    ``random_low``/``random_high``: the ``[low, high)`` id range random replacements are drawn
    from (the ordinary pieces: after ``<s> <pad> </s> <unk>``, before ``<mask>``).
    ``min_masked``: at least this many positions are selected in each sequence that has that many
    maskable positions, so a short sentence still gives a loss.
    """

    mask_id: int
    random_low: int = 4
    random_high: Optional[int] = None
    mlm_probability: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    min_masked: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.mask_fraction < 0 or self.random_fraction < 0 or self.mask_fraction + self.random_fraction > 1:
            raise ValueError(
                f"mask_fraction ({self.mask_fraction}) and random_fraction ({self.random_fraction}) "
                "must be >= 0 and sum to <= 1"
            )
        high = self.mask_id if self.random_high is None else self.random_high
        if high <= self.random_low:
            raise ValueError(f"empty random-replacement id range [{self.random_low}, {high})")


def mask_pieces(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    config: MaskingConfig,
    *,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mask a batch for the MLM objective.

    input_ids: (batch, seq) int64; maskable: (batch, seq) bool, False at specials and padding.
    Returns ``(masked_ids, labels)``, both (batch, seq) int64, on ``input_ids``' device; the input
    is not modified.
    """
    if input_ids.shape != maskable.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and maskable {tuple(maskable.shape)} differ")
    device = input_ids.device
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def uniform(shape: torch.Size) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=gen_device).to(device)

    maskable = maskable.to(device=device, dtype=torch.bool)
    draw = uniform(input_ids.shape)
    selected = (draw < config.mlm_probability) & maskable
    if config.min_masked > 0:
        selected |= _force_minimum(draw, maskable, selected, config.min_masked)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    action = uniform(input_ids.shape)
    to_mask = selected & (action < config.mask_fraction)
    to_random = selected & (action >= config.mask_fraction) & (
        action < config.mask_fraction + config.random_fraction
    )
    high = config.mask_id if config.random_high is None else config.random_high
    random_ids = torch.randint(
        config.random_low, high, tuple(input_ids.shape), generator=generator, device=gen_device
    ).to(device)
    masked = torch.where(to_mask, torch.full_like(input_ids, config.mask_id), input_ids)
    masked = torch.where(to_random, random_ids.to(input_ids.dtype), masked)
    return masked, labels


def _force_minimum(
    draw: torch.Tensor, maskable: torch.Tensor, selected: torch.Tensor, minimum: int
) -> torch.Tensor:
    """Select the ``minimum`` lowest-draw maskable positions in rows that selected too few."""
    n_maskable = maskable.sum(dim=1, keepdim=True)
    short = (selected.sum(dim=1, keepdim=True) < minimum) & (n_maskable >= minimum)
    ranked = torch.where(maskable, draw, torch.full_like(draw, 2.0))
    kth = ranked.sort(dim=1).values[:, minimum - 1 : minimum] if ranked.shape[1] >= minimum else ranked[:, :0]
    if kth.shape[1] == 0:
        return torch.zeros_like(selected)
    return short & maskable & (ranked <= kth)


MASK = "<mask>"
