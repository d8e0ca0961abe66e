#!/usr/bin/env bash
# The registry on its own: bash examples/registry-demo.sh, after make build (make demo runs
# the whole mesh: examples/demo.sh). Starts ./bin/registry on a free port with a temporary
# data directory, walks it through a scenario with examples/registry-demo (registrations
# with HTTP and TTL checks, a blocking watch seeing instances come, change health and go),
# then kills the registry with SIGKILL, restarts it on the same data and shows the catalog
# survived. Cleans up everything; exits non-zero if any
# step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-$PWD/bin}
GO=${GO:-go}
tmp=$(mktemp -d -t podmesh-registry-demo.XXXXXX)
reg_pid=""

cleanup() {
  if [ -n "$reg_pid" ] && kill -0 "$reg_pid" 2>/dev/null; then
    kill "$reg_pid" 2>/dev/null || true
    wait "$reg_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

# start_registry starts the registry on a free port (-http 127.0.0.1:0) and sets reg_pid and
# reg_addr from its "registry listening" log line.
start_registry() {
  : >"$tmp/registry.log"
  "$BIN/registry" -http 127.0.0.1:0 -data "$tmp/data" -node demo-node -log-level info -self-register=false \
    2>>"$tmp/registry.log" &
  reg_pid=$!
  reg_addr=""
  for _ in $(seq 1 100); do
    reg_addr=$(grep -o 'http=127.0.0.1:[0-9]*' "$tmp/registry.log" | head -1 | cut -d= -f2 || true)
    [ -n "$reg_addr" ] && curl -fsS "http://$reg_addr/v1/status/leader" >/dev/null 2>&1 && return 0
    kill -0 "$reg_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "registry did not start:" >&2
  cat "$tmp/registry.log" >&2
  exit 1
}

if [ ! -x "$BIN/registry" ]; then
  echo "no $BIN/registry: run 'make build' first" >&2
  exit 1
fi
"$GO" build -o "$tmp/registry-demo" ./examples/registry-demo

say "starting the registry (data in $tmp/data)"
start_registry
echo "registry listening on $reg_addr (pid $reg_pid)"

say "scenario: a blocking watch (consul/api Health().Service) follows services web and api"
"$tmp/registry-demo" -registry "$reg_addr"

say "the catalog over plain HTTP"
curl -fsS "http://$reg_addr/v1/catalog/services"; echo
echo "checks (GET /v1/agent/checks):"
curl -fsS "http://$reg_addr/v1/agent/checks" | grep -o '"CheckID":"[^"]*","Name":"[^"]*","Status":"[^"]*"' | sed 's/^/  /' 

say "kill -9 the registry and restart it on the same data directory"
before=$(curl -fsS "http://$reg_addr/v1/agent/services" | tr -d ' \n')
kill -9 "$reg_pid"; wait "$reg_pid" 2>/dev/null || true
start_registry
echo "restarted on $reg_addr (pid $reg_pid)"
after=$(curl -fsS "http://$reg_addr/v1/agent/services" | tr -d ' \n')
idx=$(curl -fsS -D - -o /dev/null "http://$reg_addr/v1/catalog/services" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-consul-index"{print $2}')
if [ "$before" != "$after" ]; then
  echo "FAIL: agent services differ after the restart" >&2
  echo "before: $before" >&2
  echo "after:  $after" >&2
  exit 1
fi
echo "agent services identical after kill -9 and restart; X-Consul-Index of the service list: $idx"
curl -fsS "http://$reg_addr/v1/catalog/services"; echo

say "demo finished: OK"
