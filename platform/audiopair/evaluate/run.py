"""Evaluate a checkpoint on a split: generate, score per task and tier, log to MLflow, compare models in a table.

``evaluate_checkpoint`` is what ``jobs/train_adiff.py`` and ``jobs/evaluate.py`` call for each model: it writes
``scores.json`` and the predictions table into the active MLflow run, with metric keys
``<dataset>/<task>/<tier or all>/<metric>``. ``comparison_table`` puts several models side by side in the shape of
ADIFF's tables (one row per model and tier, one column per metric). With ``evaluate.classify`` each model also
answers label questions on classification sets (``audiopair.evaluate.downstream``): metrics
``<set>/classify/all/accuracy``, a confusion-matrix PNG and a predictions table per set, and the report gains an
ACC-Table-3-shaped accuracy table (``classify_table``).
"""

from __future__ import annotations

import html
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from audiopair.config import Config
from audiopair.evaluate.downstream import Classification, ClassifySet, classify_checkpoint, prepare_all
from audiopair.evaluate.generate import generate, is_qwen
from audiopair.evaluate.score import ScoreReport, score_groups
from audiopair.data.manifest import load_examples

log = logging.getLogger(__name__)

# a report folder's predictions/<model>.jsonl: audio holds the example's files (empty for render-recipe records)
PREDICTION_KEYS = ("id", "task", "tier", "prompt", "eval_prompt", "prediction", "references", "audio")


@dataclass
class Evaluation:
    """One model's scores: ``reports[task][group]`` (group: ``all``, ``tier1`` ...), its predictions, skipped ids."""

    name: str
    reports: dict[str, dict[str, ScoreReport]]
    rows: list[dict]
    skipped: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)  # hallucination views drawn (evaluate.draw)
    classify: dict[str, Classification] = field(default_factory=dict)  # set name -> accuracy (evaluate.classify)

    def value(self, task: str, group: str, metric: str) -> float | None:
        rep = self.reports.get(task, {}).get(group)
        return None if rep is None else rep.values.get(metric)

    def score_tags(self, dataset: str) -> dict[str, str]:
        """The headline scores as Model Registry version tags: each task's ``all`` group
        (``<dataset>/<task>/all/<metric>``) and each classification set's accuracy, 4 decimals."""
        out = {}
        for task, groups in self.reports.items():
            if "all" in groups:
                out |= {k: f"{v:.4f}" for k, v in groups["all"].mlflow_metrics(dataset, task, "all").items()}
        for c in self.classify.values():
            if c.accuracy is not None:
                out[f"{c.name}/classify/all/accuracy"] = f"{c.accuracy:.4f}"
        return out

    def to_dict(self) -> dict:
        out = {"name": self.name, "skipped": self.skipped,
               "reports": {t: {g: r.to_dict() for g, r in gs.items()} for t, gs in self.reports.items()}}
        if self.classify:
            out["classify"] = {n: c.to_dict() for n, c in self.classify.items()}
        return out


def split_examples(dataset_dir: str | Path, split: str, tasks: list[str], limit: int | None, seed: int = 0,
                   on_error=None):
    """Examples of ``tasks`` in ``split``; with ``limit``, a seeded sample of at most that many per task and tier.
    Bad records go to ``on_error`` (skipped) when it is given."""
    out = []
    for task in tasks:
        ex = load_examples(dataset_dir, split, {task: 1.0}, seed, on_error)
        if limit:
            rng = random.Random(seed)
            by_tier: dict = {}
            for e in ex:
                by_tier.setdefault(e["tier"], []).append(e)
            ex = [e for tier in sorted(by_tier, key=str) for e in
                  (rng.sample(by_tier[tier], limit) if len(by_tier[tier]) > limit else by_tier[tier])]
        out += ex
    return out


def qwen_audio(cfg: Config) -> dict:
    """How a Qwen2-Audio model hears its audio at evaluation: as in its finetuning."""
    return {"max_seconds": cfg.finetune.max_audio_seconds, "system": cfg.finetune.system_prompt}


def _groups(rows: list[dict]) -> dict[str, list[int]]:
    groups = {"all": list(range(len(rows)))}
    for i, r in enumerate(rows):
        if r.get("tier"):
            groups.setdefault(f"tier{r['tier']}", []).append(i)
    return groups


