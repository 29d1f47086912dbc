"""Typed configuration: one home for every default (the sections in ``data``, ``model``, ``train``, ``evaluate``).

A job's config is a YAML file (``jobs/configs/demo.yaml`` by default) plus dotted overrides on the command line,
``dataset.num_workers=2``. Unknown or ill-typed keys fail with the dotted path of the key at fault and the keys or
values that are allowed there, before any work starts.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from audiopair.config.base import ConfigError, Section
# The sections live in one module per part of the pipeline; every name imports from here as well.
from audiopair.config.data import (DatasetConfig, DemoBankConfig, ExplanationConfig, FeatureConfig,
                                   MixConfig, SourceConfig, SourceKind, SplitConfig, TaskName, TasksConfig)
from audiopair.config.evaluate import (ClassifyConfig, DecodingConfig, EvalConfig, ScenarioConfig,
                                       ServeConfig, StudyConfig)
from audiopair.config.model import AdiffModelConfig, EncoderConfig
from audiopair.config.train import (AccBaseConfig, AccTableConfig, FinetuneConfig, LoraConfig,
                                    StageConfig, SweepConfig, TinyQwenConfig, TrainConfig, UnimodalConfig)


__all__ = [
    "AccBaseConfig",
    "AccTableConfig",
    "AdiffModelConfig",
    "ClassifyConfig",
    "Config",
    "ConfigError",
    "DEFAULT_CONFIG",
    "DatasetConfig",
    "DecodingConfig",
    "DemoBankConfig",
    "EncoderConfig",
    "EvalConfig",
    "ExplanationConfig",
    "FeatureConfig",
    "FinetuneConfig",
    "LoraConfig",
    "MixConfig",
    "ScenarioConfig",
    "Section",
    "ServeConfig",
    "SourceConfig",
    "SourceKind",
    "SplitConfig",
    "StageConfig",
    "StudyConfig",
    "SweepConfig",
    "TaskName",
    "TasksConfig",
    "TinyQwenConfig",
    "TrainConfig",
    "UnimodalConfig",
    "config_from_argv",
    "dump_config",
    "flatten",
    "load_config",
    "parse_override",
]


# --------------------------------------------------------------------------------------------- root
class Config(Section):
    """Root of every job's config: the dataset build, the model, its training and its evaluation."""

    work_dir: str = "work"  # MLflow's local store (mlflow.db, mlartifacts) and reports go here
    experiment: str = "audiopair"  # the MLflow experiment
    dataset: DatasetConfig = DatasetConfig()
    model: AdiffModelConfig = AdiffModelConfig()
    train: TrainConfig = TrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvalConfig = EvalConfig()
    sweep: SweepConfig = SweepConfig()
    acc_table: AccTableConfig = AccTableConfig()
    study: StudyConfig = StudyConfig()
    serve: ServeConfig = ServeConfig()

    def for_workers(self) -> "Config":
        """This config with its folders made absolute: ``work_dir``, ``dataset.output_dir``, a local
        ``train.storage_path`` (a URI stays as it is) and ``finetune.model`` when it is a local folder. Ray Train
        workers and Tune trials run in working directories of their own. Recipe factories receive it as
        ``config["cfg"]``; the sweep plans with it."""
        dataset_dir = str(Path(self.dataset.output_dir).resolve())
        storage = self.train.storage_path
        update = {"work_dir": str(Path(self.work_dir).resolve()),
                  "dataset": self.dataset.model_copy(update={"output_dir": dataset_dir}),
                  "train": self.train.model_copy(update={
                      "storage_path": storage if "://" in storage else str(Path(storage).resolve())})}
        if Path(self.finetune.model).exists():
            update["finetune"] = self.finetune.model_copy(update={"model": str(Path(self.finetune.model).resolve())})
        return self.model_copy(update=update)


