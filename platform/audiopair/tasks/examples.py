"""How rendered clips and pairs become examples (``audiopair.records.Record``, validated here) for each task.

Targets: AC the clip's caption; ADC the edit instruction; ACC the commonality (tasks/captions.py); ADIFF tier 1-3
explanations (tasks/explain.py, or the LLM's text); position "caption the first / second / both".
Training prompts are drawn from the banks with a per-example seed; ``meta.eval_prompt`` holds the canonical one.
"""

from __future__ import annotations

import random
from typing import Callable

from audiopair.records import Record
from audiopair.tasks import captions as cap
from audiopair.tasks import prompts
from audiopair.tasks.edits import PairItem, RenderItem
from audiopair.tasks.explain import AudioInfo, PairInfo, explain

AudioPath = Callable[[str], str]  # render id -> path relative to the manifest folder


def _rng(*parts) -> random.Random:
    return random.Random("|".join(map(str, parts)))


def _record(rid: str, task: str, split: str, audio: list[str], target: str, references: list[str], meta: dict,
            tier: int | None = None, position: str | None = None, prompt: str | None = None) -> Record:
    """The record, its training prompt drawn from the task's bank (seeded by ``rid``) unless ``prompt`` is given,
    which is then also the one evaluation asks. Raises pydantic's ValidationError naming the field."""
    refs = list(dict.fromkeys([target] + [r for r in references if r.strip()]))
    train_prompt = prompt if prompt is not None else prompts.sample(task, _rng(rid, "prompt"), tier=tier,
                                                                    position=position)
    eval_prompt = prompt if prompt is not None else prompts.canonical(task, tier=tier, position=position)
    return Record(id=rid, task=task, audio=audio, prompt=train_prompt, target=target, references=refs, tier=tier,
                  split=split, meta={**meta, "eval_prompt": eval_prompt})


def ac_example(item: RenderItem, path: AudioPath, facts: dict) -> Record:
    return _record(f"ac/{item.id}", "ac", item.split, [path(item.id)], cap.sentence(item.captions[0]),
                   [cap.sentence(c) for c in item.captions],
                   {"clip": item.id, "recipe": item.recipe, "labels": item.labels, "facts": facts})


def _pair_meta(pair: PairItem, items: dict[str, RenderItem], facts: dict[str, dict]) -> dict:
    meta = {"op": pair.op, "clips": [pair.first, pair.second],
            "recipes": [items[pair.first].recipe, items[pair.second].recipe],
            "facts": [facts[pair.first], facts[pair.second]]}
    if pair.b is not None:
        meta["event_b"] = pair.b.id
    if pair.c is not None:
        meta["event_c"] = pair.c.id
    return meta


def adc_example(pair: PairItem, items: dict[str, RenderItem], facts: dict[str, dict], path: AudioPath) -> Record:
    assert pair.b is not None, pair.id
    b_phr, c_phr = pair.b.captions, (pair.c.captions if pair.c else None)
    refs = [cap.instruction(pair.op, b_phr[k % len(b_phr)], c_phr[k % len(c_phr)] if c_phr else None, pair.variant + k)
            for k in range(3)]
    return _record(f"adc/{pair.id}", "adc", pair.split, [path(pair.first), path(pair.second)], refs[0], refs,
                   _pair_meta(pair, items, facts))


def acc_example(pair: PairItem, items: dict[str, RenderItem], facts: dict[str, dict], path: AudioPath) -> Record:
    pre, post, base = items[pair.first], items[pair.second], items[pair.base or pair.first]
    n = min(len(pre.captions), len(post.captions))
    refs = [cap.commonality(pair.op, pre.captions[k], post.captions[k], base.captions[0]) for k in range(n)]
    return _record(f"acc/{pair.id}", "acc", pair.split, [path(pair.first), path(pair.second)], refs[0], refs,
                   _pair_meta(pair, items, facts))


def pair_info(pair: PairItem, items: dict[str, RenderItem], facts: dict[str, dict], meta: dict[str, dict]) -> PairInfo:
    """What the explanation generator may use: captions, measured facts, scene and events with their onsets."""
    def info(rid: str) -> AudioInfo:
        it = items[rid]
        onset = meta.get(rid, {}).get("onset_s")
        events = [(e, onset) for e in it.events] if onset is not None else []
        return AudioInfo(it.captions[0], facts[rid], scene=it.scene, events=events)

    return PairInfo(info(pair.first), info(pair.second))


def adiff_examples(pair: PairItem, items: dict[str, RenderItem], facts: dict[str, dict], meta: dict[str, dict],
                   path: AudioPath, tiers: list[int], written: dict[tuple[str, int], str] | None = None
                   ) -> list[Record]:
    """Three tiers per pair. ``written`` holds LLM texts by (pair id, tier); else the template generator writes.

    References: the target plus a second template phrasing (a different seed), so scoring sees paraphrase."""
    out = []
    audio = [path(pair.first), path(pair.second)]
    base_meta = _pair_meta(pair, items, facts)
    if pair.answer is not None:  # a released ADIFF CSV pair: its answer is the target, its prompt is asked
        t = int(pair.answer["tier"])
        if t not in tiers:
            return []
        return [_record(f"adiff/{pair.id}/t{t}", "adiff", pair.split, audio, pair.answer["answer"], [], base_meta,
                        tier=t, prompt=pair.answer["prompt"])]
    info = pair_info(pair, items, facts, meta)
    for t in tiers:
        rid = f"adiff/{pair.id}/t{t}"
        target = (written or {}).get((pair.id, t)) or explain(info, t, rid)
        refs = [target, explain(info, t, rid + "/ref")]
        out.append(_record(rid, "adiff", pair.split, audio, target, refs, base_meta, tier=t))
    return out


def position_examples(pair: PairItem, items: dict[str, RenderItem], facts: dict[str, dict], path: AudioPath,
                      kinds: list[str]) -> list[Record]:
    first, second = items[pair.first], items[pair.second]
    out = []
    for kind in kinds:
        if kind == "first":
            refs = [cap.sentence(c) for c in first.captions]
        elif kind == "second":
            refs = [cap.sentence(c) for c in second.captions]
        else:
            refs = [f"The first audio: {cap.lower_first(cap.strip_caption(a))}. The second audio: {cap.lower_first(cap.strip_caption(b))}."
                    for a, b in zip(first.captions, second.captions)]
        out.append(_record(f"position/{pair.id}/{kind}", "position", pair.split, [path(pair.first), path(pair.second)],
                           refs[0], refs, {**_pair_meta(pair, items, facts), "position": kind}, position=kind))
    return out
