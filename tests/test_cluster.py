"""A real local Ray cluster (cluster/local.sh: a head plus one worker node on 127.0.0.1) running the demo
dataset build submitted with `ray job submit`, exactly as a user would against a remote cluster.

Ports are picked free at run time and Ray's temp dir is a short per-run path under /tmp (Ray's Unix socket
paths are limited to 107 characters), so this neither collides with nor stops any other Ray on the machine:
cluster/local.sh stops only processes under its own temp dir.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_SH = REPO_ROOT / "cluster" / "local.sh"
BUILD_JOB = REPO_ROOT / "jobs" / "build_dataset.py"
VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray" if (VENV_BIN / "ray").exists() else Path(shutil.which("ray") or "ray")

JOB_TIMEOUT_S = 300
# Never uploaded with --working-dir: the virtualenv, git metadata, audio, outputs of local runs.
EXCLUDES = [".venv", ".git", "*.flac", "*.wav", "work", "runs", "outputs", "mlruns", "mlflow.db",
            "__pycache__", ".pytest_cache", "*.egg-info", "node_modules"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_port_pair() -> int:
    """A port p with p and p+1 free (the head's and the worker node's dashboard agent ports)."""
    for _ in range(50):
        p = _free_port()
        if p < 65535:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def _cluster_env(ports: dict, temp_dir: str) -> dict:
    env = dict(os.environ)
    env.update({
        "AUDIOPAIR_RAY_PORT": str(ports["gcs"]),
        "AUDIOPAIR_RAY_DASHBOARD_PORT": str(ports["dashboard"]),
        "AUDIOPAIR_RAY_CLIENT_PORT": str(ports["client"]),
        "AUDIOPAIR_RAY_AGENT_PORT": str(ports["agent"]),
        "AUDIOPAIR_RAY_WORKER_PORTS": str(ports["workers"]),
        "AUDIOPAIR_RAY_TEMP_DIR": temp_dir,
        "AUDIOPAIR_RAY_HEAD_CPUS": "1",
        "AUDIOPAIR_RAY_WORKER_CPUS": "1",
        "RAY_BIN": str(RAY),
        # Clients of a token-auth cluster must say so (local.sh sets the same for the nodes).
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
    })
    return env


@pytest.fixture(scope="module")
def local_cluster():
    assert BUILD_JOB.exists(), f"{BUILD_JOB} is missing"
    ports = {"gcs": _free_port(), "dashboard": _free_port(), "client": _free_port(), "agent": _free_port_pair(),
             # A 1000-port block for worker processes (head: first half, worker node: second half).
             # Below the kernel's ephemeral range (32768+) and above Ray's default worker ports (10002-19999).
             "workers": 20000 + (os.getpid() % 10) * 1000}
    temp_dir = f"/tmp/apt{os.getpid()}"  # short on purpose (socket path limit)
    env = _cluster_env(ports, temp_dir)
    start = subprocess.run([str(LOCAL_SH), "start"], env=env, capture_output=True, text=True, timeout=240)
    try:
        assert start.returncode == 0, f"cluster/local.sh start failed:\n{start.stdout}\n{start.stderr}"
        yield {"address": f"http://127.0.0.1:{ports['dashboard']}", "gcs": f"127.0.0.1:{ports['gcs']}",
               "env": env, "start_log": start.stderr}
    finally:
        stop = subprocess.run([str(LOCAL_SH), "stop"], env=env, capture_output=True, text=True, timeout=120)
        leftover = subprocess.run(
            [str(LOCAL_SH), "status"], env=env, capture_output=True, text=True, timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert stop.returncode == 0, f"cluster/local.sh stop failed:\n{stop.stderr}"
        assert leftover.returncode == 3, f"cluster still answers after stop:\n{leftover.stdout}"


# Polls a job until it reaches a terminal state (or the timeout) and prints its final status.
WAIT_FOR_JOB = """
import sys, time
from ray.job_submission import JobStatus, JobSubmissionClient
address, job_id, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
client = JobSubmissionClient(address)
deadline = time.monotonic() + timeout
status = client.get_job_status(job_id)
while not status.is_terminal() and time.monotonic() < deadline:
    time.sleep(2)
    status = client.get_job_status(job_id)
