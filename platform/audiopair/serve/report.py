"""The listening test's results in the shape of ADIFF Table 3, with what the paper leaves out: confidence
intervals, counts and inter-rater agreement.

- ``ratings_frame``: the ratings of a study joined with the frozen study (rater, item, scenario, tier, model,
  dimension, score); model names come from the study file, never from the page.
- ``table3``: per model and scenario, the mean 1-5 score of each dimension (COR / GRA / RDB), its 95% percentile
  bootstrap interval (resampling the cell's ratings, ``n_boot`` times, seeded per cell) and the number of ratings;
  then the ``average`` columns over all scenarios (the pooled ratings: with the same number of pairs per scenario,
  as the study builds them, this is the mean of the scenario means, as Table 3 averages).
- ``agreement``: Krippendorff's alpha per dimension (the ``krippendorff`` package), units = (item, output),
  one row per rater, unrated cells missing; ordinal by default (1-5 scores are ordered categories).
- ``write_report``: ``report.md``, ``report.json``, ``ratings.csv`` and ``table3.png`` in ``<study>/report/``.
- ``log_report``: all of it to an MLflow run ``listening-test/<study>`` in the study's experiment (next to the
  evaluation runs); metrics ``<scenario>/human/<model>/<dim>`` and ``agreement/<dim>/alpha``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audiopair.serve.study import DIMENSION_NAMES, DIMENSIONS, Study

AVERAGE = "average"


def ratings_frame(study: Study, rows: list[dict]) -> pd.DataFrame:
    """Ratings rows (``RatingStore.ratings()``) with each output's model, scenario and tier from the study."""
    model_of = {(it["id"], o["key"]): o["model"] for it in study.items for o in it["outputs"]}
    out = []
    for r in rows:
        it = study.item(r["item"])
        if it is None or (r["item"], r["output"]) not in model_of:
            continue  # a rating of an item this study no longer has
        out.append({**r, "scenario": it["scenario"], "tier": it["tier"], "model": model_of[(r["item"], r["output"])]})
    cols = ["rater", "item", "output", "dimension", "score", "scenario", "tier", "model"]
    return pd.DataFrame(out, columns=cols)


