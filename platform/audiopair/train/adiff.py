"""The ADIFF recipe (ADIFF §3.3): examples from the builder's manifests, the model at a stage, its checkpoints.

Examples mix tasks by weight (ADIFF tiers + position captioning, §5.4): a weight of 0.5 keeps a seeded half of a
task's records, 2 repeats them. Audio enters as the builder's cached log-mels; the frozen encoder turns them into
embeddings once per worker, so the epochs do not re-run it (the encoder runs every step only when it trains).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from audiopair.config import Config
from audiopair.data.features import FeatureStore, check_front_end, front_end
from audiopair.data.manifest import load_examples
from audiopair.models.adiff import build_model, load_checkpoint, save_checkpoint, set_stage
from audiopair.models.tokenizer import encode_answers, load_tokenizer, model_prompts
from audiopair.train.engine import Recipe, checkpoint_uri, local_dir
from audiopair.train.pretrain import LABELS
from audiopair.variants import VARIANTS


class AudioBank:
    """Per-clip audio inputs for the model: frozen-encoder embeddings, or log-mels when the encoder trains (then the
    model runs it each step). Embeddings come from the dataset's cache for this very encoder (``cache_embeddings``,
    matched by weight fingerprint) or, when there is none, are computed here once."""

    def __init__(self, dataset_dir: str | Path, clip_ids: set[str], model, batch: int = 32, cache: bool = True):
        from audiopair.data.features import front_end_of
        from audiopair.train.embeddings import cached, embed, fingerprint

        store = FeatureStore(dataset_dir)
        self.mels = {c: torch.from_numpy(store[c]) for c in sorted(clip_ids)}
        self.embeddings: dict[str, torch.Tensor] = {}
        self.from_cache = False
        encoder_frozen = not any(p.requires_grad for p in model.encoder.backbone.parameters())
        if encoder_frozen and cache:
            model.encoder.eval()
            saved = cached(dataset_dir, fingerprint(model.encoder, front_end_of(dataset_dir)))
            if saved is not None and all(c in saved for c in self.mels):
                self.embeddings = {c: torch.from_numpy(saved[c]) for c in self.mels}
                self.from_cache = True
            else:
                ids = sorted(self.mels)
                for k in range(0, len(ids), batch):
                    chunk = ids[k : k + batch]
                    emb = embed(model.encoder, [self.mels[c].numpy() for c in chunk])
                    self.embeddings.update(zip(chunk, torch.from_numpy(emb)))
            model.accept_embeddings = True  # made by this model's own encoder (language_only: its random one)

    def __call__(self, clip_id: str) -> torch.Tensor:
        return self.embeddings.get(clip_id, self.mels[clip_id]) if self.embeddings else self.mels[clip_id]


def with_pretrained(model_cfg, pretrained: dict | None, tokenizer):
    """``(model config, tokenizer ref, event labels)`` once the demo's stage-1 encoder and LM (``pretrained``:
    checkpoints or folders) stand in for HTSAT and GPT-2, as a hub model would; unchanged without them."""
    if not pretrained:
        return model_cfg, tokenizer, None
    enc, lm = local_dir(pretrained["encoder"]) / "model", local_dir(pretrained["lm"]) / "model"
    labels = json.loads((enc / LABELS).read_text())
    encoder = model_cfg.encoder.model_copy(update={"pretrained": str(enc), "num_classes": len(labels)})
    return model_cfg.model_copy(update={"lm_pretrained": str(lm), "encoder": encoder}), lm, labels


def make_recipe(config: dict) -> Recipe:
    """Recipe factory run on each worker. ``config``: {"cfg": the Config (``Config.for_workers``), "stage": 2|3
    name, "init": the previous stage's checkpoint (a Ray Checkpoint or an ADIFF model folder) or None, "tokenizer":
    hub id or folder, "pretrained": {"encoder": ..., "lm": ...} stage-1 checkpoints or absent, "cache_embeddings":
    True (False: the frozen encoder runs every step, for benchmarks)}."""
    cfg: Config = config["cfg"]
    model_cfg, tok_ref, event_labels = with_pretrained(cfg.model, config.get("pretrained"), config["tokenizer"])
    tok = load_tokenizer(tok_ref)
    init = config.get("init")
    if init is not None and not isinstance(init, (str, Path)):
        init = local_dir(init) / "model"
    stage = config["stage"]
    weights = cfg.train.task_weights
    state: dict = {}

    def build():
        model = load_checkpoint(init, model_cfg) if init else build_model(model_cfg, tok)
        if event_labels and not VARIANTS[model_cfg.variant].random_encoder:  # a random encoder's head means nothing
            model.event_labels = event_labels
        data_front_end = front_end(cfg.dataset.features, cfg.dataset.sample_rate)
        check_front_end(model.front_end, data_front_end, f"{init} on dataset {cfg.dataset.output_dir}")
        model.front_end = data_front_end
        set_stage(model, stage)
        state["model"] = model
        return model

    def examples(split: str) -> list[dict]:
        if "examples" not in state:  # both splits at once: the bank holds exactly the clips they hear
            state["examples"] = {s: load_examples(cfg.dataset.output_dir, s, weights, cfg.train.seed)
                                 for s in ("train", "val")}
            clips = {c for ex in state["examples"].values() for e in ex for c in e["clips"]}
            state["bank"] = AudioBank(cfg.dataset.output_dir, clips, state["model"],
                                      cache=config.get("cache_embeddings", True))
        return state["examples"][split]

    def collate(batch: list[dict]) -> dict:
        bank = state["bank"]
        p_ids, p_mask = model_prompts(tok, state["model"], [e["prompt"] for e in batch])
        a_ids, a_mask = encode_answers(tok, [e["target"] for e in batch], cfg.train.max_answer_tokens)
        return {"audio1": torch.stack([bank(e["clips"][0]) for e in batch]),
                "audio2": torch.stack([bank(e["clips"][1]) for e in batch]),
                "prompt_ids": p_ids, "prompt_mask": p_mask, "answer_ids": a_ids, "answer_mask": a_mask}

    def save(model, folder: Path) -> None:
        save_checkpoint(model, folder, tokenizer=tok)

    def load(model, folder: Path) -> None:
        saved = load_checkpoint(folder, model_cfg)
        model.load_state_dict(saved.state_dict())

    return Recipe(build, lambda: examples("train"), lambda: examples("val"), collate, save, load,
                  length=lambda e: len(e["target"]))


# ---------------------------------------------------------------------------------------------- the whole schedule
def saved_config(folder: str | Path):
    """The ``AdiffModelConfig`` an ADIFF model folder was saved with; ValueError naming the folder otherwise."""
    from audiopair.config import AdiffModelConfig
    from audiopair.models.adiff import META

    meta = Path(folder) / META
    if not meta.is_file() or not (Path(folder) / "tokenizer").is_dir():
        raise ValueError(f"train.init_from={folder} is not an ADIFF model folder (needs {META} and tokenizer/; "
                         "jobs/import_adiff.py writes one from a released checkpoint)")
    return AdiffModelConfig.model_validate(json.loads(meta.read_text())["config"])


def unimodal_stages(u) -> tuple:
    """Stage 1's two trainings (``train.unimodal``) as ``(encoder, LM)`` stage configs."""
    from audiopair.config import StageConfig

    return (StageConfig(name="unimodal", epochs=u.encoder_epochs, lr=u.encoder_lr, weight_decay=0.01,
                        micro_batch=u.encoder_micro_batch),
            StageConfig(name="unimodal", epochs=u.lm_epochs, lr=u.lm_lr))


