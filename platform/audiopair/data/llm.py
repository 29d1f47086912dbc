"""The LLM explanation generator: a local causal LM writes tier 1-3 explanations, as Ray Data batch inference.

Each (pair, tier) becomes a row holding the ADIFF App. E prompt (tasks/explain.py ``llm_prompt``); an actor pool
loads the model once per actor (on a GPU when ``llm_num_gpus`` > 0) and generates greedily in batches. An empty or
failed generation falls back to the template text, so a weak model never leaves a record without a target.
"""

from __future__ import annotations

from audiopair.config import DatasetConfig
from audiopair.tasks.edits import PairItem, RenderItem
from audiopair.tasks.explain import llm_prompt


class LLMExplainer:
    """Ray Data callable class: ``{"prompt": [...]} -> {"text": [...]}``."""

    def __init__(self, model_path: str, max_new_tokens: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_path)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "left"  # decoder-only batching: pad on the left so every row ends at its prompt
        self.tok.truncation_side = "left"  # an over-long prompt keeps its end: the captions and the tier request
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        context = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", 2048)
        self.max_prompt_tokens = context - max_new_tokens

    def __call__(self, batch: dict) -> dict:
        import torch

        enc = self.tok(list(batch["prompt"]), return_tensors="pt", padding=True, truncation=True,  # captions are
                       max_length=self.max_prompt_tokens, split_special_tokens=True).to(self.device)  # plain text
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        texts = [t.strip().split("\n\n")[0].strip() for t in self.tok.batch_decode(new, skip_special_tokens=True)]
        return {"pair": batch["pair"], "tier": batch["tier"], "text": texts}


def generate_explanations(pairs: list[PairItem], items: dict[str, RenderItem], facts: dict[str, dict],
                          cfg: DatasetConfig, progress) -> dict[tuple[str, int], str]:
    """LLM texts by (pair id, tier); empty texts are left out (the template generator fills them)."""
    import ray

    from audiopair.runtime import ensure_ray

    ecfg = cfg.tasks.explanations
    rows = [
        {"pair": p.id, "tier": t,
         "prompt": llm_prompt(items[p.first].captions[0], items[p.second].captions[0], t, facts[p.first], facts[p.second])}
        for p in pairs for t in cfg.tasks.tiers
    ]
    if not rows:
        return {}
    ensure_ray()
    progress(f"generating {len(rows)} explanations with {ecfg.llm_path}")
    ds = ray.data.from_items(rows).map_batches(
        LLMExplainer,
        fn_constructor_kwargs={"model_path": ecfg.llm_path, "max_new_tokens": ecfg.llm_max_new_tokens},
        batch_size=ecfg.llm_batch_size,
        compute=ray.data.ActorPoolStrategy(size=ecfg.llm_concurrency),
        num_gpus=ecfg.llm_num_gpus,
        num_cpus=0 if ecfg.llm_num_gpus else 1,
    )
    out = {(r["pair"], int(r["tier"])): r["text"] for r in ds.iter_rows() if r["text"].strip()}
    progress(f"LLM wrote {len(out)} of {len(rows)} explanations; templates fill the rest")
    return out
