#!/usr/bin/env bash
# The sidecar benchmark of `make bench` (issue 3 acceptance 7, issue 4 acceptance 5, issue 6
# acceptance 5): client → sidecar → sidecar → backend beside client → backend and beside
# nginx (and haproxy) as the two proxies, plain, with mTLS and with tracing, all in one run,
# measured with wrk (HTTP/1.1), h2load (h2c) and vegeta (fixed rate), and printed as ratios
# against those baselines with the issues' targets marked met or not met. It is a report:
# a missed target never fails it. The Go program in bench/proxy does the work; this script
# builds it into a temp dir and runs it, on loopback only, with bounded durations.
#
# Environment (all optional):
#   BIN                  directory with the built `sidecar` and `registry` (default ./bin)
#   PODMESH_VEGETA_BIN   vegeta; PODMESH_CONSUL_BIN: a Consul for discovery when $BIN/registry
#                        does not exist. wrk, h2load, nginx, haproxy, openssl come from PATH.
#   QUICK=1              smoke-run durations (3 s loads, 1 s warm-up) instead of 10 s / 2 s
#   BENCH_DURATION, BENCH_WARMUP (0: none), BENCH_VEGETA_DURATION   e.g. 10s
#   BENCH_CONNS (64), BENCH_THREADS (2), BENCH_H2_CONNS (64), BENCH_H2_STREAMS (10)
#   BENCH_RATE (1000), BENCH_LOAD_RATE (2000)   vegeta's fixed rates (latency; RSS under load)
#   ROUNDS (1)           run every scenario N times, interleaved, and report medians
#   PROXY_CORES (1)      per proxy: nginx worker_processes, haproxy nbthread, sidecar GOMAXPROCS
#   BACKEND (auto)       go | nginx | auto (measure both alone, keep the faster)
#   PIN_LOAD, PIN_SUT    taskset CPU lists for the load generators / everything else (default:
#                        no pinning; with 2 cores, pinning starves one side)
#   SCENARIOS            comma list of direct,nginx,haproxy,sidecar,nginx-mtls,sidecar-mtls,sidecar-tracing
#   BENCH_OUT            directory for proxy.json (the results, for later comparison)
#   BENCH_KEEP_TMP=1     keep the temp dir (generated configs, certificates, logs)
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Sidecar flags per scenario. Placeholders: {otlp} (http://host:port of the harness's OTLP/HTTP
# sink, which accepts and discards POST /v1/traces), {otlp_addr} (host:port), {registry}
# (registry URL), {side} (a or b), {tmp} (the run's temp dir). A scenario whose flags are empty
# is skipped with a message. The tracing scenario's sidecars also get
# OTEL_EXPORTER_OTLP_ENDPOINT={otlp} and OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf.

# For both sidecars in every sidecar scenario. mTLS is on by default in the sidecar (leaf and
# roots from the registry's Connect CA), so the plain `sidecar` (and tracing) scenarios turn it
# off; the scenario flags below come after these, and the last -tls wins.
: "${SIDECAR_FLAGS:=-tls=false}"
# mTLS between the sidecars (issue 4): TLS 1.3 with Connect certificates from the registry,
# callers authorized by intentions. Empty: sidecar-mtls is skipped.
: "${SIDECAR_MTLS_FLAGS:=-tls=true}"
# Tracing at 100% sampling to the OTLP sink (issue 6): the sidecar's -trace-endpoint and
# -trace-sample (parent-based; the load carries no trace context, so every request starts a
# sampled trace). Empty: sidecar-tracing is skipped. The other scenarios' sidecars run with
# every OTEL_* variable removed, so tracing is off there; the report prints the ratio.
: "${SIDECAR_TRACING_FLAGS:=-trace-endpoint {otlp\} -trace-sample 1}"
# The protocol sidecar B registers for the backend: http (HTTP/1.1 to the app) or http2 (h2c).
: "${SIDECAR_PROTOCOL:=http}"
# The sidecar's TLS handshake counter on its admin /metrics. When absent the harness counts
# sidecar B's inbound connections instead (one TLS 1.3 handshake each), or prints n/a.
: "${SIDECAR_HANDSHAKE_METRIC:=podmesh_tls_handshakes_total}"
# How to start our registry when $BIN/registry exists: {http} host:port, {data} a fresh dir.
: "${REGISTRY_FLAGS:=-http {http} -data {data}}"
# ---------------------------------------------------------------------------------------------

cd "$(dirname "$0")/.."
: "${BIN:=$PWD/bin}"
: "${GO:=go}"
export BIN SIDECAR_FLAGS SIDECAR_MTLS_FLAGS SIDECAR_TRACING_FLAGS SIDECAR_PROTOCOL \
  SIDECAR_HANDSHAKE_METRIC REGISTRY_FLAGS

work=$(mktemp -d "${TMPDIR:-/tmp}/podmesh-bench-proxy-build.XXXXXX")
pid=""
cleanup() {
  # The harness stops its own processes on SIGTERM; wait for it to finish doing so.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$GO" build -o "$work/proxybench" ./bench/proxy

# In the background so that a signal to this script reaches the trap at once; the trap
# forwards it and waits.
"$work/proxybench" &
pid=$!
rc=0
wait "$pid" || rc=$?
pid=""
exit "$rc"
