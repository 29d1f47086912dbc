"""The caption metrics, one table: :data:`REGISTRY` maps a metric name to its scorer, the metrics it is computed
from, the shared resource it needs, and whether comparison tables show it.

Resources are prepared once per :func:`audiopair.evaluate.score.score_groups` call, for all groups together:

- ``ptb``: the PTB tokens (one JVM for candidates and references; done by ``score.py`` for every call).
- ``meteor``: one METEOR JVM, one ``EVAL`` per group (:func:`_meteor_groups`).
- ``spice``: one SPICE run on every item used by a group; groups slice its per-item F-scores.
- ``fense``: the FENSE models (sentence-BERT + echecker), loaded offline.

SPICE needs Stanford CoreNLP 3.6.0 jars and FENSE hub models; neither is on PyPI. When their files are not on this
machine the metric is unavailable with the reason and :func:`fetch_command`'s command, never 0. A metric's fetch
command is the downloads of every resource in its dependency closure (SPIDEr-FL: SPICE's, then FENSE's).

A scorer is ``scorer(ctx, group) -> (corpus, sents)``: aac-metrics' output pair (dicts of torch tensors) for the
group's items; it raises :class:`Unavailable` (with the reason) when it cannot run. It runs after the metrics it
depends on (the table's order is the compute order) and finds their outputs in ``group.outs``.

aac-metrics is imported inside the scorers (it takes ~10 s to import), not with this module.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from audiopair.evaluate.fense import _hf_offline, fense_missing
from audiopair.evaluate.java import aac_cache_dir, spice_missing


Outputs = tuple[dict[str, Any], dict[str, Any]]  # aac-metrics' (corpus scores, per-item scores)


class Unavailable(Exception):
    """A metric cannot run here; the message says why (and what fetches the missing files)."""


@dataclass
class ScoringContext:
    """What one ``score_groups`` call shares between its metrics: tools, options, tokens and resource outputs.

    tok_cands / tok_mrefs   PTB-tokenised candidates and references (all items; groups index into them).
    groups                  group name -> item indices.
    seconds / unavailable   shared steps' wall time and the metrics a resource could not provide.
    shared                  resource name -> what its preparation produced (METEOR per group, SPICE per item,
                            FENSE models).
    info                    java, java_version, cache_path, aac_metrics version (copied into every report)."""

    java: str
    cache: Path
    tmp: str | None
    device: str | None
    sbert_model: str
    echecker: str
    tok_cands: list[str]
    tok_mrefs: list[list[str]]
    groups: dict[str, list[int]]
    say: Callable[[str], None] = lambda msg: None
    seconds: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)

    @property
    def used(self) -> list[int]:
        """Items in at least one group (the ones shared runs score)."""
        return sorted({i for idx in self.groups.values() for i in idx})

    def timed(self, name: str):
        return timed(self.seconds, name)


@contextlib.contextmanager
def timed(seconds: dict[str, float], name: str):
    """Add the block's wall time to ``seconds[name]`` (also when it raises: a failed shared run still took it)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class Group:
    """One group being scored: its items, their tokens as aac-metrics takes them, and the outputs so far."""

    name: str
    idx: list[int]
    cands: list[str]
    mrefs: list[list[str]]
    outs: dict[str, Outputs] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------ scorers
def _aac(fn_name: str) -> Callable[[ScoringContext, Group], Outputs]:
    """Scorer calling ``aac_metrics.functional.<fn_name>`` on the group's tokens."""

    def scorer(ctx: ScoringContext, g: Group) -> Outputs:
        import aac_metrics.functional as F

        return getattr(F, fn_name)(g.cands, g.mrefs, return_all_scores=True)

    return scorer


def _cider_d(ctx: ScoringContext, g: Group) -> Outputs:
    if len(g.idx) < 2:  # CIDEr-D's document frequencies need a corpus
        raise Unavailable("CIDEr-D needs at least 2 candidates (document frequencies).")
    return _aac("cider_d")(ctx, g)


def _meteor(ctx: ScoringContext, g: Group) -> Outputs:
    return ctx.shared["meteor"][g.name]


def _spice(ctx: ScoringContext, g: Group) -> Outputs:
    import numpy as np
    import torch

    # aac-metrics: corpus SPICE = numpy mean of the item F-scores (items are scored independently)
    items = np.array([ctx.shared["spice"][i] for i in g.idx])
    return {"spice": torch.as_tensor(items.mean(), dtype=torch.float64)}, {"spice": torch.from_numpy(items)}


