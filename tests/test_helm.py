"""Offline checks of the Helm chart in helm/audiopair.

What runs here: `helm lint` and `helm template` (the binary at .venv/bin/helm, installed by
scripts/install_helm.sh), then every rendered object is validated:
  * built-in kinds with kubernetes-validate (strict: unknown fields are errors) against two Kubernetes versions;
  * RayCluster / RayJob with jsonschema against the v1 openAPIV3Schema of the KubeRay CRDs in
    ../shared/kuberay-crds/ (made strict the same way, see `_strict_crd_schema`), plus KubeRay's own name rules;
  * the pod templates embedded in RayCluster / RayJob again with kubernetes-validate (as PodTemplate).
Then properties the chart promises: ClusterIP-only by default, non-root pods, GPU groups, secrets by reference,
RayJob lifecycle fields, storage wiring, and values.schema.json rejecting bad values.
No cluster, network or GPU is needed.
"""

from __future__ import annotations

import copy
import functools
import re
import subprocess
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "helm" / "audiopair"
HELM = REPO_ROOT / ".venv" / "bin" / "helm"
CRD_DIR = REPO_ROOT.parent / "shared" / "kuberay-crds"
RELEASE = "ap"
NAMESPACE = "audiopair"

# A floor many managed clusters still run, and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]

# Job scripts the chart may start (jobs/<name>.py of this repository).
KNOWN_JOB_SCRIPTS = {
    "build_dataset.py", "train_adiff.py", "evaluate.py", "finetune_qwen2_audio.py", "sweep_adiff.py",
}

# Rendering scenarios: name -> (values files relative to the chart, extra values layered last).
SCENARIOS: dict[str, tuple[tuple[str, ...], dict]] = {
    "default": ((), {}),
    "gpu": (("values-gpu.yaml",), {}),
    # Every optional branch at once: shared cluster mode, object-store storage, ingress, external stores,
    # image pull secrets, HTTP submission, autoscaling off, all jobs on.
    "variants": ((), {
        "rayJobs": {"clusterMode": "shared", "submissionMode": "HTTPMode", "activeDeadlineSeconds": 7200},
        "storage": {"mode": "objectStore", "objectStore": {
            "uri": "s3://bucket/audiopair", "endpointUrl": "http://minio.example:9000",
            "existingSecret": "audiopair-ray-s3"}},
        "mlflow": {
            "ingress": {"enabled": True, "className": "nginx"},
            "service": {"type": "LoadBalancer"},
            "backendStore": {"host": "db.example.internal"},
            "artifacts": {"s3EndpointUrl": "https://s3.example"},
        },
        "postgres": {"enabled": False},
        "minio": {"enabled": False},
        "imagePullSecrets": [{"name": "regcred"}],
        "ray": {"autoscaling": {"enabled": False}},
        "jobs": [
            {"name": n, "enabled": True, "entrypoint": f"python jobs/{n.replace('-', '_')}.py --config jobs/configs/demo.yaml",
             **({"storagePathKey": ""} if n == "build-dataset" else {})}
            for n in ("build-dataset", "train-adiff", "evaluate", "finetune-qwen2-audio", "sweep-adiff")
        ],
    }),
}


# --------------------------------------------------------------------------------------------------- helm
def _helm_binary() -> Path:
    """The helm binary; a missing one is a FAILURE (the Makefile installs it before the tests)."""
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run scripts/install_helm.sh (make test does this first)")
    probe = subprocess.run([str(HELM), "version", "--short"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"{HELM} does not run: {probe.stderr.strip()}")
    return HELM


def _helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(_helm_binary()), *args], capture_output=True, text=True, timeout=120)


@functools.lru_cache(maxsize=None)
def _render_cached(scenario: str) -> tuple:
    files, overrides = SCENARIOS[scenario]
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in files:
        args += ["-f", str(CHART / f)]
    with tempfile.TemporaryDirectory() as tmp:
        if overrides:
            extra = Path(tmp) / "overrides.yaml"
            extra.write_text(yaml.safe_dump(overrides))
            args += ["-f", str(extra)]
        proc = _helm(*args)
    assert proc.returncode == 0, f"helm template ({scenario}) failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def render(scenario: str = "default") -> list[dict]:
    """Rendered objects of a scenario (a fresh copy: tests may mutate it)."""
    return copy.deepcopy(list(_render_cached(scenario)))


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


