#!/usr/bin/env bash
# bench section "registry" (issue 2 acceptance 6): 1,000 concurrent blocking watchers on one
# service, time from one registration to the last watcher answering (p50, p99), and
# registrations per second serially and concurrently, for the registry and for a real Consul
# v1.14.0 dev agent in the same run. The Go program beside this script does the work.
#
# Environment: BIN (dir with the built registry, default ./bin), PODMESH_CONSUL_BIN (set by
# make bench), and optional WATCHERS (1000), ROUNDS (20), SERIAL (300), CONCURRENT (1000),
# CONCURRENCY (32).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin}
GO=${GO:-go}
consul=${PODMESH_CONSUL_BIN:-$HOME/.cache/podmesh/bin/consul-v1.14.0}
[ -x "$BIN/registry" ] || { echo "no $BIN/registry: run make build" >&2; exit 1; }
[ -x "$consul" ] || { echo "no consul at $consul: run make tools" >&2; exit 1; }
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

tmp=$(mktemp -d -t registry-bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$GO" build -o "$tmp/registry-bench" ./bench/registry
"$tmp/registry-bench" -registry "$BIN/registry" -consul "$consul" \
  -watchers "${WATCHERS:-1000}" -rounds "${ROUNDS:-20}" -serial "${SERIAL:-300}" \
  -concurrent "${CONCURRENT:-1000}" -concurrency "${CONCURRENCY:-32}"
