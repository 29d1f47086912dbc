"""Tier explanations: template generator properties, the ADIFF yardstick, and the LLM generator's plumbing."""

import csv
import json
import re
import statistics
from pathlib import Path

import pytest

from audiopair.config import ExplanationConfig
from audiopair.data.manifest import read_manifest
from audiopair.tasks.explain import AudioInfo, PairInfo, explain, llm_prompt
from conftest import SHARED

F_LOUD_BRIGHT = {"loudness_dbfs": -12.0, "peak_dbfs": -2.0, "centroid_hz": 3500.0, "onset_rate": 4.0, "duration_s": 4.0}
F_QUIET_DARK = {"loudness_dbfs": -30.0, "peak_dbfs": -20.0, "centroid_hz": 400.0, "onset_rate": 0.2, "duration_s": 4.0}


def _words(t):
    return re.findall(r"[a-z0-9']+", t.lower())


def test_tiers_grow_and_state_measured_facts_correctly():
    p = PairInfo(AudioInfo("A siren wails on a busy street", F_LOUD_BRIGHT),
                 AudioInfo("Waves wash onto a shore", F_QUIET_DARK))
    t1, t2, t3 = (explain(p, t, "x") for t in (1, 2, 3))
    assert len(_words(t1)) < len(_words(t2)) < len(_words(t3))
    assert t2.count(".") == 1  # tier 2 is one sentence
    assert "louder by about 18 dB" in t1 and "brighter" in t1
    assert "-12 dBFS" in t3 and "3500 Hz" in t3 and "tense and urgent" in t3 and "calm and natural" in t3
    swapped = explain(PairInfo(p.second, p.first), 1, "x")
    assert "quieter by about 18 dB" in swapped and "darker" in swapped


def test_edit_pairs_name_the_changed_event():
    scene = "rain falls steadily"
    a = AudioInfo(scene, F_QUIET_DARK, scene=scene)
    ab = AudioInfo(f"{scene}, with a bell ringing", F_LOUD_BRIGHT, scene=scene, events=[("a bell ringing", 3.0)])
    ac = AudioInfo(f"{scene}, with a dog barking", F_LOUD_BRIGHT, scene=scene, events=[("a dog barking", 0.2)])
    assert "Audio 2 adds a bell ringing" in explain(PairInfo(a, ab), 1, "s")
    assert "Audio 1 also has a bell ringing" in explain(PairInfo(ab, a), 1, "s")
    rep = explain(PairInfo(ab, ac), 2, "s")
    assert "a bell ringing towards the end" in rep and "a dog barking near the start" in rep


def test_explanations_are_deterministic_and_varied():
    p = PairInfo(AudioInfo("A dog barks", F_LOUD_BRIGHT), AudioInfo("A cat meows", F_QUIET_DARK))
    assert explain(p, 3, "seed-1") == explain(p, 3, "seed-1")
    assert len({explain(p, 1, f"s{i}") for i in range(20)}) > 1


@pytest.mark.skipif(not (SHARED / "adiff-val").exists(), reason="shared ADIFF validation CSVs not present")
def test_demo_explanations_match_adiff_length_profile(tiny_dataset):
    """Yardstick: the released ACD answers' median word counts per tier vs ours on the demo (ADIFF Table 1)."""
    cfg, _ = tiny_dataset
    released, ours = {}, {}
    for tier, name in ((1, "fewwords"), (2, "sentence"), (3, "detail")):
        with open(SHARED / "adiff-val" / f"acd_val_adiff_{name}_answer.csv", encoding="utf-8") as f:
            released[tier] = statistics.median(len(_words(r["answer"])) for r in csv.DictReader(f))
    recs = list(read_manifest(Path(cfg.dataset.output_dir) / "manifests" / "adiff_train.jsonl"))
    for tier in (1, 2, 3):
        ours[tier] = statistics.median(len(_words(r.target)) for r in recs if r.tier == tier)
    for tier in (1, 2, 3):
        assert 0.5 * released[tier] <= ours[tier] <= 1.6 * released[tier], (tier, ours, released)


def test_llm_prompt_is_app_e_with_captions_and_tier():
    text = llm_prompt("A dog barks.", "A cat meows", 3, F_LOUD_BRIGHT, None)
    assert text.startswith("You are a helpful assistant with expert knowledge about audio")
    assert '"A dog barks"' in text and '"A cat meows"' in text and "in detail" in text and "-12 dBFS" in text


def _tiny_lm(folder: Path) -> Path:
    """A random 1-layer GPT-2 with a byte-level BPE trained here: the real loading path, no download."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = ["the first audio is louder than the second", "a dog barks while rain falls", "audio difference"] * 20
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            unk_token="<|endoftext|>")
    tok.save_pretrained(folder)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=32, n_layer=1, n_head=2)).save_pretrained(folder)
    return folder


def test_llm_generator_runs_as_ray_data_batch_inference(tiny_dataset, tmp_path):
    import torch

    from audiopair.corpus import make_source
    from audiopair.data.llm import LLMExplainer, generate_explanations
    from audiopair.data.plan import make_plan

    torch.manual_seed(0)
    model = _tiny_lm(tmp_path / "lm")
    cfg, _ = tiny_dataset
    dcfg = cfg.dataset.model_copy(update={"tasks": cfg.dataset.tasks.model_copy(update={
        "explanations": ExplanationConfig(generator="llm", llm_path=str(model), llm_max_new_tokens=8, llm_batch_size=4)})})
    plan = make_plan([(make_source(s, dcfg), s) for s in dcfg.sources], dcfg)
    out = Path(dcfg.output_dir)
    facts = {k: v["facts"] for f in (out / "shards").glob("*.json") for k, v in json.loads(f.read_text())["clips"].items()}
    items = {i.id: i for i in plan.items}
    pairs = plan.pairs[:3]
    written = generate_explanations(pairs, items, facts, dcfg, progress=lambda m: None)
    assert written and set(written) <= {(p.id, t) for p in pairs for t in (1, 2, 3)}
    # the same model in-process, greedy: identical texts
    direct = LLMExplainer(str(model), 8)
    p = pairs[0]
    prompt = llm_prompt(items[p.first].captions[0], items[p.second].captions[0], 2, facts[p.first], facts[p.second])
    got = direct({"pair": [p.id], "tier": [2], "prompt": [prompt]})["text"][0]
    assert written.get((p.id, 2), "") == got
