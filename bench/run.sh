#!/usr/bin/env bash
# make bench: every benchmark section, each printing its figures beside a baseline measured in
# the same run on the same machine.
#
#   bench/run.sh              run every section
#   bench/run.sh registry     run only the named sections
#   bench/run.sh -l           list the sections
#
# A section NAME is a script: bench/NAME.sh or bench/NAME/run.sh. Adding one is adding the
# script; this file needs no change. Sections run one after another (never in parallel: they
# share the machine), in the order of SECTION_ORDER, then any others alphabetically. The
# environment is the Makefile's TOOL_ENV (PODMESH_CONSUL_BIN and friends) plus BIN, the
# directory of the built programs.
set -euo pipefail
cd "$(dirname "$0")/.."

export BIN=${BIN:-$PWD/bin}
export GO=${GO:-go}
SECTION_ORDER=(registry proxy)

# Long-poll benchmarks hold thousands of connections; raise the open-files limit for every
# section (children inherit it). As root the hard limit can be raised too.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || ulimit -Sn 65536 2>/dev/null || true

section_script() {
  if [ -f "bench/$1.sh" ] && [ "$1" != run ]; then echo "bench/$1.sh"
  elif [ -f "bench/$1/run.sh" ]; then echo "bench/$1/run.sh"
  fi
}

all_sections() {
  local found=() s
  for f in bench/*.sh bench/*/run.sh; do
    [ -f "$f" ] || continue
    s=${f#bench/}; s=${s%/run.sh}; s=${s%.sh}
    [ "$s" = run ] && continue
    found+=("$s")
  done
  for s in "${SECTION_ORDER[@]}"; do
    for f in "${found[@]}"; do [ "$f" = "$s" ] && echo "$s"; done
  done
  for f in $(printf '%s\n' "${found[@]}" | sort -u); do
    case " ${SECTION_ORDER[*]} " in *" $f "*) ;; *) echo "$f" ;; esac
  done
}

if [ "${1:-}" = "-l" ]; then all_sections; exit 0; fi
if [ $# -gt 0 ]; then sections=("$@"); else mapfile -t sections < <(all_sections); fi

failed=()
for s in "${sections[@]}"; do
  script=$(section_script "$s")
  if [ -z "$script" ]; then
    echo "bench: no section '$s' (known: $(all_sections | tr '\n' ' '))" >&2
    exit 2
  fi
  printf '\n==================== bench: %s (%s) ====================\n' "$s" "$script"
  start=$(date +%s)
  if bash "$script"; then
    echo "---- $s done in $(( $(date +%s) - start ))s"
  else
    echo "---- $s FAILED (exit $?)"
    failed+=("$s")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench: failed sections: ${failed[*]}" >&2
  exit 1
fi
