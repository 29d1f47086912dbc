"""Frozen-encoder embeddings, computed once per encoder and cached beside the dataset's log-mels (DESIGN.md, data
flow step 4), so no training stage, variant or worker runs the frozen encoder over the clips again.

The cache is ``<dataset>/features/embeddings-<fingerprint>/``: the fingerprint hashes the encoder backbone's weights
and its time fit, so a cache can never be read by another encoder (the demo's stage-1 encoder, a hub HTSAT and
``language_only``'s random one each get their own). ``cache_embeddings`` fills it on the driver or through a Ray
Data actor pool (one encoder per actor, GPU actors at real scale); ``AudioBank`` (train/adiff.py) reads it when
its own encoder's fingerprint matches and otherwise computes what it needs itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from audiopair.atomic import atomic_write_text
from audiopair.config import EncoderConfig
from audiopair.data.features import FeatureStore, front_end_of, write_shard
from audiopair.progress import Progress

log = logging.getLogger(__name__)

DONE = "done.json"


def fingerprint(encoder, front_end: dict | None = None) -> str:
    """16 hex digits over the backbone's weights (names, shapes, values), the time fit and the dataset's log-mel
    settings (``audiopair.data.features.front_end_of``): what the pooled embedding depends on. The event head is
    left out: a hub HTSAT gets a freshly initialised one each time it loads."""
    h = hashlib.sha1(f"frames={encoder.frames}".encode())
    if front_end:
        h.update(json.dumps(front_end, sort_keys=True).encode())
    for name, t in sorted(encoder.backbone.state_dict().items()):
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_kind(key: str) -> str:
    return f"embeddings-{key}"


def cached(dataset_dir: str | Path, key: str) -> FeatureStore | None:
    """The finished cache for fingerprint ``key``, or None."""
    if not (Path(dataset_dir) / "features" / cache_kind(key) / DONE).is_file():
        return None
    return FeatureStore(dataset_dir, cache_kind(key))


@torch.no_grad()
def embed(encoder, mels: list[np.ndarray]) -> np.ndarray:
    """``(len(mels), d)`` pooled embeddings of same-shaped log-mels."""
    device = next(encoder.parameters()).device
    return encoder(torch.from_numpy(np.stack(mels)).to(device)).embedding.float().cpu().numpy()


class EmbedActor:
    """Ray Data actor: one encoder; maps a batch of clip ids to their embeddings (shape + float16 bytes)."""

    def __init__(self, enc_cfg: dict, dataset_dir: str):
        from audiopair.models.encoder import AudioEncoder

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoder = AudioEncoder.from_config(EncoderConfig.model_validate(enc_cfg)).to(device).eval()
        self.store = FeatureStore(dataset_dir)

    def __call__(self, batch: dict) -> dict:
        ids = [str(i) for i in batch["id"]]
        emb = embed(self.encoder, [self.store[i] for i in ids])
        return {"id": ids, "embedding": list(emb)}


def cache_embeddings(dataset_dir: str | Path, enc_cfg: EncoderConfig, num_actors: int = 0, num_gpus: float = 0,
                     batch_size: int = 64) -> str:
    """Embed every clip of the dataset with the encoder ``enc_cfg`` builds, once; returns the fingerprint.

    ``num_actors=0`` runs on this process; otherwise a Ray Data actor pool of that size (``num_gpus`` each)."""
    from audiopair.runtime import MODEL_BUILDING

    with MODEL_BUILDING:  # one at a time: the variants run in threads (audiopair.runtime says why)
        return _cache(dataset_dir, enc_cfg, num_actors, num_gpus, batch_size)


def _cache(dataset_dir, enc_cfg: EncoderConfig, num_actors: int, num_gpus: float, batch_size: int) -> str:
    from audiopair.models.encoder import AudioEncoder

    encoder = AudioEncoder.from_config(enc_cfg).eval()
    key = fingerprint(encoder, front_end_of(dataset_dir))
    folder = Path(dataset_dir) / "features" / cache_kind(key)
    if (folder / DONE).is_file():
        return key
    ids = FeatureStore(dataset_dir).ids()
    rows = []
    # clips done, clips/s and ETA in the log at most every 15 s (audiopair.progress), and a last line
    with Progress(len(ids), "embed", "clips", emit=log.info, heartbeat=True) as bar:
        if num_actors <= 0:
            store = FeatureStore(dataset_dir)
            for k in range(0, len(ids), batch_size):
                chunk = ids[k : k + batch_size]
                rows += zip(chunk, embed(encoder, [store[i] for i in chunk]))
                bar.update(len(chunk))
        else:
            import ray.data

            ds = ray.data.from_items([{"id": i} for i in ids]).map_batches(
                EmbedActor, fn_constructor_args=(enc_cfg.model_dump(mode="json"), str(dataset_dir)),
                batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=num_actors),
                num_gpus=num_gpus)
            for r in ds.iter_rows():
                rows.append((str(r["id"]), np.asarray(r["embedding"])))
                bar.update()
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(folder / "part-00000.parquet", sorted(rows, key=lambda r: r[0]))
    atomic_write_text(folder / DONE, json.dumps({"clips": len(rows), "encoder": enc_cfg.pretrained or "random",
                                                 "dim": int(rows[0][1].shape[-1]) if rows else 0}))
    return key
