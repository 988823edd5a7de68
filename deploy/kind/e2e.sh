#!/usr/bin/env bash
# End-to-end check of the cluster path on a machine with Docker, kind, Helm,
# kubectl and skaffold (see README.md "Deploy to kind"):
#
#   1. create a kind cluster from deploy/kind/cluster.yaml (a name of its own);
#   2. `skaffold run` (no profile: the load generator on, chaos off; or the
#      profile MESHDEMO_E2E_PROFILE names, e.g. mtls to run it all over mutual TLS);
#   3. wait until every Deployment and StatefulSet is ready;
#   4. run a bounded load in the load generator pod while one users pod is
#      deleted gracefully (its own grace period: the drain path) and then one
#      by force (grace 0: a crash); assert zero failed calls in the summary;
#   5. check Jaeger's query API (through kubectl port-forward) for traces of
#      meshdemo-user-service and meshdemo-loadgen, and the UI through the kind
#      port mapping (127.0.0.1:30686 -> NodePort 30686);
#   6. delete the cluster, on success, failure or Ctrl-C alike.
#
# Usage: deploy/kind/e2e.sh            (takes 5 to 10 minutes; most of it is image pulls)
# Environment:
#   MESHDEMO_E2E_CLUSTER       cluster name (default: meshdemo-e2e-<pid>)
#   MESHDEMO_E2E_LOAD_SECONDS  length of the load run (default: 90; the kills need ~60)
#   MESHDEMO_E2E_UI_PORT       host port of the Jaeger UI mapping (default: 30686)
#   MESHDEMO_E2E_PROFILE       a skaffold profile of skaffold.yaml (default: none); with tls
#                              or mtls the load generator's calls are verified TLS, so the
#                              zero-failures check covers the handshakes too
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${MESHDEMO_E2E_CLUSTER:-meshdemo-e2e-$$}"
CONTEXT="kind-${CLUSTER}"
NAMESPACE="meshdemo"
LOAD_SECONDS="${MESHDEMO_E2E_LOAD_SECONDS:-90}"
UI_HOST_PORT="${MESHDEMO_E2E_UI_PORT:-30686}"
PROFILE="${MESHDEMO_E2E_PROFILE:-}"
# The NodePort the kind config maps (deploy/kind/cluster.yaml, containerPort).
UI_NODE_PORT=30686
USERS_SELECTOR="app.kubernetes.io/instance=meshdemo,app.kubernetes.io/component=users"
SERVICES=(meshdemo-user-service meshdemo-loadgen)
KUBECTL=(kubectl --context "${CONTEXT}" --namespace "${NAMESPACE}")

WORK=""
LOAD_PID=""
FORWARD_PID=""

log() { printf '%s e2e: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}

# --- prerequisites ------------------------------------------------------------------------

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is not installed (or not on PATH): $2"
}

check_tools() {
  need docker "https://docs.docker.com/engine/install/"
  need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation (v0.30.0)"
  need helm "https://helm.sh/docs/intro/install/ (v3.15 or later)"
  need kubectl "https://kubernetes.io/docs/tasks/tools/ (v1.32 to v1.35)"
  need skaffold "https://skaffold.dev/docs/install/ (v2.13 or later)"
  need python3 "any Python 3.8+, used to read JSON"
  need curl "any curl"
  docker info >/dev/null 2>&1 ||
    die "docker is installed but its daemon does not answer: is it running, may $(id -un) use it?"
  log "tools: $(kind version) | skaffold $(skaffold version) | helm $(helm version --short)"
  case "$(kind version)" in
    *v0.30.*) ;;
    *) log "warning: the node image in cluster.yaml is kind v0.30.0's; other kind versions are best effort" ;;
  esac
}

port_is_free() {
  python3 -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}

free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# --- clean-up: always -----------------------------------------------------------------------

diagnose() {
  log "diagnostics (the cluster is deleted next):"
  "${KUBECTL[@]}" get pods -o wide >&2 || true
  "${KUBECTL[@]}" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 >&2 || true
  if [[ -n "${WORK}" && -s "${WORK}/load.log" ]]; then
    log "last lines of the load's progress:"
    tail -n 20 "${WORK}/load.log" >&2 || true
  fi
}

cleanup() {
  local status=$?
  trap - EXIT
  if [[ -n "${FORWARD_PID}" ]]; then kill "${FORWARD_PID}" 2>/dev/null || true; fi
  if [[ -n "${LOAD_PID}" ]]; then kill "${LOAD_PID}" 2>/dev/null || true; fi
  if [[ ${status} -ne 0 ]]; then diagnose; fi
  log "deleting kind cluster ${CLUSTER}"
  kind delete cluster --name "${CLUSTER}" >&2 || log "warning: could not delete cluster ${CLUSTER}"
  if [[ -n "${WORK}" ]]; then rm -rf "${WORK}"; fi
  if [[ ${status} -eq 0 ]]; then log "PASS"; fi
  exit "${status}"
}

