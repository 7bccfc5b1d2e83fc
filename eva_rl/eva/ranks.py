"""EVA's rank redistribution, as a pure function (used during collection and at the end)."""

from __future__ import annotations

import torch


def allocate_ranks(ratios: dict[str, torch.Tensor], budget: int) -> dict[str, int]:
    """Pool every layer's explained-variance ratios, keep the `budget` largest; a layer's rank is
    how many of its entries survived (0 .. len(its ratios)). Ties go to the earlier layer."""
    names = list(ratios)
    if not names:
        return {}
    values = torch.cat([ratios[n].double().cpu() for n in names])
    owner = torch.cat([torch.full((len(ratios[n]),), i) for i, n in enumerate(names)])
    order = torch.sort(values, descending=True, stable=True).indices[:budget]
    counts = torch.bincount(owner[order], minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts, strict=True)}
