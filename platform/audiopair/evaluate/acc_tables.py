"""ACC Tables 2 and 3 in miniature (ACC §3, Tables 2-3): one job trains the stand-in base, a LoRA row per
finetuning task mixture, scores every model on AC captioning and downstream classification, and writes both tables.

- The base ("stage 1", ``audiopair.train.acc_table.train_base``) learns the build's AC captions and label
  questions: the classification question (``classification_prompt``) over fresh renders of the bank's event kinds
  (``demo_label_csv`` under another source name than the scored set, so no scored clip is trained on), and "which
  sounds are in the audio" over the AC clips' labels.
- Each row of ``acc_table.rows`` is LoRA from that base on ``acc_table.budget`` examples (equal budgets).
- Every model (the random model the base started from, the base, each row) is scored on the AC test split with
  Table 2's metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr, FENSE; a metric that cannot run here is
  reported unavailable with its reason, never as 0) and on ``evaluate.classify`` (Table 3), and gets its
  validation loss per task (AC, ADC, ACC) on the same examples: a row's own-task loss against the base's.
- Results are cached per model under ``<work_dir>/reports/<acc_table.name>/models/`` with a fingerprint of what
  made them; a second job reuses the base, finished rows and their scores.

Report: ``report.md`` and ``report.json`` (atomic), logged to the job's MLflow run; one child run per model with
its metrics (``<dataset>/ac/all/<metric>``, ``<set>/classify/all/accuracy``, ``val_loss/<task>``).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from audiopair.atomic import atomic_write_json, atomic_write_text
from audiopair.config import Config, ConfigError
from audiopair.data.manifest import load_examples, manifest_path, read_manifest
from audiopair.evaluate.classify import _readable, classification_prompt, demo_label_csv, demo_labels, read_label_csv
from audiopair.evaluate.downstream import prepare_all
from audiopair.evaluate.run import evaluate_checkpoint
from audiopair.train.acc_table import (base_share, budget_examples, digest, examples_digest, slug, train_base,
                                       train_row, val_examples)

log = logging.getLogger(__name__)

# ACC Table 2's columns (the paper orders them BLEU, FENSE, SPICE, SPIDEr, CIDEr-D, METEOR, ROUGE-L)
TABLE2_METRICS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider", "fense"]
HEADERS = {"bleu_1": "BLEU-1", "bleu_2": "BLEU-2", "bleu_3": "BLEU-3", "bleu_4": "BLEU-4", "meteor": "METEOR",
           "rouge_l": "ROUGE-L", "cider_d": "CIDEr-D", "spice": "SPICE", "spider": "SPIDEr", "fense": "FENSE"}
LIST_PROMPT = "Which sounds are in the audio? List them."
TASKS = ["ac", "adc", "acc"]
BASE, RANDOM = "Qwen2-Audio (stand-in base)", "random init (before stage 1)"
VERSION = 2  # bump when the base's recipe changes in code, so cached bases are not reused


# ------------------------------------------------------------------------------------------ the base's data
def label_questions(cfg: Config, name: str, per_kind: int) -> list[dict]:
    """The classification question over ``per_kind`` fresh renders of each bank event kind (source ``name``),
    answered with the kind's readable label."""
    csv = demo_label_csv(Path(cfg.work_dir) / "classify" / name, cfg.dataset.sample_rate, cfg.dataset.clip_seconds,
                         per_kind, cfg.dataset.demo.seed, name=name)
    prompt = classification_prompt(demo_labels())
    return [{"id": f"{name}/{i}", "task": "label", "tier": None, "prompt": prompt, "eval_prompt": prompt,
             "target": _readable(label), "references": [_readable(label)],
             "audio": [str(Path(path).resolve())]}  # absolute: Ray Train workers have their own working directory
            for i, (path, label) in enumerate(read_label_csv(csv))]


def label_lists(dataset_dir: str | Path, split: str) -> list[dict]:
    """"Which sounds are in the audio" over each AC clip of ``split``, answered with its labels (``meta.labels``)."""
    path = manifest_path(dataset_dir, "ac", split)
    out = []
    for r in read_manifest(path):
        if not r.meta.get("labels"):
            raise ValueError(f"{path}: record {r.id} has no meta.labels to ask the base about")
        answer = ", ".join(_readable(l) for l in r.meta["labels"])
        out.append({"id": f"labels/{r.id}", "task": "labels", "tier": None, "prompt": LIST_PROMPT,
                    "eval_prompt": LIST_PROMPT, "target": answer, "references": [answer],
                    "audio": [str(p) for p in r.files(path)]})
    return out