def evaluate_checkpoint(model_dir: str | Path, cfg: Config, name: str, log_mlflow: bool = True,
                        say=print, classify_sets: list[ClassifySet] | None = None) -> Evaluation:
    """Generate for ``cfg.evaluate``'s split and tasks with the model in ``model_dir``, score, classify
    ``cfg.evaluate.classify``'s sets (``classify_sets`` when already prepared), and (into the active MLflow run) log
    metrics, ``scores.json``, the predictions tables and the confusion matrices."""
    ev = cfg.evaluate
    bad_records: list[str] = []
    examples = split_examples(cfg.dataset.output_dir, ev.split, ev.tasks, ev.limit,
                              on_error=lambda e: bad_records.append(str(e)))
    if bad_records:
        log.warning("%d bad manifest records skipped, e.g. %s", len(bad_records), bad_records[0])
    rows = []
    if examples or not ev.classify:  # a classification-only run (evaluate.tasks=[]) needs no built dataset
        say(f"[{name}] generating {len(examples)} {ev.split} examples ({ev.decoding.strategy}, batch {ev.batch_size})")
        rows = generate(model_dir, cfg.dataset.output_dir, examples, ev.decoding, ev.batch_size, ev.num_actors,
                        ev.gpus_per_actor, qwen_audio(cfg))
    skipped = bad_records + [r["error"] for r in rows if r["error"]]
    rows = [r for r in rows if not r["error"]]
    reports: dict[str, dict[str, ScoreReport]] = {}
    for task in ev.tasks:
        mine = [r for r in rows if r["task"] == task]
        if not mine:
            continue
        say(f"[{name}] scoring {len(mine)} {task} predictions")
        reports[task] = score_groups([r["prediction"] for r in mine], [r["references"] for r in mine],
                                     _groups(mine), ev.metrics)
    result = Evaluation(name, reports, rows, skipped)
    if ev.draw and not is_qwen(model_dir):  # the view needs ADIFF's frozen event encoder
        result.figures = draw_pairs(model_dir, cfg, rows, Path(cfg.work_dir) / "figures" / name)
    for cset in (classify_sets if classify_sets is not None else prepare_all(cfg)) if ev.classify else []:
        say(f"[{name}] classifying {len(cset.rows)} {cset.name} clips")
        c = classify_checkpoint(model_dir, cfg.dataset, cset, ev.decoding, ev.batch_size, ev.num_actors,
                                ev.gpus_per_actor, cfg.work_dir, qwen_audio=qwen_audio(cfg),
                                figure=Path(cfg.work_dir) / "figures" / name / f"confusion_{cset.name}.png",
                                title=f"{cset.name}: {name}")
        result.classify[cset.name] = c
        acc = "-" if c.accuracy is None else f"{c.accuracy:.1%} (chance {c.report['chance']:.1%})"
        say(f"[{name}] {cset.name}: accuracy {acc} of {c.report['n']} ({c.seconds:.1f} s"
            + (f", {len(c.skipped)} skipped)" if c.skipped else ")"))
    if log_mlflow:
        _log(result, cfg)
    return result


def draw_pairs(model_dir: str | Path, cfg: Config, rows: list[dict], folder: Path) -> list[Path]:
    """The hallucination view (ADIFF §6) of each ``cfg.evaluate.draw`` example among ``rows``: the prediction, both
    log-mels and the frozen encoder's top event probabilities over time. Class names come from the checkpoint
    (models trained from the demo's stage 1, or imported with --class-labels); without them the classes are
    numbered."""
    from audiopair.data.features import FeatureStore
    from audiopair.evaluate.hallucination import event_probabilities, hallucination_figure
    from audiopair.models.adiff import load_checkpoint

    model = load_checkpoint(model_dir).eval()
    labels = model.event_labels or [f"class {i}" for i in range(model.encoder.event_head.num_classes)]
    by_id = {r["id"]: r for r in rows}
    missing = [i for i in cfg.evaluate.draw if i not in by_id]
    if missing:
        log.warning("evaluate.draw: %d ids are not among the evaluated examples, e.g. %s", len(missing), missing[0])
    store, out = FeatureStore(cfg.dataset.output_dir), []
    for rid in cfg.evaluate.draw:
        if rid not in by_id:
            continue
        row = by_id[rid]
        mels = [store[c] for c in row["clips"]]
        probs = [event_probabilities(model.encoder, m) for m in mels]
        path = folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", rid) + ".png")
        out.append(Path(hallucination_figure(row["prediction"], *mels, *probs, labels, path,
                                             cfg.dataset.sample_rate, cfg.dataset.features.hop_length, title=rid)))
    return out


