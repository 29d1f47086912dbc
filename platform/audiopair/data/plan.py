"""Plan a build on the driver: splits disjoint by source clip, edit triples, random pairs, csv pairs.

The plan is cheap (no audio is read) and a pure function of the sources and the config, so a re-run plans the
same clips and can resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field

from audiopair.config import DatasetConfig, SplitConfig
from audiopair.corpus.base import Clip, Missing
from audiopair.records import SPLITS
from audiopair.tasks.edits import PairItem, RenderItem, mix_item, pick_events, random_pairs, six_pairs, source_item


@dataclass
class Plan:
    items: list[RenderItem]
    pairs: list[PairItem]
    clips: dict[str, Clip]  # every source clip by id (what render recipes refer to)
    missing: list[Missing] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Hash of everything that decides the output: a changed plan must never resume an old build."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(json.dumps([it.id, it.split, it.recipe, it.captions], sort_keys=True).encode())
        for p in self.pairs:
            h.update(json.dumps([p.id, p.split, p.op, p.variant], sort_keys=True).encode())
        return h.hexdigest()[:16]


def assign_splits(clips: list[Clip], fractions: SplitConfig, seed: int) -> dict[str, str]:
    """Split clips disjointly, stratified by (role, most specific label) so every event kind reaches every split.

    Clips whose source pins a split keep it. In a group of n >= 3 clips, val and test get at least one each when
    their fraction is positive.
    """
    out: dict[str, str] = {}
    groups: dict[tuple, list[Clip]] = defaultdict(list)
    for c in clips:
        if c.split:
            out[c.id] = c.split
        else:
            groups[(c.role, c.labels[-1] if c.role == "event" and c.labels else "")].append(c)
    rng = random.Random(seed)
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda c: c.id)
        rng.shuffle(group)
        n = len(group)
        n_val = round(n * fractions.val)
        n_test = round(n * fractions.test)
        if n >= 3:
            n_val = max(n_val, 1 if fractions.val > 0 else 0)
            n_test = max(n_test, 1 if fractions.test > 0 else 0)
        n_test = min(n_test, n)
        n_val = min(n_val, n - n_test)
        for i, c in enumerate(group):
            out[c.id] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def source_clips(src, scfg) -> list[Clip]:
    """A source's clips with the config's role and split applied (what the plan and the file check see)."""
    out = []
    for c in src.clips():
        if scfg.role not in ("auto", "pairs"):
            c = dataclasses.replace(c, role=scfg.role)
        if scfg.split:
            c = dataclasses.replace(c, split=scfg.split)
        out.append(c)
    return out


def make_plan(sources: list, cfg: DatasetConfig, unusable: dict[str, str] | None = None) -> Plan:
    """Plan the build from ``(source, SourceConfig)`` pairs. ``unusable`` (``{clip id: reason}``, from
    ``data.validate``) names clips whose files failed the check: they go to ``missing`` with their reason and are
    never drawn, and released pairs over them are dropped."""
    unusable = unusable or {}
    clips: dict[str, Clip] = {}
    missing: list[Missing] = []
    csv_pairs = []
    seen: set[str] = set()
    for src, scfg in sources:
        for c in source_clips(src, scfg):
            if c.id in seen:
                raise ValueError(f"clip id {c.id!r} appears twice (source {scfg.label!r}); give sources distinct names")
            seen.add(c.id)
            if c.id in unusable:
                missing.append(Missing(c.id, c.path or c.id, unusable[c.id]))
                continue
            clips[c.id] = c
        missing.extend(src.missing())
        csv_pairs.extend((p, scfg) for p in src.pairs() if p.clip1.id in clips and p.clip2.id in clips)

    pair_clip_ids = {c.id for p, _ in csv_pairs for c in (p.clip1, p.clip2)}
    split_of = assign_splits([c for c in clips.values() if c.id not in pair_clip_ids], cfg.splits, cfg.seed)
    for p, scfg in csv_pairs:  # a released pair keeps both clips in the split of its CSV
        s = scfg.split or p.clip1.split or "train"
        split_of.setdefault(p.clip1.id, s)
        split_of.setdefault(p.clip2.id, s)

    rng = random.Random(cfg.seed)
    items: dict[str, RenderItem] = {}
    pairs: list[PairItem] = []
    want_edits = {"adc", "acc", "adiff", "ac"} & set(cfg.tasks.enabled)
    for split in SPLITS:
        in_split = [c for c in sorted(clips.values(), key=lambda c: c.id) if split_of.get(c.id) == split]
        bases = [c for c in in_split if c.role in ("base", "any") and c.id not in pair_clip_ids]
        events = [c for c in in_split if c.role == "event"]
        for c in bases:
            items[c.id] = source_item(c, split)
        if want_edits and len(events) >= 2:
            for a in bases:
                for _ in range(cfg.tasks.triples_per_base):
                    b, c = pick_events(events, rng)
                    ab = items.setdefault(*_keyed(mix_item(a, b, split, rng, cfg.mix.snr_db)))
                    ac = items.setdefault(*_keyed(mix_item(a, c, split, rng, cfg.mix.snr_db)))
                    pairs.extend(six_pairs(items[a.id], ab, ac, b, c, split, rng))
        split_ids = [i.id for i in items.values() if i.split == split]
        pairs.extend(random_pairs(split_ids, split, cfg.tasks.random_pairs_per_clip, cfg.tasks.random_pair_exclude, rng))
        if cfg.tasks.event_clips:
            pairs.extend(_event_clips(events, items, split_ids, split, cfg))

    for p, scfg in csv_pairs:
        split = split_of[p.clip1.id]
        for c in (p.clip1, p.clip2):
            items.setdefault(c.id, source_item(c, split))
        answer = {"tier": p.tier, "prompt": p.prompt, "answer": p.answer, "row": p.row, "csv": p.csv}
        pairs.append(PairItem(f"csv/{p.clip1.id}~{p.clip2.id}/r{p.row}", split, "csv", p.clip1.id, p.clip2.id, answer=answer))
    return Plan(list(items.values()), pairs, clips, missing)


def _event_clips(events: list[Clip], items: dict[str, RenderItem], split_ids: list[str], split: str,
                 cfg: DatasetConfig) -> list[PairItem]:
    """``tasks.event_clips``: each event clip of ``split`` as an item of its own (added to ``items``), and its
    random pairs (App. E's rule over the split's clips and these), drawn from their own seeded generator so that
    everything planned without them is planned as it was."""
    alone = [source_item(c, split) for c in events]
    items.update(_keyed(i) for i in alone)
    ids = {i.id for i in alone}
    rng = random.Random(f"{cfg.seed}|event-clips|{split}")
    drawn = random_pairs(split_ids + sorted(ids), split, cfg.tasks.random_pairs_per_clip, cfg.tasks.random_pair_exclude,
                         rng)
    return [p for p in drawn if p.first in ids]


def _keyed(item: RenderItem) -> tuple[str, RenderItem]:
    return item.id, item
