#!/usr/bin/env bash
# bench section "launcher" (issue 5 acceptance 6): pod start, from `launcher up` to the first
# request served through each pod's sidecar, for 1 and 20 replicas of a trivial app with the
# real sidecar, beside the same processes started by hand (ip netns + veth + addresses by
# ip, then ip netns exec … unshare --pid --mount --uts --ipc) and beside the app alone, all
# in the same run; prints the launcher's own overhead per pod against the 30 ms target (a
# report: a missed target never fails it). The Go program in bench/launcher does the work on
# a bridge and subnet of its own, and removes every namespace, veth and process it made.
#
# Needs root. Environment (optional): BIN (./bin, from make build), REPLICAS (1,20),
# ROUNDS (5), BENCH_SUBNET (10.86.0.0/24), BENCH_BRIDGE (pmbench0).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BIN:=$PWD/bin}"
: "${GO:=go}"
for p in launcher sidecar registry podmesh-init; do
  [ -x "$BIN/$p" ] || { echo "no $BIN/$p: run make build" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench launcher: needs root (namespaces, veths, cgroups)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/podmesh-bench-launcher.XXXXXX")
# Apps run as nobody (65534) unless the compose file says otherwise: the app program under
# $work must be reachable by them (mktemp makes the directory 0700).
chmod 0755 "$work"
pid=""
cleanup() {
  # The program removes what it made on SIGTERM; wait for it to finish doing so.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$GO" build -o "$work/launcherbench" ./bench/launcher
# A program outside /tmp-private paths is not needed: the pods see the host's files except
# /tmp, and the launcher keeps the app's directory visible.
"$work/launcherbench" -bin "$BIN" -replicas "${REPLICAS:-1,20}" -rounds "${ROUNDS:-5}" \
  -subnet "${BENCH_SUBNET:-10.86.0.0/24}" -bridge "${BENCH_BRIDGE:-pmbench0}" -tmp "$work/run" &
pid=$!
rc=0
wait "$pid" || rc=$?
pid=""
exit "$rc"
