"""The dataset build: plan on the driver, render and featurise shards with Ray Data, write manifests and stats.

Output folder layout::

    build.json                 fingerprint, status, resolved config
    audio/<clip id>.flac       every rendered clip
    features/logmel/*.parquet  cached log-mels, one file per shard
    shards/shard-NNNNN.json    done markers (facts, render info, rejections): what a resumed build skips
    manifests/<task>_<split>.jsonl
    rejected.jsonl             missing and bad audio, with reasons
    stats.json                 ADIFF Table 1 / Table 24 shaped statistics
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from audiopair.config import DatasetConfig
from audiopair.corpus import make_source
from audiopair.data.io import atomic_write_json, atomic_write_jsonl
from audiopair.data.manifest import manifest_path, write_manifest
from audiopair.data.plan import Plan, make_plan, source_clips
from audiopair.data.render import process_shard, set_single_thread, shard_name
from audiopair.data.stats import dataset_stats
from audiopair.data.validate import validate_clips
from audiopair.tasks import examples as ex

Progress = Callable[[str], None]


class BuildError(RuntimeError):
    """A build that must not go on; the message says why and what to do."""


@dataclass
class BuildResult:
    out_dir: Path
    manifests: dict[str, int]  # "task_split" -> records
    rejected: int
    clips: int
    resumed_shards: int
    seconds: float


# ----------------------------------------------------------------------------------------- output folder
def config_fingerprint(cfg: DatasetConfig, plan: Plan) -> str:
    """What decides the build's content: not where it goes or how many workers make it."""
    content = cfg.model_dump(mode="json", exclude={"output_dir", "num_workers", "on_existing"})
    h = hashlib.sha256(json.dumps(content, sort_keys=True).encode())
    h.update(plan.fingerprint().encode())
    return h.hexdigest()[:16]


def prepare_output(out: Path, fingerprint: str, cfg: DatasetConfig) -> None:
    """Resume a build of the same fingerprint, or refuse; never mix two builds in one folder."""
    meta_path = out / "build.json"
    if out.exists() and any(out.iterdir()):
        if cfg.on_existing == "overwrite":
            shutil.rmtree(out)
        elif not meta_path.exists():
            raise BuildError(
                f"{out} exists and is not an audiopair dataset (no build.json); choose an empty or new "
                f"dataset.output_dir, or set dataset.on_existing=overwrite to replace its contents"
            )
        else:
            old = json.loads(meta_path.read_text())
            if cfg.on_existing == "refuse":
                raise BuildError(
                    f"{out} already holds a build (status {old.get('status')}); dataset.on_existing=refuse. "
                    f"Use dataset.on_existing=resume to finish it or overwrite to replace it"
                )
            if old.get("fingerprint") != fingerprint:
                raise BuildError(
                    f"{out} holds a build of a different config or source data (fingerprint {old.get('fingerprint')}, "
                    f"this run {fingerprint}); refusing to mix them. Choose another dataset.output_dir or set "
                    f"dataset.on_existing=overwrite"
                )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta_path, {"fingerprint": fingerprint, "status": "running", "config": cfg.model_dump(mode="json")})


def _marker(out: Path, index: int) -> dict | None:
    p = out / "shards" / f"{shard_name(index)}.json"
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------------------- running shards
_PLAN_CACHE: dict = {}


def render_shards(batch: dict, shared: list, cfg_json: dict, out_dir: str) -> dict:
    """Ray Data task: render whole shards. The plan travels once through the object store (``shared``) and is
    kept per worker process, so a pooled worker deserialises it once, not once per shard."""
    import ray

    key = shared[0].hex()
    if key not in _PLAN_CACHE:
        set_single_thread()
        _PLAN_CACHE.clear()
        _PLAN_CACHE[key] = (ray.get(shared[0]), DatasetConfig.model_validate(cfg_json))
    (shards, clips), cfg = _PLAN_CACHE[key]
    done = [process_shard(int(i), shards[int(i)], clips, cfg, out_dir) for i in batch["shard"]]
    return {"shard": [d["shard"] for d in done], "clips": [len(d["clips"]) for d in done],
            "rejected": [len(d["rejected"]) for d in done]}


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster a job was submitted to (RAY_ADDRESS), or start a local instance."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