def logged_stage(recipe, tc, stage_name: str, run: str, extra: dict, stage_cfg, parent: str | None, label: str,
                 say=print):
    """``engine.fit_stage`` in an MLflow child run ``label`` of run id ``parent``: the stage's parameters, per-epoch
    and final metrics, system metrics (``train.system_metrics``), its checkpoint as a tag and its model folder as the
    run's ``model/`` artifacts (``train.model_artifacts``: copied, or a reference to the checkpoint). Returns the
    checkpoint."""
    import mlflow

    from audiopair import tracking
    from audiopair.train.engine import finished_stage, fit_stage

    if finished_stage(tc, run):
        say(f"[{run}] finished in an earlier run of the job: its checkpoint is reused, nothing is trained")
    else:
        say(f"[{run}] {stage_cfg.epochs} epochs at lr {stage_cfg.lr:g} on {tc.num_workers} worker(s)")
    with tracking.run(label, parent=parent, tags={"stage": stage_name}, system_metrics=tc.system_metrics):
        mlflow.log_params({f"stage.{k}": v for k, v in stage_cfg.model_dump().items()})
        spec = tracking.worker_system_metrics() if tc.system_metrics else None
        if spec:  # rank 0 charts its own machine too
            extra = {**extra, "system_metrics": spec}
        ckpt, metrics, result = fit_stage(recipe, tc, stage_name, run, extra, stage_cfg)
        if result is not None:
            tracking.log_epochs(result)
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()
                            if k in ("train_loss", "val_loss", "samples_per_s", "setup_s")})
        mlflow.set_tag("checkpoint", ckpt.path)
        tracking.log_model(local_dir(ckpt) / "model", tc.model_artifacts, source=f"{checkpoint_uri(ckpt)}/model")
    say(f"[{run}] train loss {metrics.get('train_loss', float('nan')):.3f}, "
        f"val loss {metrics.get('val_loss', float('nan')):.3f}")
    return ckpt


def final_model_uris(job_run: str, variants: list[str], stage_name: str) -> dict[str, str]:
    """``{variant: runs:/<id>/model}``: the model each variant run under job run ``job_run`` logged in its stage
    ``stage_name`` (read back from the runs' tags); variants without one are left out."""
    import mlflow

    out = {}
    for variant in variants:
        vruns = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{job_run}' and "
                                                 f"tags.variant = '{variant}'", output_format="list")
        for vrun in vruns:
            stages = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{vrun.info.run_id}' and "
                                                      f"tags.stage = '{stage_name}'", output_format="list")
            if stages and "model_uri" in stages[0].data.tags:
                out[variant] = stages[0].data.tags["model_uri"]
    return out


