#!/usr/bin/env bash
# The whole test suite, tier by tier (docs/testing.md), as root:
#   lint        cargo fmt --check; cargo clippy --all-targets -D warnings;
#               fuzz/Cargo.lock up to date
#   unit        unit and no-root black-box tests        cargo test --workspace
#   root        root integration tests                   cargo test --workspace -- --ignored
#   crash       kill -9 of every command at named points and random
#               moments; torn state files              tests/crash/kill9.sh
#   load        200 lifecycles 16 at a time; 1,000 containers in one store
#                                                       tests/load/lifecycles.sh
#   oci podman containerd docker   conformance and real clients on this host
#   cri         a Kubernetes pod through containerd's CRI plugin, handler
#               amphi                                   tests/cri/run.sh amphi
#   vm          VM end to end                           tests/vm/run-tests.sh
#   testhost    real clients and the pure-cgroup2 root tests in the full
#               test host                               tests/testhost/run-tests.sh
#   bench       amphi bench: the quick suite in container isolation beside
#               runc and crun, its report rendered by headless chromium,
#               bad input, Ctrl-C; and the screenshot check of the test
#               host's both-isolations report      bats tests/bench/bench.bats
#   fuzz        each fuzz target briefly (FUZZ_SECONDS, default 20 s each)
#                                                       fuzz/run.sh
#   +  leak check: nothing the suite made (containers, cgroups, mounts,
#      processes) may remain afterwards.
# Usage: scripts/test.sh [--no-setup] [TIER...]
#   (tiers: lint unit root crash load oci podman containerd cri docker vm testhost bench fuzz; default all)
#   env: FUZZ_SECONDS (default 20); AMPHI_TEST_MINUTES, the run's time limit
#   (default: none, 85 under CI=true)
# The summary shows each tier as PASS, FAIL or SKIP (reason) with its
# counts; a test that could not run is counted as skipped, never passed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
all=(lint unit root crash load oci podman containerd cri docker vm testhost bench fuzz)
setup=1
tiers=()
for a in "$@"; do
  case $a in
    --no-setup) setup=0 ;;
    *) [[ " ${all[*]} " == *" $a "* ]] || { echo "test: unknown argument $a (tiers: ${all[*]})" >&2; exit 2; }
       tiers+=("$a") ;;
  esac