def _log(result: Evaluation, cfg: Config) -> None:
    import mlflow

    from audiopair.tracking import log_predictions

    dataset = cfg.dataset.name
    for task, groups in result.reports.items():
        for group, rep in groups.items():
            mlflow.log_metrics(rep.mlflow_metrics(dataset, task, group))
        first = next(iter(groups.values()))
        for metric, why in first.unavailable.items():
            mlflow.set_tag(f"unavailable.{metric}", why[:5000])
    mlflow.log_metric(f"{dataset}/skipped_examples", len(result.skipped))
    mlflow.log_text(json.dumps(result.to_dict(), indent=2, sort_keys=True, allow_nan=False), "scores.json")
    log_predictions(result.rows, f"predictions/{cfg.evaluate.split}.json")
    for fig in result.figures:
        mlflow.log_artifact(str(fig), "hallucination")
    for c in result.classify.values():
        mlflow.log_metrics(c.metrics())
        mlflow.log_text(json.dumps(c.to_dict(), indent=2, sort_keys=True, allow_nan=False),
                        f"classify/{c.name}/report.json")
        if c.rows:
            mlflow.log_table(data=c.table(), artifact_file=f"classify/{c.name}/predictions.json")
        if c.confusion:
            mlflow.log_artifact(str(c.confusion), f"classify/{c.name}")


def evaluate_models(checkpoints: dict[str, str | Path], cfg: Config, report_dir: str | Path, title: str,
                    say=print, parallel: int = 1, classify_sets: list[ClassifySet] | None = None,
                    sources: dict[str, str] | None = None) -> tuple[list[Evaluation], Path]:
    """Each named model folder evaluated in its own MLflow child run of the active run (``parallel`` at a time),
    then the side-by-side report written to ``report_dir`` and logged to the active run. Returns the evaluations
    (in the given order) and the Markdown report's path. ``evaluate.classify``'s sets are prepared once for all
    models (or passed in as ``classify_sets``). ``sources``: name -> the ``models:/`` / ``runs:/`` URI a folder
    was fetched from, tagged ``model_uri`` on its run."""
    from concurrent.futures import ThreadPoolExecutor

    import mlflow

    from audiopair import tracking

    parent = mlflow.active_run().info.run_id
    if classify_sets is None:
        classify_sets = prepare_all(cfg) if cfg.evaluate.classify else []

    def one(name: str, path) -> Evaluation:
        tags = {"model": name, "checkpoint": str(path)} | ({"model_uri": sources[name]} if name in (sources or {})
                                                           else {})
        with tracking.run(f"{name}/evaluate", parent=parent, tags=tags):
            return evaluate_checkpoint(path, cfg, name, say=say, classify_sets=classify_sets)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(one, checkpoints, checkpoints.values()))
    md, page = write_report(results, cfg.evaluate.tasks, cfg.evaluate.metrics, report_dir, title)
    for path in (md, page, Path(report_dir) / "scores.json"):
        mlflow.log_artifact(str(path), "report")
    return results, md


# ---------------------------------------------------------------------------------------------- comparison tables
def comparison_rows(results: list[Evaluation], task: str, metrics: list[str]) -> list[list[str]]:
    """Rows ``[group, model, metric values...]`` for ``task``, groups in tier order, models as given."""
    groups = sorted({g for r in results for g in r.reports.get(task, {})}, key=lambda g: (g == "all", g))
    rows = []
    for g in groups:
        for r in results:
            vals = [r.value(task, g, m) for m in metrics]
            rows.append([g, r.name] + ["-" if v is None else f"{v:.3f}" for v in vals])
    return rows


def comparison_table(results: list[Evaluation], task: str, metrics: list[str]) -> str:
    """A Markdown table; metrics that did not run show ``-`` (see ``unavailable`` in scores.json for why)."""
    head = ["group", "model"] + metrics
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(results, task, metrics)]
    return "\n".join(lines)


