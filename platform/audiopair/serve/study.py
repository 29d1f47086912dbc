"""A blind listening test (ADIFF Table 3, App. I.2): built from evaluation outputs, frozen into one file.

``build_study(cfg.study)`` reads, per scenario, the predictions of two or more models (report folders with
``predictions/<model>.jsonl``, written by ``audiopair.evaluate.run.write_report``, or MLflow run ids of evaluate jobs
whose child runs ``<model>/evaluate`` hold ``predictions/<split>.json``), draws ``pairs_per_tier`` pairs per scenario
and tier (seeded), copies or hard-links both audios into ``<output_dir>/audio/``, shuffles the item order and each
item's model order, and writes:

- ``study.json``: the frozen study (items with their audio paths relative to the study folder and the outputs in
  their blind order, each holding its model's name; only the server reads the names, never the page);
- ``raters.json``: one random token per rater (the rater's link), readable by the owner only.

Errors (``StudyError``) name the scenario, file, run or id at fault.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from audiopair.atomic import atomic_write_json
from audiopair.config import ScenarioConfig, StudyConfig
from audiopair.data.fingerprint import json_digest
from audiopair.data.io import read_jsonl

DIMENSIONS = ("cor", "gra", "rdb")  # correctness, granularity, readability (ADIFF Table 3's columns)
DIMENSION_NAMES = {"cor": "Correctness", "gra": "Granularity", "rdb": "Readability"}
STUDY_FILE, RATERS_FILE = "study.json", "raters.json"


class StudyError(ValueError):
    """A study that cannot be built or read; the message names the scenario, file, run or id."""


@dataclass
class Study:
    """A frozen study as the server and the report read it."""

    folder: Path
    name: str
    items: list[dict]  # {id, scenario, tier, pair, prompt, audio: [rel, rel], outputs: [{key, model, text}]}
    models: list[str]
    scenarios: list[str]
    raters: dict[str, str]  # name -> token
    fingerprint: str

    def item(self, item_id: str) -> dict | None:
        return self._by_id.get(item_id)

    def __post_init__(self):
        self._by_id = {it["id"]: it for it in self.items}
        self.audio_files = {a for it in self.items for a in it["audio"]}  # the only files the server sends


# ------------------------------------------------------------------------------------------------- predictions
def _from_report(folder: Path) -> dict[str, list[dict]]:
    files = sorted((folder / "predictions").glob("*.jsonl"))
    if not files:
        raise StudyError(f"{folder}: no predictions/<model>.jsonl (report folders of jobs/evaluate.py and "
                         "train_adiff.py have them)")
    out = {}
    for f in files:
        try:
            out[f.stem] = read_jsonl(f)
        except ValueError as e:
            raise StudyError(str(e)) from None
    return out


def _from_mlflow(run_id: str, split: str) -> dict[str, list[dict]]:
    """Each child run ``<model>/evaluate`` of ``run_id`` (or the run itself when it is one) -> its predictions."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.tracking.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise StudyError(f"MLflow run {run_id}: not found at {mlflow.get_tracking_uri()} ({e.message})") from None
    runs = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'") or [run]
    out = {}
    for r in runs:
        name = r.data.tags.get("model") or r.info.run_name.split("/")[0]
        artifact = f"predictions/{split}.json"
        try:
            path = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path=artifact)
        except (MlflowException, OSError):
            continue  # a child that is not an evaluation (no predictions table)
        table = json.loads(Path(path).read_text())
        cols = table["columns"]
        out[name] = [dict(zip(cols, row)) for row in table["data"]]
        for row in out[name]:
            refs = row.get("references")
            row["references"] = refs.split(" | ") if isinstance(refs, str) else refs
    if not out:
        raise StudyError(f"MLflow run {run_id}: neither it nor its child runs hold predictions/{split}.json")
    return out