def ensure_embeddings(cfg: Config, variant: str, pretrained: dict | None, tokenizer, label: str, say=print):
    """Fill the dataset's embedding cache for ``variant``'s frozen encoder (nothing when it trains), so none of its
    stages or workers runs the encoder over the clips; logs the cache's name to the active MLflow run."""
    import time

    import mlflow

    from audiopair.models.adiff import encoder_config_of
    from audiopair.train.embeddings import cache_embeddings, cache_kind

    model_cfg = with_pretrained(cfg.model.model_copy(update={"variant": variant}), pretrained, tokenizer)[0]
    enc_cfg = encoder_config_of(model_cfg)
    if not enc_cfg.freeze:
        return None
    t0, tc = time.perf_counter(), cfg.train
    key = cache_embeddings(Path(cfg.dataset.output_dir).resolve(), enc_cfg, tc.embedding_actors,
                           1 if tc.use_gpu and tc.embedding_actors else 0)
    if mlflow.active_run():
        mlflow.set_tag("embeddings", cache_kind(key))
    say(f"[{label}] frozen-encoder embeddings in features/{cache_kind(key)} ({time.perf_counter() - t0:.1f} s)")
    return key


def train_adiff(cfg: Config, say=print) -> dict:
    """Every stage of every ``train.variants`` model; returns ``{variant: final checkpoint}``.

    Stage 1 (``train.unimodal.enabled``, the demo) trains the encoder and the LM once, shared by the variants; then
    each variant runs ``train.stages`` (grounding, finetune), each from the previous stage's checkpoint. Independent
    trainings (the encoder and the LM; the variants) run ``train.parallel`` at a time. Each stage is an MLflow child
    run of the active run (one run per variant holds its stages). A stage that completed under the same
    ``train.run_name`` is not trained again and an interrupted one resumes: re-running the job continues it."""
    from concurrent.futures import ThreadPoolExecutor

    import mlflow

    from audiopair import tracking
    from audiopair.train.pretrain import make_encoder_recipe, make_lm_recipe

    tc, name, cfg = cfg.train, cfg.train.run_name, cfg.for_workers()
    active = mlflow.active_run()
    job_run = active.info.run_id if active else None

    def stage(recipe, stage_name: str, run: str, extra: dict, stage_cfg, parent: str | None):
        return logged_stage(recipe, tc, stage_name, run, extra, stage_cfg, parent, run.removeprefix(f"{name}-"), say)

    def at_once(jobs: list) -> list:
        with ThreadPoolExecutor(max_workers=tc.parallel) as pool:
            return [f.result() for f in [pool.submit(job) for job in jobs]]

    pretrained, tokenizer = None, cfg.model.lm_pretrained
    if tc.init_from:  # an ADIFF folder (trained here or imported): its architecture, weights and tokenizer
        if tc.unimodal.enabled:
            raise ValueError("train.init_from starts from a trained model: set train.unimodal.enabled false")
        cfg = cfg.model_copy(update={"model": saved_config(tc.init_from)})
        tokenizer = str(Path(tc.init_from) / "tokenizer")
    if tc.unimodal.enabled:
        enc_stage, lm_stage = unimodal_stages(tc.unimodal)
        enc, lm = at_once([
            lambda: stage(make_encoder_recipe, "unimodal", f"{name}-unimodal-encoder", {"cfg": cfg}, enc_stage,
                          job_run),
            lambda: stage(make_lm_recipe, "unimodal", f"{name}-unimodal-lm", {"cfg": cfg, "tokenizer": None},
                          lm_stage, job_run),
        ])
        pretrained = {"encoder": enc, "lm": lm}
    elif not tokenizer:
        raise ValueError("model.lm_pretrained is empty and train.unimodal.enabled is false: nothing says which "
                         "tokenizer to use; name a GPT-2 (hub id or folder) or enable stage 1")

    def variant_stages(variant: str):
        vcfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"variant": variant})})
        with tracking.run(variant, parent=job_run, tags={"variant": variant}) as vrun:
            if not tc.init_from:  # an init_from encoder's weights are in the folder: its stages embed the clips
                ensure_embeddings(cfg, variant, pretrained, tokenizer, f"{name}-{variant}", say)
            init = tc.init_from
            for s in tc.stages:
                extra = {"cfg": vcfg, "stage": s.name, "init": init, "tokenizer": tokenizer, "pretrained": pretrained}
                init = stage(make_recipe, s.name, f"{name}-{variant}-{s.name}", extra, s, vrun.info.run_id)
        return init

    return dict(zip(tc.variants, at_once([lambda v=v: variant_stages(v) for v in tc.variants])))