# --- steps ------------------------------------------------------------------------------------

create_cluster() {
  port_is_free "${UI_HOST_PORT}" ||
    die "127.0.0.1:${UI_HOST_PORT} is in use (another meshdemo cluster?); set MESHDEMO_E2E_UI_PORT"
  sed "s/hostPort: ${UI_NODE_PORT}/hostPort: ${UI_HOST_PORT}/" \
    "${ROOT}/deploy/kind/cluster.yaml" >"${WORK}/cluster.yaml"
  grep -q "hostPort: ${UI_HOST_PORT}" "${WORK}/cluster.yaml" ||
    die "deploy/kind/cluster.yaml has no hostPort ${UI_NODE_PORT} mapping to move"
  log "creating kind cluster ${CLUSTER} (1 control plane, 2 workers)"
  kind create cluster --name "${CLUSTER}" --config "${WORK}/cluster.yaml" --wait 180s
}

deploy() {
  local profile_args=()
  if [[ -n "${PROFILE}" ]]; then
    profile_args=(--profile "${PROFILE}")
  fi
  log "skaffold run ${profile_args[*]}: build the image, load it into kind, install the chart"
  (cd "${ROOT}" && skaffold run --kube-context "${CONTEXT}" --status-check=true "${profile_args[@]}")
}

wait_ready() {
  log "waiting for every Deployment and StatefulSet in ${NAMESPACE}"
  "${KUBECTL[@]}" wait deployment --all --for=condition=Available --timeout=300s
  local set
  for set in $("${KUBECTL[@]}" get statefulset -o name); do
    "${KUBECTL[@]}" rollout status "${set}" --timeout=300s
  done
  "${KUBECTL[@]}" get pods -o wide >&2
}

# Succeeds once every users replica is Ready again (after a kill), within 180 s.
wait_users_ready() {
  local deadline=$((SECONDS + 180)) ready wanted
  while ((SECONDS < deadline)); do
    ready="$("${KUBECTL[@]}" get deployment meshdemo-users -o jsonpath='{.status.readyReplicas}')"
    wanted="$("${KUBECTL[@]}" get deployment meshdemo-users -o jsonpath='{.spec.replicas}')"
    if [[ "${ready:-0}" == "${wanted}" ]]; then
      log "users: ${ready}/${wanted} ready"
      return 0
    fi
    sleep 2
  done
  die "the users pods did not all become Ready again within 180 s"
}

# A random Running users pod that is not already terminating.
pick_users_pod() {
  "${KUBECTL[@]}" get pods --selector "${USERS_SELECTOR}" \
    --field-selector status.phase=Running --output json |
    python3 -c 'import json, random, sys
pods = [p["metadata"]["name"] for p in json.load(sys.stdin)["items"]
        if not p["metadata"].get("deletionTimestamp")]
print(random.choice(pods) if pods else "")'
}

load_running() {
  [[ -n "${LOAD_PID}" ]] && kill -0 "${LOAD_PID}" 2>/dev/null
}

kill_pod() {
  local how="$1" pod
  load_running || die "the load ended before the ${how} kill: raise MESHDEMO_E2E_LOAD_SECONDS"
  pod="$(pick_users_pod)"
  [[ -n "${pod}" ]] || die "no Running users pod to kill"
  if [[ "${how}" == "graceful" ]]; then
    log "deleting ${pod} gracefully (its own grace period: preStop, drain, stop)"
    "${KUBECTL[@]}" delete pod "${pod}" --wait=false
  else
    log "deleting ${pod} by force (grace 0: killed at once)"
    "${KUBECTL[@]}" delete pod "${pod}" --grace-period=0 --force --wait=false
  fi
  # The replacement comes up while the load goes on.
  sleep 5
  wait_users_ready
}

run_load_with_kills() {
  START_TIME="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  log "load for ${LOAD_SECONDS} s in deploy/meshdemo-loadgen, pods killed meanwhile"
  # The container's own MESH_TARGET, MESH_AUTH_SECRET and OTEL_* apply; the token is
  # minted in the pod from its secret. $1 is expanded by the pod's shell, not here.
  # shellcheck disable=SC2016
  "${KUBECTL[@]}" exec deploy/meshdemo-loadgen -c loadgen -- sh -c \
    'MESH_TOKEN="$(python -m client token --roles admin --ttl 900)" exec python -m client \
      load --json --no-live --duration "$1" --rps 40 --concurrency 8 --max-calls 100000' \
    sh "${LOAD_SECONDS}" >"${WORK}/summary.json" 2>"${WORK}/load.log" &
  LOAD_PID=$!
  sleep 15
  kill_pod graceful
  sleep 10
  kill_pod force
  log "waiting for the load to finish"
  local status=0
  wait "${LOAD_PID}" || status=$?
  LOAD_PID=""
  [[ ${status} -eq 0 ]] || die "the load exited with ${status} (see its progress below)"
}

