#!/usr/bin/env bash
# Renders amphi bench's self-contained HTML report in headless chromium and
# checks that it shows charts: the parsed page holds at least MIN_SVG <svg>
# elements (--dump-dom) and the screenshot is neither blank nor text-only
# (png-check.py, which prints each figure against its threshold). Opening
# the HTML by hand is the only other way to notice a report that renders
# as nothing.
#
# Usage: tests/bench/screenshot-check.sh REPORT.html OUT.png [PNG-CHECK OPTIONS...]
#        tests/bench/screenshot-check.sh --self-test
# --self-test renders tests/bench/testdata/sample-report.html (must pass)
# and a blank page (must fail), so the check is known to be able to fail.
# Env: MIN_SVG (default 1), WINDOW (default 1280,4000).
# Exit: 0 passed, 1 failed, 2 usage, 77 chromium is not installed (skip).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
min_svg=${MIN_SVG:-1}
window=${WINDOW:-1280,4000}

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "skip: chromium is not installed (apt-get install chromium)"
  exit 77
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# chromium FLAGS... URL: one headless run, stdout to $scratch/stdout.
# CI has no display, no stdin and runs as root: headless, no sandbox (root
# cannot use it, and the page is our own local file), a fresh profile and
# HOME each time (no state from earlier runs, nothing written to ~), no
# /dev/shm (small in containers), and a bound on the time.
chromium_run() {
  local home
  home=$(mktemp -d "$scratch/home.XXXXXX")
  if ! HOME=$home timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --no-default-browser-check --disable-extensions --hide-scrollbars \
    --user-data-dir="$home/profile" "$@" </dev/null >"$scratch/stdout" 2>"$scratch/stderr"; then
    echo "screenshot-check: chromium failed or timed out (120 s); its stderr:" >&2
    tail -n 20 "$scratch/stderr" >&2
    return 1
  fi
}

# check REPORT OUT [PNG-CHECK OPTIONS]: 0 passed, 1 failed.
check() {
  local report=$1 out=$2 url
  shift 2
  [ -f "$report" ] || { echo "screenshot-check: $report: no such file" >&2; return 2; }
  url="file://$(realpath "$report")"
  out=$(realpath -m "$out")

  chromium_run --dump-dom "$url" || return 1
  local svgs
  svgs=$({ grep -o '<svg' "$scratch/stdout" || true; } | wc -l)
  echo "screenshot-check: $report: the parsed page has $svgs <svg> element(s) (need >= $min_svg)"
  if [ "$svgs" -lt "$min_svg" ]; then
    echo "screenshot-check: $report: too few <svg> elements: the charts are missing or the page did not parse" >&2
    return 1
  fi

  rm -f "$out"
  chromium_run --window-size="$window" --screenshot="$out" "$url" || return 1
  [ -s "$out" ] || { echo "screenshot-check: chromium wrote no screenshot to $out" >&2; return 1; }
  echo "screenshot-check: $report: screenshot $out ($window)"
  python3 "$here/png-check.py" "$@" "$out"
}

if [ "${1:-}" = --self-test ]; then
  [ $# -eq 1 ] || { echo "usage: $0 --self-test" >&2; exit 2; }
  python3 "$here/png-check.py" --self-test
  echo "screenshot-check: self-test: the sample report must pass"
  check "$here/testdata/sample-report.html" "$scratch/sample.png" || {
    echo "screenshot-check: self-test FAILED: the sample report did not pass" >&2
    exit 1
  }
  echo "screenshot-check: self-test: a blank page must fail"
  printf '<!doctype html><html><body><svg width="10" height="10"></svg></body></html>\n' >"$scratch/blank.html"
  if check "$scratch/blank.html" "$scratch/blank.png"; then
    echo "screenshot-check: self-test FAILED: a blank page passed" >&2
    exit 1
  fi
  echo "screenshot-check: self-test passed"
  exit 0
fi

if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT.html OUT.png [PNG-CHECK OPTIONS...] | --self-test" >&2
  exit 2
fi
check "$@"
