"""Planning: six pairs per triple, splits disjoint by source clip, random pairs, exact re-rendering."""

import random
from collections import Counter, defaultdict

import numpy as np

from audiopair.corpus import make_source
from audiopair.data.plan import assign_splits, make_plan
from audiopair.data.render import render
from audiopair.tasks.edits import random_pairs
from conftest import tiny_config


def _plan(tmp_path, *extra):
    cfg = tiny_config(tmp_path / "ds", *extra).dataset
    return cfg, make_plan([(make_source(s, cfg), s) for s in cfg.sources], cfg)


def test_six_pairs_per_triple(tmp_path):
    cfg, plan = _plan(tmp_path)
    edits = [p for p in plan.pairs if p.op in ("add", "delete", "replace")]
    by_base = defaultdict(list)
    for p in edits:
        by_base[p.base].append(p)
    bases = [i for i in plan.items if i.recipe["op"] == "source"]
    assert len(by_base) == len(bases) and all(len(v) == 6 for v in by_base.values())  # triples_per_base=1
    for base_id, ps in by_base.items():
        ops = Counter(p.op for p in ps)
        assert ops == {"add": 2, "delete": 2, "replace": 2}
        mixes = {p.second for p in ps if p.op == "add"}
        assert len(mixes) == 2
        ab, ac = sorted(mixes)
        assert {(p.first, p.second) for p in ps} == {
            (base_id, ab), (base_id, ac), (ab, base_id), (ac, base_id), (ab, ac), (ac, ab)}
        # B and C are events of different kinds
        b_kinds = {p.b.labels[-1] for p in ps if p.op == "add"}
        assert len(b_kinds) == 2


def test_splits_disjoint_by_source_clip(tmp_path):
    cfg, plan = _plan(tmp_path)
    used = defaultdict(set)  # source clip -> splits it reaches through any rendered clip
    for item in plan.items:
        r = item.recipe
        for cid in ([r["clip"]] if r["op"] == "source" else [r["base"], r["event"]]):
            used[cid].add(item.split)
    assert used and all(len(s) == 1 for s in used.values())
    for p in plan.pairs:
        items = {i.id: i for i in plan.items}
        assert items[p.first].split == items[p.second].split == p.split


def test_split_assignment_is_stratified_by_event_kind(tmp_path):
    """Every event kind has clips in every split, so test events are unseen clips of seen kinds."""
    cfg, plan = _plan(tmp_path)
    split_of = assign_splits(list(plan.clips.values()), cfg.splits, cfg.seed)
    kinds = defaultdict(Counter)
    for cid, split in split_of.items():
        if "/event/" in cid:
            kinds[cid.split("/")[2]][split] += 1
    assert len(kinds) == 20
    assert all(set(c) == {"train", "val", "test"} for c in kinds.values())
    bases = Counter(s for cid, s in split_of.items() if "/base/" in cid)
    assert bases == {"train": 10, "val": 2, "test": 2}  # 14 bases at 0.7 / 0.15 / 0.15


def test_plan_is_deterministic(tmp_path):
    _, a = _plan(tmp_path)
    _, b = _plan(tmp_path)
    assert a.fingerprint() == b.fingerprint()
    _, c = _plan(tmp_path, "dataset.seed=1")
    assert c.fingerprint() != a.fingerprint()


def test_random_pairs_exclude_next_five():
    ids = [f"c{i}" for i in range(12)]
    pairs = random_pairs(ids, "train", 3, 5, random.Random(0))
    assert len(pairs) == 36
    for p in pairs:
        i, j = ids.index(p.first), ids.index(p.second)
        assert (j - i) % 12 >= 5
    assert random_pairs(ids[:5], "train", 1, 5, random.Random(0)) == []


def test_recipe_rerenders_identically(tmp_path):
    cfg, plan = _plan(tmp_path)
    mixes = [i for i in plan.items if i.recipe["op"] == "mix"][:4]
    for item in mixes:
        x1, info1 = render(item.recipe, plan.clips, cfg)
        x2, info2 = render(dict(item.recipe), plan.clips, cfg)
        assert np.array_equal(x1, x2) and info1 == info2
        assert len(x1) == int(cfg.clip_seconds * cfg.sample_rate)
        assert np.max(np.abs(x1)) <= 10 ** (cfg.mix.peak_dbfs / 20) + 1e-6
        lo, hi = cfg.mix.snr_db
        assert lo <= item.recipe["snr_db"] <= hi


def test_random_pairs_draw_as_the_list_based_rule_did():
    """The O(1) draw gives the pairs the old O(n) rule gave (a partner outside i .. i+exclude-1, cyclically)."""

    def old_rule(ids, split, per_clip, exclude, rng):
        n, out = len(ids), []
        for i in range(n):
            banned = {(i + k) % n for k in range(exclude)}
            allowed = [j for j in range(n) if j not in banned]
            for _ in range(per_clip):
                j = rng.choice(allowed)
                out.append((ids[i], ids[j]))
        return out

    for n, per_clip, exclude in ((6, 1, 5), (7, 2, 5), (40, 3, 5), (13, 1, 1), (9, 2, 8)):
        ids = [f"c{k:02d}" for k in range(n)]
        new = random_pairs(ids, "train", per_clip, exclude, random.Random(n))
        assert [(p.first, p.second) for p in new] == old_rule(ids, "train", per_clip, exclude, random.Random(n))
        assert all(p.first != p.second for p in new)


def test_event_clips_on_their_own_join_ac_and_the_random_pairs_and_leave_the_triples_alone(tmp_path):
    from audiopair.tasks.captions import sentence
    from audiopair.tasks.examples import ac_example, position_examples

    _, without = _plan(tmp_path)
    cfg, plan = _plan(tmp_path, "dataset.tasks.event_clips=true")
    events = {c.id for c in plan.clips.values() if c.role == "event"}
    items = {i.id: i for i in plan.items}
    assert events and events <= set(items) and not events & {i.id for i in without.items}
    for e in events:
        assert items[e].recipe == {"op": "source", "clip": e} and items[e].labels == list(plan.clips[e].labels)
    x, _ = render(items[e].recipe, plan.clips, cfg, "train")  # a short event padded to a whole clip, as a file is
    assert len(x) == int(cfg.clip_seconds * cfg.sample_rate) and np.abs(x).max() > 0
    bell = items[sorted(events)[0]]  # AC captions it with its own phrase
    assert ac_example(bell, lambda rid: rid, {}).target == sentence(plan.clips[bell.id].captions[0])
    edits = [(p.id, p.b.id, p.c and p.c.id) for p in plan.pairs if p.op in ("add", "delete", "replace")]
    assert edits == [(p.id, p.b.id, p.c and p.c.id) for p in without.pairs if p.op in ("add", "delete", "replace")]
    assert {p.id for p in without.pairs} < {p.id for p in plan.pairs}  # all planned without them is still planned
    with_event = [p for p in plan.pairs if p.op == "random" and p.first in events]
    assert len(with_event) == len(events) * cfg.tasks.random_pairs_per_clip
    first = position_examples(with_event[0], items, {i: {} for i in items}, lambda rid: rid, ["first"])[0]
    assert first.target == sentence(plan.clips[with_event[0].first].captions[0])  # "caption the first" names it
