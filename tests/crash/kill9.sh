#!/usr/bin/env bash
# Crash consistency, container isolation: `kill -9` of an amphi command at
# any moment is recoverable (docs/security.md, "Crash consistency").
#
# Each round kills one command (create, run -d, start, exec, update, kill,
# delete) either at a named point in the code (AMPHI_FAULT=<point>: the
# process SIGKILLs itself there, src/container/fault.rs) or after a random
# delay, then checks, each with a time limit so that a hang is a failure:
#   - `state` and `list` still answer, with a known status;
#   - `delete --force` succeeds (no lock is left held: AMPHI_LOCK_TIMEOUT
#     is short here, so a child holding it would fail the round);
#   - nothing is left: no state directory, no cgroup named after the id in
#     any hierarchy, no container process, no amphi process of the round,
#     no mount under the state directory.
# Then torn state files: truncated, not JSON, an unknown format; `state`
# names the file, `delete --force` still removes the running container.
#
# Usage: tests/crash/kill9.sh [KILLS]   (kills in all, at least: those at
#   named points, then at random moments until KILLS; default 100)
# Env: AMPHI (default target/debug/amphi), ISOLATION (container|vm, default
#   container; vm needs a /dev/kvm that boots stock kernels: the test host).
#   Needs root. TAP-ish output, then
#   "crash: N passed, M failed" and a line with the kill counts.
set -u
repo=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${1:-100}
amphi=${AMPHI:-$repo/target/debug/amphi}
isolation=${ISOLATION:-container}
if [ "$(id -u)" != 0 ]; then
  echo "SKIPPED: needs root (containers with cgroups)"
  echo "crash: 0 passed, 0 failed, 1 skipped"
  exit 0
fi
[ -x "$amphi" ] || { echo "crash: no amphi at $amphi (cargo build, or set AMPHI)" >&2; exit 2; }

work=$(mktemp -d /tmp/amphi-crash.XXXXXX)
root=/run/amphi-crash.$$
marker=7$RANDOM$RANDOM
# Short, so that a lock left held fails the round instead of hanging it;
# longer in VM isolation, where a create holds it while a guest boots.
if [ "$isolation" = vm ]; then export AMPHI_LOCK_TIMEOUT=60; else export AMPHI_LOCK_TIMEOUT=10; fi
cleanup() {
  local d
  for d in "$root"/*/; do [ -d "$d" ] && timeout 30 "$amphi" --root "$root" delete --force "$(basename "$d")"; done
  rm -rf "$work" "$root"
}
trap cleanup EXIT

bundle=$work/bundle
. "$repo/tests/lib/bundle.sh"
test_bundle "$bundle" "$isolation" /bin/sleep "$marker"

pass=0 fail=0 kills=0 named=0 finished=0 n=0
limit=30
[ "$isolation" = vm ] && limit=180
a() { timeout "$limit" "$amphi" --root "$root" "$@"; }

# The round's container, started or created, as the command needs it.
prepare() { # ID WANT: none|created|running
  case $2 in
    none) ;;
    created) a create --bundle "$bundle" "$1" ;;
    running) a create --bundle "$bundle" "$1" && a start "$1" ;;
  esac
}

# What must hold after a kill; prints why not.
check() { # ID
  local id=$1 out st left
  out=$(timeout 10 "$amphi" --root "$root" state "$id" 2>&1)
  st=$?
  [ "$st" = 124 ] && { echo "state hung"; return 1; }
  if [ "$st" = 0 ]; then
    st=$(sed -n 's/.*"status": *"\([a-z]*\)".*/\1/p' <<< "$out" | head -n 1)
    [[ " creating created running paused stopped " == *" $st "* ]] || { echo "state: odd status: $out"; return 1; }
  fi
  timeout 10 "$amphi" --root "$root" list > /dev/null || { echo "list failed or hung"; return 1; }
  out=$(timeout $((limit + 10)) "$amphi" --root "$root" delete --force "$id" 2>&1) || { echo "delete --force: $out"; return 1; }
  [ ! -e "$root/$id" ] || { echo "state directory left: $root/$id"; return 1; }
  left=$(find /sys/fs/cgroup -maxdepth 3 -type d -name "amphi-$id" 2>/dev/null)
  [ -z "$left" ] || { echo "cgroups left: $left"; return 1; }
  # The workload dies with its cgroup; give SIGKILL a moment to land.
  for _ in 1 2 3 4 5 6 7 8 9 10; do pgrep -f "sleep $marker" > /dev/null || break; sleep 0.05; done
  left=$(pgrep -a -f "sleep $marker")
  [ -z "$left" ] || { echo "container processes left: $left"; return 1; }
  left=$(pgrep -a -f "amphi --root $root .*$id\$")
  [ -z "$left" ] || { echo "amphi processes left (an init, the VMM or a command): $left"; return 1; }
  ! grep -q "$root/$id" /proc/self/mountinfo || { echo "mounts left under $root/$id"; return 1; }
}

# The verdict on a round: `check`, then an ok/not ok line; what a failed
# round left is removed so that the next rounds start clean.
verdict() { # ID TITLE
  local why
  if why=$(check "$1" 2>&1); then
    echo "ok $n - $2"
    pass=$((pass + 1))
  else
    echo "not ok $n - $2"
    sed 's/^/#   /' <<< "$why"
    fail=$((fail + 1))
    a delete --force "$1" > /dev/null 2>&1
  fi
}

