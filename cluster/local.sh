#!/usr/bin/env bash
# A local two-node Ray cluster on 127.0.0.1: one head plus one worker node (a second raylet on the same host).
#
#   cluster/local.sh start     start the head (and the worker node unless AUDIOPAIR_RAY_WORKER=0)
#   cluster/local.sh stop      stop this cluster's processes only (tagged with its temp dir; never `ray stop`,
#                              which would kill every Ray instance of the user on this machine)
#   cluster/local.sh status    `ray status` for this cluster
#   cluster/local.sh address   print the dashboard / job-submission URL
#   cluster/local.sh env       print `export` lines for job clients (RAY_AUTH_MODE, RAY_API_SERVER_ADDRESS)
#
# Then:  ray job submit --address http://127.0.0.1:${AUDIOPAIR_RAY_DASHBOARD_PORT:-8266} --working-dir . -- python jobs/...
#
# Environment (all optional):
#   AUDIOPAIR_RAY_PORT            GCS port of the head                   (default 6380; 6379 is left to other Rays)
#   AUDIOPAIR_RAY_DASHBOARD_PORT  dashboard + job submission HTTP port  (default 8266)
#   AUDIOPAIR_RAY_CLIENT_PORT     Ray client server port                 (default 10201)
#   AUDIOPAIR_RAY_AGENT_PORT      dashboard agent HTTP port of the head; the worker node uses +1 (default 52366)
#   AUDIOPAIR_RAY_WORKER_PORTS    first port of the worker-process ports: the head uses [P, P+499], the worker
#                                 node [P+500, P+999] (default 20000). Two raylets on one host must not share
#                                 fixed ports, so every fixed port differs between the two nodes.
#   AUDIOPAIR_RAY_TEMP_DIR        Ray's temp/session dir                 (default /tmp/ap-ray; keep it short: Ray's
#                                 Unix sockets live below it and socket paths are limited to 107 characters)
#   AUDIOPAIR_RAY_HEAD_CPUS       CPUs the head advertises               (default 1)
#   AUDIOPAIR_RAY_WORKER_CPUS     CPUs the worker node advertises        (default 1)
#   AUDIOPAIR_RAY_WORKER          1 = also start the worker node, 0 = head only (default 1)
#   AUDIOPAIR_RAY_OBJECT_STORE_MB object store size per node in MiB      (default 256; small machines)
#   RAY_BIN                       ray executable (default: <repo>/.venv/bin/ray if present, else `ray` on PATH)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${AUDIOPAIR_RAY_PORT:-6380}"
DASHBOARD_PORT="${AUDIOPAIR_RAY_DASHBOARD_PORT:-8266}"
CLIENT_PORT="${AUDIOPAIR_RAY_CLIENT_PORT:-10201}"
AGENT_PORT="${AUDIOPAIR_RAY_AGENT_PORT:-52366}"
WORKER_PORTS="${AUDIOPAIR_RAY_WORKER_PORTS:-20000}"
TEMP_DIR="${AUDIOPAIR_RAY_TEMP_DIR:-/tmp/ap-ray}"
HEAD_CPUS="${AUDIOPAIR_RAY_HEAD_CPUS:-1}"
WORKER_CPUS="${AUDIOPAIR_RAY_WORKER_CPUS:-1}"
START_WORKER="${AUDIOPAIR_RAY_WORKER:-1}"
OBJECT_STORE_BYTES="$(( ${AUDIOPAIR_RAY_OBJECT_STORE_MB:-256} * 1024 * 1024 ))"

if [[ -n "${RAY_BIN:-}" ]]; then
  RAY="$RAY_BIN"
elif [[ -x "$REPO_ROOT/.venv/bin/ray" ]]; then
  RAY="$REPO_ROOT/.venv/bin/ray"
else
  RAY="$(command -v ray || true)"
fi

die() { echo "cluster/local.sh: error: $*" >&2; exit 1; }
log() { echo "cluster/local.sh: $*" >&2; }

