#!/usr/bin/env bash
# make demo: the shop (examples/shop) as a mesh on this machine. The launcher starts the
# registry and one pod per replica (frontend → catalog ×2 → prices, HTTP then gRPC, each pod
# with its own namespaces, cgroup and sidecar) and an ingress on a host address; load goes
# through the frontend for a few seconds and is summed up (requests, errors, latency, how the
# catalog replicas shared it, which pod runs where); then one catalog replica's app is
# SIGKILLed under load, which must fail no request, and comes back restarted; `launcher down`
# must leave no network namespace, veth, cgroup or process behind.
#
# Builds nothing (make demo builds first); needs root. Exits non-zero when a step fails and
# cleans up on every exit path. The registry demo is examples/registry-demo.sh.
#
# When `make tools` has built Prometheus and Jaeger (in ~/.cache/podmesh/bin), the demo also
# runs them on loopback: Prometheus with deploy/prometheus/prometheus.yml pointed at the
# launcher's registry, so it discovers the sidecars, the registry and the launcher; Jaeger
# starts first and `launcher up -trace-endpoint` hands its OTLP address to every sidecar
# (through the launcher's relay on the bridge); "where to look" prints their addresses, the
# frontend's trace count and link, and how to point Grafana at deploy/grafana/provisioning.
#
# Environment (optional): BIN (./bin), RATE (50 requests/s), STEADY (3s), KILL_LOAD (6s),
# SHOP_EXPOSE (the host address of the frontend; default the first free of
# 127.0.0.1:18080-18099), SHOP_PROJECT, SHOP_SUBNET, SHOP_BRIDGE (see the compose file),
# TOOLBIN (~/.cache/podmesh/bin), DEMO_HOLD (keep the shop, Prometheus and Jaeger running
# this long, e.g. 10m, before `launcher down`; Ctrl-C ends the wait; default 0).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-$PWD/bin}
RATE=${RATE:-50}
STEADY=${STEADY:-3s}
KILL_LOAD=${KILL_LOAD:-6s}
COMPOSE=examples/shop/compose.yaml
export SHOP_BIN=${SHOP_BIN:-$BIN/shop}
export SHOP_PROJECT=${SHOP_PROJECT:-shop}
export SHOP_BRIDGE=${SHOP_BRIDGE:-podmesh0}
PROJECT=$SHOP_PROJECT

began=$(date +%s%N)
tmp=$(mktemp -d -t podmesh-demo.XXXXXX)
STATE=$tmp/state
LOGS=$tmp/logs
up=0
ok=0
TOOLBIN=${TOOLBIN:-$HOME/.cache/podmesh/bin}
DEMO_HOLD=${DEMO_HOLD:-0}
OBS_PIDS=()

say() { printf '\n== %s\n' "$*"; }
fail() { echo "demo: FAIL: $*" >&2; exit 1; }
# elapsed T0 prints the time since T0 (from date +%s%N) in seconds.
elapsed() { local ms=$(( ($(date +%s%N) - $1) / 1000000 )); printf '%d.%01ds' $((ms / 1000)) $((ms % 1000 / 100)); }