def classify_sets_of(results: list[Evaluation]) -> list[str]:
    """Names of the classification sets any model was scored on, in first-seen order."""
    return list(dict.fromkeys(n for r in results for n in r.classify))


def classify_rows(results: list[Evaluation]) -> list[list[str]]:
    """ACC Table 3's shape: ``[model, accuracy % per set...]``, ``-`` where a set was not scored (or had no clip)."""
    rows = []
    for r in results:
        cells = []
        for n in classify_sets_of(results):
            acc = r.classify[n].accuracy if n in r.classify else None
            cells.append("-" if acc is None else f"{100 * acc:.2f}%")
        rows.append([r.name] + cells)
    return rows


def classify_footnote(results: list[Evaluation]) -> list[str]:
    """Per set: clips scored, skipped and left out, and the question asked (from the first model that ran it)."""
    out = []
    for n in classify_sets_of(results):
        c = next(r.classify[n] for r in results if n in r.classify)
        extra = (f", {len(c.skipped)} skipped" if c.skipped else "") + \
            (f", {c.excluded} outside the label set" if c.excluded else "")
        chance = "" if c.report.get("chance") is None else f"; chance (the most frequent label) " \
            f"{100 * c.report['chance']:.2f}%"
        out.append(f"{n}: {c.report['n']} clips, {len(c.report['labels'])} labels{extra}{chance}; prompt: {c.prompt!r}"
                   + "".join(f" ({note})" for note in c.notes))
    return out


def classify_table(results: list[Evaluation]) -> str:
    """Downstream classification accuracy as a Markdown table: one row per model, one column per set."""
    head = ["model"] + classify_sets_of(results)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in classify_rows(results)]
    return "\n".join(lines)


def write_report(results: list[Evaluation], tasks: list[str], metrics: list[str], folder: str | Path,
                 title: str) -> tuple[Path, Path]:
    """``report.md``, ``report.html``, ``scores.json`` and ``predictions/<model>.jsonl`` (``PREDICTION_KEYS``) in
    ``folder`` (written atomically): one table per task, the
    downstream classification accuracies (when any ran), the metrics that did not run and why, and every model's
    full scores."""
    from audiopair.atomic import atomic_write_jsonl, atomic_write_text

    folder = Path(folder)
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for task in tasks:
        if not any(task in r.reports for r in results):
            continue
        md += [f"## {task}", "", comparison_table(results, task, metrics), ""]
        rows = comparison_rows(results, task, metrics)
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in ["group", "model"] + metrics)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        body.append(f"<h2>{html.escape(task)}</h2><table border=1 cellpadding=4><tr>{cells}</tr>{trs}</table>")
    if any(r.classify for r in results):
        heading = "Downstream classification accuracy"
        notes = classify_footnote(results)
        md += [f"## {heading}", "", classify_table(results), ""] + [f"- {n}" for n in notes] + [""]
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in ["model"] + classify_sets_of(results))
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                      for row in classify_rows(results))
        body.append(f"<h2>{heading}</h2><table border=1 cellpadding=4><tr>{cells}</tr>{trs}</table><ul>"
                    + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    missing = {m: why for r in results for gs in r.reports.values() for rep in gs.values()
               for m, why in rep.unavailable.items()}
    if missing:
        md += ["## Not computed", ""] + [f"- **{m}**: {why}" for m, why in sorted(missing.items())] + [""]
        body.append("<h2>Not computed</h2><ul>" + "".join(
            f"<li><b>{html.escape(m)}</b>: {html.escape(w)}</li>" for m, w in sorted(missing.items())) + "</ul>")
    md_path, html_path = folder / "report.md", folder / "report.html"
    for r in results:  # what a listening test is built from (audiopair.serve.study): text and audio files per id
        atomic_write_jsonl(folder / "predictions" / f"{r.name}.jsonl",
                           ({k: row.get(k) for k in PREDICTION_KEYS} for row in r.rows))
    atomic_write_text(folder / "scores.json", json.dumps({r.name: r.to_dict() for r in results}, indent=2,
                                                          sort_keys=True, allow_nan=False))
    atomic_write_text(md_path, "\n".join(md))
    atomic_write_text(html_path, "<!doctype html><meta charset=utf-8><title>" + html.escape(title) + "</title>"
                      + "".join(body))
    return md_path, html_path