[[ -n "$RAY" && -x "$RAY" ]] || die "no ray executable: create the venv (make install) or put ray on PATH / set RAY_BIN"
# The Python next to the ray executable (same environment); used for process discovery and HTTP probes.
PY="$(dirname "$RAY")/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"
[[ "$TEMP_DIR" = /* ]] || die "AUDIOPAIR_RAY_TEMP_DIR must be an absolute path (got $TEMP_DIR)"
# Ray adds e.g. session_2026-01-01_00-00-00_000000_12345/sockets/plasma_store (~70 chars) below the temp dir.
(( ${#TEMP_DIR} <= 35 )) || die "AUDIOPAIR_RAY_TEMP_DIR is ${#TEMP_DIR} characters; keep it <= 35 (Unix socket paths are limited to 107)"

# Ray's CLI is noisy about usage stats; keep runs offline and quiet.
export RAY_USAGE_STATS_ENABLED=0
# Token authentication (Ray >= 2.52). Ray 2.60 turns it on for a local head whenever ~/.ray/auth_token exists,
# but a joining node and the job CLI only use it when RAY_AUTH_MODE=token, so set it explicitly for every node
# and tell clients to do the same (`eval "$(cluster/local.sh env)"`). AUDIOPAIR_RAY_AUTH_MODE=disabled opts out.
export RAY_AUTH_MODE="${AUDIOPAIR_RAY_AUTH_MODE:-token}"

port_open() {  # host port -> 0 if something listens
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && { exec 3>&- 3<&- || true; return 0; }
  return 1
}

# Every process of this cluster is tagged: `ray start` runs with AUDIOPAIR_RAY_CLUSTER_TAG=<temp dir> in its
# environment, and all Ray daemons and workers inherit it. (Command lines are not enough: the Ray client server
# and renamed "ray::" workers do not name the temp dir.) Processes whose command line names the temp dir are
# taken too, with all their descendants. Zombies are skipped.
cluster_pids() {
  "$PY" - "$TEMP_DIR" <<'PYEOF'
import os, re, sys
temp = sys.argv[1].rstrip("/")
tag = f"AUDIOPAIR_RAY_CLUSTER_TAG={temp}".encode()
pattern = re.compile(r"(^|[ =])" + re.escape(temp) + r"(/| |$)")
me = {os.getpid(), os.getppid()}
parent, roots = {}, set()
for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    pid = int(entry)
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except PermissionError:
            environ = []  # another user's process: never ours
    except OSError:
        continue  # exited meanwhile
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    if state == "Z":
        continue
    parent[pid] = int(ppid)
    if pid not in me and (tag in environ or pattern.search(cmdline)):
        roots.add(pid)
keep, changed = set(roots), True
while changed:
    changed = False
    for pid, ppid in parent.items():
        if pid not in keep and ppid in keep and pid not in me:
            keep.add(pid)
            changed = True
print(" ".join(map(str, sorted(keep))))
PYEOF
}

cmd_start() {
  if port_open 127.0.0.1 "$PORT"; then
    die "port $PORT is in use (a cluster already running? try: $0 status / $0 stop, or set AUDIOPAIR_RAY_PORT)"
  fi
  if port_open 127.0.0.1 "$DASHBOARD_PORT"; then
    die "dashboard port $DASHBOARD_PORT is in use (set AUDIOPAIR_RAY_DASHBOARD_PORT)"
  fi
  mkdir -p "$TEMP_DIR"
  if [[ "$RAY_AUTH_MODE" == "token" ]]; then
    # Creates ~/.ray/auth_token if it does not exist yet (the default token path every Ray client reads).
    "$RAY" get-auth-token --generate >/dev/null 2>&1 || die "could not create a Ray auth token (ray get-auth-token --generate)"
  fi
  log "starting head on 127.0.0.1:$PORT (dashboard http://127.0.0.1:$DASHBOARD_PORT, temp dir $TEMP_DIR)"
  AUDIOPAIR_RAY_CLUSTER_TAG="$TEMP_DIR" "$RAY" start --head \
    --node-ip-address=127.0.0.1 \
    --port="$PORT" \
    --ray-client-server-port="$CLIENT_PORT" \
    --include-dashboard=true \
    --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASHBOARD_PORT" \
    --dashboard-agent-listen-port="$AGENT_PORT" \
    --min-worker-port="$WORKER_PORTS" \
    --max-worker-port="$((WORKER_PORTS + 499))" \
    --num-cpus="$HEAD_CPUS" \
    --num-gpus=0 \
    --object-store-memory="$OBJECT_STORE_BYTES" \
    --temp-dir="$TEMP_DIR" \
    --disable-usage-stats \
    >"$TEMP_DIR/head-start.log" 2>&1 \
    || { cat "$TEMP_DIR/head-start.log" >&2; cmd_stop; die "ray start --head failed (log above)"; }

  if [[ "$START_WORKER" == "1" ]]; then
    # A second raylet on the same host joins the head. Ray supports this (it is how ray.cluster_utils
    # simulates multi-node clusters); it shares the head's session dir and gets its own ports.
    log "starting worker node (num-cpus $WORKER_CPUS)"
    if ! AUDIOPAIR_RAY_CLUSTER_TAG="$TEMP_DIR" "$RAY" start \
        --address="127.0.0.1:$PORT" \
        --node-ip-address=127.0.0.1 \
        --dashboard-agent-listen-port="$((AGENT_PORT + 1))" \
        --min-worker-port="$((WORKER_PORTS + 500))" \
        --max-worker-port="$((WORKER_PORTS + 999))" \
        --num-cpus="$WORKER_CPUS" \
        --num-gpus=0 \
        --object-store-memory="$OBJECT_STORE_BYTES" \
        --temp-dir="$TEMP_DIR" \
        --disable-usage-stats \
        >"$TEMP_DIR/worker-start.log" 2>&1; then
      # Fallback: a head-only cluster still runs every job (the head advertises CPUs).
      cat "$TEMP_DIR/worker-start.log" >&2
      log "WARNING: the worker node failed to start; continuing with the head only"
    fi
  fi

  # Wait until the job API answers (the dashboard starts its job module a little after `ray start` returns).
  if ! "$PY" - "$DASHBOARD_PORT" <<'PYEOF'
import sys, time, urllib.error, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/api/version"
deadline = time.time() + 90
while time.time() < deadline:
    try:
        urllib.request.urlopen(url, timeout=2)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)  # it answers (401 when token auth guards it)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
PYEOF
  then
    cmd_stop
    die "dashboard at http://127.0.0.1:$DASHBOARD_PORT did not come up within 90 s (logs: $TEMP_DIR/session_latest/logs)"
  fi
  "$RAY" job list --address "http://127.0.0.1:$DASHBOARD_PORT" >/dev/null \
    || { cmd_stop; die "the job API at http://127.0.0.1:$DASHBOARD_PORT does not answer (auth mode $RAY_AUTH_MODE)"; }
  log "ready. Submit with:"
  log "  export RAY_AUTH_MODE=$RAY_AUTH_MODE"
  log "  ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . -- python jobs/<job>.py"
}

cmd_stop() {
  local pids
  pids="$(cluster_pids)"
  if [[ -z "$pids" ]]; then
    log "no processes of the cluster under $TEMP_DIR are running"
    return 0
  fi
  log "stopping $(wc -w <<<"$pids") processes of the cluster under $TEMP_DIR"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  # Most processes exit at once; the GCS server and the autoscaler monitor tend to linger after their raylets
  # are gone, so they get SIGKILL after a short grace period (as `ray stop --force` would).
  for _ in $(seq 1 10); do
    pids="$(cluster_pids)"
    [[ -z "$pids" ]] && { log "stopped"; return 0; }
    sleep 0.5
  done
  log "force-killing: $pids"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  for _ in $(seq 1 10); do
    [[ -z "$(cluster_pids)" ]] && { log "stopped"; return 0; }
    sleep 0.5
  done
  die "processes still running after SIGKILL: $(cluster_pids)"
}

cmd_status() {
  if ! port_open 127.0.0.1 "$PORT"; then
    echo "not running (nothing listens on 127.0.0.1:$PORT)"
    return 3
  fi
  "$RAY" status --address "127.0.0.1:$PORT"
  echo "dashboard / job submission: http://127.0.0.1:$DASHBOARD_PORT"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  address) echo "http://127.0.0.1:$DASHBOARD_PORT" ;;
  env)  # for clients: eval "$(cluster/local.sh env)"
    echo "export RAY_AUTH_MODE=$RAY_AUTH_MODE"
    echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT" ;;
  *) echo "usage: $0 start|stop|status|address|env" >&2; exit 2 ;;
esac
