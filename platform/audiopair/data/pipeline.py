"""The dataset build: plan on the driver, render and featurise shards with Ray Data, write manifests and stats.

Output folder layout::

    build.json                 fingerprint, digest of sources.json, status, resolved config
    sources.json               size, mtime and sampled content hash of every source file and CSV (resume check)
    audio/<clip id>.flac       every rendered clip
    features/logmel/*.parquet  cached log-mels, one file per shard
    shards/shard-NNNNN.json    done markers (facts, render info, rejections): what a resumed build skips
    manifests/<task>_<split>.jsonl
    rejected.jsonl             missing and bad audio, with reasons
    stats.json                 ADIFF Table 1 / Table 24 shaped statistics
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from audiopair.atomic import atomic_write_json
from audiopair.config import DatasetConfig
from audiopair.corpus import make_source
from audiopair.corpus.base import Clip
from audiopair.data.fingerprint import changed_files, digest, source_identities
from audiopair.data.io import JsonlWriter
from audiopair.data.manifest import ManifestWriter
from audiopair.data.plan import Plan, make_plan, source_clips
from audiopair.data.render import process_shard, set_single_thread, shard_name
from audiopair.data.stats import DatasetStats
from audiopair.data.validate import validate_clips
from audiopair.progress import DEFAULT_INTERVAL_S, Progress
from audiopair.runtime import ensure_ray
from audiopair.tasks import examples as ex
from audiopair.tasks.edits import RenderItem

Lines = Callable[[str], None]


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
    render_seconds: float = 0.0  # of ``seconds``, the time rendering shards took (0 when all were done)


# ----------------------------------------------------------------------------------------- output folder
def config_fingerprint(cfg: DatasetConfig, plan: Plan) -> str:
    """What decides the build's content: not where it goes or how many workers make it."""
    content = cfg.model_dump(mode="json", exclude={"output_dir", "num_workers", "on_existing"})
    if not content["tasks"]["event_clips"]:  # added later: off, the build is what it was, and so is its fingerprint
        del content["tasks"]["event_clips"]
    h = hashlib.sha256(json.dumps(content, sort_keys=True).encode())
    h.update(plan.fingerprint().encode())
    return h.hexdigest()[:16]


def prepare_output(out: Path, fingerprint: str, cfg: DatasetConfig, inputs: dict[str, str] | None = None) -> None:
    """Resume a build of the same fingerprint and the same input files, or refuse; never mix two builds in one
    folder. ``inputs`` (``{path: identity}``, ``data.fingerprint.source_identities``) is kept in sources.json; a
    resumed build whose source audio or CSVs changed since is refused, naming the files (its finished shards hold
    measurements of the old audio). Builds from before sources.json existed resume unchecked."""
    inputs = inputs or {}
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
            if "sources" in old and old["sources"] != digest(inputs):
                was = json.loads((out / "sources.json").read_text()) if (out / "sources.json").exists() else {}
                diff = changed_files(was, inputs) or ["(sources.json is missing)"]
                more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
                raise BuildError(
                    f"source files of the build in {out} changed since it started: {'; '.join(diff[:5])}{more}. "
                    f"Its finished shards were rendered from the old audio, so it cannot resume. Restore the files, or "
                    f"set dataset.on_existing=overwrite to rebuild"
                )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "sources.json", inputs)
    atomic_write_json(meta_path, {"fingerprint": fingerprint, "sources": digest(inputs), "status": "running",
                                  "config": cfg.model_dump(mode="json")})


def _marker_path(out: Path, index: int) -> Path:
    return out / "shards" / f"{shard_name(index)}.json"


def _marker(out: Path, index: int) -> dict | None:
    p = _marker_path(out, index)
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------------------- running shards
# At most this many shards per Ray Data task: a task's input (its shards' recipes and source clips) stays small
# whatever the plan size, and a task costs Ray Data ~0.2 s to schedule, against ~1 s or more per shard.
MAX_SHARDS_PER_TASK = 8
_CFG_CACHE: dict = {}


def _recipe_clips(items: list) -> set[str]:
    return {c for it in items for k in ("clip", "base", "event") if (c := it.recipe.get(k)) is not None}