# --------------------------------------------------------------------------------------------- loading
def _allowed_here(model: type[BaseModel], loc: tuple) -> str:
    """Describe what is allowed at ``loc`` (the field names of the section, or a Literal's values)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return "allowed keys: " + ", ".join(sorted(current.model_fields))
            current = field.annotation
            # unwrap Optional / list[...] to reach a section or a Literal
            for _ in range(3):
                args = [a for a in typing.get_args(current) if a is not type(None)]
                if typing.get_origin(current) in (list, tuple, typing.Union) and args:
                    current = args[0]
                elif str(typing.get_origin(current)).endswith("UnionType") and args:
                    current = args[0]
        else:
            break
    if typing.get_origin(current) is Literal:
        return "allowed values: " + ", ".join(repr(v) for v in typing.get_args(current))
    if isinstance(current, type) and issubclass(current, BaseModel):
        return "allowed keys: " + ", ".join(sorted(current.model_fields))
    return ""


def _format_validation_error(err: ValidationError, model: type[BaseModel], origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = loc[:-1]
            msg = f"unknown key; {_allowed_here(model, parent + ('__none__',)) or _allowed_here(model, parent)}"
        else:
            hint = _allowed_here(model, loc)
            if hint.startswith("allowed values"):
                msg = f"{msg}; {hint}"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {path}: {msg}{got_s}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML, so ``2``, ``true``, ``[1, 2]`` are typed)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_dotted(tree: dict, path: list[str], value: Any, model: type[BaseModel]) -> None:
    node = tree
    section: Any = model
    for i, part in enumerate(path[:-1]):
        if part.isdigit() and isinstance(node, list):
            node = node[int(part)]
            continue
        if isinstance(section, type) and issubclass(section, BaseModel) and part not in section.model_fields:
            where = ".".join(path[: i + 1])
            raise ConfigError(
                f"unknown config key {where!r}; allowed keys: {', '.join(sorted(section.model_fields))}"
            )
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        node = child
        if isinstance(section, type) and issubclass(section, BaseModel):
            section = section.model_fields[part].annotation
    last = path[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _section(model: Any, key: str) -> type[BaseModel] | None:
    """The config section (a model class) that field ``key`` of ``model`` holds, or None for a plain value or a
    free-form mapping such as ``task_weights``."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or key not in model.model_fields:
        return None
    ann = model.model_fields[key].annotation
    for a in (ann, *typing.get_args(ann)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _merge(base: dict, extra: dict, model: Any = None) -> dict:
    """``extra`` laid over ``base``: sections merge key by key; values, lists and free-form mappings (task weights,
    checkpoints) are replaced whole, so a file that names ``{adc: 1}`` does not inherit the default's other tasks."""
    out = dict(base)
    for k, v in extra.items():
        sub = _section(model, k)
        out[k] = _merge(out[k], v, sub) if sub and isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(p: Path, model: Any, seen: tuple = ()) -> dict:
    """One config file as a mapping, with its ``extends`` chain merged underneath."""
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist" + (f" (extended by {seen[-1]})" if seen else ""))
    if p.resolve() in seen:
        raise ConfigError(f"config file {p} extends itself through {' -> '.join(map(str, seen))}")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top, got {type(loaded).__name__}")
    parent = loaded.pop("extends", None)
    if parent is None:
        return loaded
    if not isinstance(parent, str):
        raise ConfigError(f"config file {p}: extends must be a file name, got {parent!r}")
    return _merge(_read_yaml(p.parent / parent, model, seen + (p.resolve(),)), loaded, model)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    model: type[BaseModel] = Config,
) -> Any:
    """Read ``path`` (YAML; ``None`` means built-in defaults), apply dotted overrides, validate.

    A file may start from another: ``extends: base.yaml`` (relative to the file) loads that first and lays this
    file's keys over it, so one config per experiment row repeats only what differs."""
    origin = str(path) if path else "defaults"
    tree = _read_yaml(Path(path), model) if path else {}
    # Start from the model's defaults so dotted overrides can reach into lists (e.g. dataset.sources.0.csv).
    tree = _merge(model().model_dump(mode="json"), tree, model)
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_dotted(tree, keys, value, model)
    if overrides:
        origin = f"{origin} + overrides"
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, model, origin)) from None


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (logged to MLflow as ``config.yaml``)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` for MLflow params."""
    if isinstance(tree, BaseModel):
        tree = tree.model_dump(mode="json")
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = tree
    return out


DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "jobs" / "configs" / "demo.yaml"


def config_from_argv(argv: list[str] | None = None, description: str = "") -> Config:
    """The command line every job shares: ``[--config FILE] [key.sub=value ...]``; demo.yaml by default."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name} when present)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dataset.num_workers=2")
    args = parser.parse_args(argv)
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    try:
        return load_config(path, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
