#!/usr/bin/env bash
# Builds the fuzz targets with cargo-afl (AFL++, stable Rust) and runs each
# for SECONDS of wall clock, one after the other, on one core, at low CPU
# priority; reports the crashes and hangs found and exits non-zero if there
# were any.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      (default: 60 s, every target)
#   fuzz/run.sh --install                  (cargo-afl and AFL++ only)
#
# Each target starts from its seeds (fuzz/corpus/<target>) plus what earlier
# runs on this machine found (FUZZ_WORK/<target>/queue), so repeated runs go
# on where the last stopped. Findings are kept in FUZZ_WORK/<target>/
# {crashes,hangs}; a found input is replayed once to print its panic.
# docs/security.md ("Fuzzing") says how to read and reproduce them.
#
# Environment: FUZZ_WORK (default /var/tmp/amphi-fuzz), AFL_TIMEOUT_MS per
# input (default 2000). Without cargo-afl, the first run installs it
# (crates.io) into ~/.cargo/bin and builds its AFL++; when that cannot be
# done the run says "SKIPPED: <why>" and exits 0 (scripts/test.sh shows the
# tier as skipped, never as passed).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
all=(spec_config agent_frames vsock_device virtio_fs modinfo cpio)
work=${FUZZ_WORK:-/var/tmp/amphi-fuzz}
timeout_ms=${AFL_TIMEOUT_MS:-2000}
CARGO_AFL_VERSION=0.18.2
say() { echo "fuzz: $*"; }

# cargo-afl at our version, with its AFL++ built for this rustc. Prints why
# not on failure.
ensure_afl() {
  command -v cargo >/dev/null || { echo "cargo is not installed"; return 1; }
  if ! cargo afl --version 2>/dev/null | grep -q "cargo-afl $CARGO_AFL_VERSION"; then
    say "installing cargo-afl $CARGO_AFL_VERSION (builds AFL++; a few minutes)" >&2
    if ! cargo install --locked --force cargo-afl --version "$CARGO_AFL_VERSION" >/dev/null 2>&1; then
      echo "cargo install cargo-afl $CARGO_AFL_VERSION failed (no network or no C toolchain?)"
      return 1
    fi
  fi
  # AFL++ is built once per rustc version; "already built" is success.
  local out
  if ! out=$(cargo afl config --build 2>&1) && ! grep -q "already built" <<<"$out"; then
    echo "cargo afl config --build failed: $(grep -m 1 -i error <<<"$out")"
    return 1
  fi
}

if [ "${1:-}" = --install ]; then
  why=$(ensure_afl) || { echo "fuzz: $why" >&2; exit 1; }
  say "cargo-afl $CARGO_AFL_VERSION ready"
  exit 0
fi

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
case $secs in '' | *[!0-9]*) echo "fuzz: SECONDS must be a number, got $secs" >&2; exit 2 ;; esac
for t in "${targets[@]}"; do
  [ -d "$here/corpus/$t" ] || { echo "fuzz: unknown target $t (targets: ${all[*]})" >&2; exit 2; }
done

if ! why=$(ensure_afl); then
  echo "SKIPPED: cargo-afl is not available: $why"
  exit 0
fi

say "building ${#targets[@]} target(s)"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
if ! (cd "$here" && nice cargo afl build --release --locked -q "${bins[@]}"); then
  echo "fuzz: build failed" >&2
  exit 1
fi

# AFL++'s checks of the machine: no core_pattern handler of ours, CPU
# frequency scaling and core binding are the host's business.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
status=0
passed=0
summary=()
for t in "${targets[@]}"; do
  clean=1
  out=$work/$t
  mkdir -p "$out"
  # Resume from what earlier runs found: their queue becomes seeds too.
  seeds=$out/seeds
  rm -rf "$seeds"
  mkdir -p "$seeds"
  cp "$here/corpus/$t"/* "$seeds"/
  # Inputs that once broke something stay in the mix.
  if [ -d "$here/regressions/$t" ]; then cp "$here/regressions/$t"/* "$seeds"/; fi
  if [ -d "$out/default/queue" ]; then
    find "$out/default/queue" -maxdepth 1 -type f -name 'id:*' -size -64k -exec cp {} "$seeds"/ \; 2>/dev/null
  fi
  rm -rf "$out/default"
  dict=()
  [ -f "$here/dict/$t.dict" ] && dict=(-x "$here/dict/$t.dict")
  say "$t: ${secs}s"
  # The harnesses' temporary directories: an input AFL kills on a timeout
  # cannot remove its own, so they all go in one place, emptied after.
  rm -rf "$out/tmp"
  mkdir -p "$out/tmp"
  TMPDIR=$out/tmp AFL_FORKSRV_INIT_TMOUT=20000 timeout $((secs + 120)) \
    nice cargo afl fuzz -i "$seeds" -o "$out" -V "$secs" -t "$timeout_ms" "${dict[@]}" -- "$here/target/release/$t" \
    >"$out/afl.log" 2>&1
  rc=$?
  rm -rf "$out/tmp"
  stats=$out/default/fuzzer_stats
  if [ ! -f "$stats" ]; then
    echo "fuzz: $t did not start (rc $rc); the end of $out/afl.log:" >&2
    tail -n 20 "$out/afl.log" >&2
    status=1
    summary+=("$t: did not run")
    continue
  fi
  get() { sed -n "s/^$1 *: *//p" "$stats"; }
  execs=$(get execs_done)
  crashes=$(get saved_crashes)
  hangs=$(get saved_hangs)
  corpus=$(get corpus_count)
  # Keep the findings where the next run does not wipe them.
  for kind in crashes hangs; do
    for f in "$out/default/$kind"/id:*; do
      [ -f "$f" ] || continue
      mkdir -p "$out/$kind"
      cp "$f" "$out/$kind/"
    done
  done
  line="$t: ${secs}s, $execs execs, corpus $corpus, crashes $crashes, hangs $hangs"
  summary+=("$line")
  say "$line"
  # One line per target and run: docs/security.md's totals are its sums.
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$secs" "$execs" "$crashes" "$hangs" >>"$work/history.tsv"
  for f in "$out/default/crashes"/id:*; do
    [ -f "$f" ] || continue
    status=1 clean=0
    echo "fuzz: $t: CRASH $f; replayed:" >&2
    timeout 20 "$here/target/release/$t" <"$f" 2>&1 | grep -v '^$' | head -n 15 >&2
  done
  # A hang under AFL's timeout may be a busy machine: one that finishes
  # when replayed alone is reported, one that still hangs fails the run.
  for f in "$out/default/hangs"/id:*; do
    [ -f "$f" ] || continue
    if timeout 20 "$here/target/release/$t" <"$f" >/dev/null 2>&1; then
      echo "fuzz: $t: slow input $f (over ${timeout_ms} ms under AFL, finishes when replayed)" >&2
    else
      status=1 clean=0
      echo "fuzz: $t: HANG $f (still running or failing after 20 s when replayed)" >&2
    fi
  done
  # Hand the next run the minimized queue, not this run's scratch.
  rm -rf "$seeds"
  passed=$((passed + clean))
done

echo
say "summary (work dir $work)"
for l in "${summary[@]}"; do echo "  $l"; done
[ $status = 0 ] && echo "fuzz: no crashes, no hangs" || echo "fuzz: FINDINGS (see above)"
# The line scripts/test.sh counts: a target passes when it ran clean.
echo "fuzz: $passed passed, $((${#targets[@]} - passed)) failed"
exit $status