def render_inputs(items: list[RenderItem], plan: Plan) -> tuple[list[RenderItem], dict[str, Clip]]:
    """What rendering ``items`` needs: each item's id, split and recipe (captions left out), and the source clips
    their recipes name (captions and labels left out). A task gets only these for its own shards, never the plan."""
    slim = [RenderItem(it.id, it.split, it.recipe, []) for it in items]
    clips = {c: dataclasses.replace(plan.clips[c], captions=(), labels=())
             for c in sorted(_recipe_clips(items)) if c in plan.clips}
    return slim, clips


def shard_parts(todo: list[int], shards: list, plan: Plan, per_task: int) -> tuple[list[dict], list]:
    """Rows ``{"shard", "part"}`` for Ray Data, and one object-store reference per part: the ``render_inputs`` of
    ``per_task`` consecutive shards. The inputs go straight into the object store (no row copies of them on the
    driver), and each task fetches only its own part."""
    import ray

    rows, parts = [], []
    for k in range(0, len(todo), per_task):
        group = todo[k : k + per_task]
        parts.append(ray.put({i: render_inputs(shards[i], plan) for i in group}))
        rows += [{"shard": i, "part": len(parts) - 1} for i in group]
    return rows, parts


def render_shards(batch: dict, parts: list, cfg_json: dict, out_dir: str):
    """Ray Data task: render its shards one by one, yielding a row as each finishes (a generator: Ray Data streams
    each yielded block to the driver at once, so progress moves per shard and no task holds its results)."""
    import ray

    key = json.dumps(cfg_json, sort_keys=True)
    if key not in _CFG_CACHE:
        set_single_thread()
        _CFG_CACHE.clear()
        _CFG_CACHE[key] = DatasetConfig.model_validate(cfg_json)
    cfg = _CFG_CACHE[key]
    fetched: dict = {}  # the part this batch's shards are in (a batch may straddle two)
    for i, k in zip(batch["shard"], batch["part"]):
        if int(k) not in fetched:
            fetched = {int(k): ray.get(parts[int(k)])}
        items, clips = fetched[int(k)][int(i)]
        d = process_shard(int(i), items, clips, cfg, out_dir)
        yield {"shard": [int(i)], "clips": [len(d["clips"])], "rejected": [len(d["rejected"])]}


def shard_dataset(todo: list[int], shards: list, plan: Plan, cfg: DatasetConfig, out: Path):
    """The Ray Data pipeline that renders shards ``todo`` into ``out``: one row per finished shard."""
    import ray

    ensure_ray()
    # A few tasks per worker (two per worker keep the tail short), each of at most MAX_SHARDS_PER_TASK shards.
    # Shards stay the unit of resuming (each writes its own done marker).
    workers = min(cfg.num_workers, len(todo))
    per_task = min(MAX_SHARDS_PER_TASK, max(1, math.ceil(len(todo) / (workers * cfg.tasks_per_worker))))
    rows, parts = shard_parts(todo, shards, plan, per_task)
    ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(todo) / per_task))
    # Rendering and log-mels need no model, so plain tasks on pooled workers do it (no actor start-up per build);
    # model-based features (encoder embeddings) use an actor pool that loads the model once per actor.
    ds = ds.map_batches(
        render_shards,
        fn_kwargs={"parts": parts, "cfg_json": cfg.model_dump(mode="json"), "out_dir": str(out)},
        batch_size=per_task,
        compute=ray.data.TaskPoolStrategy(size=workers),
        num_cpus=1,
    )
    # This pipeline is one map: nothing downstream needs CPUs held back for it. Ray Data's per-operator reservation
    # otherwise delays the second task by about a second. A Dataset runs with the copy of DataContext it took when it
    # was created, so the switch goes on this dataset's own context (setting the global one here changed nothing).
    ds.context.op_resource_reservation_enabled = False
    # Each yielded shard row is its own block (rows are tiny; the default 128 MiB target would merge a task's rows
    # into one block sent when the task ends, and the driver would see no progress until then).
    ds.context.target_max_block_size = 1
    return ds


