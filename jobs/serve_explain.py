"""The explain page: upload (or pick) two audios, choose a checkpoint and a prompt, read the explanation beside
ADIFF §6's hallucination view.

    python jobs/serve_explain.py work/runs/adiff-demo-adiff-finetune/epoch_0001/model
    python jobs/serve_explain.py models:/adiff-demo-adiff/1
    python jobs/serve_explain.py /ckpt/adiff/model /ckpt/qwen-lora serve.port=8080 serve.examples=/data/clips \\
        serve.max_upload_mb=10 serve.max_seconds=20 evaluate.decoding.strategy=beam

Each CHECKPOINT is an ADIFF model folder (adiff.json) or a finetuned Qwen2-Audio folder (audiopair_qwen.json),
or such a model in MLflow (``models:/name/version``, ``models:/name@alias``, ``runs:/<run id>/model``, downloaded
once into ``<work_dir>/models/mlflow`` as jobs/evaluate.py does). It is named in the page by its folder (the
training run's name for ``.../epoch_N/model``) or its URI. Decoding follows
``evaluate.decoding``; models saved without a front end take ``dataset.features``. The server binds
``serve.host`` (127.0.0.1 unless told otherwise).
"""

import sys
from pathlib import Path

from audiopair import job


def checkpoint_name(path: Path) -> str:
    parts = path.resolve().parts
    if parts[-1] == "model" and len(parts) >= 3 and parts[-2].startswith("epoch_"):
        return parts[-3]
    return parts[-1] if parts[-1] != "model" else parts[-2]


def split_argv(argv: list[str] | None) -> tuple[dict[str, Path | str], list[str]]:
    """Existing folders and MLflow model URIs are checkpoints; everything else goes to the config (``--config``,
    overrides)."""
    from audiopair.tracking import is_model_uri

    argv = list(sys.argv[1:] if argv is None else argv)
    ckpts, rest = {}, []
    for i, a in enumerate(argv):
        if is_model_uri(a):
            ckpts[a] = a
        elif "=" not in a and not a.startswith("-") and (i == 0 or argv[i - 1] != "--config") and Path(a).is_dir():
            name = checkpoint_name(Path(a))
            ckpts[name if name not in ckpts else f"{name}-{len(ckpts)}"] = Path(a)
        else:
            rest.append(a)
    return ckpts, rest


_checkpoints: dict[str, Path | str] = {}


@job.entry(__doc__)
def main(run: job.Job) -> int:
    import uvicorn

    from audiopair import tracking
    from audiopair.serve.explain_app import create_explain_app

    if not _checkpoints:
        raise job.JobError("name one or more checkpoint folders: python jobs/serve_explain.py MODEL_DIR ...", code=2)
    if any(isinstance(p, str) for p in _checkpoints.values()):
        run.start_mlflow()  # models:/ and runs:/ URIs resolve through it
    for name, ref in list(_checkpoints.items()):
        if isinstance(ref, str):
            try:
                _checkpoints[name] = tracking.resolve_model(ref, Path(run.cfg.work_dir) / "models" / "mlflow")
            except ValueError as e:
                raise job.JobError(str(e), code=2) from None
    for name, path in _checkpoints.items():
        if not any((path / f).is_file() for f in ("adiff.json", "audiopair_qwen.json")):
            raise job.JobError(f"{path} is neither an ADIFF model folder (adiff.json) nor a finetuned Qwen2-Audio "
                               "folder (audiopair_qwen.json)", code=2)
    s = run.cfg.serve
    app = create_explain_app(_checkpoints, run.cfg)
    run.say(f"explain page on http://{s.host}:{s.port}/ with {', '.join(_checkpoints)}")
    uvicorn.run(app, host=s.host, port=s.port, log_level="warning")
    return 0


def cli(argv: list[str] | None = None) -> int:
    ckpts, rest = split_argv(argv)
    _checkpoints.clear()
    _checkpoints.update(ckpts)
    return main(rest)


if __name__ == "__main__":
    sys.exit(cli())