print(status.value if status.is_terminal() else f"TIMEOUT ({status.value})")
"""


def _ray(cluster, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), *args], env=cluster["env"], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def test_local_cluster_has_head_and_worker_node(local_cluster):
    status = _ray(local_cluster, "status", "--address", local_cluster["gcs"])
    assert status.returncode == 0, status.stderr
    active = status.stdout.split("Active:")[1].split("Pending:")[0]
    nodes = [line for line in active.splitlines() if "node_" in line]
    assert len(nodes) == 2, f"expected head + worker node:\n{status.stdout}\n{local_cluster['start_log']}"
    assert "2.0 CPU" in status.stdout


def test_submit_demo_dataset_build(local_cluster, tmp_path):
    out_dir = tmp_path / "dataset"
    submission_id = f"ap-test-build-{uuid.uuid4().hex[:8]}"
    submit = _ray(
        local_cluster, "job", "submit",
        "--address", local_cluster["address"],
        "--submission-id", submission_id,
        "--working-dir", str(REPO_ROOT),
        "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
        "--no-wait",
        "--",
        # The venv's interpreter by absolute path: `python` on the cluster's PATH may be another Python.
        sys.executable, "jobs/build_dataset.py", f"dataset.output_dir={out_dir}",
    )
    assert submit.returncode == 0, f"ray job submit failed:\n{submit.stdout}\n{submit.stderr}"

    # Wait through Ray's job SDK in a child process (it must see RAY_AUTH_MODE=token at import time).
    waiter = subprocess.run(
        [sys.executable, "-c", WAIT_FOR_JOB, local_cluster["address"], submission_id, str(JOB_TIMEOUT_S)],
        env=local_cluster["env"], capture_output=True, text=True, timeout=JOB_TIMEOUT_S + 60,
    )
    status = waiter.stdout.strip().splitlines()[-1] if waiter.stdout.strip() else f"UNKNOWN ({waiter.stderr[-2000:]})"

    if status != "SUCCEEDED":
        logs = _ray(local_cluster, "job", "logs", "--address", local_cluster["address"], submission_id)
        if status not in ("FAILED", "STOPPED"):
            _ray(local_cluster, "job", "stop", "--address", local_cluster["address"], submission_id)
        pytest.fail(f"job {submission_id} ended {status} (timeout {JOB_TIMEOUT_S}s):\n{logs.stdout[-6000:]}")

    assert (out_dir / "stats.json").is_file(), f"no stats.json in {out_dir}: {sorted(os.listdir(out_dir))}"
    json.loads((out_dir / "stats.json").read_text())
    manifests = sorted((out_dir / "manifests").glob("*.jsonl"))
    assert manifests, f"no manifests/*.jsonl in {out_dir}"
    lines = sum(1 for m in manifests for line in m.read_text().splitlines() if line.strip())
    assert lines >= 1, f"manifests are empty: {manifests}"
    first = json.loads(next(line for m in manifests for line in m.read_text().splitlines() if line.strip()))
    assert {"id", "task", "audio", "target"} <= set(first), first


# ------------------------------------------------------------------------------------------------------------
# Cluster launcher configs and runtime env: validated offline with Ray's own schema and config preparation.

LAUNCHER_CONFIGS = {
    "aws": (REPO_ROOT / "cluster" / "aws.yaml", {"gpu1": "g5.xlarge", "gpu8": "p4d.24xlarge"}, "InstanceType"),
    "gcp": (REPO_ROOT / "cluster" / "gcp.yaml", {"gpu1": "a2-highgpu-1g", "gpu8": "a2-highgpu-8g"}, "machineType"),
}


@pytest.mark.parametrize("cloud", list(LAUNCHER_CONFIGS))
def test_launcher_config_is_valid(cloud):
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    path, gpu_types, type_key = LAUNCHER_CONFIGS[cloud]
    raw = yaml.safe_load(path.read_text())
    config = prepare_config(copy.deepcopy(raw))  # fills Ray's provider defaults
    validate_config(config)  # ray-schema.json plus Ray's consistency checks

    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0, "head must not take work"
    assert "worker_image" not in (head.get("docker") or {})
    by_suffix = {name.replace(".", "_").split("_")[-1]: spec for name, spec in types.items()}
    assert {"cpu", "gpu1", "gpu8"} <= set(by_suffix)
    assert by_suffix["cpu"]["resources"].get("GPU", 0) == 0
    for suffix, instance in gpu_types.items():
        spec = by_suffix[suffix]
        assert spec["node_config"][type_key] == instance
        assert spec["resources"]["GPU"] == int(suffix.removeprefix("gpu"))
        assert spec["docker"]["worker_image"].endswith("-gpu")
    for name, spec in types.items():
        if name != raw["head_node_type"]:
            assert 0 <= spec["min_workers"] <= spec["max_workers"], name
            assert spec["min_workers"] == 0, f"{name}: workers should scale from zero"
    assert raw["file_mounts"] == {"~/audiopair": "."}
    assert ".venv" in raw["rsync_exclude"] and ".git" in raw["rsync_exclude"]
    assert any("pip install" in c and "-e ." in c for c in raw["setup_commands"])
    ray_version = raw["docker"]["image"].split(":")[1].split("-")[0]
    import ray
    assert ray_version == ray.__version__, "the cluster image must run the Ray version of this environment"


def test_runtime_env_example_is_valid():
    import yaml
    from ray.runtime_env import RuntimeEnv

    raw = yaml.safe_load((REPO_ROOT / "cluster" / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**raw)  # Ray's own validation of every field
    assert env["working_dir"] == "."
    assert {".venv", ".git"} <= set(raw["excludes"])
    assert raw["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http")
    assert all(isinstance(v, str) for v in raw["env_vars"].values()), "env_vars values must be strings"
