import pytest

from audiopair.config import Config, ConfigError, flatten, load_config, parse_override


def test_defaults_and_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("dataset:\n  num_workers: 3\n  mix:\n    snr_db: [-5, 5]\n")
    cfg = load_config(p)
    assert cfg.dataset.num_workers == 3
    assert cfg.dataset.mix.snr_db == (-5.0, 5.0)
    assert cfg.dataset.sample_rate == 32000  # untouched default (HTSAT rate)


def test_dotted_overrides_are_typed(tmp_path):
    cfg = load_config(None, ["dataset.num_workers=4", "dataset.tasks.enabled=[ac, acc]", "dataset.clip_seconds=null",
                             "dataset.sources.0.limit=7"])
    assert cfg.dataset.num_workers == 4
    assert cfg.dataset.tasks.enabled == ["ac", "acc"]
    assert cfg.dataset.clip_seconds is None
    assert cfg.dataset.sources[0].limit == 7


def test_unknown_key_names_path_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["dataset.num_wokers=2"])
    msg = str(e.value)
    assert "dataset.num_wokers" in msg and "num_workers" in msg and "allowed keys" in msg


def test_unknown_key_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("dataset:\n  mix:\n    snr: [1, 2]\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "dataset.mix.snr" in str(e.value) and "snr_db" in str(e.value)


def test_ill_typed_value_names_path_and_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["dataset.on_existing=maybe"])
    msg = str(e.value)
    assert "dataset.on_existing" in msg and "'resume'" in msg and "'refuse'" in msg and "'overwrite'" in msg
    with pytest.raises(ConfigError) as e:
        load_config(None, ["dataset.num_workers=many"])
    assert "dataset.num_workers" in str(e.value) and "integer" in str(e.value)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(None, ["dataset.splits.train=0.9"])
    with pytest.raises(ConfigError, match="llm_path"):
        load_config(None, ["dataset.tasks.explanations.generator=llm"])
    with pytest.raises(ConfigError, match="snr_db"):
        load_config(None, ["dataset.mix.snr_db=[10, 0]"])


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("dataset.num_workers")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_flatten_for_mlflow():
    flat = flatten(Config())
    assert flat["dataset.num_workers"] == 2
    assert flat["dataset.sources.0.kind"] == "demo"


def test_extends_layers_files_and_replaces_free_form_mappings(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {num_workers: 4, task_weights: {adiff: 1.0, position: 1.0}}\n"
                                        "finetune: {task_weights: {ac: 1.0, acc: 1.0}, lora: {r: 16}}\n")
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "adc.yaml").write_text("extends: ../base.yaml\nfinetune: {task_weights: {adc: 1.0}}\n")
    cfg = load_config(tmp_path / "rows" / "adc.yaml")
    assert cfg.train.num_workers == 4 and cfg.finetune.lora.r == 16  # sections merge key by key ...
    assert cfg.finetune.task_weights == {"adc": 1.0}  # ... a mapping of weights is replaced, not unioned
    assert cfg.finetune.lora.alpha == 32  # defaults under everything
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml does not exist \(extended by"):
        load_config(tmp_path / "orphan.yaml")


def test_every_shipped_config_loads():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").rglob("*.yaml"))
    assert len(files) >= 15
    rows = {}
    for f in files:
        cfg = load_config(f)
        if f.parent.name == "acc_table2":
            rows[f.stem] = (cfg.finetune.task_weights, cfg.finetune.run_name)
    # one config per row of ACC Table 2, for both datasets, each with its own run name
    assert rows["audiocaps_ac_acc"] == ({"ac": 1.0, "acc": 1.0}, "qwen2-audio-audiocaps-ac-acc")
    assert rows["clotho_adc"][0] == {"adc": 1.0} and len({r[1] for r in rows.values()}) == len(rows) == 10