def shard_dataset(todo: list[int], shards: list, plan: Plan, cfg: DatasetConfig, out: Path):
    """The Ray Data pipeline that renders shards ``todo`` into ``out``: one row per finished shard."""
    import ray

    ensure_ray()
    shared = ray.put((shards, plan.clips))
    # A few tasks per worker: each task costs Ray Data ~0.2 s to schedule, and two per worker keep the tail short.
    # Shards stay the unit of resuming (each writes its own done marker).
    workers = min(cfg.num_workers, len(todo))
    per_task = max(1, math.ceil(len(todo) / (workers * cfg.tasks_per_worker)))
    ds = ray.data.from_items([{"shard": i} for i in todo], override_num_blocks=math.ceil(len(todo) / per_task))
    # Rendering and log-mels need no model, so plain tasks on pooled workers do it (no actor start-up per build);
    # model-based features (encoder embeddings) use an actor pool that loads the model once per actor.
    ds = ds.map_batches(
        render_shards,
        fn_kwargs={"shared": [shared], "cfg_json": cfg.model_dump(mode="json"), "out_dir": str(out)},
        batch_size=per_task,
        compute=ray.data.TaskPoolStrategy(size=workers),
        num_cpus=1,
    )
    # This pipeline is one map: nothing downstream needs CPUs held back for it. Ray Data's per-operator reservation
    # otherwise delays the second task by about a second. A Dataset runs with the copy of DataContext it took when it
    # was created, so the switch goes on this dataset's own context (setting the global one here changed nothing).
    ds.context.op_resource_reservation_enabled = False
    return ds


def run_shards_ray(todo: list[int], shards: list, plan: Plan, cfg: DatasetConfig, out: Path, progress: Progress) -> None:
    finished = 0
    for row in shard_dataset(todo, shards, plan, cfg, out).iter_rows():
        finished += 1
        progress(f"shard {row['shard']} done: {row['clips']} clips, {row['rejected']} rejected "
                 f"({finished}/{len(todo)})")


def run_shards_serial(todo: list[int], shards: list, plan: Plan, cfg: DatasetConfig, out: Path, progress: Progress) -> None:
    for k, i in enumerate(todo, 1):
        d = process_shard(i, shards[i], plan.clips, cfg, str(out))
        progress(f"shard {i} done: {len(d['clips'])} clips, {len(d['rejected'])} rejected ({k}/{len(todo)})")


# ----------------------------------------------------------------------------------------- the build
def build_dataset(cfg: DatasetConfig, progress: Progress = print, executor: str = "ray") -> BuildResult:
    t0 = time.time()
    out = Path(cfg.output_dir)
    sources = [(make_source(s, cfg), s) for s in cfg.sources]
    # Every source file is checked once before planning, so a bad event file is rejected even if no plan draws it.
    files = [c for src, s in sources for c in source_clips(src, s)]
    unusable = validate_clips(files, cfg, executor, progress)
    plan = make_plan(sources, cfg, unusable)
    fingerprint = config_fingerprint(cfg, plan)
    prepare_output(out, fingerprint, cfg)
    shards = [plan.items[i : i + cfg.shard_size] for i in range(0, len(plan.items), cfg.shard_size)]
    todo = [i for i in range(len(shards)) if _marker(out, i) is None]
    resumed = len(shards) - len(todo)
    progress(f"plan: {len(plan.items)} clips, {len(plan.pairs)} pairs, {len(shards)} shards"
             + (f" ({resumed} already done, resuming)" if resumed else ""))
    if todo:
        (run_shards_ray if executor == "ray" else run_shards_serial)(todo, shards, plan, cfg, out, progress)

    markers = [_marker(out, i) for i in range(len(shards))]
    if any(m is None for m in markers):
        raise BuildError(f"some shards of {out} did not finish; run the build again to resume")
    facts = {cid: v["facts"] for m in markers for cid, v in m["clips"].items()}
    render_info = {cid: v["render"] for m in markers for cid, v in m["clips"].items()}
    rejected = [dict(r, stage="render") for m in markers for r in m["rejected"]]
    rejected += [{"clip_id": m.clip_id, "path": m.path, "reason": m.reason, "stage": "read"} for m in plan.missing]
    atomic_write_jsonl(out / "rejected.jsonl", rejected)
    _check_rejected(rejected, len(plan.items) + len(plan.missing), cfg, out)

    records = make_records(plan, facts, render_info, cfg, progress)
    counts = _write_manifests(out, records)
    durations = {cid: f["duration_s"] for cid, f in facts.items()}
    stats = dataset_stats(records, durations)
    stats.update({"clips": len(facts), "rejected": len(rejected), "hours_total": round(sum(durations.values()) / 3600, 4),
                  "manifests": counts, "fingerprint": fingerprint})
    atomic_write_json(out / "stats.json", stats)
    meta = json.loads((out / "build.json").read_text())
    atomic_write_json(out / "build.json", {**meta, "status": "done"})
    return BuildResult(out, counts, len(rejected), len(facts), resumed, time.time() - t0)


