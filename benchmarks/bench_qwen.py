"""Qwen2-Audio finetuning steps: LoRA (ZeRO-2) vs full finetuning (ZeRO-3), tokens/s and peak memory, side by side.

A random-initialised Qwen2-Audio with the real 7B shapes (Whisper-large audio tower, Qwen-7B language model:
hidden 4096, 32 layers, vocabulary 156032) or, with ``--text-layers`` / ``--audio-layers``, fewer layers of the same
width so it fits. Each variant runs a few optimizer steps on the same batch (two 10 s audios, a 60-token answer) in
one process through a DeepSpeed engine built from the same config the training loop uses (``deepspeed_config``):
bf16 on GPU, fp32 on CPU. Prints tokens/s (median) and peak memory (GPU: ``max_memory_allocated``; CPU: the
process's peak RSS after each variant, which only grows).

    python benchmarks/bench_qwen.py                                   # CPU: 2 layers of each, LM width 1024
    python benchmarks/bench_qwen.py --text-layers 32 --audio-layers 32   # GPU: the real 7B shapes
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np
import torch


def build(text_layers: int, audio_layers: int, hidden: int, dtype):
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    cfg = Qwen2AudioConfig(
        audio_config={"d_model": 1280, "encoder_layers": audio_layers, "encoder_attention_heads": 20,
                      "encoder_ffn_dim": 5120, "num_mel_bins": 128, "max_source_positions": 1500},
        text_config={"model_type": "qwen2", "vocab_size": 156032, "hidden_size": hidden,
                     "intermediate_size": 11008 * hidden // 4096, "num_hidden_layers": text_layers,
                     "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 8192},
        audio_token_index=151646, tie_word_embeddings=False)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        return Qwen2AudioForConditionalGeneration(cfg).to(dtype)


def batch(device) -> dict:
    """Two 10 s audios (250 audio tokens each) + 40 prompt tokens + a 60-token answer, as the processor lays it out."""
    frames = torch.zeros(2, 3000, dtype=torch.long)
    frames[:, :1000] = 1
    prompt = [1] * 20 + [151646] * 250 + [1] * 10 + [151646] * 250 + [1] * 20
    ids = torch.tensor([prompt + list(range(1000, 1060))])
    labels = torch.full_like(ids, -100)
    labels[0, -60:] = ids[0, -60:]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
            "input_features": torch.randn(2, 128, 3000).to(device), "feature_attention_mask": frames.to(device)}


def run(method: str, args, device) -> dict:
    import deepspeed

    from audiopair.config import LoraConfig, TrainConfig
    from audiopair.models.qwen2_audio import prepare_for_training
    from audiopair.train.engine import deepspeed_config

    on_gpu = device.type == "cuda"
    zero = 2 if method == "lora" else 3
    tc = TrainConfig(micro_batch=1, grad_accum=1, zero_stage=zero)
    ds_cfg = deepspeed_config(tc, on_gpu)
    keep = None
    if zero == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(ds_cfg)  # noqa: F841 - partition while building, as training does
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    model = build(args.text_layers, args.audio_layers, args.hidden, torch.bfloat16 if on_gpu else torch.float32)
    model = prepare_for_training(model, method, LoraConfig(), gradient_checkpointing=on_gpu)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in params)  # ZeRO-3 leaves each rank a slice
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_cfg, dist_init_required=False)
    b = batch(device)
    tokens = int(b["attention_mask"].sum())
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = engine(**b).loss
        engine.backward(loss)
        engine.step()
        if on_gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    del engine, model, opt, keep
    return {"method": method, "zero": zero, "trainable_M": trainable / 1e6,
            "tokens_per_s": tokens / statistics.median(times[1:] or times), "peak_GiB": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--audio-layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=None, help="LM width (default: 4096 on GPU, 1024 on CPU)")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29581", "RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(k, v)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    args.hidden = args.hidden or (4096 if device.type == "cuda" else 1024)  # 4096 wide on CPU: ~20 GB for full
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    np.random.seed(0)
    torch.manual_seed(0)
    rows = [run(m, args, device) for m in ("lora", "full")]
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"Qwen2-Audio, {args.text_layers} text / {args.audio_layers} audio layers, hidden {args.hidden}; {where}")
    print("| variant | ZeRO | trainable (M) | tokens/s (median) | peak memory (GiB) |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['zero']} | {r['trainable_M']:.1f} | {r['tokens_per_s']:.1f} | {r['peak_GiB']:.1f} |")
    print(f"LoRA / full tokens/s: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