def load_predictions(source: str, split: str = "test") -> dict[str, list[dict]]:
    """``{model: rows}`` from a report folder (``predictions/<model>.jsonl``) or an MLflow run id."""
    p = Path(source)
    if p.is_dir():
        return _from_report(p)
    if re.fullmatch(r"[0-9a-f]{32}", source):
        return _from_mlflow(source, split)
    if "/" in source or os.sep in source:
        raise StudyError(f"report folder {source} does not exist (the demo's is written by `make demo`, i.e. "
                         "jobs/train_adiff.py; jobs/evaluate.py writes <work_dir>/reports/<experiment>-evaluate)")
    raise StudyError(f"predictions source {source!r} is neither a report folder nor an MLflow run id")


def _audio_by_id(dataset: str | None, split: str) -> dict[str, list[str]]:
    if not dataset:
        return {}
    from audiopair.evaluate.run import split_examples

    return {e["id"]: e["audio"] for e in split_examples(dataset, split, ["adiff"], None) if e["audio"]}


def _pair_ids(path: str, scenario: str) -> set[str]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "id" not in (reader.fieldnames or []):
            raise StudyError(f"study.scenarios[{scenario}].pairs: {path} has no 'id' column "
                             f"(columns: {reader.fieldnames})")
        return {row["id"] for row in reader}


def _scenario_rows(sc: ScenarioConfig) -> dict[str, dict[str, dict]]:
    """``{model: {id: row}}`` over every source of the scenario, each row with its audio files."""
    models: dict[str, dict[str, dict]] = {}
    for source in sc.predictions:
        for model, rows in load_predictions(source, sc.split).items():
            models.setdefault(model, {}).update({str(r["id"]): r for r in rows})
    audio = None
    for rows in models.values():
        for rid, r in rows.items():
            if not r.get("audio"):
                if audio is None:
                    audio = _audio_by_id(sc.dataset, sc.split)
                r["audio"] = audio.get(rid, [])
    return models


# ------------------------------------------------------------------------------------------------- building
def _place_audio(src: str, dst: Path, mode: str, where: str) -> None:
    if not Path(src).is_file():
        raise StudyError(f"{where}: audio file {src} does not exist")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "link":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system: copy
    shutil.copyfile(src, dst)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]


