#!/usr/bin/env bash
# Project rules that go vet and staticcheck do not know about, in the style of grpc-go's
# scripts/vet.sh. Each rule says why it exists. Run by `make vet` (and so by `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
# rule NAME WHY PATTERN [EXCLUDE]: fails when the extended regexp PATTERN occurs in a non-test
# Go file whose path does not match the extended regexp EXCLUDE.
rule() {
  local name=$1 why=$2 pattern=$3 exclude=${4:-'^$'}
  local hits
  hits=$(git ls-files '*.go' | grep -v '_test\.go$' | grep -vE '^tools/' | grep -vE "$exclude" \
    | xargs -r grep -nE "$pattern" || true)
  if [ -n "$hits" ]; then
    echo "vet.sh: $name: $why"
    echo "$hits" | sed 's/^/  /'
    fail=1
  fi
}

rule interface-any 'write `any`, not `interface{}`' 'interface\{\}'
rule time-after 'time.After in a loop keeps a timer per iteration alive until it fires; use time.NewTimer and Stop' '[^.]time\.After\('
rule net-parseip 'use net/netip (netip.ParseAddr): it does not allocate and compares by value' 'net\.ParseIP\('
rule exit 'only a main may end the process; packages return errors' 'log\.Fatal|os\.Exit\(' '^(cmd|examples|bench)/|/main\.go$'
rule ioutil 'io/ioutil is deprecated; use io and os' '"io/ioutil"'
rule ctx-background 'packages take a context from their caller; context.Background belongs in mains and tests' 'context\.Background\(\)' '^(cmd|examples|bench|internal/testutil)/|/main\.go$'

exit $fail