def _spider(ctx: ScoringContext, g: Group) -> Outputs:
    from aac_metrics.functional.spider import _spider_from_outputs

    if "cider_d" in g.outs and "spice" in g.outs:
        return _spider_from_outputs(g.outs["cider_d"], g.outs["spice"])
    why = "; ".join(f"{d}: {g.unavailable[d]}" for d in ("cider_d", "spice") if d in g.unavailable)
    raise Unavailable(f"SPIDEr needs SPICE and CIDEr-D ({why})")


def _fense(ctx: ScoringContext, g: Group) -> Outputs:
    from aac_metrics.functional import fense

    sb, ec, ec_tok = ctx.shared["fense"]
    try:
        with _hf_offline():
            return fense(g.cands, g.mrefs, return_all_scores=True, sbert_model=sb, echecker=ec,
                         echecker_tokenizer=ec_tok, device=ctx.device)
    except Exception as e:
        raise Unavailable(f"FENSE failed: {type(e).__name__}: {e}") from e


def _spider_fl(ctx: ScoringContext, g: Group) -> Outputs:
    from aac_metrics.functional.spider_fl import _spider_fl_from_outputs

    if "spider" in g.outs and "fense" in g.outs:
        fc, fs = g.outs["fense"]
        return _spider_fl_from_outputs(g.outs["spider"], ({"fer": fc["fer"]}, {"fer": fs["fer"]}))
    why = "; ".join(f"{d} unavailable" for d in ("spider", "fense") if d not in g.outs)
    raise Unavailable(f"SPIDEr-FL needs SPIDEr and FENSE ({why}). Fetch with: {fetch_command('spider_fl', ctx.cache)}")


# ---------------------------------------------------------------------------------------------------- resources
def _meteor_run(ctx: ScoringContext) -> None:
    ctx.say("score: meteor")
    with ctx.timed("meteor"):
        ctx.shared["meteor"] = _meteor_groups(ctx)


def _spice_run(ctx: ScoringContext) -> None:
    missing = spice_missing(ctx.cache)
    if missing:
        shown = ", ".join(Path(m).name for m in missing)
        ctx.unavailable["spice"] = (f"SPICE needs Stanford CoreNLP 3.6.0, not on PyPI; missing under {ctx.cache}: "
                                    f"{shown}. Fetch with: {fetch_command('spice', ctx.cache)}")
        return
    from aac_metrics.functional import spice

    ctx.say("score: spice")
    with ctx.timed("spice"):
        used = ctx.used
        try:
            _, sents = spice([ctx.tok_cands[i] for i in used], [ctx.tok_mrefs[i] for i in used],
                             return_all_scores=True, cache_path=str(ctx.cache), java_path=ctx.java, tmp_path=ctx.tmp)
            ctx.shared["spice"] = dict(zip(used, sents["spice"].tolist()))
        except Exception as e:  # a broken SPICE install must not lose the other scores
            ctx.unavailable["spice"] = (f"SPICE failed: {type(e).__name__}: {e}. "
                                        f"Re-fetch with: {fetch_command('spice', ctx.cache)}")


def _fense_load(ctx: ScoringContext) -> None:
    fetch = f"Fetch with (internet needed): {fetch_command('fense', ctx.cache)}"
    missing = fense_missing(ctx.sbert_model, ctx.echecker)
    if missing:
        ctx.unavailable["fense"] = f"FENSE needs hub models not present on this machine: {'; '.join(missing)}. {fetch}"
        return
    from aac_metrics.functional.fense import _load_models_and_tokenizer

    ctx.say("score: loading FENSE models (offline)")
    with ctx.timed("fense"):
        try:
            with _hf_offline():
                ctx.shared["fense"] = _load_models_and_tokenizer(sbert_model=ctx.sbert_model, echecker=ctx.echecker,
                                                                 device=ctx.device)
        except Exception as e:
            ctx.unavailable["fense"] = f"FENSE models failed to load offline: {type(e).__name__}: {e}. {fetch}"


_OFF = "--ptb_tokenizer false --meteor false --bert_score false --clap false"


@dataclass(frozen=True)
class Resource:
    """Shared work for every group of a call. ``prepare`` fills ``ctx.shared[name]`` or ``ctx.unavailable``
    (None: ``score.py`` does it); ``download(cache)`` is the command fetching its files (None: PyPI has them)."""

    prepare: Callable[[ScoringContext], None] | None
    download: Callable[[Path], str] | None = None


RESOURCES: dict[str, Resource] = {
    "ptb": Resource(None),
    "meteor": Resource(_meteor_run),
    "spice": Resource(_spice_run, lambda cache: f"aac-metrics-download --cache_path {shlex.quote(str(cache))} "
                                                f"{_OFF} --spice true --fense false"),
    "fense": Resource(_fense_load, lambda cache: f"aac-metrics-download {_OFF} --spice false --fense true"),
}


