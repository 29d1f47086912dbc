"""ADIFF's language-model scaling study (§5.3: Table 5, Figure 4) as a Ray Tune experiment.

The grid is every LM of ``sweep.sizes`` x every value of each ``sweep.space`` key (dotted config keys such as
``train.stages.0.epochs``), validated before anything runs. Each trial is a Tune function that trains the
``sweep.stages`` of one ADIFF with the platform's own training (``engine.fit_stage`` with ``adiff.make_recipe``: a
Ray Train TorchTrainer + DeepSpeed per stage); a Ray Train callback hands every epoch's report to Tune (the Train V2
pattern), so ASHA compares trials epoch by epoch on ``sweep.metric`` and stops the ones clearly behind.

Stage 1 (``train.unimodal``, the demo) is not part of a trial: it runs before the Tuner, the encoder once (under the
name ``train_adiff`` gives it, so a finished demo run's encoder is reused) and one LM per distinct LM config,
shared by the trials that need it (each size trains for several epoch budgets).

Re-running with the same ``sweep.name`` and ``train.storage_path`` restores the Tune experiment: finished trials are
not run again, an interrupted one restarts and its Train run resumes from its last epoch checkpoint. A sweep is
refused when its grid changed since it started. Only the driver talks to MLflow (stage 1's runs here; the
trials' child runs, Table 5 and Figure 4 in :mod:`audiopair.evaluate.sweep_report`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ray.tune
from audiopair.config import Config, ConfigError
from audiopair.train.sweep_grid import check_grid, column_name, grid, lm_run, sizes, trial_config, trial_epochs

log = logging.getLogger(__name__)

MARKER = "audiopair_sweep.json"  # the grid a sweep started with, beside Tune's experiment state


# ---------------------------------------------------------------------------------------------- stage 1
def pretrain(cfg: Config, configs: list[Config], parent: str | None, say=print) -> dict | None:
    """Stage 1 for the demo's random LMs: the encoder once and each distinct LM once, ``train.parallel`` at a time,
    each an MLflow child run of ``parent``. ``{"encoder": checkpoint, "lms": {run name: checkpoint}}``, or None
    when stage 1 is off (real scale: pretrained HTSAT and GPT-2s)."""
    if not cfg.train.unimodal.enabled:
        return None
    from concurrent.futures import ThreadPoolExecutor

    from audiopair.train.adiff import logged_stage, unimodal_stages
    from audiopair.train.engine import finished_stage
    from audiopair.train.pretrain import make_encoder_recipe, make_lm_recipe

    enc_stage, lm_stage = unimodal_stages(cfg.train.unimodal)
    name = cfg.train.run_name

    def stage(recipe, c: Config, run: str, extra: dict, stage_cfg):
        done = finished_stage(c.train, run)  # a resumed sweep: no training, no second MLflow run
        extra = {"cfg": c, **extra}  # absolute already (run_sweep)
        return done[0] if done else logged_stage(recipe, c.train, "unimodal", run, extra, stage_cfg, parent,
                                                 run.removeprefix(f"{name}-"), say)

    jobs = {"encoder": lambda: stage(make_encoder_recipe, cfg, f"{name}-unimodal-encoder", {}, enc_stage)}
    for run, c in {lm_run(c, p["size"]): c for c, p in zip(configs, grid(cfg))}.items():
        jobs[run] = lambda run=run, c=c: stage(make_lm_recipe, c, run, {"tokenizer": None}, lm_stage)
    with ThreadPoolExecutor(max_workers=cfg.train.parallel) as pool:
        done = {k: pool.submit(job) for k, job in jobs.items()}
        ckpts = {k: f.result() for k, f in done.items()}
    return {"encoder": ckpts.pop("encoder"), "lms": ckpts}


def _cache_embeddings(cfg: Config, configs: list[Config], stage1: dict | None, say=print) -> None:
    """The frozen encoder's embeddings of every clip, computed once into the dataset's cache before the trials (they
    share the encoder: stage 1's, or the pretrained HTSAT), so no trial's worker runs the encoder over the clips."""
    from audiopair.train.adiff import ensure_embeddings

    pretrained = stage1 and {"encoder": stage1["encoder"], "lm": next(iter(stage1["lms"].values()))}
    for variant in dict.fromkeys(c.model.variant for c in configs):
        ensure_embeddings(cfg, variant, pretrained, cfg.model.lm_pretrained, f"{cfg.sweep.name}-{variant}", say)


# ---------------------------------------------------------------------------------------------- one trial
def _reporter(offset: int):
    """A Ray Train callback (built inside the trial, where Tune's session is) that hands each epoch's report to Tune
    with ``trial_epoch``, the epochs this trial has trained over all its stages: ASHA's time axis."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ToTune(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            first = {**metrics[0], "trial_epoch": offset + int(metrics[0]["epoch"]) + 1}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return ToTune()


def run_trial(config: dict, base: dict, stage1: dict | None) -> None:
    """A Tune trial (in its own actor) for ``config["point"]``: the sweep's stages of one ADIFF, each a Ray Train run
    named after the trial id, so a restored trial's runs resume from their last epoch, and a stage that finished is
    skipped."""
    from audiopair.train.adiff import make_recipe
    from audiopair.train.engine import fit_stage

    point = config["point"]
    cfg = trial_config(Config.model_validate(base), point)
    run = f"{cfg.sweep.name}-{ray.tune.get_context().get_trial_id()}"
    pretrained = None
    if stage1:
        pretrained = {"encoder": stage1["encoder"], "lm": stage1["lms"][lm_run(cfg, point["size"])]}
    init, offset = None, 0  # base: run_sweep's config, its folders absolute
    for s in (cfg.train.stage(n) for n in cfg.sweep.stages):
        extra = {"cfg": cfg, "stage": s.name, "init": init, "tokenizer": cfg.model.lm_pretrained,
                 "pretrained": pretrained}
        init, metrics, _ = fit_stage(make_recipe, cfg.train, s.name, f"{run}-{s.name}", extra, s,
                                     callbacks=[_reporter(offset)])
        offset += s.epochs
        # The stage's last epoch once more, from its checkpoint: an interruption can fall between Train saving an
        # epoch and Tune receiving it, and the resumed run then has nothing left to report (or the stage was done).
        ray.tune.report({**{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
                         "trial_epoch": offset, "checkpoint_path": init.path})


def release_stopped_train_runs() -> int:
    """Remove this job's placement groups whose creating actor is dead; returns how many.

    When Tune stops a trial (ASHA), it kills the trial's actor and with it the Train controller, but the controller's
    worker placement group belongs to the job and lives on, holding its CPUs / GPUs, so the next trials' Train runs
    wait for them forever (ray-project/ray#54305). Ray 2.60's own PlacementGroupCleaner needs the State API
    (dashboard) and, on a machine with several Ray instances, cannot find its cluster. Tune's own placement groups
    are the driver's (no creating actor) and a running Train run's controller is alive, so neither is touched. Reads
    the GCS table through Ray's private accessor (pinned Ray; tests cover it)."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job, n = ray.get_runtime_context().get_job_id(), 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        actor = pg.creator_actor_id.hex()
        if (pg.state == gcs_pb2.PlacementGroupTableData.REMOVED or pg.is_detached or not pg.creator_actor_dead
                or not actor or set(actor) == {"f"} or pg.creator_job_id.hex() != job):
            continue
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
        n += 1
    return n


# Tune pickles its callbacks with the experiment and a restored sweep gets those copies back: classes defined at module
# level travel by reference, and the progress messages go to whatever ``say`` the current run_sweep was given.
_say: Callable[[str], None] = print


class ReleaseStoppedTrainRuns(ray.tune.Callback):
    """Runs :func:`release_stopped_train_runs` every couple of seconds of the Tune loop."""

    def __init__(self):
        self.next = 0.0

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() >= self.next:
            self.next = time.monotonic() + 2.0
            if release_stopped_train_runs():
                log.info("released the placement group of a stopped trial's Train run")


class Progress(ray.tune.Callback):
    """One line per trial epoch and one when a trial ends."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = result.get("trial_epoch", 0)
        if epoch > self.seen.get(trial.trial_id, 0):  # (a stage's last epoch comes twice, see run_trial)
            self.seen[trial.trial_id] = epoch
            _say(f"[{trial_label(trial)}] epoch {epoch}: train loss {result.get('train_loss', float('nan')):.3f}, "
                 f"val loss {result.get('val_loss', float('nan')):.3f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        _say(f"[{trial_label(trial)}] ended after {trial.last_result.get('trial_epoch', 0)} epoch(s)")

    def on_trial_error(self, iteration, trials, trial, **info):
        _say(f"[{trial_label(trial)}] failed: {trial.error_file}")


def point_label(point: dict) -> str:
    """``tiny-2x64 epochs=2``: the size and the other grid values."""
    return " ".join([point["size"]] + [f"{column_name(k, point['space'])}={v}" for k, v in point["space"].items()])


def trial_label(trial) -> str:
    return point_label(trial.config["point"])


def trial_dirname(trial) -> str:
    return trial.trial_id


# ---------------------------------------------------------------------------------------------- the sweep
class Interrupted(RuntimeError):
    """The sweep stopped before every trial ended (Ctrl+C); its state is saved and the same job resumes it."""


@dataclass
class Trial:
    """One trial's outcome, as the report needs it."""

    trial_id: str
    size: str
    space: dict
    planned_epochs: int
    epochs: int  # trained (ASHA may stop a trial before planned_epochs)
    history: list[dict]  # per epoch: trial_epoch, stage, train_loss, val_loss
    checkpoint: str | None  # the last reported epoch's checkpoint (a path on train.storage_path)
    error: str | None = None
    scores: dict = field(default_factory=dict)  # test split: group (tier1 ...) -> metric -> value

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        return "completed" if self.epochs >= self.planned_epochs else f"stopped at epoch {self.epochs}"

    @property
    def label(self) -> str:
        return point_label({"size": self.size, "space": self.space})


def concurrency(cfg: Config, configs: list[Config]) -> int:
    """``sweep.max_concurrent_trials``, or how many of the largest trial fit the cluster at once: its workers' GPUs
    (``train.use_gpu``) and CPUs. Trials beyond that would only start Train runs that wait for resources."""
    import ray

    if cfg.sweep.max_concurrent_trials:
        return cfg.sweep.max_concurrent_trials
    have = ray.cluster_resources()
    fits = []
    for c in configs:
        tc = c.train
        n = have.get("CPU", 0) // (tc.num_workers * tc.cpus_per_worker + cfg.sweep.trial_resources.get("CPU", 0))
        if tc.use_gpu:
            n = min(n, have.get("GPU", 0) // tc.num_workers)
        fits.append(n)
    return max(1, int(min(fits)))


def scheduler(sw, longest: int):
    """Tune's trial scheduler for ``sweep.scheduler``. ASHA's time axis is ``trial_epoch``; its ``max_t`` lies past the
    longest trial, so a trial that reaches its own last epoch ends by itself, not by ASHA."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sw.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="trial_epoch", max_t=longest + 1, grace_period=sw.grace_period,
                         reduction_factor=sw.reduction_factor)


def _fingerprint(cfg: Config) -> dict:
    sw = cfg.sweep
    return {"grid": grid(cfg), "sizes": sizes(cfg), "stages": sw.stages, "metric": sw.metric}


def experiment(cfg: Config):
    """The Tune experiment's folder: ``(pyarrow filesystem, path on it, URI)``."""
    import pyarrow.fs

    from audiopair.train.engine import storage_uri

    uri = f"{storage_uri(cfg.train).rstrip('/')}/{cfg.sweep.name}"
    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    return fs, root, uri


def check_resumable(cfg: Config) -> bool:
    """Whether an earlier run of this sweep (same ``sweep.name`` and storage) left a Tune experiment to restore; a
    ``ConfigError`` when that one was started with another grid, which must not be mixed into it."""
    import pyarrow.fs

    fs, root, path = experiment(cfg)
    if not ray.tune.Tuner.can_restore(path):
        return False
    if fs.get_file_info(f"{root}/{MARKER}").type == pyarrow.fs.FileType.File:
        with fs.open_input_stream(f"{root}/{MARKER}") as f:
            if json.loads(f.read().decode()) != json.loads(json.dumps(_fingerprint(cfg))):
                raise ConfigError(f"sweep {cfg.sweep.name!r} at {path} was started with another grid (sweep.sizes / "
                                  "space / stages / metric); give it another sweep.name, or delete that folder")
    return True


def run_sweep(cfg: Config, parent: str | None = None, say=print, callbacks: tuple = ()) -> list[Trial]:
    """Stage 1, then the Tune experiment (a new one, or the interrupted one restored); returns every trial's outcome
    in grid order. ``parent``: the MLflow run stage 1's runs go under. ``callbacks``: extra Tune callbacks (tests
    interrupt a sweep with one); like Tune's own, they are saved with the experiment and come back on restore."""
    from audiopair.train.engine import storage_uri

    global _say
    _say = say
    cfg = cfg.for_workers()  # Tune runs each trial in a working directory of its own
    configs = check_grid(cfg)
    sw, (fs, root, path), fingerprint = cfg.sweep, experiment(cfg), _fingerprint(cfg)
    restoring = check_resumable(cfg)
    stage1 = pretrain(cfg, configs, parent, say)
    _cache_embeddings(cfg, configs, stage1, say)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, base=cfg.model_dump(mode="json"), stage1=stage1), sw.trial_resources)
    if restoring:
        say(f"sweep {sw.name}: restoring {path} (finished trials are kept)")
        tuner = ray.tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        points, longest = grid(cfg), max(trial_epochs(c) for c in configs)
        limit = concurrency(cfg, configs)
        say(f"sweep {sw.name}: {len(points)} trials, {limit} at a time, "
            + (f"ASHA on {sw.metric} from epoch {sw.grace_period}" if sw.scheduler == "asha" else "each to its end"))
        tuner = ray.tune.Tuner(
            trainable, param_space={"point": ray.tune.grid_search(points)},
            tune_config=ray.tune.TuneConfig(metric=sw.metric, mode="min", scheduler=scheduler(sw, longest),
                                            max_concurrent_trials=limit,
                                            trial_name_creator=trial_label, trial_dirname_creator=trial_dirname),
            run_config=ray.tune.RunConfig(name=sw.name, storage_path=storage_uri(cfg.train), verbose=0,
                                          callbacks=[ReleaseStoppedTrainRuns(), Progress(), *callbacks]))
        fs.create_dir(root)
        with fs.open_output_stream(f"{root}/{MARKER}") as f:
            f.write(json.dumps(fingerprint, indent=1).encode())
    results = tuner.fit()
    release_stopped_train_runs()  # the last stopped trials' runs: nothing will start after them
    # Ctrl+C / SIGUSR1: Tune saved its state and returned early (trials not yet started are not in the results)
    if results.num_terminated + results.num_errors < len(configs):
        raise Interrupted(f"sweep {sw.name!r} was interrupted; run the same command again to resume it ({path})")
    return _outcomes(cfg, configs, results)


def _outcomes(cfg: Config, configs: list[Config], results) -> list[Trial]:
    """Each trial's epochs (the last report per ``trial_epoch``: a restarted trial reports its resumed epochs again)
    and last checkpoint, in grid order."""
    keys = [json.dumps(p, sort_keys=True) for p in grid(cfg)]
    out = []
    for r in results:
        point = r.config["point"]
        df = r.metrics_dataframe
        history, ckpt = [], None
        if df is not None and "trial_epoch" in df:
            df = df.dropna(subset=["trial_epoch"]).sort_values("trial_epoch")
            df = df.drop_duplicates("trial_epoch", keep="last")
            by_epoch = {}
            for _, row in df.iterrows():
                # a trial restored mid-stage reports only its resumed epochs to Tune; each report also carries the
                # Train run's whole history (engine.train_loop), which gives back the epochs before the restore
                if isinstance(row.get("history"), str) and row.get("epoch") == row.get("epoch"):
                    offset = int(row["trial_epoch"]) - int(row["epoch"]) - 1
                    for h in json.loads(row["history"]):
                        by_epoch.setdefault(offset + int(h["epoch"]) + 1, {
                            "stage": row.get("stage"), **{k: float(h[k]) for k in ("train_loss", "val_loss")}})
            for _, row in df.iterrows():
                by_epoch[int(row["trial_epoch"])] = {"stage": row.get("stage"),
                                                     **{k: float(row[k]) for k in ("train_loss", "val_loss") if k in row}}
            history = [{"trial_epoch": e, **by_epoch[e]} for e in sorted(by_epoch)]
            ckpt = df["checkpoint_path"].iloc[-1] if "checkpoint_path" in df and len(df) else None
        c = configs[keys.index(json.dumps(point, sort_keys=True))]
        out.append(Trial(Path(r.path).name, point["size"], point["space"], trial_epochs(c),
                         history[-1]["trial_epoch"] if history else 0, history, ckpt,
                         None if r.error is None else f"{type(r.error).__name__}: {r.error}"[:2000]))
    return sorted(out, key=lambda t: keys.index(json.dumps({"size": t.size, "space": t.space}, sort_keys=True)))
