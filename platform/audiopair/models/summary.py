"""Parameter counts per top-level module, trainable vs frozen, to check a build against the paper's sizes
(GPT-2 base 124M, HTSAT ~28M, ...) and to see what a training stage will update."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn


class Row(NamedTuple):
    module: str
    trainable: int
    frozen: int
    note: str = ""

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def _numel(p: nn.Parameter) -> int:
    return getattr(p, "ds_numel", None) or p.numel()  # DeepSpeed ZeRO-3 leaves a 0-size local shard


def summarize(model: nn.Module) -> list[Row]:
    """One row per direct child module (tied weights counted once, where they first appear), plus the ADIFF
    separator, which owns no parameters: it is a row of the LM's token embedding."""
    model = getattr(model, "module", model)  # DeepSpeed engine / DDP
    seen: set[int] = set()
    rows = []

    def count(params) -> tuple[int, int]:
        trainable = frozen = 0
        for p in params:
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.requires_grad:
                trainable += _numel(p)
            else:
                frozen += _numel(p)
        return trainable, frozen

    for name, child in model.named_children():
        rows.append(Row(name, *count(child.parameters())))
    own = list(model.parameters(recurse=False))
    if own:
        rows.append(Row("(own)", *count(own)))
    if getattr(model, "uses_separator", False):
        rows.append(Row("separator", 0, 0, f"row {model.separator_id} of lm wte, trains with the LM"))
    return rows


def format_summary(rows: list[Row]) -> str:
    """An aligned table with a total line; counts in full and in millions."""
    total = Row("total", sum(r.trainable for r in rows), sum(r.frozen for r in rows))
    width = max(len(r.module) for r in [*rows, total])
    head = f"{'module':<{width}}  {'trainable':>13}  {'frozen':>13}  {'total':>13}  {'M':>8}"
    lines = [head, "-" * len(head)]
    for r in [*rows, None, total]:
        if r is None:
            lines.append("-" * len(head))
            continue
        line = f"{r.module:<{width}}  {r.trainable:>13,}  {r.frozen:>13,}  {r.total:>13,}  {r.total / 1e6:>8.2f}"
        lines.append(line + (f"  ({r.note})" if r.note else ""))
    return "\n".join(lines)
