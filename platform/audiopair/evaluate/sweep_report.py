"""The scaling sweep's report (ADIFF §5.3): each trial's test scores, Table 5 in Markdown, Figure 4, and one MLflow
child run per trial under the sweep's parent run. The Tune experiment itself is :mod:`audiopair.train.sweep`."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from audiopair.config import Config
from audiopair.train.sweep import Trial
from audiopair.train.sweep_grid import column_name


def eval_config(cfg: Config) -> Config:
    """``cfg`` with the sweep's evaluation: ``sweep.eval_limit`` test examples per tier of the ADIFF task, scored
    with ``sweep.metrics`` (Table 5's columns); no figures, no downstream classification."""
    update = {"tasks": ["adiff"], "limit": cfg.sweep.eval_limit, "metrics": list(cfg.sweep.metrics), "draw": [],
              "classify": []}
    ev = cfg.evaluate.model_copy(update={k: v for k, v in update.items() if k in type(cfg.evaluate).model_fields})
    return cfg.model_copy(update={"evaluate": ev})


def model_dir(cfg: Config, checkpoint: str) -> Path:
    """A trial's reported checkpoint as a local model folder (downloaded once from S3 / GCS)."""
    import pyarrow.fs
    import ray.train

    from audiopair.train.engine import local_dir, storage_uri

    fs, _ = pyarrow.fs.FileSystem.from_uri(storage_uri(cfg.train))
    return local_dir(ray.train.Checkpoint(checkpoint, filesystem=fs)) / "model"


def _checkpoint_uri(cfg: Config, checkpoint: str) -> str:
    """Where a trial's checkpoint lies, for a model logged by reference (``s3://...`` or a local path)."""
    from audiopair.train.engine import storage_uri

    storage = storage_uri(cfg.train)
    return f"{storage.split('://', 1)[0]}://{checkpoint}" if "://" in storage else checkpoint


def score_trial(trial: Trial, cfg: Config, say=print) -> dict:
    """A trial's last checkpoint on the test split with the sweep's evaluation: group (tier1 ...) -> metric -> value.
    Logged by :func:`report` into the trial's own MLflow run, not here."""
    from audiopair.evaluate.run import evaluate_checkpoint

    ev = evaluate_checkpoint(model_dir(cfg, trial.checkpoint), eval_config(cfg), trial.label, log_mlflow=False,
                             say=say)
    return {group: rep.values for group, rep in ev.reports.get("adiff", {}).items()}


def score_trials(trials: list[Trial], cfg: Config, folder: Path, say=print,
                 evaluate: Callable[[Trial, Config], dict] = score_trial) -> None:
    """Fill ``trial.scores`` with ``evaluate(trial, cfg)`` for every trial with a checkpoint, reusing the scores a
    previous run of this sweep saved for the same checkpoint in ``folder/trials.json``."""
    saved = {}
    if (folder / "trials.json").exists():
        saved = {t["trial_id"]: t for t in json.loads((folder / "trials.json").read_text())}
    for t in trials:
        old = saved.get(t.trial_id)
        if old and old.get("checkpoint") == t.checkpoint and old.get("scores"):
            t.scores = old["scores"]
        elif t.checkpoint:
            say(f"[{t.label}] scoring its last checkpoint on {cfg.dataset.name}/{cfg.evaluate.split}")
            t.scores = evaluate(t, cfg)


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def table5(trials: list[Trial], cfg: Config) -> str:
    """ADIFF Table 5's shape in Markdown: one row per trial (task, LM, the other grid values, epochs trained), then
    each tier's ``sweep.metrics``, then the last validation ``sweep.metric``. ``-``: a metric that did not run (see
    the evaluation's ``unavailable``), or a trial without a checkpoint."""
    keys = [k for k in cfg.sweep.space]
    tiers = sorted({g for t in trials for g in t.scores if g.startswith("tier")}) or ["tier1", "tier2", "tier3"]
    head = ["Task", "LM", *[column_name(k, keys) for k in keys], "epochs trained"]
    head += [f"{g.replace('tier', 'Tier ')} {m}" for g in tiers for m in cfg.sweep.metrics] + [cfg.sweep.metric]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, t in enumerate(trials):
        trained = {"completed": str(t.epochs), "error": "error"}.get(t.status, f"{t.epochs} (stopped by ASHA)")
        row = [cfg.dataset.name if i == 0 else "", t.size, *[str(t.space[k]) for k in keys], trained]
        row += [_fmt(t.scores.get(g, {}).get(m)) for g in tiers for m in cfg.sweep.metrics]
        row.append(_fmt(t.history[-1].get(cfg.sweep.metric) if t.history else None))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def figure4(trials: list[Trial], cfg: Config, path: Path) -> Path:
    """ADIFF Figure 4: per LM size, the validation metric over the epochs trained (one line per trial; a cross where
    ASHA stopped one) and, beside it, the test score (mean over tiers of the first of ``sweep.metrics`` that ran) at
    each trial's epochs. SPIDEr (the paper's), else CIDEr-D, else the first of ``sweep.metrics`` that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = list(dict.fromkeys(t.size for t in trials))
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    ran = [m for m in cfg.sweep.metrics if any(m in s for t in trials for s in t.scores.values())]
    metric = next((m for m in ("spider", "cider_d", *ran) if m in ran), None)
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(11 if metric else 6, 4), squeeze=False)
    ax = axes[0][0]
    for t in trials:
        xs = [h["trial_epoch"] for h in t.history]
        ys = [h.get(cfg.sweep.metric, float("nan")) for h in t.history]
        ax.plot(xs, ys, "-o", color=colors[t.size], alpha=0.8, ms=3, label=t.label)
        if xs and t.epochs < t.planned_epochs:
            ax.plot(xs[-1], ys[-1], "x", color="black", ms=9)
    ax.set(xlabel="epoch", ylabel=f"validation {cfg.sweep.metric}", title="per epoch (x: stopped by ASHA)")
    ax.legend(fontsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if metric:
        ax = axes[0][1]
        for n in names:
            pts = sorted((t.epochs, sum(v[metric] for g, v in t.scores.items() if g.startswith("tier") and metric in v)
                          / max(1, sum(g.startswith("tier") and metric in v for g, v in t.scores.items())))
                         for t in trials if t.size == n and t.scores)
            if pts:
                ax.plot(*zip(*pts), "-o", color=colors[n], label=n)
        ax.set(xlabel="epochs trained", ylabel=f"test {metric} (mean of tiers)", title=f"{cfg.dataset.name} test split")
        ax.legend(fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{cfg.sweep.name}: language-model scaling (ADIFF §5.3)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(trials: list[Trial], cfg: Config, folder: Path, parent: str) -> tuple[Path, Path]:
    """``table5.md``, ``figure4.png`` and ``trials.json`` in ``folder``, logged to the parent run (``report/``), and one
    MLflow child run per trial (found again by its trial id when a resumed sweep reports twice)."""
    import mlflow

    from audiopair import tracking
    from audiopair.atomic import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    md = f"# {cfg.sweep.name}: ADIFF language-model scaling on {cfg.dataset.name}\n\n{table5(trials, cfg)}\n"
    atomic_write_text(folder / "table5.md", md)
    atomic_write_text(folder / "trials.json", json.dumps([{**asdict(t), "status": t.status} for t in trials], indent=1))
    png = figure4(trials, cfg, folder / "figure4.png")
    for t in trials:
        _log_trial(t, cfg, parent, mlflow, tracking)
    for p in (folder / "table5.md", png, folder / "trials.json"):
        mlflow.log_artifact(str(p), "report")
    best = [t for t in trials if t.history and t.status == "completed"]
    if best:
        top = min(best, key=lambda t: t.history[-1].get(cfg.sweep.metric, math.inf))
        mlflow.set_tags({"best_trial": top.trial_id, "best_label": top.label})
    return folder / "table5.md", png


def _log_trial(t: Trial, cfg: Config, parent: str, mlflow, tracking) -> None:
    found = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.trial_id = "
                                             f"'{t.trial_id}'", output_format="list")
    tags = {"trial_id": t.trial_id, "size": t.size, "status": t.status, "checkpoint": t.checkpoint or ""}
    ctx = mlflow.start_run(run_id=found[0].info.run_id, nested=True) if found else \
        tracking.run(t.label, parent=parent, tags=tags)
    with ctx:
        mlflow.set_tags(tags)
        if not found:
            mlflow.log_params({"size": t.size, **{k: json.dumps(v) for k, v in t.space.items()}})
            for h in t.history:
                mlflow.log_metrics({k: h[k] for k in ("train_loss", "val_loss") if k in h and h[k] == h[k]},
                                   step=int(h["trial_epoch"]))
        mlflow.log_metric("epochs_trained", t.epochs)
        for group, values in t.scores.items():
            mlflow.log_metrics({f"{cfg.dataset.name}/adiff/{group}/{m}": v for m, v in values.items()
                                if isinstance(v, (int, float)) and v == v})
        if t.error:
            mlflow.set_tag("error", t.error[:5000])
        if t.checkpoint and not (found and found[0].data.tags.get("checkpoint") == t.checkpoint
                                 and "model_uri" in found[0].data.tags):  # a resumed sweep logs a model once
            tracking.log_model(model_dir(cfg, t.checkpoint), cfg.train.model_artifacts,
                               source=f"{_checkpoint_uri(cfg, t.checkpoint)}/model")


@contextlib.contextmanager
def sweep_run(cfg: Config):
    """The sweep's MLflow parent run: the one an earlier, interrupted run of this sweep (same name and storage) opened,
    so a resumed sweep keeps one parent with one child per trial; else a new one."""
    import mlflow

    from audiopair import tracking
    from audiopair.train.engine import storage_uri

    key = f"{storage_uri(cfg.train).rstrip('/')}/{cfg.sweep.name}"
    found = mlflow.search_runs(filter_string=f"tags.sweep_path = '{key}'", order_by=["start_time DESC"],
                               max_results=1, output_format="list")
    if found:
        with mlflow.start_run(run_id=found[0].info.run_id) as run:
            yield run
    else:
        with tracking.run(cfg.sweep.name, tags={"job": "sweep_adiff", "sweep_path": key}) as run:
            tracking.log_config(cfg)
            yield run