check_summary() {
  python3 - "${WORK}/summary.json" <<'PY'
import json
import sys

with open(sys.argv[1], encoding="utf-8") as stream:
    summary = json.loads(stream.read().strip().splitlines()[-1])
print(
    f"load: {summary['calls']} calls, {summary['ok']} ok, {summary['failed']} failed, "
    f"{summary['retries']} retries, errors {summary['errors_by_code']}",
    file=sys.stderr,
)
if summary["ok"] == 0:
    sys.exit("FAIL: no call succeeded")
if summary["failed"] != 0:
    sys.exit(f"FAIL: {summary['failed']} calls failed during the pod kills")
PY
}

start_port_forward() {
  local port
  port="$(free_port)"
  JAEGER="http://127.0.0.1:${port}"
  "${KUBECTL[@]}" port-forward service/meshdemo-jaeger "${port}:16686" --address 127.0.0.1 \
    >"${WORK}/port-forward.log" 2>&1 &
  FORWARD_PID=$!
  local tries
  for tries in $(seq 1 30); do
    if curl -fsS -o /dev/null "${JAEGER}/api/v3/services"; then
      log "Jaeger's query API at ${JAEGER} (after ${tries} tries)"
      return 0
    fi
    sleep 1
  done
  die "no answer from Jaeger through kubectl port-forward: $(cat "${WORK}/port-forward.log")"
}

# Succeeds when Jaeger lists every name in SERVICES, within 60 s (spans leave in batches).
check_services() {
  local tries
  for tries in $(seq 1 30); do
    curl -fsS "${JAEGER}/api/v3/services" >"${WORK}/services.json" || true
    if python3 - "${WORK}/services.json" "${SERVICES[@]}" <<'PY'; then
import json
import sys

try:
    with open(sys.argv[1], encoding="utf-8") as stream:
        known = set(json.load(stream).get("services") or [])
except ValueError:
    known = set()
missing = [name for name in sys.argv[2:] if name not in known]
print(f"Jaeger services: {sorted(known)}; missing: {missing}", file=sys.stderr)
sys.exit(1 if missing else 0)
PY
      return 0
    fi
    log "waiting for spans to reach Jaeger (${tries}/30)"
    sleep 2
  done
  die "Jaeger does not list ${SERVICES[*]}"
}

# Succeeds when /api/v3/traces finds traces of service $1 between START_TIME and now.
check_traces() {
  local service="$1" end url code
  end="$(date -u -d '+1 minute' +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u -v+1M +%Y-%m-%dT%H:%M:%SZ)"
  url="${JAEGER}/api/v3/traces?query.service_name=${service}"
  url+="&query.start_time_min=${START_TIME}&query.start_time_max=${end}&query.num_traces=20"
  code="$(curl -sS -o "${WORK}/traces.json" -w '%{http_code}' "${url}")"
  # Jaeger answers 404 when no trace matches.
  [[ "${code}" == "200" ]] || die "no trace of ${service} in Jaeger (HTTP ${code} from ${url})"
  python3 - "${WORK}/traces.json" "${service}" <<'PY'
import json
import sys

with open(sys.argv[1], encoding="utf-8") as stream:
    body = json.load(stream)
# The OTLP JSON of the traces; recent releases wrap it in {"result": ...}.
data = body.get("result") or body
spans = [
    span
    for resource in data.get("resourceSpans") or []
    for scope in resource.get("scopeSpans") or resource.get("instrumentationLibrarySpans") or []
    for span in scope.get("spans") or []
]
traces = {span.get("traceId") for span in spans}
print(f"{sys.argv[2]}: {len(traces)} traces, {len(spans)} spans since the load began",
      file=sys.stderr)
sys.exit(0 if spans else f"FAIL: no span of {sys.argv[2]} in the answer")
PY
}

# The kind port mapping: skaffold.yaml makes Jaeger's Service a NodePort (30686), and the
# chart's NetworkPolicy admits the UI port from anywhere when it is one.
check_ui_node_port() {
  log "checking Jaeger's UI on NodePort ${UI_NODE_PORT} -> http://127.0.0.1:${UI_HOST_PORT}"
  local tries
  for tries in $(seq 1 30); do
    if curl -fsS -o /dev/null "http://127.0.0.1:${UI_HOST_PORT}/"; then
      log "Jaeger UI answers at http://127.0.0.1:${UI_HOST_PORT}/ (after ${tries} tries)"
      return 0
    fi
    sleep 1
  done
  die "Jaeger UI does not answer through the kind port mapping at 127.0.0.1:${UI_HOST_PORT}"
}

main() {
  check_tools
  WORK="$(mktemp -d)"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  create_cluster
  deploy
  wait_ready
  run_load_with_kills
  check_summary
  start_port_forward
  check_services
  local service
  for service in "${SERVICES[@]}"; do
    check_traces "${service}"
  done
  check_ui_node_port
}

main "$@"