def base_examples(cfg: Config) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """The base's training and validation examples (its share of the AC training clips, ``acc_table.base.ac_share``,
    and all AC validation clips, plus the label questions ``acc_table.base`` asks for), and the label questions
    alone (its warm-up)."""
    b, ds, seed = cfg.acc_table.base, cfg.dataset.output_dir, cfg.train.seed
    out, labels = {}, {}
    for split, per_kind in (("train", b.label_per_kind), ("val", max(1, b.label_per_kind // 3))):
        labels[split] = label_questions(cfg, f"demo_cls_{split}", per_kind) if b.label_per_kind else []
        if b.label_lists:
            labels[split] += label_lists(ds, split)
        ac = load_examples(ds, split, {"ac": 1.0}, seed)
        out[split] = (base_share(ac, b.ac_share, seed) if split == "train" else ac) + labels[split]
    return out, labels


def tokenizer_texts(cfg: Config, examples: list[dict]) -> list[str]:
    """What the base's tokenizer is trained on: every task's training text (a pretrained LLM's tokenizer knows the
    finetuning tasks' words too) and the base's own examples."""
    texts = []
    for task in TASKS:
        texts += [t for e in load_examples(cfg.dataset.output_dir, "train", {task: 1.0}, 0)
                  for t in (e["prompt"], e["target"])]
    return texts + [t for e in examples for t in (e["prompt"], e["target"])]


# ------------------------------------------------------------------------------------------ scoring
@torch.no_grad()
def task_losses(model_dir: str | Path, val: dict[str, list[dict]], cfg: Config) -> dict[str, float]:
    """Mean teacher-forced loss (answer tokens) of the model in ``model_dir`` per task's examples, weighted by
    examples per batch as the training loop's validation loss is."""
    from audiopair.models.qwen2_audio import encode_batch, load_finetuned
    from audiopair.train.qwen import read_waves

    ft = cfg.finetune
    model, processor = load_finetuned(model_dir)
    model.eval()
    out = {}
    for task, examples in val.items():
        total, n = 0.0, 0
        for i in range(0, len(examples), ft.micro_batch):
            batch = examples[i : i + ft.micro_batch]
            waves = [read_waves(e, processor, ft.max_audio_seconds) for e in batch]
            loss = model(**encode_batch(processor, batch, waves, ft.max_answer_tokens, ft.system_prompt)).loss
            total, n = total + float(loss) * len(batch), n + len(batch)
        out[task] = total / n if n else float("nan")
    return out


def eval_config(cfg: Config) -> Config:
    """``cfg.evaluate`` for the tables: AC captioning with Table 2's metrics (plus ``evaluate.classify``)."""
    ev = cfg.evaluate.model_copy(update={"tasks": ["ac"], "metrics": TABLE2_METRICS, "draw": []})
    return cfg.model_copy(update={"evaluate": ev})


def score_model(model_dir: str | Path, cfg: Config, name: str, sets, val: dict, say=print) -> dict:
    """One model's Table 2 and 3 entries and its per-task validation losses (metrics logged to the active run)."""
    import mlflow

    t0 = time.perf_counter()
    losses = task_losses(model_dir, val, cfg)
    mlflow.log_metrics({f"val_loss/{t}": v for t, v in losses.items()})
    ev = evaluate_checkpoint(model_dir, eval_config(cfg), name, say=say, classify_sets=sets)
    rep = ev.reports["ac"]["all"]
    return {"ac": {m: rep.values.get(m) for m in TABLE2_METRICS},
            "unavailable": {m: why for m, why in rep.unavailable.items() if m in TABLE2_METRICS},
            "classify": {n: c.accuracy for n, c in ev.classify.items()},
            "n_ac": len([r for r in ev.rows if r["task"] == "ac"]),
            "n_classify": {n: c.report["n"] for n, c in ev.classify.items()},
            "val_loss": losses, "model_dir": str(model_dir), "score_seconds": time.perf_counter() - t0,
            "examples": [{"id": r["id"], "prediction": r["prediction"], "reference": r["references"][0]}
                         for r in ev.rows[:5]]}


def log_cached(result: dict, dataset: str) -> None:
    """A reused model's metrics into the active run, under the keys ``score_model`` logs them."""
    import mlflow

    metrics = {f"{dataset}/ac/all/{m}": v for m, v in result["ac"].items() if v is not None}
    metrics |= {f"{n}/classify/all/accuracy": v for n, v in result["classify"].items() if v is not None}
    metrics |= {f"val_loss/{t}": v for t, v in result["val_loss"].items()}
    mlflow.log_metrics(metrics)


# ------------------------------------------------------------------------------------------ the job
def run_tables(cfg: Config, parent: str, say=print) -> tuple[Path, dict]:
    """Base, rows, scores and the report (``acc_table``); MLflow child runs of run id ``parent``. Returns the
    Markdown report's path and the report dict."""
    from audiopair import tracking

    at, ft, ds, seed = cfg.acc_table, cfg.finetune, cfg.dataset.output_dir, cfg.train.seed
    if not ft.tiny.enabled:
        raise ConfigError("acc_table: the miniature makes its own base from finetune.tiny (set finetune.tiny.enabled "
                          "true); at real scale run the rows as jobs/configs/acc_table2/*.yaml")
    names = [row_name(tasks) for tasks in at.rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"acc_table.rows: each task mixture once, got {names}")
    t_start = time.perf_counter()
    # transformers resolves its classes lazily and two threads importing at once can see a half-made module
    # ("cannot import name ..."): import what the threads need here, in one thread, first
    import peft  # noqa: F401
    from transformers import AutoProcessor, ClapAudioConfig, Qwen2AudioForConditionalGeneration  # noqa: F401

    import audiopair.train.adiff  # noqa: F401
    import audiopair.train.qwen  # noqa: F401

    report_dir = Path(cfg.work_dir) / "reports" / at.name
    sets = prepare_all(cfg)
    val = {t: val_examples(ds, t, at.val_limit, seed) for t in TASKS}
    ev = eval_config(cfg).evaluate
    score_fp = digest({"evaluate": ev.model_dump(mode="json"), "val": {t: examples_digest(v) for t, v in val.items()},
                       "dataset": cfg.dataset.name, "version": VERSION})

    bex, warm = base_examples(cfg)
    base_fp = digest({"tiny": ft.tiny.model_dump(), "base": at.base.model_dump(), "seed": seed,
                      "max_answer_tokens": ft.max_answer_tokens, "system": ft.system_prompt, "version": VERSION,
                      "train": examples_digest(bex["train"]), "val": examples_digest(bex["val"]),
                      "texts": digest(tokenizer_texts(cfg, []))})
    base_dir = Path(cfg.work_dir).resolve() / "models" / f"acc-base-{base_fp}"
    random_dir = base_dir.with_name(base_dir.name + "-random")

    def cached(key: str, fp: str) -> dict | None:
        path = report_dir / "models" / f"{key}.json"
        if path.is_file():
            got = json.loads(path.read_text())
            if got.get("fingerprint") == fp:
                return got
        return None

    def model_run(name: str, key: str, fp: str, make) -> dict:
        """A child run for one model: reuse its cached result, or ``make(run_id)`` -> (model folder, extra) and
        score it."""
        with tracking.run(name, parent=parent, tags={"model": name, "fingerprint": fp}) as run:
            hit = cached(key, fp)
            if hit:
                say(f"[{name}] finished in an earlier job (fingerprint {fp}): scores reused")
                # the earlier job's run keeps the predictions, figures and training runs: link to it, copy nothing
                mlflow_tags(reused="true", checkpoint=hit["model_dir"],
                            **({"reused_from": hit["run_id"]} if hit.get("run_id") else {}))
                log_cached(hit, cfg.dataset.name)
                return hit | {"reused": True}
            mlflow_tags(reused="false")
            model_dir, extra = make(run.info.run_id)
            result = score_model(model_dir, cfg, name, sets, val, say) | extra | {
                "fingerprint": fp, "name": name, "run_id": run.info.run_id}
            mlflow_tags(checkpoint=str(model_dir))
            atomic_write_json(report_dir / "models" / f"{key}.json", result)
            return result

    def make_base(run_id: str):
        t0 = time.perf_counter()
        train_base(cfg, bex, tokenizer_texts(cfg, bex["train"]), base_dir, run_id, say,
                   warm if warm["train"] else None)
        return base_dir, {"train_seconds": time.perf_counter() - t0, "n_train": len(bex["train"])}

    def make_row(row: str, tasks: list[str], run_name: str):
        def make(run_id: str):
            t0 = time.perf_counter()
            train = budget_examples(ds, tasks, at.budget, seed)
            examples = {"train": train, "val": [e for t in tasks for e in val[t]]}
            model_dir = train_row(cfg, base_dir, run_name, examples, run_id, say)
            return model_dir, {"tasks": tasks, "train_seconds": time.perf_counter() - t0, "n_train": len(train)}
        return make

    with ThreadPoolExecutor(max_workers=at.parallel) as pool:
        jobs = {}

        def score_random() -> None:  # the random model the base starts from, scored beside the other work
            jobs[RANDOM] = pool.submit(model_run, RANDOM, "random", f"{base_fp}-{score_fp}", lambda _: (random_dir, {}))

        if at.random_reference and (random_dir / "config.json").is_file():
            score_random()
        base = model_run(BASE, "base", f"{base_fp}-{score_fp}", make_base)  # stage 1: every row starts here
        if at.random_reference and RANDOM not in jobs:  # made by the base's stage just now
            score_random()
        lora = ft.model_dump(include={"lora", "lr", "weight_decay", "warmup_steps", "micro_batch", "grad_accum",
                                      "max_answer_tokens", "system_prompt", "max_audio_seconds"}, mode="json")
        for tasks in at.rows:
            row = row_name(tasks)
            train_fp = digest({"base": base_fp, "tasks": tasks, "budget": at.budget, "finetune": lora, "seed": seed,
                               "val": {t: examples_digest(val[t]) for t in tasks}})
            run_name = f"{at.name}-{slug(row)}-{train_fp}"
            jobs[row] = pool.submit(model_run, row, slug(row), f"{train_fp}-{score_fp}",
                                    make_row(row, list(tasks), run_name))
        results = {name: f.result() for name, f in jobs.items()}
    rows = {row_name(tasks): results[row_name(tasks)] for tasks in at.rows}
    report = build_report(cfg, base, rows, results.get(RANDOM), time.perf_counter() - t_start)
    md = write_report(report, report_dir)
    return md, report


def row_name(tasks: list[str]) -> str:
    """A row's name from its tasks: ``[ac, acc]`` -> ``AC+ACC``."""
    return "+".join(t.upper() for t in tasks)


def mlflow_tags(**tags) -> None:
    import mlflow

    mlflow.set_tags(tags)


# ------------------------------------------------------------------------------------------ the tables
def _cell(v: float | None, why: str | None) -> str:
    return f"{v:.4f}" if v is not None else ("n/a" if why else "-")


def build_report(cfg: Config, base: dict, rows: dict[str, dict], random: dict | None, seconds: float) -> dict:
    """The report dict: Table 2 (rows x metrics), Table 3 (base then rows x classification sets), the own-task
    validation losses, what was unavailable and why, and the settings that made them."""
    at, ft = cfg.acc_table, cfg.finetune
    sets = list(base["classify"])
    unavailable = {}
    for r in [base, *rows.values()]:
        unavailable |= r["unavailable"]
    table2 = [{"row": name, **{m: r["ac"][m] for m in TABLE2_METRICS}} for name, r in rows.items()]
    models = [(BASE, base)] + [(f"+ {name}", r) for name, r in rows.items()]
    table3 = [{"row": name, **{s: r["classify"].get(s) for s in sets}} for name, r in models]
    own = []
    for name, r in rows.items():
        tasks = r["tasks"]
        before = sum(base["val_loss"][t] for t in tasks) / len(tasks)
        after = sum(r["val_loss"][t] for t in tasks) / len(tasks)
        own.append({"row": name, "tasks": tasks, "base": before, "after": after, "lowered": after < before})
    return {
        "name": at.name, "dataset": cfg.dataset.name, "metrics": TABLE2_METRICS, "sets": sets,
        "table2": table2, "table3": table3, "own_task_val_loss": own, "unavailable": unavailable,
        "val_loss": {name: r["val_loss"] for name, r in [(BASE, base), *rows.items()]
                     } | ({RANDOM: random["val_loss"]} if random else {}),
        "base": base, "random": random, "rows": rows, "seconds": seconds,
        "reused": [name for name, r in [(BASE, base), (RANDOM, random or {}), *rows.items()] if r.get("reused")],
        "settings": {"budget": at.budget, "lora": ft.lora.model_dump(), "lr": ft.lr, "micro_batch": ft.micro_batch,
                     "grad_accum": ft.grad_accum, "base": at.base.model_dump(), "tiny": ft.tiny.model_dump(),
                     "n_ac_test": base["n_ac"], "n_classify": base["n_classify"]},
    }


def report_markdown(rep: dict) -> str:
    """Tables 2 and 3 as Markdown, with the own-task losses and the unavailable metrics' reasons."""
    metrics, why, sets = rep["metrics"], rep["unavailable"], rep["sets"]
    s = rep["settings"]
    out = [f"# {rep['name']}: ACC Tables 2 and 3 in miniature ({rep['dataset']})", "",
           f"LoRA r {s['lora']['r']}, alpha {s['lora']['alpha']}, dropout {s['lora']['dropout']}, lr {s['lr']:g}, "
           f"batch {s['micro_batch']} x {s['grad_accum']}; {s['budget']} training examples per row. "
           f"AC test clips: {s['n_ac_test']}; classification clips: {s['n_classify']}. Job: {rep['seconds']:.0f} s"
           + (f" (reused from earlier jobs, whose MLflow runs hold their predictions and training: "
              f"{', '.join(rep['reused'])})." if rep.get("reused") else "."),
           "", "## Table 2: AC captioning (test split)", "",
           "| Finetuning task | " + " | ".join(HEADERS[m] for m in metrics) + " |",
           "|---|" + "---|" * len(metrics)]
    for r in rep["table2"]:
        out.append(f"| Qwen2-Audio + {r['row']} | " + " | ".join(_cell(r[m], why.get(m)) for m in metrics) + " |")
    for name, r in ((BASE, rep["base"]), (RANDOM, rep["random"])):
        if r:
            out.append(f"| *{name}* | " + " | ".join(_cell(r["ac"][m], why.get(m)) for m in metrics) + " |")
    if why:
        out += ["", "n/a = unavailable here, not zero:"] + [f"- {HEADERS.get(m, m)}: {w.splitlines()[0][:300]}"
                                                           for m, w in why.items()]
    out += ["", "## Table 3: downstream classification accuracy", "",
            "| Model | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for r in rep["table3"]:
        out.append(f"| {r['row']} | " + " | ".join("-" if r[x] is None else f"{100 * r[x]:.2f}%" for x in sets) + " |")
    if rep["random"]:
        out.append(f"| *{RANDOM}* | " + " | ".join("-" if rep["random"]["classify"].get(x) is None else
                                                    f"{100 * rep['random']['classify'][x]:.2f}%" for x in sets) + " |")
    out += ["", "## Validation loss per task (teacher-forced; a row's own tasks against the base's)", "",
            "| Model | " + " | ".join(t.upper() for t in TASKS) + " | own tasks: base -> row |", "|---|" + "---|" * 4]
    own = {o["row"]: o for o in rep["own_task_val_loss"]}
    for name, losses in rep["val_loss"].items():
        o = own.get(name)
        cell = f"{o['base']:.3f} -> {o['after']:.3f}" if o else ""
        out.append(f"| {name} | " + " | ".join(f"{losses[t]:.3f}" for t in TASKS) + f" | {cell} |")
    return "\n".join(out) + "\n"


def write_report(rep: dict, folder: str | Path) -> Path:
    """``report.json`` and ``report.md`` in ``folder`` (atomic), logged to the active MLflow run with Table 2's
    values as ``table2/<row>/<metric>`` and Table 3's as ``table3/<row>/<set>``."""
    import mlflow

    folder = Path(folder)
    atomic_write_json(folder / "report.json", rep)
    md = folder / "report.md"
    atomic_write_text(md, report_markdown(rep))
    if mlflow.active_run():
        metrics = {f"table2/{slug(r['row'])}/{m}": r[m] for r in rep["table2"] for m in rep["metrics"]
                   if r[m] is not None}
        metrics |= {f"table3/{slug(r['row'])}/{x}": r[x] for r in rep["table3"] for x in rep["sets"]
                    if r[x] is not None}
        mlflow.log_metrics(metrics)
        for path in (md, folder / "report.json"):
            mlflow.log_artifact(str(path), "report")
    return md
