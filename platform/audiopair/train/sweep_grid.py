"""The grid of ADIFF's LM scaling sweep (``train.sweep``): every LM of ``sweep.sizes`` x every value of each
``sweep.space`` key, each point a whole ``Config``, validated before anything runs; and the names derived from it
(stage-1 LM runs, table columns)."""

from __future__ import annotations

from pydantic import ValidationError

from audiopair.config import Config, ConfigError, _format_validation_error, _merge, _set_dotted
from audiopair.data.fingerprint import json_digest

# Keys a grid may not vary: the trials share one dataset, one stage-1 encoder, one storage and one MLflow experiment.
FIXED = ("dataset", "sweep", "work_dir", "experiment", "evaluate", "train.storage_path", "train.run_name",
         "model.encoder", "train.unimodal.encoder_")


def sizes(cfg: Config) -> dict[str, dict]:
    """LM name -> ``model.*`` overrides; without ``sweep.sizes`` the one LM of ``model.*``, named after it."""
    m = cfg.model
    return dict(cfg.sweep.sizes) or {m.lm_pretrained or f"lm-{m.lm_layers}x{m.lm_dim}": {}}


def grid(cfg: Config) -> list[dict]:
    """Every trial's point ``{"size": name, "space": {dotted key: value}}``, sizes outermost, in config order."""
    points = [{"size": s, "space": {}} for s in sizes(cfg)]
    for key, values in cfg.sweep.space.items():
        points = [{"size": p["size"], "space": {**p["space"], key: v}} for p in points for v in values]
    return points


def trial_config(cfg: Config, point: dict) -> Config:
    """The config one trial trains with: the size's model overrides, then the point's dotted keys."""
    tree = cfg.model_dump(mode="json")
    tree["model"] = _merge(tree["model"], sizes(cfg)[point["size"]])
    for key, value in point["space"].items():
        try:
            _set_dotted(tree, key.split("."), value, Config)
        except (IndexError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"sweep.space: key {key!r} does not name a config value ({type(e).__name__}: {e})")
    try:
        return Config.model_validate(tree)
    except ValidationError as e:  # rewritten to name the key and the allowed keys / values
        where = f"sweep point size={point['size']} " + " ".join(f"{k}={v}" for k, v in point["space"].items())
        raise ConfigError(_format_validation_error(e, Config, where)) from None


def check_grid(cfg: Config) -> list[Config]:
    """Every trial's config, or a ``ConfigError`` naming the ``sweep`` key at fault; nothing has run yet."""
    sw, model_keys = cfg.sweep, set(type(cfg.model).model_fields)
    for name, overrides in sw.sizes.items():
        for key in overrides:
            if key not in model_keys:
                raise ConfigError(f"sweep.sizes.{name}.{key}: unknown model key; allowed keys: "
                                  + ", ".join(sorted(model_keys)))
            if key == "lm_pretrained" and cfg.train.unimodal.enabled:
                raise ConfigError(f"sweep.sizes.{name}.lm_pretrained: stage 1 (train.unimodal.enabled) trains each "
                                  "size's LM itself; set lm_layers / lm_dim / lm_heads, or disable stage 1")
    for key, values in sw.space.items():
        if any(key == f or key.startswith(f if f.endswith("_") else f + ".") for f in FIXED):
            raise ConfigError(f"sweep.space.{key}: the trials share it (dataset, storage, stage-1 encoder, "
                              "evaluation), so a sweep cannot vary it")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.space.{key}: give a non-empty list of values")
    configs = [trial_config(cfg, p) for p in grid(cfg)]
    for c in configs:
        names = [s.name for s in c.train.stages]
        for s in sw.stages:
            if s not in names:
                raise ConfigError(f"sweep.stages: {s!r} is not in train.stages ({', '.join(names)})")
        if not c.train.unimodal.enabled and not c.model.lm_pretrained:
            raise ConfigError("sweep: a trial's model.lm_pretrained is empty and train.unimodal.enabled is false; "
                              "name a GPT-2 per size (sweep.sizes.<name>.lm_pretrained) or enable stage 1")
    return configs


def trial_epochs(cfg: Config) -> int:
    """Epochs one trial trains over its stages (ASHA's time axis)."""
    return sum(cfg.train.stage(s).epochs for s in cfg.sweep.stages)


def column_name(key: str, keys) -> str:
    """A space key's column name: its last part, unless two keys share it."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def lm_run(cfg: Config, size: str) -> str:
    """The stage-1 LM's Ray Train run for a trial: named by size and by everything in the config but the trial's own
    stages (the LM recipe reads the model sizes, prefix length, tokenizer and stage-1 settings), so trials that
    differ only in their stages (epochs, learning rate) share one LM."""
    tree = cfg.model_dump(mode="json")
    tree["train"].pop("stages")
    for k in ("sweep", "evaluate"):
        tree.pop(k)
    return f"{cfg.train.run_name}-unimodal-lm-{size}-{json_digest(tree, 8, 'sha1')}"  # sha1 / 8: as names always were