# One round: COMMAND run with a fault point or killed after DELAY seconds.
round() { # NAME WANT FAULT DELAY COMMAND...
  local name=$1 want=$2 fault=$3 delay=$4 id pid rc
  shift 4
  n=$((n + 1))
  id=crash$n
  if ! prepare "$id" "$want" > "$work/prep" 2>&1; then
    echo "not ok $n - $name: could not prepare a $want container: $(tail -n 3 "$work/prep")"
    fail=$((fail + 1))
    a delete --force "$id" > /dev/null 2>&1
    return
  fi
  local args=("${@//@ID@/$id}")
  # An empty AMPHI_FAULT names no point.
  AMPHI_FAULT=$fault "$amphi" --root "$root" "${args[@]}" > /dev/null 2>&1 < /dev/null &
  pid=$!
  if [ -z "$fault" ]; then
    read -r -t "$delay" <> <(:) || true
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  rc=$?
  if [ "$rc" = 137 ]; then
    kills=$((kills + 1))
    [ -n "$fault" ] && named=$((named + 1))
  else
    finished=$((finished + 1))
  fi
  verdict "$id" "$name (exit $rc)"
}

# Named points, each command that reaches them.
for p in create:planned create:sandbox-made create:recorded create:committed; do
  round "create killed at $p" none "$p" 0 create --bundle "$bundle" @ID@
  round "run -d killed at $p" none "$p" 0 run -d --bundle "$bundle" @ID@
done
round "start killed at start:released" created start:released 0 start @ID@
for p in delete:killed delete:destroyed; do
  round "delete --force killed at $p" running "$p" 0 delete --force @ID@
  round "delete killed at $p (stopped container)" created "$p" 0 delete --force @ID@
done

# Random moments, until KILLS kills have landed in all, the named ones
# included (a command that ends before its delay is not a kill): delays up
# to twice what a create takes on this machine, measured first, so kills
# spread over every step.
t0=$(date +%s%N)
a create --bundle "$bundle" calibrate > /dev/null
t1=$(date +%s%N)
a delete --force calibrate > /dev/null
# In VM isolation a create boots a guest (seconds), so delays span one
# create for create and run, and one second for the other commands, which
# take well under that there; and those, which need a running container
# (a boot each to prepare), come up less often.
if [ "$isolation" = vm ]; then
  span=$(( (t1 - t0) / 1000000 )) short=1000
  cmds=(create create create run run start exec update delete)
else
  span=$(( (t1 - t0) / 500000 ))
  short=$span
  cmds=(create run start exec update kill delete)
fi
[ "$span" -ge 4 ] || span=4
echo "# $isolation isolation; random delays: 0-${span} ms for create and run, 0-${short} ms for the others (a create takes $(( (t1 - t0) / 1000000 )) ms here)"

for ((i = 0; kills < rounds && i < rounds * 4; i++)); do
  c=${cmds[$((RANDOM % ${#cmds[@]}))]}
  case $c in create | run) max=$span ;; *) max=$short ;; esac
  r=$(( (RANDOM * 32768 + RANDOM) % max ))
  d=$(printf '%d.%03d' $((r / 1000)) $((r % 1000)))
  case $c in
    create) round "create killed after ${d}s" none "" "$d" create --bundle "$bundle" @ID@ ;;
    run) round "run -d killed after ${d}s" none "" "$d" run -d --bundle "$bundle" @ID@ ;;
    start) round "start killed after ${d}s" created "" "$d" start @ID@ ;;
    exec) round "exec killed after ${d}s" running "" "$d" exec @ID@ /bin/sleep "$marker" ;;
    update) round "update killed after ${d}s" running "" "$d" update --pids-limit 99 @ID@ ;;
    kill) round "kill killed after ${d}s" running "" "$d" kill @ID@ KILL ;;
    delete) round "delete --force killed after ${d}s" running "" "$d" delete --force @ID@ ;;
  esac
done

# Torn or corrupted state files.
torn() { # NAME EDIT
  local name=$1 edit=$2 id out
  n=$((n + 1))
  id=torn$n
  if ! prepare "$id" running > "$work/prep" 2>&1; then
    echo "not ok $n - $name: could not start a container"
    fail=$((fail + 1))
    return
  fi
  local f=$root/$id/state.json
  case $edit in
    truncate) truncate -s 37 "$f" ;;
    garbage) printf 'not json at all \001\002' > "$f" ;;
    format) printf '{"ociVersion":"1.2.1","id":"%s","pid":"one","format":99}' "$id" > "$f" ;;
  esac
  out=$(timeout 10 "$amphi" --root "$root" state "$id" 2>&1)
  if [ $? = 0 ] || [[ $out != *"$f"* ]] || [[ $out != *"--force"* ]]; then
    echo "not ok $n - $name: state should fail naming $f and the fix: $out"
    fail=$((fail + 1))
    a delete --force "$id" > /dev/null 2>&1
    return
  fi
  verdict "$id" "$name: state names the file, delete --force removes the running container"
}
torn "truncated state.json" truncate
torn "state.json that is not JSON" garbage
torn "state.json of an unknown format" format

echo "# $isolation isolation: $kills kills ($named at named points, $((kills - named)) at random moments); $finished commands finished before their kill"
echo "crash: $pass passed, $fail failed"
[ "$fail" = 0 ]