ShardDone = Callable[[int, int, int], None]  # (shard index, clips rendered, clips rejected)


def run_shards_ray(todo: list[int], shards: list, plan: Plan, cfg: DatasetConfig, out: Path, on_shard: ShardDone) -> None:
    for row in shard_dataset(todo, shards, plan, cfg, out).iter_rows():
        on_shard(int(row["shard"]), int(row["clips"]), int(row["rejected"]))


def run_shards_serial(todo: list[int], shards: list, plan: Plan, cfg: DatasetConfig, out: Path, on_shard: ShardDone) -> None:
    for i in todo:
        d = process_shard(i, shards[i], plan.clips, cfg, str(out))
        on_shard(i, len(d["clips"]), len(d["rejected"]))


# ----------------------------------------------------------------------------------------- the build
def build_dataset(cfg: DatasetConfig, progress: Lines = print, executor: str = "ray",
                  limit_clips: int | None = None, interval: float = DEFAULT_INTERVAL_S) -> BuildResult:
    """Plan, render (Ray Data or ``executor="serial"``), then stream records into the manifests and stats.

    ``progress`` gets the build's lines: the plan, then rendering progress (clips done, clips/s, ETA, rejected) at
    most every ``interval`` seconds; with ``progress=print`` on a terminal rendering shows a tqdm bar instead.
    ``limit_clips`` (benchmarks) renders only the shards holding the plan's first ``limit_clips`` clips and writes
    records of those; the build is then left with status "partial", which ``load_build`` refuses.
    Raises BuildError for a folder it must not touch, changed sources, unfinished shards, too many rejections.
    """
    t0 = time.time()
    out = Path(cfg.output_dir)
    sources = [(make_source(s, cfg), s) for s in cfg.sources]
    # Every source file is checked once before planning, so a bad event file is rejected even if no plan draws it.
    files = [c for src, s in sources for c in source_clips(src, s)]
    unusable = validate_clips(files, cfg, executor, progress)
    plan = make_plan(sources, cfg, unusable)
    fingerprint = config_fingerprint(cfg, plan)
    inputs = source_identities([c.path for c in files if c.path], [s.csv for s in cfg.sources if s.csv])
    prepare_output(out, fingerprint, cfg, inputs)
    shards = [plan.items[i : i + cfg.shard_size] for i in range(0, len(plan.items), cfg.shard_size)]
    if limit_clips is not None:
        shards = shards[: math.ceil(limit_clips / cfg.shard_size)]
    todo = [i for i in range(len(shards)) if _marker(out, i) is None]  # an unreadable marker: render it again
    resumed = len(shards) - len(todo)
    progress(f"plan: {len(plan.items)} clips, {len(plan.pairs)} pairs, {len(shards)} shards"
             + (f" ({resumed} already done, resuming)" if resumed else ""))
    t_render = time.time()
    if todo:
        # a bar for ``print`` at a terminal; callers that collect lines get lines
        with Progress(sum(len(shards[i]) for i in todo), "render", "clips", progress,
                      interval=interval, heartbeat=True) as bar:
            def on_shard(index: int, clips: int, rejected: int) -> None:
                bar.update(clips + rejected, rejected=rejected)

            (run_shards_ray if executor == "ray" else run_shards_serial)(todo, shards, plan, cfg, out, on_shard)
    t_render = time.time() - t_render

    unfinished = [i for i in range(len(shards)) if not _marker_path(out, i).exists()]
    if unfinished:
        raise BuildError(f"{len(unfinished)} shards of {out} did not finish (first: {shard_name(unfinished[0])}); "
                         f"run the build again to resume")
    # Stream the shard markers once: facts and render info stay (a few numbers per clip, which records need for
    # pairs that span shards); rejections go straight to rejected.jsonl.
    facts: dict[str, dict] = {}
    render_info: dict[str, dict] = {}
    worst: Counter = Counter()
    with JsonlWriter(out / "rejected.jsonl") as rejected:
        for i in range(len(shards)):
            m = _marker(out, i)
            if m is None:
                raise BuildError(f"{_marker_path(out, i)} is unreadable; delete it and run the build again")
            for cid, v in m["clips"].items():
                facts[cid], render_info[cid] = v["facts"], v["render"]
            for r in m["rejected"]:
                rejected.write(dict(r, stage="render"))
                worst[r["path"]] += 1
        for miss in plan.missing:
            rejected.write({"clip_id": miss.clip_id, "path": miss.path, "reason": miss.reason, "stage": "read"})
            worst[miss.path] += 1
    n_rejected = rejected.count
    _check_rejected(n_rejected, worst, len(plan.items) + len(plan.missing), cfg, out)

    stats_acc = DatasetStats()
    with ManifestWriter(out) as manifests:
        for r in iter_records(plan, facts, render_info, cfg, progress):
            manifests.write(r)
            stats_acc.add(r)
        counts = manifests.close()
    durations = {cid: f["duration_s"] for cid, f in facts.items()}
    stats = stats_acc.result(durations)
    stats.update({"clips": len(facts), "rejected": n_rejected, "hours_total": round(sum(durations.values()) / 3600, 4),
                  "manifests": counts, "fingerprint": fingerprint})
    atomic_write_json(out / "stats.json", stats)
    meta = json.loads((out / "build.json").read_text())
    atomic_write_json(out / "build.json", {**meta, "status": "done" if limit_clips is None else "partial"})
    return BuildResult(out, counts, n_rejected, len(facts), resumed, time.time() - t0, t_render)


