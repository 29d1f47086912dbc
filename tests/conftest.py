"""Shared fixtures: a tiny demo dataset config, built once per session for the tests that only read it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

# Tests run on CPU, offline; keep every library from reaching out and Ray quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

TINY = [
    "dataset.sample_rate=16000",
    "dataset.clip_seconds=2.0",
    "dataset.demo.clip_seconds=2.0",
    "dataset.demo.event_clips_per_kind=3",
    "dataset.demo.base_clips=14",
    "dataset.tasks.triples_per_base=1",
    "dataset.features.n_fft=512",
    "dataset.features.hop_length=160",
    "dataset.features.f_max=8000",
    "dataset.shard_size=8",
    "dataset.num_workers=2",
]


def tiny_config(out_dir, *extra: str):
    from audiopair.config import load_config

    return load_config(REPO / "jobs" / "configs" / "demo.yaml", TINY + [f"dataset.output_dir={out_dir}", *extra])


# The order two xdist workers take whole files in (make test: --no-loadscope-reorder). Each worker is handed two
# files at the start, the first and third to one, so the ten-minute demo job is paired with a quick file and the
# other worker starts on the long Ray Train files; the rest go to whichever worker is free.
SLOW_FIRST = ["test_demo_job.py", "test_qwen2_audio.py", "test_audio.py", "test_train.py", "test_sweep.py",
              "test_reference_adiff.py", "test_adiff_job.py", "test_acc_table.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: file order kept otherwise


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A finished tiny demo build (Ray Data path), shared read-only by several tests."""
    from audiopair.data.pipeline import build_dataset

    out = tmp_path_factory.mktemp("tiny") / "ds"
    cfg = tiny_config(out)
    result = build_dataset(cfg.dataset, progress=lambda m: None)
    return cfg, result


@pytest.fixture
def one_thread():
    """Tiny matrices: threads only add synchronisation cost (and contention on a shared 2-core box)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random ADIFF checkpoint (tokenizer folder included, as the training jobs report it) that needs no
    built dataset: its tokenizer is trained on the demo bank's caption phrases."""
    import torch

    from audiopair.corpus.demo import EVENTS
    from audiopair.models.adiff import build_model, save_checkpoint
    from audiopair.models.tokenizer import train_tokenizer
    from test_train import TINY_MODEL

    tmp = tmp_path_factory.mktemp("tiny_ckpt")
    cfg = tiny_config(tmp / "unused", *TINY_MODEL, "model.lm_positions=320")
    texts = [f"{p} {w}" for k in EVENTS for p in k.phrases for w in ("in the audio.", "is heard.", k.name)]
    tok = train_tokenizer(texts * 2, 400, tmp / "tok")
    torch.manual_seed(0)
    model = build_model(cfg.model, tok)
    save_checkpoint(model, tmp / "model", tokenizer=tok)
    return tmp / "model"


@pytest.fixture(autouse=True)
def _no_inherited_mlflow_uri(monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so an earlier test in this worker would leave its store in
    the environment, and a job a test starts as a subprocess would take it for the user's server. Tests that want
    one set it themselves."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path, serve_artifacts: bool = True):
    """A real ``mlflow server`` on loopback (SQLite backend, artifacts proxied into ``folder/server-artifacts``, as
    the Helm chart's server proxies S3); yields its URL, stops it afterwards. ``serve_artifacts=False``: a server
    without an artifact store, handing clients the plain path ``folder/client-artifacts``."""
    import subprocess
    import sys
    import time
    import urllib.request

    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--workers", "1",
         *(["--artifacts-destination", str(folder / "server-artifacts")] if serve_artifacts else
           ["--no-serve-artifacts", "--default-artifact-root", str(folder / "client-artifacts")])],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not come up"
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
