#!/usr/bin/env bash
# The whole test suite, tier by tier (docs/testing.md), as root:
#   1  unit and no-root black-box tests        cargo test --workspace
#   2  root integration tests                   cargo test --workspace -- --ignored
#   3  conformance and real clients             OCI validation suite, podman, containerd
#   4  VM end to end                            tests/vm/run-tests.sh
#   5  fuzz: each target briefly (FUZZ_SECONDS, 20)  fuzz/run.sh
#   +  leak check: nothing the suite made (containers, cgroups, mounts,
#      processes) may remain afterwards.
# Usage: scripts/test.sh [--no-setup] [TIER...]   (tiers: unit root oci podman containerd vm fuzz)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
setup=1
tiers=()
for a in "$@"; do
  case $a in
    --no-setup) setup=0 ;;
    unit|root|oci|podman|containerd|vm|fuzz) tiers+=("$a") ;;
    *) echo "test: unknown argument $a" >&2; exit 2 ;;
  esac
done
[ ${#tiers[@]} -gt 0 ] || tiers=(unit root oci podman containerd vm fuzz)
[ "$(id -u)" = 0 ] || { echo "test: run as root" >&2; exit 2; }
if [ "$setup" = 1 ]; then
  scripts/setup.sh --quiet || { echo "test: setup failed" >&2; exit 1; }
fi
AMPHI=$(command -v amphi) || { echo "test: amphi is not installed (scripts/setup.sh)" >&2; exit 1; }
export AMPHI

log=$(mktemp -d /tmp/amphi-test-logs.XXXXXX)
declare -A result=()
order=()
run_tier() { # name, command...
  local name=$1; shift
  order+=("$name")
  echo
  echo "=== tier $name: $*"
  local t0=$SECONDS
  if "$@" 2>&1 | tee "$log/$name.log"; then result[$name]="PASS"; else result[$name]="FAIL"; fi
  result[$name]="${result[$name]} ($((SECONDS - t0))s)"
}
want() { local t; for t in "${tiers[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }

tests/leaks.sh snapshot "$log/before"

want unit && run_tier unit cargo test --workspace --locked -q
want root && run_tier root cargo test --workspace --locked -q -- --ignored --test-threads=2
if want oci; then
  run_tier oci tests/oci/validation.sh --known tests/oci/known-failures.txt "$AMPHI"
fi
want podman && run_tier podman bats tests/clients/podman.bats
if want containerd; then
  if [ -f tests/clients/containerd.sh ]; then run_tier containerd tests/clients/containerd.sh; fi
fi
if want vm; then
  if [ -x tests/vm/run-tests.sh ]; then run_tier vm tests/vm/run-tests.sh; fi
fi
want fuzz && run_tier fuzz fuzz/run.sh "${FUZZ_SECONDS:-20}"

order+=("leaks")
echo
echo "=== leak check"
if tests/leaks.sh compare "$log/before"; then result[leaks]=PASS; else result[leaks]=FAIL; fi

echo
echo "=== summary (logs in $log)"
status=0
for t in "${order[@]}"; do
  printf '%-12s %s\n' "$t" "${result[$t]}"
  case ${result[$t]} in FAIL*) status=1 ;; esac
done
grep -h "passed, .* failed" "$log"/oci.log 2>/dev/null | tail -n1 | sed 's/^/oci validation: /'
exit $status
