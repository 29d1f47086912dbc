"""Qwen2-Audio finetuning (ACC §3.2) on a tiny random model saved to disk and loaded through the real loading path:
batches and labels, LoRA targets, adapter checkpoints, resume, merge, generation, and training on 2 Ray workers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from audiopair.config import LoraConfig, TinyQwenConfig
from audiopair.models import qwen2_audio as q
from conftest import REPO, TINY

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["A dog barks twice and a car passes.", "Crickets chirp at night and a machine hums.",
         "Rain falls on a roof while thunder rumbles.", "What do the two audios have in common?"] * 20


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return q.make_tiny(tmp_path_factory.mktemp("qwen") / "tiny-qwen2-audio", TEXTS, TinyQwenConfig(enabled=True))


def _waves(*seconds, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]


ROWS = [{"id": "acc/1", "prompt": "What do the two audios have in common?", "target": "A dog barks twice."},
        {"id": "ac/2", "prompt": "Describe the audio.", "target": "Rain falls on a roof while thunder rumbles."}]
WAVES = [_waves(4.0, 3.0), _waves(2.0, seed=1)]


def test_tiny_base_loads_like_the_hub_model(base):
    model, processor = q.load_base(base)
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert model.config.audio_token_index == processor.audio_token_id == processor.tokenizer.convert_tokens_to_ids(
        "<|AUDIO|>")
    assert processor.feature_extractor.sampling_rate == 16000 and q.window_seconds(processor) == 10.0
    text = q.prompt_text(processor, "Compare them.", 2)
    assert "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nAudio 2: <|audio_bos|><|AUDIO|><|audio_eos|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_batch_labels_only_the_answer_and_audio_tokens_match_features(base):
    _, processor = q.load_base(base)
    b = q.encode_batch(processor, ROWS, WAVES, max_answer_tokens=64)
    tok = processor.tokenizer
    assert b["input_features"].shape == (3, 128, 1000)  # three audios, 10 s Whisper windows (the tiny's)
    frames = b["feature_attention_mask"].sum(-1).tolist()
    assert frames == [400, 300, 200]  # 10 ms hop: only the real audio counts
    tokens = q.audio_token_counts(b["feature_attention_mask"]).tolist()
    assert tokens == [100, 75, 50]
    audio = b["input_ids"] == processor.audio_token_id
    assert audio.sum(-1).tolist() == [175, 50]
    for i, row in enumerate(ROWS):
        labelled = b["labels"][i] != -100
        assert tok.decode(b["input_ids"][i][labelled]) == row["target"] + "<|im_end|>"
        assert not (labelled & audio[i]).any()
        # everything before the answer is prompt; padding is neither attended nor labelled
        first = int(labelled.nonzero()[0])
        assert tok.decode(b["input_ids"][i][:first]).endswith("<|im_start|>assistant\n")
        pad = b["attention_mask"][i] == 0
        assert not (pad & labelled).any() and int((~pad).sum()) == first + int(labelled.sum())
    cut = q.encode_batch(processor, ROWS[1:], WAVES[1:], max_answer_tokens=3)
    assert int((cut["labels"] != -100).sum()) == 3  # cut answers get no <|im_end|>


def test_bad_audio_token_counts_name_the_record(base):
    _, processor = q.load_base(base)
    sneaky = [{"id": "ac/bad", "prompt": "Describe <|AUDIO|> this.", "target": "x"}]
    with pytest.raises(ValueError, match="ac/bad"):
        q.encode_batch(processor, sneaky, [_waves(1.0)])
    b = q.encode_batch(processor, ROWS, WAVES)
    mask = b["feature_attention_mask"].clone()
    mask[0, 390:] = 0  # features that no longer match the expanded text
    with pytest.raises(ValueError, match=r"record acc/1: 175 audio tokens .* make 172"):
        q.check_audio_tokens(b["input_ids"], mask, [2, 1], processor.audio_token_id, ["acc/1", "ac/2"])


def test_long_audio_is_cropped_with_a_warning(base, caplog):
    _, processor = q.load_base(base)
    with caplog.at_level(logging.WARNING):
        w = q.fit_window(_waves(11.0)[0], processor, None, "ac/long (x.flac)")
    assert len(w) == 10 * 16000 and "ac/long (x.flac): 11.0 s of audio cropped to 10.0 s" in caplog.text
    assert len(q.fit_window(_waves(12.0)[0], processor, 5.0, "y")) == 5 * 16000
    b = q.encode_batch(processor, ROWS[1:], [[w]])
    assert q.audio_token_counts(b["feature_attention_mask"]).tolist() == [250]


def test_lora_trains_only_adapters_on_the_language_model(base):
    model, _ = q.load_base(base)
    lora = LoraConfig()
    pm = q.prepare_for_training(model, "lora", lora)
    trainable = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    t = model.config.text_config
    kv = t.hidden_size // t.num_attention_heads * t.num_key_value_heads
    shapes = {"q_proj": (t.hidden_size, t.hidden_size), "k_proj": (t.hidden_size, kv), "v_proj": (t.hidden_size, kv),
              "o_proj": (t.hidden_size, t.hidden_size), "gate_proj": (t.hidden_size, t.intermediate_size),
              "up_proj": (t.hidden_size, t.intermediate_size), "down_proj": (t.intermediate_size, t.hidden_size)}
    want = t.num_hidden_layers * sum(lora.r * (i + o) for i, o in shapes.values())
    assert sum(p.numel() for p in trainable.values()) == want
    lora_mod = next(m for n, m in pm.named_modules() if n.endswith("language_model.model.layers.0.self_attn.q_proj"))
    assert lora_mod.scaling["default"] == 32 / 8 and lora_mod.lora_dropout["default"].p == 0.05

    full, _ = q.load_base(base)
    q.prepare_for_training(full, "full", train_projector=True)
    for n, p in full.named_parameters():
        assert p.requires_grad == (not n.startswith("audio_tower.")), n


def test_adapter_checkpoint_resume_merge_and_generate(base, tmp_path):
    model, processor = q.load_base(base)
    pm = q.prepare_for_training(model, "lora", LoraConfig())
    batch = q.encode_batch(processor, ROWS, WAVES)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # move the adapter away from its zero init
        pm(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    pm.eval()
    with torch.no_grad():
        loss = float(pm(**batch).loss)
    q.save_finetuned(pm, tmp_path / "adapter", processor, base=str(base), method="lora")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", q.META} <= files and "model.safetensors" not in files
    size = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    assert size < (base / "model.safetensors").stat().st_size / 5  # the adapter only

    fresh = q.prepare_for_training(q.load_base(base)[0], "lora", LoraConfig())
    q.load_weights_into(fresh, tmp_path / "adapter", "lora")  # what a resumed run does
    fresh.eval()
    with torch.no_grad():
        assert float(fresh(**batch).loss) == pytest.approx(loss, abs=1e-6)

    loaded, proc2 = q.load_finetuned(tmp_path / "adapter")
    loaded.eval()
    merged_dir = q.merge_lora(tmp_path / "adapter", tmp_path / "merged")
    from transformers import Qwen2AudioForConditionalGeneration

    merged = Qwen2AudioForConditionalGeneration.from_pretrained(merged_dir).eval()  # no peft needed
    assert json.loads((merged_dir / q.META).read_text())["method"] == "full"
    with torch.no_grad():
        a, b = loaded(**batch).logits, merged(**batch).logits
    assert torch.allclose(a, b, atol=1e-4)
    texts = q.generate_texts(loaded, proc2, ROWS, WAVES, max_new_tokens=6, do_sample=False)
    assert len(texts) == 2 and texts == q.generate_texts(merged, proc2, ROWS, WAVES, max_new_tokens=6,
                                                         do_sample=False)
    assert texts[0] == q.generate_texts(merged, proc2, ROWS[:1], WAVES[:1], max_new_tokens=6, do_sample=False)[0]
    again, proc3 = q.load_finetuned(merged_dir)  # a merged folder loads like any finetuned one (no peft)
    assert type(again).__name__ == "Qwen2AudioForConditionalGeneration"
    assert q.generate_texts(again.eval(), proc3, ROWS, WAVES, max_new_tokens=6, do_sample=False) == texts

    # ACC Table 3: the adapter answers label questions about single clips (QwenClipGenerator), one file unreadable
    from audiopair.config import ClassifyConfig, DatasetConfig
    from audiopair.evaluate.classify import demo_label_csv
    from audiopair.evaluate.downstream import classify_checkpoint

    csv = demo_label_csv(tmp_path / "cls", per_kind=1)
    with open(csv, "a") as f:
        f.write("missing.wav,siren\n")
    c = classify_checkpoint(tmp_path / "adapter", DatasetConfig(sample_rate=16000), ClassifyConfig(name="ev", csv=str(csv)),
                            batch_size=8, figure=tmp_path / "confusion.png")
    assert c.report["n"] == len(c.rows) == 20 and len(c.skipped) == 1 and "missing.wav" in c.skipped[0]
    assert (tmp_path / "confusion.png").is_file() and all(isinstance(r["prediction"], str) for r in c.rows)


def test_an_adapter_loads_whole_while_another_thread_is_inside_from_pretrained(base, tmp_path, monkeypatch):
    """from_pretrained builds under accelerate's init_empty_weights, which patches nn.Module.register_parameter for
    the whole process: an adapter loaded in another thread meanwhile got LoRA weights on the meta device, and the
    ACC table's rows (scored in threads) failed in CI with "Cannot copy out of meta tensor". Here the first load is
    held inside that context until the second has finished, or 3 s: the lock makes the second wait its turn."""
    import threading
    from contextlib import contextmanager

    import transformers.modeling_utils as mu

    pm = q.prepare_for_training(q.load_base(base)[0], "lora", LoraConfig())
    q.save_finetuned(pm, tmp_path / "adapter", q.load_base(base)[1], base=str(base), method="lora")
    real, inside, second_done = mu.init_empty_weights, threading.Event(), threading.Event()

    @contextmanager
    def held_open(*args, **kwargs):
        with real(*args, **kwargs):
            if not inside.is_set():
                inside.set()
                second_done.wait(timeout=3)
            yield

    monkeypatch.setattr(mu, "init_empty_weights", held_open)
    loaded = {}

    def second():
        inside.wait(timeout=30)
        try:
            loaded["model"] = q.load_finetuned(tmp_path / "adapter")[0]
        finally:
            second_done.set()

    t = threading.Thread(target=second)
    t.start()
    first = q.load_base(base)[0]
    t.join(timeout=120)
    assert inside.is_set() and "model" in loaded
    for model in (first, loaded["model"]):
        meta = [n for n, p in model.named_parameters() if p.is_meta]
        assert not meta, f"weights with no data: {meta[:3]}"
    assert any("lora_B" in n for n, _ in loaded["model"].named_parameters())
    loaded["model"].to("cpu")  # what the generator does; raised on meta weights


def test_finetune_job_on_two_ray_workers_learns_logs_merges_and_scores(tiny_dataset, base, tmp_path):
    """jobs/finetune_qwen2_audio.py in process: LoRA on 2 Ray workers with DeepSpeed ZeRO-2, MLflow run with
    per-epoch metrics and the adapter, a merged model, AC/ACC scores; a re-run reuses the finished training. (A
    killed worker resuming is the engine's, tested in test_train.py; the recipe's weight reload is tested above.)"""
    import importlib.util
    import math

    import mlflow

    dcfg, _ = tiny_dataset
    spec = importlib.util.spec_from_file_location("finetune_job", REPO / "jobs" / "finetune_qwen2_audio.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    args = TINY + [f"dataset.output_dir={dcfg.dataset.output_dir}", f"train.storage_path={tmp_path / 'runs'}",
                   f"work_dir={tmp_path / 'work'}", f"finetune.model={base}", "train.num_workers=2",
                   "finetune.epochs=2", "finetune.lr=1e-2", "finetune.micro_batch=2", "finetune.grad_accum=2",
                   "finetune.task_weights={ac: 1.0, acc: 0.5}", "finetune.run_name=qwen-test", "finetune.merge=true",
                   "finetune.evaluate_tasks=[ac, acc]", "evaluate.limit=4", "evaluate.decoding.max_new_tokens=8",
                   "evaluate.classify=[]", "evaluate.metrics=[bleu_4, cider_d]"]
    assert job.main(args) == 0

    client = mlflow.tracking.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("audiopair-demo").experiment_id],
                             "attributes.run_name = 'qwen-test'")[0]
    loss = [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert len(loss) == 2 and loss[1] < loss[0] - 0.1  # it learns ...
    vocab = len(q.load_base(base)[1].tokenizer)
    assert run.data.metrics["final_val_loss"] < math.log(vocab) - 0.3  # ... below a uniform guess
    assert run.data.metrics["final_tokens_per_s"] > 0 and run.data.params["finetune.lora.r"] == "8"
    assert len(client.get_metric_history(run.info.run_id, "lr")) == 2
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "model")}  # the adapter is the model folder
    assert "model/adapter_model.safetensors" in adapter and "model/model.safetensors" not in adapter
    assert "merged/model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "merged")}
    version = client.get_model_version("qwen-test", "1")  # registered under finetune.run_name, with its scores
    assert version.run_id == run.info.run_id and "demo/ac/all/cider_d" in version.tags
    model_dir = Path(run.data.tags["checkpoint"])
    assert (model_dir / "adapter_model.safetensors").is_file()
    merged = Path(run.data.tags["merged_model"])
    assert json.loads((merged / q.META).read_text())["method"] == "full" and (merged / "model.safetensors").is_file()
    scored = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")[0]
    assert {"demo/ac/all/cider_d", "demo/acc/all/cider_d", "demo/ac/all/bleu_4"} <= set(scored.data.metrics)
    scores = json.loads((tmp_path / "work" / "reports" / "qwen-test" / "scores.json").read_text())
    assert "qwen-test" in json.dumps(scores)

    assert job.main(args) == 0  # the same run name again: training is finished, so it is reused, not repeated
    runs = client.search_runs([run.info.experiment_id], "attributes.run_name = 'qwen-test'")
    assert len(runs) == 2 and not client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert runs[0].data.tags["checkpoint"] == str(model_dir)
    assert client.get_model_version("qwen-test", "2").run_id == runs[0].info.run_id


def test_full_finetune_zero3_on_two_workers_saves_the_whole_gathered_model(tiny_dataset, base, tmp_path):
    """Full finetuning under ZeRO-3 (weights partitioned across the 2 workers from the moment they load): the saved
    checkpoint holds the whole model, gathered from the partitions, with the LM trained and the audio tower not."""
    from safetensors.torch import load_file

    from audiopair.config import load_config
    from audiopair.runtime import ensure_ray
    from audiopair.train.engine import fit
    from audiopair.train.qwen import finetune_stage, make_recipe

    dcfg, _ = tiny_dataset
    cfg = load_config(REPO / "jobs" / "configs" / "demo.yaml", TINY + [
        f"dataset.output_dir={dcfg.dataset.output_dir}", f"train.storage_path={tmp_path / 'runs'}",
        f"finetune.model={base}", "train.num_workers=2", "finetune.method=full", "finetune.epochs=1",
        "finetune.lr=3e-3", "finetune.micro_batch=2", "finetune.grad_accum=1", "finetune.task_weights={ac: 1.0}",
        "finetune.run_name=qwen-full"])
    ensure_ray()
    tc, stage = finetune_stage(cfg)
    assert tc.zero_stage == 3  # the default for full finetuning
    res = fit(make_recipe, tc, "finetune", "qwen-full", {"cfg": cfg.for_workers()}, stage)
    assert res.error is None and res.metrics["world"] == 2
    start = load_file(str(base / "model.safetensors"))
    after = load_file(str(Path(res.checkpoint.path) / "model" / "model.safetensors"))
    assert set(after) == set(start) and all(after[k].shape == start[k].shape for k in start)  # gathered, whole
    changed = [k for k in start if not torch.equal(start[k], after[k])]
    assert any(k.startswith("language_model.") for k in changed)
    assert not any(k.startswith("audio_tower.") for k in changed)  # frozen by default


def test_resuming_into_a_zero3_partitioned_model(base, tmp_path, monkeypatch):
    """A resumed full-finetune run loads its checkpoint into a model that ZeRO-3 already partitioned at load time
    (one process, a gloo group of one: the same DeepSpeed code path as on N GPUs)."""
    import deepspeed
    import torch.distributed as dist
    from transformers.integrations import HfDeepSpeedConfig

    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29577", "RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    saved, processor = q.load_base(base)
    with torch.no_grad():
        for p in saved.language_model.parameters():
            p.add_(0.01)  # "trained" weights that differ from the base
    q.save_finetuned(saved, tmp_path / "ckpt", processor, base=str(base), method="full")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        keep = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}})
        model, _ = q.load_base(base)
        assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters())  # partitioned at load
        q.load_weights_into(model, tmp_path / "ckpt", "full")
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            got = {k: v.clone() for k, v in model.state_dict().items()}
        del keep
    finally:
        dist.destroy_process_group()
    want = saved.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