# launcher runs bin/launcher with the demo's state and log directories.
launcher() { "$BIN/launcher" -state-dir "$STATE" -log-dir "$LOGS" "$@"; }
# show prints a command as a user would type it, then runs it.
show() { printf '$ launcher %s\n' "$*"; launcher "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${OBS_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${OBS_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$up" = 1 ]; then
    timeout 60 "$BIN/launcher" -state-dir "$STATE" -log-dir "$LOGS" down -p "$PROJECT" >/dev/null 2>&1 || true
  fi
  if [ "$ok" != 1 ]; then
    echo "demo: failed (exit $rc); the last lines of every log:" >&2
    for f in "$STATE/$PROJECT/launcher.log" "$LOGS/$PROJECT"/*/*.log; do
      [ -f "$f" ] || continue
      echo "---- $f" >&2
      tail -n 15 "$f" >&2
    done
    [ "$rc" = 0 ] && rc=1
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" = 0 ] || fail "the launcher creates namespaces, veths and cgroups: run as root"
for b in launcher sidecar registry podmesh-init shop/frontend shop/catalog shop/prices shop/loadgen; do
  [ -x "$BIN/$b" ] || fail "no $BIN/$b: run make build (make demo does)"
done
command -v curl >/dev/null || fail "curl is missing (make apt-deps installs it)"

# A free host address for the frontend, unless one is given.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${SHOP_EXPOSE:-}" ]; then
  for p in $(seq 18080 18099); do
    if port_free "$p"; then SHOP_EXPOSE=127.0.0.1:$p; break; fi
  done
  [ -n "${SHOP_EXPOSE:-}" ] || fail "no free port in 127.0.0.1:18080-18099; set SHOP_EXPOSE"
fi
export SHOP_EXPOSE
URL=http://$SHOP_EXPOSE/

# What exists before, to tell what the demo left.
bridge_before=0
ip link show "$SHOP_BRIDGE" >/dev/null 2>&1 && bridge_before=1
leftovers() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep "^podmesh-$PROJECT\\." | sed 's/^/netns /' || true
  for v in "${VETHS[@]}"; do
    ip link show "$v" >/dev/null 2>&1 && echo "veth $v"
  done
  find /sys/fs/cgroup -type d -name "podmesh-$PROJECT*" 2>/dev/null | sed 's/^/cgroup /' || true
  pgrep -af -- "$SHOP_BIN/|$STATE/" | grep -v pgrep | sed 's/^/process /' || true
  if [ "$bridge_before" = 0 ] && ip link show "$SHOP_BRIDGE" >/dev/null 2>&1; then echo "bridge $SHOP_BRIDGE"; fi
  port_free "${SHOP_EXPOSE##*:}" || echo "listener $SHOP_EXPOSE"
}
VETHS=()
[ -z "$(leftovers)" ] || fail "a previous run of project $PROJECT is still around: $(leftovers | tr '\n' ' ')"

# ps_col SERVICE REPLICA COLUMN prints one field of a `launcher ps` row (4 = PID,
# 5 = STATE, 6 = RESTARTS, 7 = HEALTH).
ps_col() { launcher ps -p "$PROJECT" | awk -v s="$1" -v r="$2" -v c="$3" '$1==s && $2==r {print $c}'; }

# newest TOOL prints the newest build of a tool `make tools` made, if any.
newest() { { ls -1 "$TOOLBIN/$1"-v* 2>/dev/null || true; } | sort -V | tail -n 1; }
# free_from PORT prints the first free loopback port from PORT on (ten tries).
free_from() { local p; for p in $(seq "$1" $(($1 + 9))); do port_free "$p" && { echo "$p"; return; }; done; }
PROMETHEUS=$(newest prometheus)
JAEGER=$(newest jaeger)
PROM_URL=""
JAEGER_URL=""
JAEGER_OTLP=""
# start_prometheus runs Prometheus (the shipped scrape configuration, pointed at the
# launcher's registry, scraping every 2s) in the background: it discovers the sidecars, the
# registry and the launcher there.
start_prometheus() {
  local reg obs=$tmp/obs
  mkdir -p "$obs"
  reg=$(sed -n 's/.*"registry_url": *"\(http:\/\/\)\{0,1\}\([^"]*\)".*/\2/p' "$STATE/$PROJECT/state.json" 2>/dev/null | head -n 1)
  if [ -n "$PROMETHEUS" ] && [ -n "$reg" ]; then
    local port
    port=$(free_from 9090)
    if [ -n "$port" ]; then
      sed -e "s|server: 127.0.0.1:8500|server: $reg|" -e "s|scrape_interval: 15s|scrape_interval: 2s|" \
        deploy/prometheus/prometheus.yml >"$obs/prometheus.yml"
      "$PROMETHEUS" --config.file="$obs/prometheus.yml" --storage.tsdb.path="$obs/prometheus" \
        --web.listen-address="127.0.0.1:$port" --log.level=warn >"$obs/prometheus.log" 2>&1 &
      OBS_PIDS+=($!)
      PROM_URL=http://127.0.0.1:$port
    fi
  fi
}
# start_jaeger runs Jaeger (in memory) in the background, before the launcher, which hands
# its OTLP address to every sidecar (up -trace-endpoint, through its relay on the bridge).
start_jaeger() {
  local obs=$tmp/obs
  mkdir -p "$obs"
  if [ -n "$JAEGER" ]; then
    local ui grpc otlp
    ui=$(free_from 16686); otlp=$(free_from 4318)
    grpc=${ui:+$(free_from $((ui + 1)))}
    if [ -n "$ui" ] && [ -n "$grpc" ] && [ -n "$otlp" ]; then
      cat >"$obs/jaeger.yaml" <<JAEGER
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {receivers: [otlp], exporters: [jaeger_storage_exporter]}
  telemetry: {metrics: {level: none}, logs: {level: warn}}
extensions:
  jaeger_storage: {backends: {mem: {memory: {max_traces: 10000}}}}
  jaeger_query: {enable_tracing: false, storage: {traces: mem}, http: {endpoint: "127.0.0.1:$ui"}, grpc: {endpoint: "127.0.0.1:$grpc"}}
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:$otlp"}}}
exporters:
  jaeger_storage_exporter: {trace_storage: mem}
JAEGER
      "$JAEGER" --config "$obs/jaeger.yaml" >"$obs/jaeger.log" 2>&1 &
      OBS_PIDS+=($!)
      JAEGER_URL=http://127.0.0.1:$ui
      JAEGER_OTLP=http://127.0.0.1:$otlp
    fi
  fi
}