# --------------------------------------------------------------------------------------------------- pods
def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """Every pod spec the chart can create, labelled, including those inside RayCluster/RayJob."""
    out: list[tuple[str, dict]] = []

    def cluster_spec(label: str, spec: dict) -> None:
        out.append((f"{label}/head", spec["headGroupSpec"]["template"]["spec"]))
        for g in spec.get("workerGroupSpecs") or []:
            out.append((f"{label}/worker:{g['groupName']}", g["template"]["spec"]))

    for d in docs:
        label = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((label, d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            out.append((label, d["spec"]))
        elif d["kind"] == "RayCluster":
            cluster_spec(label, d["spec"])
        elif d["kind"] == "RayJob":
            if "rayClusterSpec" in d["spec"]:
                cluster_spec(label, d["spec"]["rayClusterSpec"])
            if "submitterPodTemplate" in d["spec"]:
                out.append((f"{label}/submitter", d["spec"]["submitterPodTemplate"]["spec"]))
    return out


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    """(label, PodTemplateSpec) pairs embedded in Ray custom resources."""
    out = []
    for d in docs:
        label = f"{d['kind']}/{d['metadata']['name']}"
        specs = []
        if d["kind"] == "RayCluster":
            specs.append(d["spec"])
        elif d["kind"] == "RayJob":
            if "rayClusterSpec" in d["spec"]:
                specs.append(d["spec"]["rayClusterSpec"])
            if "submitterPodTemplate" in d["spec"]:
                out.append((f"{label}/submitter", d["spec"]["submitterPodTemplate"]))
        for spec in specs:
            out.append((f"{label}/head", spec["headGroupSpec"]["template"]))
            for g in spec.get("workerGroupSpecs") or []:
                out.append((f"{label}/{g['groupName']}", g["template"]))
    return out


def ray_cluster_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for d in docs:
        if d["kind"] == "RayCluster":
            out.append((d["metadata"]["name"], d["spec"]))
        elif d["kind"] == "RayJob" and "rayClusterSpec" in d["spec"]:
            out.append((d["metadata"]["name"], d["spec"]["rayClusterSpec"]))
    return out


def containers(pod: dict) -> list[dict]:
    return list(pod.get("initContainers") or []) + list(pod["containers"])


# --------------------------------------------------------------------------------------------------- CRDs
def _strict_crd_schema(node):
    """Turn a CRD structural schema into a strict JSON schema for jsonschema.

    * x-kubernetes-int-or-string: no `type` in the CRD; allow integer or string (the apiserver does the same).
    * objects with `properties` and no additionalProperties / x-kubernetes-preserve-unknown-fields reject
      unknown fields, like `kubectl apply --validate=strict` (the apiserver would silently prune them, which is
      how typos in a chart go unnoticed).
    * x-kubernetes-list-type set/map: item uniqueness is checked by the validator below.
    * x-kubernetes-validations (CEL rules) cannot be evaluated offline and are left to the apiserver.
    """
    if isinstance(node, list):
        return [_strict_crd_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _strict_crd_schema(sub) for name, sub in value.items()}
        else:
            out[key] = _strict_crd_schema(value)
    if out.get("x-kubernetes-int-or-string") and "type" not in out and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _list_type(validator, list_type, instance, schema):
    """Enforce x-kubernetes-list-type (set: unique items; map: unique x-kubernetes-list-map-keys tuples)."""
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate item {item!r} in a list-type=set list")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for item in instance:
            ident = tuple(repr(item.get(k)) for k in keys)
            if ident in seen:
                yield jsonschema.ValidationError(f"duplicate map key {dict(zip(keys, ident))} in a list-type=map list")
            seen.add(ident)


CRDValidator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-kubernetes-list-type": _list_type})


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str):
    files = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
    path = CRD_DIR / files[kind]
    assert path.exists(), f"KubeRay CRD not found at {path} (expected ../shared/kuberay-crds/ beside the repo)"
    # The CRDs are ~2 MB of YAML: use libyaml when PyYAML has it (seconds -> well under a second).
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict_crd_schema(v1["schema"]["openAPIV3Schema"])
    CRDValidator.check_schema(schema)
    return CRDValidator(schema)


# KubeRay's own limits (ray-operator utils): names are DNS-1035 labels; a RayJob's generated cluster name
# appends 6 characters to the job name and must stay within the RayCluster limit of 53.
KUBERAY_NAME_LIMIT = {"RayCluster": 53, "RayJob": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# =================================================================================================== tests
@pytest.mark.parametrize("values", [(), ("values-gpu.yaml",)], ids=["default", "gpu"])
def test_helm_lint(values):
    args = ["lint", "--strict", str(CHART)]
    for f in values:
        args += ["-f", str(CHART / f)]
    proc = _helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_template_renders_expected_objects(scenario):
    docs = render(scenario)
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "Deployment", "Service", "RayCluster", "RayJob"} <= kinds
    # Every object carries the release's labels and a unique (kind, name).
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), f"duplicate objects: {keys}"
    for d in docs:
        labels = d["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/instance") == RELEASE, d["metadata"]["name"]
        assert "namespace" not in d["metadata"] or d["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_builtin_objects_validate_against_kubernetes_schema(scenario, k8s_version):
    docs = [d for d in render(scenario) if not d["apiVersion"].startswith("ray.io/")]
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for k8s {k8s_version}: "
                        f"{'.'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_ray_objects_validate_against_kuberay_crds(scenario):
    docs = [d for d in render(scenario) if d["apiVersion"].startswith("ray.io/")]
    assert docs
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
        errors = sorted(crd_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(
            f"  {'.'.join(map(str, e.path))}: {e.message}" for e in errors[:20])
        name = doc["metadata"]["name"]
        assert DNS1035.match(name), f"{name} is not a DNS-1035 label"
        assert len(name) <= KUBERAY_NAME_LIMIT[doc["kind"]], f"{name} longer than KubeRay allows"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_embedded_pod_templates_validate_against_kubernetes_schema(scenario):
    templates = pod_templates(render(scenario))
    assert templates
    for label, template in templates:
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
        try:
            kubernetes_validate.validate(wrapped, K8S_VERSIONS[-1], strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{label}: {'.'.join(map(str, e.path))}: {e.message}")


def test_crd_validation_catches_mistakes():
    """The strict CRD validator is not a rubber stamp: typos, wrong types and bad enums fail."""
    (cluster,) = by_kind(render("default"), "RayCluster")
    validator = crd_validator("RayCluster")
    assert not list(validator.iter_errors(cluster))

    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert list(validator.iter_errors(typo))

    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["workerGroupSpecs"][0]["minReplicas"] = "one"
    assert list(validator.iter_errors(wrong_type))

    bad_enum = copy.deepcopy(cluster)
    bad_enum["spec"]["autoscalerOptions"]["upscalingMode"] = "Eager"
    assert list(validator.iter_errors(bad_enum))

    dup_env = copy.deepcopy(cluster)
    container = dup_env["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["ports"].append(dict(container["ports"][0]))  # ports: list-type=map keyed by containerPort+protocol
    assert list(validator.iter_errors(dup_env))


def test_kubernetes_validation_catches_mistakes():
    """kubernetes-validate in strict mode rejects unknown fields and wrong types in built-in kinds."""
    (deploy,) = [d for d in by_kind(render("default"), "Deployment") if d["metadata"]["name"].endswith("-mlflow")]
    kubernetes_validate.validate(deploy, K8S_VERSIONS[-1], strict=True)
    typo = copy.deepcopy(deploy)
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=True)
    wrong_type = copy.deepcopy(deploy)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSIONS[-1], strict=True)


def test_only_cluster_ip_services_by_default():
    docs = render("default")
    for svc in by_kind(docs, "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
        assert not svc["spec"].get("externalIPs")
    assert not by_kind(docs, "Ingress")
    for name, spec in ray_cluster_specs(docs):
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", name
        assert not spec["headGroupSpec"].get("enableIngress", False), name


def test_exposure_only_when_values_enable_it():
    docs = render("variants")
    (svc,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-mlflow")]
    assert svc["spec"]["type"] == "LoadBalancer"
    (ing,) = by_kind(docs, "Ingress")
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == svc["metadata"]["name"]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_pod_runs_as_non_root(scenario):
    docs = render(scenario)
    pods = pod_specs(docs)
    # MLflow, Ray head + workers (RayCluster and each RayJob), submitters, and dev Postgres/MinIO when on.
    assert len(pods) >= 3
    for label, pod in pods:
        psc = pod.get("securityContext") or {}
        assert psc.get("runAsNonRoot") is True, f"{label}: pod securityContext.runAsNonRoot must be true"
        assert psc.get("runAsUser", 1) != 0, f"{label}: runAsUser 0"
        assert "fsGroup" in psc, f"{label}: fsGroup missing (volumes would not be writable by the non-root user)"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), label
        for c in containers(pod):
            csc = c.get("securityContext") or {}
            where = f"{label}/{c['name']}"
            assert csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
            assert "ALL" in (csc.get("capabilities") or {}).get("drop", []), f"{where}: capabilities.drop ALL"
            assert not csc.get("privileged"), f"{where}: privileged"
            assert csc.get("runAsNonRoot", True) is True and csc.get("runAsUser", 1) != 0, where
    # The autoscaler sidecar KubeRay injects gets the same container securityContext.
    for name, spec in ray_cluster_specs(docs):
        if spec.get("enableInTreeAutoscaling"):
            csc = spec["autoscalerOptions"]["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False and "ALL" in csc["capabilities"]["drop"], name


def test_service_account_tokens_only_where_needed():
    docs = render("default")
    (sa,) = by_kind(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    for label, pod in pod_specs(docs):
        assert pod["serviceAccountName"] == sa["metadata"]["name"], label
        # Only the Ray head (autoscaler sidecar) needs the API token.
        assert pod["automountServiceAccountToken"] is label.endswith("/head"), label


def _gpu_limit(pod: dict) -> int:
    return sum(int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in pod["containers"])


def test_default_values_are_cpu_only():
    docs = render("default")
    for label, pod in pod_specs(docs):
        assert _gpu_limit(pod) == 0, label
    for name, spec in ray_cluster_specs(docs):
        assert [g["groupName"] for g in spec["workerGroupSpecs"]] == ["cpu"], name
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["authOptions"] == {"mode": "token"}, name  # Ray token auth via KubeRay
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "no work on the head"


def test_gpu_values_render_gpu_worker_groups():
    docs = render("gpu")
    (cluster,) = by_kind(docs, "RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert {"cpu", "gpu-1x", "gpu-8x"} <= set(groups)
    assert _gpu_limit(cluster["spec"]["headGroupSpec"]["template"]["spec"]) == 0, "head must not take GPUs"
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    for name, expected in (("gpu-1x", 1), ("gpu-8x", 8)):
        g = groups[name]
        pod = g["template"]["spec"]
        (c,) = pod["containers"]
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == expected
        assert int(c["resources"]["requests"]["nvidia.com/gpu"]) == expected  # extended resources: equal
        assert any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
                   for t in pod["tolerations"]), name
        assert pod["nodeSelector"], f"{name}: GPU pods need a nodeSelector"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] >= 1
        # /dev/shm is memory-backed (NCCL and the object store need more than the container default 64 MiB).
        (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm["emptyDir"]["medium"] == "Memory"
    # CPU workers carry no GPU and do not tolerate the GPU taint.
    cpu_pod = groups["cpu"]["template"]["spec"]
    assert _gpu_limit(cpu_pod) == 0 and not cpu_pod.get("tolerations")
    # Ephemeral RayJobs get the same GPU groups in their own cluster.
    for job in by_kind(docs, "RayJob"):
        job_groups = {g["groupName"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
        assert {"gpu-1x", "gpu-8x"} <= job_groups
    # Production stores: no dev Postgres / MinIO.
    assert not by_kind(docs, "StatefulSet")
    assert not [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-minio")]


SENSITIVE_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PGUSER|POSTGRES_USER|ROOT_USER", re.I)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_credentials_only_by_secret_reference(scenario):
    docs = render(scenario)
    assert not by_kind(docs, "Secret"), "the chart must not create Secrets; it references existing ones"
    for label, pod in pod_specs(docs):
        for c in containers(pod):
            for env in c.get("env") or []:
                if SENSITIVE_ENV.search(env["name"]):
                    assert "value" not in env, f"{label}/{c['name']}: literal {env['name']}"
                    assert "secretKeyRef" in env["valueFrom"], f"{label}/{c['name']}: {env['name']}"
            for arg in (c.get("args") or []) + (c.get("command") or []):
                assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", arg), f"{label}: credentials in a URI: {arg}"


def test_mlflow_server_wiring():
    docs = render("default")
    (deploy,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-mlflow")]
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    cmd = c["command"] + c["args"]
    assert cmd[:2] == ["mlflow", "server"]
    assert "--host=0.0.0.0" in cmd
    (backend,) = [a for a in cmd if a.startswith("--backend-store-uri=")]
    assert backend.startswith("--backend-store-uri=postgresql://") and "@" not in backend
    assert any(a.startswith("--artifacts-destination=s3://") for a in cmd)
    env = {e["name"]: e for e in c["env"]}
    secrets = {
        "PGUSER": "audiopair-mlflow-db", "PGPASSWORD": "audiopair-mlflow-db",
        "AWS_ACCESS_KEY_ID": "audiopair-s3", "AWS_SECRET_ACCESS_KEY": "audiopair-s3",
    }
    for name, secret in secrets.items():
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret, name
    # Dev MinIO is on by default: MLflow talks to it through MLFLOW_S3_ENDPOINT_URL.
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"].startswith("http://") and "-minio." in env["MLFLOW_S3_ENDPOINT_URL"]["value"]
    # MLflow >= 3.5 checks the Host header: what Ray pods and a port-forward send must pass, others not.
    # Checked with MLflow's own matcher (mlflow is pinned in pyproject.toml).
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = [h.strip() for h in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")]
    svc = deploy["metadata"]["name"]
    for host in (f"{svc}.{NAMESPACE}.svc.cluster.local:5000", f"{svc}:5000", f"{svc}.{NAMESPACE}:5000",
                 "localhost:5000", "127.0.0.1:5000", "10.12.0.7:5000"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("evil.example.com", f"{svc}.evil.example.com:5000", "8.8.8.8:5000"):
        assert not is_allowed_host_header(allowed, host), host
    # Ray pods log to this server.
    for label, ray_pod in pod_specs(docs):
        if "/head" in label or "/worker" in label:
            ray_env = {e["name"]: e.get("value") for e in ray_pod["containers"][0]["env"]}
            assert ray_env["MLFLOW_TRACKING_URI"] == f"http://{deploy['metadata']['name']}.{NAMESPACE}.svc.cluster.local:5000"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rayjobs_lifecycle(scenario):
    docs = render(scenario)
    jobs = by_kind(docs, "RayJob")
    assert jobs
    clusters = {c["metadata"]["name"] for c in by_kind(docs, "RayCluster")}
    for job in jobs:
        spec, name = job["spec"], job["metadata"]["name"]
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0, name
        assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 0, name
        # Exactly one of the two cluster modes (KubeRay rejects neither; both is ambiguous).
        assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), name
        if "clusterSelector" in spec:
            assert spec["clusterSelector"]["ray.io/cluster"] in clusters, name
        script = re.search(r"jobs/(\w+\.py)", spec["entrypoint"])
        assert script and script.group(1) in KNOWN_JOB_SCRIPTS, spec["entrypoint"]
        if spec.get("runtimeEnvYAML"):
            assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict), name


def test_rayjob_modes_and_storage_path():
    default = render("default")
    (train,) = [j for j in by_kind(default, "RayJob") if j["metadata"]["name"].endswith("-train-adiff")]
    assert "rayClusterSpec" in train["spec"] and train["spec"]["submissionMode"] == "K8sJobMode"
    assert train["spec"]["entrypoint"].endswith(" train.storage_path=/mnt/audiopair/checkpoints")
    assert yaml.safe_load(train["spec"]["runtimeEnvYAML"])["working_dir"] == "/home/ray/audiopair"

    variants = render("variants")
    names = {j["metadata"]["name"].removeprefix(f"{RELEASE}-audiopair-"): j for j in by_kind(variants, "RayJob")}
    assert set(names) == {"build-dataset", "train-adiff", "evaluate", "finetune-qwen2-audio", "sweep-adiff"}
    for short, job in names.items():
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": f"{RELEASE}-audiopair"}
        assert job["spec"]["activeDeadlineSeconds"] == 7200
        assert "submitterPodTemplate" not in job["spec"]  # HTTPMode has no submitter pod
        if short == "build-dataset":
            assert "storage_path" not in job["spec"]["entrypoint"]
        else:
            assert job["spec"]["entrypoint"].endswith(" train.storage_path=s3://bucket/audiopair")


def test_storage_pvc_mode_mounts_shared_volume():
    docs = render("default")
    (pvc,) = [p for p in by_kind(docs, "PersistentVolumeClaim") if p["metadata"]["name"].endswith("-storage")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    ray_pods = [(label, p) for label, p in pod_specs(docs) if "/head" in label or "/worker" in label]
    assert ray_pods
    for label, pod in ray_pods:
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["storage"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"], label
        c = pod["containers"][0]
        assert {"name": "storage", "mountPath": "/mnt/audiopair"} in c["volumeMounts"], label
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["AUDIOPAIR_STORAGE_PATH"] == "/mnt/audiopair/checkpoints", label


def test_storage_object_store_mode():
    docs = render("variants")
    assert not [p for p in by_kind(docs, "PersistentVolumeClaim") if p["metadata"]["name"].endswith("-storage")]
    for label, pod in pod_specs(docs):
        if "/head" in label or "/worker" in label:
            assert "storage" not in {v["name"] for v in pod["volumes"]}, label
            env = {e["name"]: e for e in pod["containers"][0]["env"]}
            assert env["AUDIOPAIR_STORAGE_PATH"]["value"] == "s3://bucket/audiopair"
            assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.example:9000"
            assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "audiopair-ray-s3"


@pytest.mark.parametrize(
    "sets, message",
    [
        (["mlflow.service.type=Bogus"], "mlflow/service/type"),
        (["ray.head.serviceType=External"], "ray/head/serviceType"),
        (["storage.mode=nfs"], "storage/mode"),
        (["rayJobs.clusterMode=sometimes"], "rayJobs/clusterMode"),
        (["ray.cpuWorkers.maxReplicas=lots"], "ray/cpuWorkers/maxReplicas"),
        (["ray.cpuWorkers.minReplicas=-1"], "ray/cpuWorkers/minReplicas"),
        (["rayJobs.ttlSecondsAfterFinished=soon"], "rayJobs/ttlSecondsAfterFinished"),
        (["mlflow.servcie.type=ClusterIP"], "mlflow"),  # typo'd key: additionalProperties false
        (["podSecurityContext.runAsNonRoot=false"], "podSecurityContext/runAsNonRoot"),
        (["containerSecurityContext.allowPrivilegeEscalation=true"], "containerSecurityContext"),
        (["ray.auth.mode=maybe"], "ray/auth/mode"),
        (['--set-json=jobs=[{"name": "Train_ADIFF", "enabled": true, "entrypoint": "python jobs/train_adiff.py"}]'],
         "jobs/0/name"),
        (["mlflow.artifacts.destination=/local/dir"], "mlflow/artifacts/destination"),
        (["storage.mode=objectStore"], "storage"),  # objectStore needs a URI
    ],
)
def test_values_schema_rejects_bad_values(sets, message):
    args = ["template", RELEASE, str(CHART)]
    for s in sets:
        args += [s] if s.startswith("--") else ["--set", s]
    proc = _helm(*args)
    assert proc.returncode != 0, f"helm accepted {sets}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "sets, message",
    [
        (["ray.cpuWorkers.minReplicas=3"], "minReplicas (3) > maxReplicas (2)"),
        (["ray.cpuWorkers.replicas=0"], "replicas (0) must lie within"),
        (["rayJobs.clusterMode=shared", "ray.cluster.enabled=false"], "ray.cluster.enabled is false"),
        (["postgres.enabled=false"], "mlflow.backendStore.host is empty"),
        (["fullnameOverride=a-very-long-release-name-for-audiopair-x"], "KubeRay allows at most 47"),
    ],
)
def test_template_rejects_inconsistent_values(sets, message):
    args = ["template", RELEASE, str(CHART)]
    for s in sets:
        args += ["--set", s]
    proc = _helm(*args)
    assert proc.returncode != 0, f"helm accepted {sets}"
    assert message in proc.stderr, proc.stderr


def test_values_files_pass_schema_and_defaults_are_valid_json_schema():
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    assert not list(validator.iter_errors(base))
    # values-gpu.yaml is an overlay: validate it merged over the defaults (Helm's map merge; lists replace).
    def merge(a, b):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return out

    gpu = merge(base, yaml.safe_load((CHART / "values-gpu.yaml").read_text()))
    assert not list(validator.iter_errors(gpu))
    assert base["mlflow"]["service"]["type"] == "ClusterIP" and base["ray"]["gpuWorkers"] == []