done
[ ${#tiers[@]} -gt 0 ] || tiers=("${all[@]}")
[ "$(id -u)" = 0 ] || { echo "test: run as root" >&2; exit 2; }
# CI gives the whole run 90 minutes, clone and setup included, and kills
# it there with no summary. Under CI=true the run keeps to
# AMPHI_TEST_MINUTES (default 85, from here): the testhost tier's budget
# (its stall retries) ends 2 minutes before that, and the fuzz tier, last,
# is skipped with the reason when what is left cannot hold it.
deadline=
if [ -n "${AMPHI_TEST_MINUTES:-}" ] || [ "${CI:-}" = true ]; then
  deadline=$((SECONDS + ${AMPHI_TEST_MINUTES:-85} * 60))
fi
if [ "$setup" = 1 ]; then
  scripts/setup.sh --quiet || { echo "test: setup failed" >&2; exit 1; }
fi
AMPHI=$(command -v amphi) || { echo "test: amphi is not installed (scripts/setup.sh)" >&2; exit 1; }
export AMPHI

log=$(mktemp -d /tmp/amphi-test-logs.XXXXXX)
declare -A result=()
order=()
tp=0 tf=0 ts=0 tk=0

# verdict LOG STATUS SECONDS: sets V to "PASS (...)", "FAIL (...)" or
# "SKIP (reason)" and adds the counts to the totals (not in a subshell, or
# the totals would be lost).
# Counts come from the log's last "N passed, M failed[, K skipped]" line,
# else from TAP lines (bats); a skip's reason from its first "SKIPPED: why"
# (or TAP "# skip why").
verdict() {
  local log=$1 rc=$2 secs=$3 counts p f k reason what
  counts=$(grep -a -E '[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1 |
    sed -E 's/^(.*[^0-9])?([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?.*/\2 \3 \5/')
  [ -n "$counts" ] || counts=$(awk '/^ok / { if (tolower($0) ~ /# skip/) s++; else p++ } /^not ok / { f++ }
    END { if (p + f + s) print p + 0, f + 0, s + 0 }' "$log")
  read -r p f k <<< "${counts:-}"
  reason=$(grep -a -m 1 -o -E 'SKIPPED: .*' "$log" | sed 's/^SKIPPED: //')
  [ -n "$reason" ] || reason=$(grep -a -m 1 -o -i -E '^ok .*# skip .*' "$log" | sed -E 's/.*# [Ss][Kk][Ii][Pp] //')
  if [ -n "$counts" ]; then
    tp=$((tp + p)) ts=$((ts + ${k:-0}))
    if [ "$rc" = 0 ]; then tk=$((tk + f)); else tf=$((tf + f)); fi
  fi
  if [ "$rc" = 0 ] && [ -n "$counts" ] && [ "$p" = 0 ] && [ "$f" = 0 ] && { [ "${k:-0}" -gt 0 ] || [ -n "$reason" ]; }; then
    V="SKIP (${reason:-no reason given}; ${secs}s)"
    return
  fi
  if [ "$rc" = 0 ] && [ -z "$counts" ] && [ -n "$reason" ]; then
    V="SKIP ($reason; ${secs}s)"
    return
  fi
  what=
  if [ -n "$counts" ]; then
    what="$p passed"
    if [ "$f" != 0 ]; then
      if [ "$rc" = 0 ]; then what="$what, $f known failures"; else what="$what, $f failed"; fi
    fi
    [ "${k:-0}" != 0 ] && what="$what, $k skipped"
    what="$what, "
  fi
  if [ "$rc" = 0 ]; then V="PASS (${what}${secs}s)"; else V="FAIL (${what}${secs}s)"; fi
}

run_tier() { # name, command...
  local name=$1 t0=$SECONDS rc
  shift
  order+=("$name")
  echo
  echo "=== tier $name: $*"
  "$@" 2>&1 | tee "$log/$name.log"
  rc=${PIPESTATUS[0]}
  verdict "$log/$name.log" "$rc" $((SECONDS - t0))
  result[$name]=$V
}
want() { [[ " ${tiers[*]} " == *" $1 "* ]]; }
# skip_tier NAME REASON: the tier did not run; the summary says why.
skip_tier() {
  order+=("$1")
  echo
  echo "=== tier $1: SKIPPED: $2" | tee "$log/$1.log"
  verdict "$log/$1.log" 0 0
  result[$1]=$V
}
# The testhost tier leaves the bench tier 2 minutes (it takes about 1);
# fuzz needs about 10 (its AFL++ build, about 8, and 6 targets of
# FUZZ_SECONDS) and gives way to testhost's stall retries.
fuzz_secs=${FUZZ_SECONDS:-20}
fuzz_need=$((600 + 6 * fuzz_secs))

# The CI gates of DEVELOPERS.md, as a tier: formatting and lints.
lint() {
  local p=0 f=0
  if cargo fmt --all -- --check; then p=$((p + 1)); echo "ok - cargo fmt --check"; else f=$((f + 1)); echo "not ok - cargo fmt --check (run cargo fmt --all)"; fi
  if cargo clippy --workspace --all-targets --locked -q -- -D warnings; then
    p=$((p + 1)); echo "ok - cargo clippy -D warnings"
  else
    f=$((f + 1)); echo "not ok - cargo clippy -D warnings"
  fi
  # The fuzz crate is a workspace of its own with its own lock file: a new
  # dependency of amphi must be in it too, or the fuzz tier fails at the
  # end of a run; this says so in seconds.
  if cargo fetch --locked --target x86_64-unknown-linux-gnu --manifest-path fuzz/Cargo.toml > /dev/null; then
    p=$((p + 1)); echo "ok - fuzz/Cargo.lock is up to date"
  else
    f=$((f + 1)); echo "not ok - fuzz/Cargo.lock is out of date (run: cd fuzz && cargo update -w)"
  fi
  echo "lint: $p passed, $f failed"
  [ "$f" = 0 ]
}

tests/leaks.sh snapshot "$log/before"

want lint && run_tier lint lint
want unit && run_tier unit tests/cargo-test.sh unit --workspace --locked
# The CRI test is its own tier (it prints its checks one by one).
want root && run_tier root tests/cargo-test.sh root --workspace --locked -- --ignored --test-threads=2 \
  --skip a_pod_runs_through_the_cri_and_leaves_nothing_behind
want crash && run_tier crash tests/crash/kill9.sh 100
want load && run_tier load tests/load/lifecycles.sh 200 16 1000
want oci && run_tier oci tests/oci/validation.sh --known tests/oci/known-failures.txt "$AMPHI"
want podman && run_tier podman bats tests/clients/podman.bats
want containerd && run_tier containerd tests/clients/containerd.sh
want cri && run_tier cri tests/cri/run.sh amphi
want docker && run_tier docker tests/clients/docker.sh
want vm && run_tier vm tests/vm/run-tests.sh
want testhost && TESTHOST_LEFT=${deadline:+$((deadline - SECONDS - 120))} run_tier testhost tests/testhost/run-tests.sh
want bench && run_tier bench bats --tap tests/bench/bench.bats
if want fuzz; then
  if [ -n "$deadline" ] && [ $((deadline - SECONDS)) -lt "$fuzz_need" ]; then
    skip_tier fuzz "no time: $((deadline - SECONDS))s left of the run's ${AMPHI_TEST_MINUTES:-85} minutes, the tier needs ${fuzz_need}s"
  else
    run_tier fuzz fuzz/run.sh "$fuzz_secs"
  fi
fi

order+=("leaks")
echo
echo "=== leak check"
if tests/leaks.sh compare "$log/before"; then result[leaks]=PASS; else result[leaks]=FAIL; fi

# What failed, a few lines per failed tier, just above the summary: CI
# keeps only the end of a run's output, and a failure deep in a long
# tier's log would otherwise show there as a count alone.
for t in "${order[@]}"; do
  case ${result[$t]} in
    FAIL*) if [ -f "$log/$t.log" ]; then
             echo
             echo "=== what failed in $t ($log/$t.log)"
             awk -v max=12 -f tests/failure-digest.awk "$log/$t.log"
           fi ;;
  esac
done

echo
echo "=== summary (logs in $log)"
status=0
for t in "${order[@]}"; do
  printf '%-12s %s\n' "$t" "${result[$t]}"
  case ${result[$t]} in FAIL*) status=1 ;; esac
done
echo "total: $tp passed, $tf failed, $ts skipped$([ "$tk" = 0 ] || echo ", $tk known failures")"
exit $status
