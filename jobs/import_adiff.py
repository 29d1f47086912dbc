"""Import a released ADIFF checkpoint (soham97/ADIFF: adiff_base.pth, adiff_base_wavcaps.ckpt) as an audiopair model
folder, and log that folder to MLflow.

    python jobs/import_adiff.py CHECKPOINT OUT_DIR [--reference-config base.yaml] [--config FILE] [key=value ...]

The checkpoint loads with torch.load(weights_only=True) and never runs pickled code. Every key is mapped into
audiopair's ADIFF (the reference network, module for module); an unmapped or missing key refuses the import, named.
Sizes come from the tensor shapes; what shapes cannot tell comes from --reference-config, a YAML in the reference's
own config/base.yaml format (default: the released values, text_decoder gpt2). OUT_DIR then works wherever a trained
model does: jobs/evaluate.py evaluate.checkpoints='{adiff_base: OUT_DIR}', train.init_from=OUT_DIR,
audiopair.explain.load(OUT_DIR). --config / overrides choose the MLflow store and experiment (work_dir, experiment).
"""

import argparse
import sys

from audiopair import job, tracking
from audiopair.config import ConfigError, DEFAULT_CONFIG, load_config
from audiopair.models.htsat import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the released .pth / .ckpt")
    parser.add_argument("out_dir", help="the audiopair model folder to write")
    parser.add_argument("--reference-config", default=None, help="the reference's base.yaml the checkpoint was "
                        "trained with (default: the released values)")
    parser.add_argument("--class-labels", default=None, help="AudioSet's class_labels_indices.csv: names for the "
                        "event head's 527 classes (hallucination view); without it they are numbered")
    parser.add_argument("--config", default=None, help=f"audiopair YAML config (default: {DEFAULT_CONFIG.name})")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. experiment=adiff-import")
    args = parser.parse_intermixed_args(argv)
    try:
        run = job.Job(load_config(args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None),
                                  args.overrides))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from audiopair.models.reference import import_adiff

    try:
        folder = import_adiff(args.checkpoint, args.out_dir, args.reference_config, args.class_labels, say=run.say)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import mlflow

    run.start_mlflow()
    with tracking.run("import-adiff", tags={"job": "import_adiff", "source": str(args.checkpoint)}) as r:
        mlflow.log_artifacts(str(folder), "model")
        mlflow.set_tag("checkpoint", str(folder.resolve()))
    run.say(f"done: {folder} (MLflow run {r.info.run_id}, artifacts under model/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