def _check_rejected(rejected: list[dict], total: int, cfg: DatasetConfig, out: Path) -> None:
    share = len(rejected) / max(total, 1)
    if share > cfg.max_rejected_fraction:
        worst = Counter(r["path"] for r in rejected).most_common(5)
        names = "; ".join(f"{p} ({n}x)" for p, n in worst)
        raise BuildError(
            f"{len(rejected)} of {total} clips rejected ({share:.1%} > dataset.max_rejected_fraction="
            f"{cfg.max_rejected_fraction}); worst files: {names}. Details in {out / 'rejected.jsonl'}"
        )


def make_records(plan: Plan, facts: dict, render_info: dict, cfg: DatasetConfig, progress: Progress) -> list[dict]:
    """Every example of every enabled task, from the clips that rendered."""
    ok = set(facts)
    items = {i.id: i for i in plan.items}
    enabled = set(cfg.tasks.enabled)

    def path(rid: str) -> str:
        return f"../audio/{rid}.flac"

    records: list[dict] = []
    if "ac" in enabled:
        records += [ex.ac_example(i, path, facts[i.id]) for i in plan.items if i.id in ok]
    pairs = [p for p in plan.pairs if p.first in ok and p.second in ok]
    edits = [p for p in pairs if p.op in ("add", "delete", "replace")]
    if "adc" in enabled:
        records += [ex.adc_example(p, items, facts, path) for p in edits]
    if "acc" in enabled:
        records += [ex.acc_example(p, items, facts, path) for p in edits]
    if "adiff" in enabled:
        written = None
        if cfg.tasks.explanations.generator == "llm":
            from audiopair.data.llm import generate_explanations

            todo = [p for p in pairs if p.answer is None]
            written = generate_explanations(todo, items, facts, cfg, progress)
        for p in pairs:
            records += ex.adiff_examples(p, items, facts, render_info, path, cfg.tasks.tiers, written)
    if "position" in enabled:
        records += [r for p in pairs if p.op == "random"
                    for r in ex.position_examples(p, items, facts, path, cfg.tasks.position_kinds)]
    return records


def _write_manifests(out: Path, records: list[dict]) -> dict[str, int]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["split"])].append(r)
    counts = {}
    for (task, split), recs in sorted(groups.items()):
        counts[f"{task}_{split}"] = write_manifest(manifest_path(out, task, split), recs)
    return counts


def load_build(out_dir: str | Path) -> dict:
    """The build.json of a finished dataset, or a clear error."""
    p = Path(out_dir) / "build.json"
    if not p.exists():
        raise BuildError(f"{out_dir} is not a built dataset (no build.json); run jobs/build_dataset.py first")
    meta = json.loads(p.read_text())
    if meta.get("status") != "done":
        raise BuildError(f"the dataset in {out_dir} is unfinished (status {meta.get('status')}); run the build again")
    return meta