def bootstrap_ci(scores: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores`` (a constant sample gives ``(x, x)``)."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def table3(df: pd.DataFrame, study: Study, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Rows ``{model, scenario, dimension, mean, ci_low, ci_high, n}`` for every model x (scenarios + average) x
    dimension, in the study's model and scenario order; cells without ratings hold NaN and n = 0."""
    out = []
    for model in study.models:
        for scenario in study.scenarios + [AVERAGE]:
            for dim in DIMENSIONS:
                sel = (df.model == model) & (df.dimension == dim)
                if scenario != AVERAGE:
                    sel &= df.scenario == scenario
                scores = df.loc[sel, "score"].to_numpy(dtype=float)
                lo, hi = bootstrap_ci(scores, n_boot, seed)
                out.append({"model": model, "scenario": scenario, "dimension": dim,
                            "mean": float(scores.mean()) if scores.size else math.nan,
                            "ci_low": lo, "ci_high": hi, "n": int(scores.size)})
    return out


def agreement(df: pd.DataFrame, level: str = "ordinal") -> dict[str, float | None]:
    """Krippendorff's alpha per dimension; None where it is undefined (fewer than two raters on any unit, or a
    single score value throughout)."""
    import krippendorff

    out: dict[str, float | None] = {}
    for dim in DIMENSIONS:
        d = df[df.dimension == dim]
        matrix = d.pivot_table(index="rater", columns=["item", "output"], values="score", aggfunc="first")
        paired = matrix.loc[:, matrix.notna().sum(axis=0) >= 2]
        if paired.shape[0] < 2 or paired.shape[1] == 0 or len(np.unique(paired.to_numpy()[~np.isnan(
                paired.to_numpy(dtype=float))])) < 2:
            out[dim] = None
            continue
        out[dim] = float(krippendorff.alpha(reliability_data=matrix.to_numpy(dtype=float),
                                            level_of_measurement=level))
    return out


@dataclass
class Report:
    rows: list[dict]
    alpha: dict[str, float | None]
    ratings: pd.DataFrame
    raters: int
    level: str

    def cell(self, model: str, scenario: str, dim: str) -> dict:
        return next(r for r in self.rows if (r["model"], r["scenario"], r["dimension"]) == (model, scenario, dim))


def make_report(study: Study, rows: list[dict], n_boot: int = 2000, seed: int = 0, level: str = "ordinal") -> Report:
    df = ratings_frame(study, rows)
    return Report(table3(df, study, n_boot, seed), agreement(df, level), df, int(df.rater.nunique()), level)


def _fmt(c: dict) -> str:
    if not c["n"]:
        return "-"
    return f"{c['mean']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}] ({c['n']})"


def markdown(rep: Report, study: Study) -> str:
    """Table 3's shape: one row per model; COR / GRA / RDB per scenario, then the average columns."""
    cols = study.scenarios + [AVERAGE]
    head = ["model"] + [f"{s} {d.upper()}" for s in cols for d in DIMENSIONS]
    lines = [f"# Listening test {study.name}: {rep.raters} raters, {len(study.items)} items", "",
             "Mean 1-5 score [95% bootstrap interval] (number of ratings).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in study.models:
        lines.append("| " + " | ".join([m] + [_fmt(rep.cell(m, s, d)) for s in cols for d in DIMENSIONS]) + " |")
    lines += ["", f"Inter-rater agreement (Krippendorff's alpha, {rep.level}):", ""]
    lines += [f"- {DIMENSION_NAMES[d]}: " + ("undefined (too few overlapping ratings)" if a is None else f"{a:.3f}")
              for d, a in rep.alpha.items()]
    return "\n".join(lines) + "\n"


def plot(rep: Report, study: Study, path: Path) -> Path:
    """One panel per dimension: bars per scenario (and the average), one colour per model, 95% intervals."""
    from matplotlib.figure import Figure

    from audiopair.evaluate.classify import save_figure

    cols = study.scenarios + [AVERAGE]
    fig = Figure(figsize=(4 * len(DIMENSIONS), 3.6))
    axes = fig.subplots(1, len(DIMENSIONS), sharey=True)
    width = 0.8 / len(study.models)
    for ax, dim in zip(np.atleast_1d(axes), DIMENSIONS):
        for k, m in enumerate(study.models):
            cells = [rep.cell(m, s, dim) for s in cols]
            means = np.array([c["mean"] for c in cells])
            err = np.array([[c["mean"] - c["ci_low"], c["ci_high"] - c["mean"]] for c in cells]).T
            ax.bar(np.arange(len(cols)) + (k - (len(study.models) - 1) / 2) * width, np.nan_to_num(means), width,
                   yerr=np.nan_to_num(err), capsize=3, label=m)
        ax.set_title(DIMENSION_NAMES[dim])
        ax.set_xticks(range(len(cols)), cols, rotation=20)
        ax.set_ylim(0, 5.3)
    np.atleast_1d(axes)[0].set_ylabel("mean score (1-5)")
    np.atleast_1d(axes)[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Listening test {study.name}")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def write_report(rep: Report, study: Study, folder: str | Path) -> dict[str, Path]:
    """``report.md``, ``report.json``, ``ratings.csv`` and ``table3.png`` in ``folder``, each written atomically."""
    from audiopair.atomic import atomic_write_json, atomic_write_text

    folder = Path(folder)
    paths = {"md": folder / "report.md", "json": folder / "report.json", "csv": folder / "ratings.csv",
             "png": folder / "table3.png"}
    atomic_write_text(paths["md"], markdown(rep, study))
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rep.rows]
    atomic_write_json(paths["json"], {"study": study.name, "fingerprint": study.fingerprint, "raters": rep.raters,
                                      "alpha": rep.alpha, "alpha_level": rep.level, "table": clean})
    atomic_write_text(paths["csv"], rep.ratings.to_csv(index=False))
    plot(rep, study, paths["png"])
    return paths


def _source_experiment(sources: dict[str, list[str]]) -> str | None:
    """The experiment of the first evaluation run the study was built from (None for report folders)."""
    import re

    import mlflow
    from mlflow.exceptions import MlflowException

    for src in (x for xs in sources.values() for x in xs):
        if re.fullmatch(r"[0-9a-f]{32}", src):
            try:
                return mlflow.tracking.MlflowClient().get_run(src).info.experiment_id
            except MlflowException:
                continue
    return None


def log_report(rep: Report, study: Study, paths: dict[str, Path]) -> str:
    """An MLflow run ``listening-test/<study>``, next to the evaluation runs: in the experiment of the first
    source run when the study was built from MLflow runs, else in the active experiment. Returns its run id."""
    import mlflow

    from audiopair import tracking

    sources = json.loads((study.folder / "study.json").read_text()).get("sources", {})
    experiment = _source_experiment(sources)
    if experiment is not None:
        mlflow.set_experiment(experiment_id=experiment)
    tags = {"job": "listening_test", "study": study.name, "fingerprint": study.fingerprint,
            "sources": json.dumps(sources)[:5000]}
    with tracking.run(f"listening-test/{study.name}", tags=tags) as run:
        mlflow.log_params({"raters": rep.raters, "items": len(study.items), "models": ",".join(study.models),
                           "alpha_level": rep.level})
        mlflow.log_metrics({f"{r['scenario']}/human/{r['model']}/{r['dimension']}": r["mean"]
                            for r in rep.rows if r["n"]})
        mlflow.log_metrics({f"agreement/{d}/alpha": a for d, a in rep.alpha.items() if a is not None})
        for p in paths.values():
            mlflow.log_artifact(str(p), "listening_test")
        mlflow.log_table(data=pd.DataFrame(rep.rows), artifact_file="listening_test/table3.json")
        return run.info.run_id