say "starting the shop: the registry, 4 pods (prices, catalog ×2, frontend) and the ingress"
start_jaeger
t0=$(date +%s%N)
show up -d -f "$COMPOSE" ${JAEGER_OTLP:+-trace-endpoint "$JAEGER_OTLP"}
up=1
start_prometheus
# Healthy: every row of ps healthy, and the frontend answering through the ingress.
ready=0
for _ in $(seq 1 300); do
  rows=$(launcher ps -p "$PROJECT" 2>/dev/null | awk 'NR>1 && $1!="exposed"') || rows=""
  total=$(printf '%s\n' "$rows" | grep -c . || true)
  healthy=$(printf '%s\n' "$rows" | awk '$7=="healthy"' | grep -c . || true)
  if [ "$total" -ge 5 ] && [ "$healthy" = "$total" ] && curl -fsS -m 2 -o /dev/null "$URL" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
[ "$ready" = 1 ] || fail "the shop was not healthy and answering on $URL within 30s"
echo "every pod healthy and the frontend answering on $URL $(elapsed "$t0") after up"
show ps -p "$PROJECT"
mapfile -t VETHS < <(ip -o link show master "$SHOP_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1)

say "steady load: $RATE requests/s for $STEADY through $URL (ingress → frontend → catalog → prices)"
"$SHOP_BIN/loadgen" -url "$URL" -rate "$RATE" -duration "$STEADY" -label steady >"$tmp/steady.txt" ||
  { cat "$tmp/steady.txt"; fail "requests failed under steady load"; }
cat "$tmp/steady.txt"
for c in catalog-1 catalog-2; do
  grep -q "$c " "$tmp/steady.txt" || fail "$c served nothing: the load did not spread over the catalog replicas"
done

say "killing catalog-1's app with SIGKILL under load ($RATE requests/s for $KILL_LOAD)"
victim=$(ps_col catalog 1 4)
restarts_before=$(ps_col catalog 1 6)
[ -n "$victim" ] && [ "$victim" != "-" ] || fail "no pid for catalog-1 in launcher ps"
"$SHOP_BIN/loadgen" -url "$URL" -rate "$RATE" -duration "$KILL_LOAD" -label "load across the kill" >"$tmp/kill.txt" 2>&1 &
load=$!
sleep 1.5
kill -KILL "$victim"
echo "kill -9 $victim (catalog-1's app) at +1.5s"
load_rc=0
wait "$load" || load_rc=$?
cat "$tmp/kill.txt"
[ "$load_rc" = 0 ] || fail "requests failed while catalog-1 was killed and restarted"
echo "no failed request while catalog-1 died and came back"
restarted=0
for _ in $(seq 1 200); do
  pid=$(ps_col catalog 1 4)
  if [ "$(ps_col catalog 1 7)" = healthy ] && [ "$(ps_col catalog 1 6)" -gt "$restarts_before" ] && [ "$pid" != "$victim" ]; then
    restarted=1
    break
  fi
  sleep 0.1
done
[ "$restarted" = 1 ] || fail "catalog-1 was not restarted and healthy within 20s"
echo "catalog-1 restarted: pid $victim → $pid, same pod address, restarts $(ps_col catalog 1 6)"
show ps -p "$PROJECT"

# Where to look: the logs, Prometheus and Jaeger when they run, Grafana's provisioning.
where_to_look() {
  say "where to look"
  echo "a pod's logs:     launcher logs [-follow] [-c app|sidecar|init] SERVICE[/REPLICA] (this demo's are removed at its end;"
  echo "                  run launcher up -f $COMPOSE yourself to keep them, under /var/log/podmesh/$PROJECT)"
  echo "sidecar metrics:  http://POD_IP:15090/metrics of every pod (POD IP in launcher ps); admin /config inside the pod"
  if [ -n "$PROM_URL" ]; then
    local targets=""
    for _ in $(seq 1 50); do
      targets=$(curl -fsS -m 1 "$PROM_URL/api/v1/targets?state=active" 2>/dev/null | grep -o '"health":"up"' | grep -c . || true)
      [ "${targets:-0}" -gt 0 ] && break
      sleep 0.1
    done
    echo "Prometheus:       $PROM_URL (deploy/prometheus/prometheus.yml on the registry; ${targets:-0} targets up so far: sidecars, registry, launcher)"
  else
    echo "Prometheus:       not running: build it with make tools (it lands in $TOOLBIN), then run this demo again;"
    echo "                  or run your own with deploy/prometheus/prometheus.yml (see deploy/prometheus/README.md)"
  fi
  local jaeger_up=0
  for _ in $(seq 1 50); do
    [ -n "$JAEGER_URL" ] || break
    curl -fsS -m 1 -o /dev/null "$JAEGER_URL/api/services" 2>/dev/null && { jaeger_up=1; break; }
    sleep 0.1
  done
  if [ "$jaeger_up" = 1 ]; then
    # The sidecars send their spans in batches (at most 5s apart): wait for the frontend's.
    local traces=0
    for _ in $(seq 1 70); do
      traces=$(curl -fsS -m 2 "$JAEGER_URL/api/traces?service=frontend&limit=2000&lookback=1h" 2>/dev/null |
        grep -o '"traceID":"[0-9a-f]*"' | sort -u | grep -c . || true)
      [ "${traces:-0}" -gt 0 ] && break
      sleep 0.1
    done
    echo "Jaeger:           $JAEGER_URL (OTLP/HTTP on $JAEGER_OTLP, which the sidecars reach through the launcher's relay)"
    echo "                  ${traces:-0} traces of the frontend so far: $JAEGER_URL/search?service=frontend"
  elif [ -n "$JAEGER_URL" ]; then
    echo "Jaeger:           $JAEGER did not answer on $JAEGER_URL: $(tail -n 3 "$tmp/obs/jaeger.log" 2>/dev/null | tr '\n' ' ')"
  elif [ -n "$JAEGER" ]; then
    echo "Jaeger:           not started: no free loopback ports near 16686 and 4318"
  else
    echo "Jaeger:           not running: build it with make tools (it lands in $TOOLBIN), then run this demo again"
  fi
  echo "Grafana:          provisioning in $PWD/deploy/grafana/provisioning (datasource uid podmesh-prometheus, 4 dashboards);"
  echo "                  GF_PATHS_PROVISIONING=$PWD/deploy/grafana/provisioning PODMESH_PROMETHEUS_URL=${PROM_URL:-http://PROMETHEUS:9090} \\"
  echo "                  PODMESH_GRAFANA_DASHBOARDS=$PWD/deploy/grafana/dashboards grafana server (see deploy/grafana/README.md)"
  if [ "$DEMO_HOLD" != 0 ]; then
    echo "holding everything up for $DEMO_HOLD (DEMO_HOLD); Ctrl-C ends the wait"
    trap ':' INT
    sleep "$DEMO_HOLD" || true
    trap 'exit 130' INT
  fi
}
where_to_look

say "launcher down"
t1=$(date +%s%N)
show down -p "$PROJECT"
up=0
echo "stopped in $(elapsed "$t1")"
left=$(leftovers)
[ -z "$left" ] || fail "left behind after down: $left"
echo "nothing left: no podmesh-$PROJECT network namespace, none of the ${#VETHS[@]} veths, no cgroup, no process, $SHOP_EXPOSE closed"

ok=1
say "demo finished: OK in $(elapsed "$began")"
