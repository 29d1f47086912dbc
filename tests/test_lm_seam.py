"""ADIFF on any Hugging Face causal LM (``audiopair.models.lm``): tiny random Llama- and Qwen2-style LMs build, save
and load, learn in every training stage (stage 1, grounding, finetuning) and generate as GPT-2 does; the whole job
runs on a Llama LM."""

from __future__ import annotations

import mlflow
import pytest
import torch

from audiopair.config import DecodingConfig, load_config
from audiopair.data.features import FeatureStore
from audiopair.evaluate.generate import generate
from audiopair.models.adiff import build_model, load_checkpoint, save_checkpoint, set_stage
from audiopair.models.lm import lm_config
from audiopair.models.tokenizer import encode_answers, load_tokenizer, model_prompts, train_tokenizer
from audiopair.data.manifest import load_examples
from audiopair.train.engine import local_dir
from audiopair.train.pretrain import make_lm_recipe, train_corpus
from conftest import REPO, TINY
from test_train import TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _cfg(tmp_path, lm_type: str, *extra):
    return load_config(REPO / "jobs" / "configs" / "demo.yaml", TINY + TINY_MODEL + [
        f"model.lm_type={lm_type}", "model.lm_kv_heads=2", f"work_dir={tmp_path / 'work'}",
        f"train.storage_path={tmp_path / 'runs'}", *extra])