# ----------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Metric:
    """One row of the registry.

    scorer    ``scorer(ctx, group) -> (corpus, sents)``, or raises :class:`Unavailable`.
    depends   metrics it is computed from (computed first, in the same group).
    resource  key of :data:`RESOURCES` it needs, or None (it only combines its dependencies).
    headline  shown in comparison tables (``jobs/train_adiff.py``).
    sliced    its work is the shared resource run: the group only slices it, so its time is the shared one."""

    scorer: Callable[[ScoringContext, Group], Outputs]
    depends: tuple[str, ...] = ()
    resource: str | None = "ptb"
    headline: bool = False
    sliced: bool = False


# The order is the compute order: every metric comes after the metrics it depends on.
REGISTRY: dict[str, Metric] = {
    "bleu_1": Metric(_aac("bleu_1")),
    "bleu_2": Metric(_aac("bleu_2")),
    "bleu_3": Metric(_aac("bleu_3")),
    "bleu_4": Metric(_aac("bleu_4"), headline=True),
    "meteor": Metric(_meteor, resource="meteor", headline=True, sliced=True),
    "rouge_l": Metric(_aac("rouge_l"), headline=True),
    "cider_d": Metric(_cider_d, headline=True),
    "spice": Metric(_spice, resource="spice", headline=True, sliced=True),
    "spider": Metric(_spider, depends=("cider_d", "spice"), resource=None, headline=True),
    "fense": Metric(_fense, resource="fense"),
    "spider_fl": Metric(_spider_fl, depends=("spider", "fense"), resource=None),
    "vocab": Metric(_aac("vocab")),
}


def closure(metrics: Iterable[str]) -> list[str]:
    """``metrics`` and everything they depend on, in compute (registry) order. Names must be registered."""
    needed: set[str] = set()
    todo = list(metrics)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(REGISTRY[name].depends)
    return [m for m in REGISTRY if m in needed]


def headline(metrics: Iterable[str]) -> list[str]:
    """The headline metrics among ``metrics`` (their order kept): the columns of a comparison table."""
    return [m for m in metrics if m in REGISTRY and REGISTRY[m].headline]


def fetch_command(metric: str, cache_path: str | os.PathLike | None = None) -> str:
    """Shell command that fetches what ``metric`` needs (run on a machine with internet, same venv).

    Raises ValueError for an unknown metric or one that needs nothing beyond PyPI."""
    if metric not in REGISTRY:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(REGISTRY)}")
    cache = aac_cache_dir(cache_path)
    resources = dict.fromkeys(REGISTRY[m].resource for m in closure([metric]))
    commands = [RESOURCES[r].download(cache) for r in resources if r is not None and RESOURCES[r].download]
    if not commands:
        raise ValueError(f"no fetch command for {metric!r}: it needs nothing beyond PyPI")
    return " && ".join(commands)


# ------------------------------------------------------------------------------------------------------- METEOR
def _meteor_groups(ctx: ScoringContext) -> dict[str, Outputs]:
    """aac_metrics.functional.meteor's protocol with one JVM for several groups: a SCORE line per item (the JVM
    answers with its statistics), then one EVAL line per group (sentence scores, then the corpus score). Same jar,
    same command line, same encoding; one EVAL per group gives what a separate aac-metrics call on that subset gives."""
    import subprocess

    import torch
    from aac_metrics.functional.meteor import FNAME_METEOR_JAR, _encode_cand_and_refs

    cmd = [ctx.java, "-Duser.country=US", "-Duser.language=en", "-jar", "-Xmx2G", str(ctx.cache / FNAME_METEOR_JAR),
           "-", "-", "-stdio", "-l", "en", "-norm"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None

    def readline(what: str) -> str:
        line = proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"METEOR ({' '.join(cmd)}) stopped answering while reading {what} "
                               f"(exit code {proc.poll()})")
        return line

    try:
        stats = {}
        for i in ctx.used:
            proc.stdin.write(_encode_cand_and_refs(ctx.tok_cands[i], ctx.tok_mrefs[i]))
            proc.stdin.flush()
            stats[i] = readline(f"the statistics of item {i}")
        out = {}
        for name, idx in ctx.groups.items():
            proc.stdin.write(("EVAL" + "".join(f" ||| {stats[i]}" for i in idx) + "\n").encode())
            proc.stdin.flush()
            sents = [float(readline(f"group {name!r} item scores")) for _ in idx]
            corpus = float(readline(f"group {name!r} corpus score"))
            out[name] = ({"meteor": torch.as_tensor(corpus, dtype=torch.float64)},
                         {"meteor": torch.as_tensor(sents, dtype=torch.float64)})
        return out
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        proc.kill()
        proc.wait()
