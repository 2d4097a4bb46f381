#!/usr/bin/env bats
# `amphi bench` on this host, black box: the quick suite in container
# isolation with runc and crun beside it, its JSON and HTML (rendered by
# headless chromium and checked), refusals of bad input, Ctrl-C, and that
# nothing is left behind. The both-isolations run is the test host's
# `bench` suite; its report is screenshot-checked here when it exists.
#
# Run by scripts/test.sh (tier bench) as root: bats tests/bench/bench.bats
# AMPHI (default: amphi on PATH) is the binary under test; amphi-workload
# must be beside it (scripts/setup.sh installs both).

bats_require_minimum_version 1.5.0

setup_file() {
  export AMPHI=${AMPHI:-$(command -v amphi)}
  [ -x "$AMPHI" ] || skip "amphi is not installed (scripts/setup.sh)"
  export OUT=$(mktemp -d /tmp/amphi-bench-test.XXXXXX)
  export REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
}

teardown_file() {
  rm -rf "$OUT"
}

# Workload processes still running. A killed container's init is reaped by
# whoever inherited it (this host's init, in its own time): a zombie has
# released everything, so it does not count.
live_workloads() { ps -eo stat=,pid=,comm= | awk '$1 !~ /^Z/ && $3 == "amphi-workload"'; }

# Nothing of a run is left: work directory, network namespace, veth,
# overlay mount, workload process.
nothing_left() {
  local left
  left=$(ls -d /run/amphi-bench.* 2>/dev/null; ip netns list 2>/dev/null | grep amphi-bench;
    ip -o link 2>/dev/null | grep -o 'abh[0-9]*'; grep amphi-bench /proc/self/mountinfo; live_workloads)
  [ -z "$left" ] || { echo "left behind: $left"; return 1; }
}

@test "the quick suite in container isolation, beside runc and crun, writes JSON and HTML" {
  run --separate-stderr "$AMPHI" --isolation container bench --suite quick --runs 2 --density 1,2 \
    --compare runc,crun --json "$OUT/results.json" --html "$OUT/report.html"
  echo "$stderr" | tail -n 20
  [ "$status" -eq 0 ]
  # The table: every group, ratios against amphi's container isolation.
  [[ "$output" == *Lifecycle* && "$output" == *Network* && "$output" == *"x"* ]]
  jq -e '.schema == 1 and (.steps | length) == 24' "$OUT/results.json"
  # memory.cgroup is amphi's own view (events --stats): amphi's series only.
  jq -e 'all(.steps[]; ([.series[].subject] | unique) ==
      (if .id == "memory.cgroup" then ["container"] else ["container", "crun", "runc"] end))' "$OUT/results.json"
  jq -e '[.steps[].series[] | select(.error != null)] | length == 0' "$OUT/results.json"
  jq -e 'all(.steps[].series[]; (.samples | length) == (if .x == null then 2 else 1 end))' "$OUT/results.json"
  jq -e 'all(.steps[].series[].samples[]; . > 0)' "$OUT/results.json"
  jq -e '.host.cpus > 0 and (.host.kernel | length) > 0 and .settings.runs == 2' "$OUT/results.json"
  # Self-contained: no script, nothing fetched.
  ! grep -q '<script' "$OUT/report.html"
  ! grep -Eo '(src|href)="https?://' "$OUT/report.html"
  nothing_left
}

@test "the HTML report renders in headless chromium and its charts have content" {
  [ -f "$OUT/report.html" ] || skip "the previous test made no report"
  MIN_SVG=9 run tests/bench/screenshot-check.sh "$OUT/report.html" "$OUT/report.png"
  echo "$output"
  [ "$status" -ne 77 ] || skip "${output##*skip: }"
  [ "$status" -eq 0 ]
}

@test "the screenshot check itself fails on a blank page and passes on a sample report" {
  command -v chromium >/dev/null || skip "chromium is not installed (apt-get install chromium)"
  run tests/bench/screenshot-check.sh --self-test
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"blank.png does not look like a rendered report"* ]]
}

@test "the test host's both-isolations report renders and has content" {
  local r=$REPO/target/testhost/bench/report.html
  [ -f "$r" ] || skip "no report from the testhost tier's bench suite ($r): run scripts/test.sh testhost first"
  MIN_SVG=9 run tests/bench/screenshot-check.sh "$r" "$OUT/testhost-report.png"
  echo "$output"
  [ "$status" -ne 77 ] || skip "${output##*skip: }"
  [ "$status" -eq 0 ]
}

@test "a bundle's own process is timed: create, start, exit, delete; its rootfs is not written" {
  before=$(find "$REPO/bundles/hello/rootfs" -newer "$REPO/bundles/hello/config.json" | wc -l)
  run --separate-stderr "$AMPHI" --isolation container bench --bundle "$REPO/bundles/hello" --runs 2 --warmup 0 --json "$OUT/bundle.json"
  echo "$stderr" | tail -n 5
  [ "$status" -eq 0 ]
  jq -e '[.steps[].id] == ["lifecycle.create", "lifecycle.start", "lifecycle.exit", "lifecycle.delete", "lifecycle.total"]' "$OUT/bundle.json"
  [ "$(find "$REPO/bundles/hello/rootfs" -newer "$REPO/bundles/hello/config.json" | wc -l)" = "$before" ]
  nothing_left
}

@test "bad input is refused with the thing named, a usage exit and nothing left" {
  run "$AMPHI" bench --runs 0
  [ "$status" -eq 2 ] && [[ "$output" == *"--runs must be at least 1"* ]]
  run "$AMPHI" bench --density 0,3 --only density
  [ "$status" -eq 2 ] && [[ "$output" == *"--density"* ]]
  run "$AMPHI" bench --bundle /nonexistent/bundle
  [ "$status" -ne 0 ] && [[ "$output" == *"/nonexistent/bundle"* ]]
  run "$AMPHI" bench --bundle "$REPO/bundles/hello" --only cpu
  [ "$status" -eq 2 ] && [[ "$output" == *"--bundle"* ]]
  run "$AMPHI" bench --suite fast
  [ "$status" -eq 2 ]
  run "$AMPHI" --isolation both create --bundle "$REPO/bundles/hello" x
  [ "$status" -eq 2 ] && [[ "$output" == *"for \`amphi bench\` only"* ]]
  nothing_left
}

@test "VM isolation alone on a host that cannot run it is refused and says why" {
  if [ -c /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    skip "this host runs VMs: the refusal cannot be seen here"
  fi
  run "$AMPHI" --isolation vm bench --suite quick --only cpu
  [ "$status" -eq 6 ]
  [[ "$output" == *"VM isolation cannot run on this host"* ]]
  nothing_left
}

@test "Ctrl-C stops a run, removes what it created and exits 130" {
  "$AMPHI" --isolation container bench --suite quick --only density --density 3 2> "$OUT/int.err" > /dev/null &
  pid=$!
  for _ in $(seq 200); do
    [ -n "$(live_workloads)" ] && break
    sleep 0.1
  done
  [ -n "$(live_workloads)" ]
  kill -INT "$pid"
  rc=0
  wait "$pid" || rc=$?
  cat "$OUT/int.err"
  [ "$rc" -eq 130 ]
  grep -q interrupted "$OUT/int.err"
  nothing_left
}