def build_study(cfg: StudyConfig, say=print) -> Path:
    """Build and freeze the study of ``cfg`` into ``cfg.output_dir``; returns the ``study.json`` path.

    Raises ``StudyError`` when the folder already holds a study (``on_existing: refuse``), a source cannot be read,
    fewer than two models are shared by all scenarios, a scenario has no pair every model answered, or an audio
    file is missing."""
    out = Path(cfg.output_dir)
    if (out / STUDY_FILE).exists():
        if cfg.on_existing == "refuse":
            raise StudyError(f"{out / STUDY_FILE} exists: a study is frozen once it is built (its raters' ratings "
                             "refer to it); choose another study.output_dir or set study.on_existing=overwrite")
        for f in (STUDY_FILE, RATERS_FILE):
            (out / f).unlink(missing_ok=True)
        shutil.rmtree(out / "audio", ignore_errors=True)
    if not cfg.scenarios:
        raise StudyError("study.scenarios is empty: name at least one scenario and its predictions, e.g. "
                         "study.scenarios='[{name: demo, predictions: [work/reports/adiff-demo]}]'")
    names = [sc.name for sc in cfg.scenarios]
    if len(set(names)) < len(names):
        raise StudyError(f"study.scenarios: names must differ, got {names}")
    per_scenario = {sc.name: _scenario_rows(sc) for sc in cfg.scenarios}
    common = set.intersection(*(set(m) for m in per_scenario.values()))
    models = [m for m in cfg.models if m in common] if cfg.models else sorted(common)
    missing = [m for m in cfg.models if m not in common]
    if missing:
        raise StudyError(f"study.models: {missing} are not in every scenario's predictions (found: "
                         + "; ".join(f"{s}: {sorted(m)}" for s, m in per_scenario.items()) + ")")
    if len(models) < 2:
        raise StudyError(f"a listening test compares two or more models; the scenarios share {sorted(common)}")

    items = []
    for sc in cfg.scenarios:
        rows = per_scenario[sc.name]
        ids = set.intersection(*(set(rows[m]) for m in models))
        ids = {i for i in ids if len(rows[models[0]][i].get("audio") or []) == 2}
        if sc.pairs:
            ids &= _pair_ids(sc.pairs, sc.name)
        for tier in cfg.tiers:
            pool = sorted(i for i in ids if int(rows[models[0]][i].get("tier") or 0) == tier)
            rng = random.Random(f"{cfg.seed}|{sc.name}|{tier}")
            chosen = rng.sample(pool, min(cfg.pairs_per_tier, len(pool)))
            if len(chosen) < cfg.pairs_per_tier:
                say(f"scenario {sc.name}, tier {tier}: only {len(chosen)} of {cfg.pairs_per_tier} pairs available")
            for pid in chosen:
                first = rows[models[0]][pid]
                audio = []
                for n, src in enumerate(first["audio"], 1):
                    rel = f"audio/{sc.name}/{_safe(pid)}_{n}{Path(src).suffix.lower()}"
                    _place_audio(src, out / rel, cfg.audio, f"scenario {sc.name}, pair {pid}")
                    audio.append(rel)
                outputs = [{"model": m, "text": rows[m][pid]["prediction"]} for m in models]
                random.Random(f"{cfg.seed}|order|{sc.name}|{pid}").shuffle(outputs)
                for k, o in enumerate(outputs):
                    o["key"] = "ABCDEFGHIJ"[k] if k < 10 else f"O{k}"
                items.append({"scenario": sc.name, "tier": tier, "pair": pid, "audio": audio, "outputs": outputs,
                              "prompt": first.get("eval_prompt") or first.get("prompt", ""),
                              "references": first.get("references") or []})
    if not items:
        raise StudyError("no pair was answered by every model in any scenario and tier; check study.tiers and the "
                         "predictions sources")
    random.Random(f"{cfg.seed}|items").shuffle(items)
    for n, it in enumerate(items, 1):
        it["id"] = f"item{n:03d}"
    study = {"name": cfg.name, "seed": cfg.seed, "models": models, "scenarios": [s.name for s in cfg.scenarios],
             "dimensions": list(DIMENSIONS), "sources": {s.name: s.predictions for s in cfg.scenarios},
             "items": items}
    study["fingerprint"] = json_digest(items)
    atomic_write_json(out / RATERS_FILE, {r: secrets.token_urlsafe(24) for r in cfg.raters})
    os.chmod(out / RATERS_FILE, 0o600)
    atomic_write_json(out / STUDY_FILE, study)  # last: its presence means a finished build
    say(f"study {cfg.name}: {len(items)} items x {len(models)} models ({', '.join(models)}), "
        f"{len(cfg.raters)} raters, in {out}")
    return out / STUDY_FILE


def load_study(folder: str | os.PathLike) -> Study:
    """The frozen study in ``folder``; raises ``StudyError`` naming the missing or bad file."""
    folder = Path(folder)
    for f in (STUDY_FILE, RATERS_FILE):
        if not (folder / f).is_file():
            raise StudyError(f"{folder / f} does not exist: build the study first (python jobs/listening_test.py "
                             "build)")
    try:
        s = json.loads((folder / STUDY_FILE).read_text())
        raters = json.loads((folder / RATERS_FILE).read_text())
    except json.JSONDecodeError as e:
        raise StudyError(f"{folder}: unreadable study file ({e})") from None
    return Study(folder, s["name"], s["items"], s["models"], s["scenarios"], raters, s["fingerprint"])


def rater_links(study: Study, base_url: str) -> dict[str, str]:
    return {name: f"{base_url.rstrip('/')}/rate/{token}" for name, token in study.raters.items()}