def _check_rejected(n: int, worst: Counter, total: int, cfg: DatasetConfig, out: Path) -> None:
    share = n / max(total, 1)
    if share > cfg.max_rejected_fraction:
        names = "; ".join(f"{p} ({k}x)" for p, k in worst.most_common(5))
        raise BuildError(
            f"{n} of {total} clips rejected ({share:.1%} > dataset.max_rejected_fraction="
            f"{cfg.max_rejected_fraction}); worst files: {names}. Details in {out / 'rejected.jsonl'}"
        )


def iter_records(plan: Plan, facts: dict, render_info: dict, cfg: DatasetConfig, progress: Callable[[str], None]
                 ) -> Iterator[dict]:
    """Every example of every enabled task, from the clips that rendered, one at a time: task by task (ac, adc, acc,
    adiff, position), each in plan order, so each manifest's order is that of the records it gets."""
    ok = set(facts)
    items = {i.id: i for i in plan.items}
    enabled = set(cfg.tasks.enabled)

    def path(rid: str) -> str:
        return f"../audio/{rid}.flac"

    def pairs():
        return (p for p in plan.pairs if p.first in ok and p.second in ok)

    def edits():
        return (p for p in pairs() if p.op in ("add", "delete", "replace"))

    if "ac" in enabled:
        yield from (ex.ac_example(i, path, facts[i.id]) for i in plan.items if i.id in ok)
    if "adc" in enabled:
        yield from (ex.adc_example(p, items, facts, path) for p in edits())
    if "acc" in enabled:
        yield from (ex.acc_example(p, items, facts, path) for p in edits())
    if "adiff" in enabled:
        written = None
        if cfg.tasks.explanations.generator == "llm":  # batch inference over every pair first (its own progress)
            from audiopair.data.llm import generate_explanations

            written = generate_explanations([p for p in pairs() if p.answer is None], items, facts, cfg, progress)
        for p in pairs():
            yield from ex.adiff_examples(p, items, facts, render_info, path, cfg.tasks.tiers, written)
    if "position" in enabled:
        for p in pairs():
            if p.op == "random":
                yield from ex.position_examples(p, items, facts, path, cfg.tasks.position_kinds)


def load_build(out_dir: str | Path) -> dict:
    """The build.json of a finished dataset, or a clear error."""
    p = Path(out_dir) / "build.json"
    if not p.exists():
        raise BuildError(f"{out_dir} is not a built dataset (no build.json); run jobs/build_dataset.py first")
    meta = json.loads(p.read_text())
    if meta.get("status") != "done":
        raise BuildError(f"the dataset in {out_dir} is unfinished (status {meta.get('status')}); run the build again")
    return meta