@pytest.mark.parametrize("lm_type", FAMILIES)
def test_a_llama_or_qwen2_lm_builds_saves_loads_and_generates(tiny_dataset, tmp_path, lm_type):
    dcfg, _ = tiny_dataset
    cfg = _cfg(tmp_path, lm_type)
    tok = train_tokenizer(train_corpus(dcfg.dataset.output_dir), 400, tmp_path / "tok")
    torch.manual_seed(0)
    model = build_model(cfg.model, tok)
    lm = model.lm
    assert type(lm).__name__ == FAMILIES[lm_type]
    assert (lm.config.hidden_size, lm.config.num_hidden_layers, lm.config.num_key_value_heads) == (64, 2, 2)
    assert lm.config.intermediate_size == 256 and lm.config.eos_token_id == tok.eos_token_id

    a1, a2 = torch.randn(2, 64, 201), torch.randn(2, 64, 201)
    p_ids, p_mask = model_prompts(tok, model, ["what is different?", "caption the first audio"])
    answer = torch.tensor([[5, 6, 7, tok.eos_token_id], [8, 9, tok.eos_token_id, tok.eos_token_id]])
    out = model(a1, a2, p_ids, p_mask, answer, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    assert out.prefix.shape == (2, 2 * 8 + 16 + 1, 64) and out.logits.shape == (2, 4, len(tok))
    out.loss.backward()  # grounding: the mappers learn through the frozen LM
    assert model.text_mapper.prefix_const.grad.abs().sum() > 0 and lm.get_input_embeddings().weight.grad is None

    model.eval()
    save_checkpoint(model, tmp_path / "m", tokenizer=tok)
    again = load_checkpoint(tmp_path / "m").eval()
    assert type(again.lm).__name__ == FAMILIES[lm_type]
    with torch.no_grad():
        torch.testing.assert_close(again(a1, a2, p_ids, p_mask, answer).logits,
                                   model(a1, a2, p_ids, p_mask, answer).logits)
    new = again.generate(a1, a2, p_ids, p_mask, max_new_tokens=6)
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 6
    # the reference's loop (no KV cache) and HF generate agree on the greedy tokens
    ref = again.generate(a1, a2, p_ids, p_mask, max_new_tokens=new.shape[1], stop_id=tok.eos_token_id)
    assert torch.equal(ref[:, : new.shape[1]], new)


def test_lm_type_must_be_a_transformers_model_type(tmp_path):
    cfg = _cfg(tmp_path, "not-an-lm")
    with pytest.raises(ValueError, match="model.lm_type='not-an-lm'.*llama"):
        lm_config(cfg.model, 100, 0)
    with pytest.raises(Exception, match="lm_kv_heads"):
        _cfg(tmp_path, "llama", "model.lm_kv_heads=3")


def _steps(model, batch: dict, n: int, lr: float) -> list[float]:
    """Losses of ``n`` AdamW steps on one batch (what the loop does, without Ray)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(n):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("lm_type", FAMILIES)
def test_each_stage_learns_on_a_llama_or_qwen2_lm(tiny_dataset, tmp_path, lm_type):
    """Stage 1's LM recipe, then ADIFF grounding and finetuning on it (loaded back through ``from_pretrained``, as a
    hub LM is), each a few optimiser steps in this process; then generation."""
    dcfg, _ = tiny_dataset
    cfg = _cfg(tmp_path, lm_type, f"dataset.output_dir={dcfg.dataset.output_dir}", "train.unimodal.vocab_size=400",
               "train.unimodal.lm_max_tokens=24", "model.lm_positions=320")
    torch.manual_seed(0)
    recipe = make_lm_recipe({"cfg": cfg, "tokenizer": None})
    lm = recipe.build_model()
    assert type(lm).__name__ == FAMILIES[lm_type]
    losses = _steps(lm, recipe.collate(recipe.train_examples()[:8]), 8, 3e-3)
    assert losses[-1] < losses[0]  # stage 1: the LM learns the text
    recipe.save_model(lm, tmp_path / "lm")

    tok = load_tokenizer(tmp_path / "lm")
    model = build_model(cfg.model.model_copy(update={"lm_pretrained": str(tmp_path / "lm")}), tok)
    torch.testing.assert_close(model.lm.get_input_embeddings().weight, lm.get_input_embeddings().weight)
    ex = load_examples(dcfg.dataset.output_dir, "train", {"adiff": 1.0}, 0)[:4]
    store = FeatureStore(dcfg.dataset.output_dir)
    p_ids, p_mask = model_prompts(tok, model, [e["prompt"] for e in ex])
    a_ids, a_mask = encode_answers(tok, [e["target"] for e in ex], 32)
    batch = {"audio1": torch.stack([torch.from_numpy(store[e["clips"][0]]) for e in ex]),
             "audio2": torch.stack([torch.from_numpy(store[e["clips"][1]]) for e in ex]),
             "prompt_ids": p_ids, "prompt_mask": p_mask, "answer_ids": a_ids, "answer_mask": a_mask}
    for stage in ("grounding", "finetune"):
        set_stage(model, stage)
        before = model.lm.get_input_embeddings().weight.detach().clone()
        losses = _steps(model, batch, 6, 2e-3)
        assert losses[-1] < losses[0], stage
        changed = not torch.equal(before, model.lm.get_input_embeddings().weight)
        assert changed == (stage == "finetune")  # the LM is frozen in grounding, trained in finetuning
    model.eval()
    new = model.generate(batch["audio1"], batch["audio2"], p_ids, p_mask, max_new_tokens=8)
    assert new.shape[0] == 4 and all(tok.decode(t, skip_special_tokens=True).strip() for t in new)


def test_the_whole_job_trains_an_adiff_on_a_llama_lm_and_it_explains(tiny_dataset, tmp_path):
    """jobs/train_adiff.py's schedule on Ray Train (stage 1's encoder and LM, grounding, finetuning) with the LM
    swapped by one config key, then generation from the final model. (Qwen2 goes through every stage in process
    above; the job's wiring does not depend on the family.)"""
    from audiopair.train.adiff import train_adiff

    lm_type = "llama"
    dcfg, _ = tiny_dataset
    cfg = _cfg(tmp_path, lm_type, f"dataset.output_dir={dcfg.dataset.output_dir}", "train.variants=[adiff]",
               "train.num_workers=1", "train.parallel=2", "train.micro_batch=16", "train.max_answer_tokens=48",
               "train.register_models=false", "train.system_metrics=false", "train.model_artifacts=reference",
               "train.unimodal.encoder_epochs=1", "train.unimodal.encoder_extra_mixes=0",
               "train.stages=[{name: grounding, epochs: 1, lr: 0.002}, {name: finetune, epochs: 2, lr: 0.001}]")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("lm-seam")
    with mlflow.start_run():
        final = train_adiff(cfg, say=lambda m: None)["adiff"]

    client = mlflow.MlflowClient()
    runs = {r.info.run_name: r for r in client.search_runs([mlflow.get_experiment_by_name("lm-seam").experiment_id])}
    assert {"unimodal-encoder", "unimodal-lm", "adiff-grounding", "adiff-finetune"} <= set(runs)
    curve = [m.value for m in client.get_metric_history(runs["adiff-finetune"].info.run_id, "train_loss")]
    assert len(curve) == 2 and curve[1] < curve[0]  # finetuning, the LM included, learns

    model = load_checkpoint(local_dir(final) / "model")
    assert type(model.lm).__name__ == FAMILIES[lm_type] and model.stage == 3
    lm_folder = local_dir(runs["unimodal-lm"].data.tags["checkpoint"]) / "model"
    assert '"model_type": "%s"' % lm_type in (lm_folder / "config.json").read_text()  # stage 1 trained this family
    ex = load_examples(dcfg.dataset.output_dir, "test", {"adiff": 1.0}, 0)[:4]
    preds = generate(local_dir(final) / "model", dcfg.dataset.output_dir, ex, DecodingConfig(max_new_tokens=12))
    assert [p["error"] for p in preds] == [""] * 4 and all(p["prediction"] for p in preds)
