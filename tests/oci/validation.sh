#!/usr/bin/env bash
# Runs the OCI runtime-tools validation suite against a runc-compatible
# runtime and prints per-test results and a final "N passed, M failed".
#
# Usage: tests/oci/validation.sh [--build-only] [--known FILE] RUNTIME [TEST...]
#
# The suite comes from Debian, nothing else: bookworm ships only the
# library part of runtime-tools (golang-github-opencontainers-runtime-tools-dev),
# so the source package (validation/, cmd/runtimetest, the test rootfs) is
# fetched with `apt-get source` through a private deb-src list (the system's
# apt configuration is left alone) and built offline in GOPATH mode with
# bookworm's Go and -dev packages. tap-go is not packaged; tap.go below is a
# small implementation of the part of its API the suite uses.
#
# Counting (the same as the team's reference runs, so that numbers compare):
#   passed = "ok" lines that are not "# SKIP", plus 1 for a test program that
#            exits 0 reporting nothing (hook and *_fail programs report only
#            errors);
#   failed = "not ok" lines that are not "# TODO", plus planned-but-missing
#            results, plus 1 for a program that fails (non-zero exit, error
#            diagnostic, timeout) without any other failure.
#
# With --known FILE (lines "test max-failures reason"), the exit status is 0
# when no test fails more than it is known to on this kind of host.
#
# Environment: OCI_CACHE (/var/tmp/amphi-oci), OCI_TIMEOUT (60 s per test),
# OCI_OUT (per-test logs), OCI_RUNTIME_ARGS (global args for the runtime).
set -uo pipefail

CACHE=${OCI_CACHE:-/var/tmp/amphi-oci}
TIMEOUT=${OCI_TIMEOUT:-60}
SRC_PKG=golang-github-opencontainers-runtime-tools
SRC_SUITES="trixie sid bookworm"
GO_DEPS="golang-go golang-github-opencontainers-runtime-tools-dev golang-github-google-uuid-dev
golang-github-opencontainers-specs-dev golang-github-opencontainers-selinux-dev
golang-github-mrunalp-fileutils-dev golang-github-hashicorp-go-multierror-dev
golang-github-blang-semver-dev golang-github-sirupsen-logrus-dev golang-github-urfave-cli-dev
golang-github-xeipuuv-gojsonschema-dev golang-gocapability-dev golang-golang-x-sys-dev
golang-github-stretchr-testify-dev"
BUILD_STAMP="amphi-oci-1"

die() { echo "oci: $*" >&2; exit 2; }
log() { echo "oci: $*" >&2; }

build_only=0 known=""
while [ $# -gt 0 ]; do
  case $1 in
    --build-only) build_only=1; shift ;;
    --known) known=$2; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$CACHE"

# ---------------------------------------------------------------- build
fetch_source() {
  local dst=$1 mirror suite dir opts tarball
  mirror=$(apt-get indextargets 'Label: Debian' --format '$(REPO_URI)' 2>/dev/null | sort -u | head -n1)
  [ -n "$mirror" ] || die "no Debian mirror in the apt configuration"
  for suite in $SRC_SUITES; do
    dir=$CACHE/apt-$suite
    mkdir -p "$dir/lists/partial" "$dir/dl"
    echo "deb-src ${mirror%/} $suite main" > "$dir/sources.list"
    opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
          -o "Dir::State::Lists=$dir/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
          -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" update > "$dir/log" 2>&1 || continue
    (cd "$dir/dl" && apt-get "${opts[@]}" source --download-only "$SRC_PKG") >> "$dir/log" 2>&1
    tarball=$(ls "$dir"/dl/${SRC_PKG}_*.orig.tar.* 2>/dev/null | head -n1)
    [ -n "$tarball" ] || continue
    rm -rf "$dst" && mkdir -p "$dst"
    tar -xf "$tarball" -C "$dst" --strip-components=1 || die "cannot unpack $tarball"
    [ -d "$dst/validation" ] || die "$tarball has no validation/"
    basename "$tarball" > "$CACHE/source"
    return 0
  done
  die "cannot fetch the source of $SRC_PKG from $SRC_SUITES (see $CACHE/apt-*/log)"
}

write_tap() {
  mkdir -p "$1"
  cat > "$1/tap.go" <<'GO'
// Package tap writes Test Anything Protocol version 13, with the API of
// github.com/mndrix/tap-go that runtime-tools uses.
package tap

import (
	"encoding/json"
	"fmt"
	"strings"
)

type T struct {
	next *int
	todo bool
}

func New() *T { n := 1; return &T{next: &n} }

// Todo returns a harness whose results are marked TODO.
func (t *T) Todo() *T { c := *t; c.todo = true; return &c }

func (t *T) Header(count int) {
	fmt.Println("TAP version 13")
	if count > 0 {
		fmt.Printf("1..%d\n", count)
	}
}

func (t *T) Ok(pass bool, what string) {
	word := "ok"
	if !pass {
		word = "not ok"
	}
	if t.todo {
		fmt.Printf("%s %d # TODO %s\n", word, *t.next, what)
	} else {
		fmt.Printf("%s %d - %s\n", word, *t.next, what)
	}
	*t.next++
}

func (t *T) Pass(what string) { t.Ok(true, what) }
func (t *T) Fail(what string) { t.Ok(false, what) }
func (t *T) Count() int       { return *t.next - 1 }
func (t *T) AutoPlan()        { fmt.Printf("1..%d\n", t.Count()) }

func (t *T) Skip(n int, why string) {
	for i := 0; i < n; i++ {
		fmt.Printf("ok %d # SKIP %s\n", *t.next, why)
		*t.next++
	}
}

func (t *T) Diagnostic(msg string) {
	fmt.Printf("# %s\n", strings.ReplaceAll(strings.TrimRight(msg, "\n"), "\n", "\n# "))
}

func (t *T) Diagnosticf(format string, a ...interface{}) { t.Diagnostic(fmt.Sprintf(format, a...)) }

// YAML prints a diagnostic block; JSON is valid YAML.
func (t *T) YAML(v interface{}) error {
	b, err := json.MarshalIndent(v, "  ", "  ")
	if err != nil {
		return err
	}
	fmt.Printf("  ---\n  %s\n  ...\n", b)
	return nil
}
GO
}

build() {
  local gp=$CACHE/gopath src=$CACHE/gopath/src/github.com/opencontainers/runtime-tools missing=() p tests=()
  if [ -f "$CACHE/bin/stamp" ] && [ "$(cat "$CACHE/bin/stamp")" = "$BUILD_STAMP" ]; then
    return 0
  fi
  for p in $GO_DEPS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > "$CACHE/apt.log" 2>&1 ||
      die "apt-get install failed (see $CACHE/apt.log)"
  fi
  [ -d "$src/validation" ] || fetch_source "$src"
  write_tap "$gp/src/github.com/mndrix/tap-go"
  for p in "$src"/validation/*/; do
    p=${p%/}; [ "${p##*/}" = util ] || tests+=("./validation/${p##*/}")
  done
  log "building runtimetest and ${#tests[@]} validation programs (offline)"
  rm -rf "$CACHE/bin" && mkdir -p "$CACHE/bin/validation"
  (
    cd "$src" || exit 1
    export GOPATH="$gp:/usr/share/gocode" GO111MODULE=off GOFLAGS= GOPROXY=off GOCACHE="$CACHE/gocache"
    CGO_ENABLED=0 go build -tags "netgo osusergo" -o "$CACHE/bin/runtimetest" ./cmd/runtimetest &&
      go build -o "$CACHE/bin/validation/" "${tests[@]}"
  ) > "$CACHE/build.log" 2>&1 || die "build failed (see $CACHE/build.log)"
  cp "$src"/rootfs-amd64.tar.gz "$CACHE/bin/" || die "no test rootfs in the source"
  echo "$BUILD_STAMP" > "$CACHE/bin/stamp"
}

build
[ "$build_only" = 1 ] && exit 0
[ $# -ge 1 ] || die "give the runtime to test"
RT=$(command -v "$1" 2>/dev/null || true)
[ -n "$RT" ] && RT=$(readlink -f "$RT")
[ -x "$RT" ] || die "$1 is not an executable"
shift
if [ $# -gt 0 ]; then TESTS=("$@"); else mapfile -t TESTS < <(ls "$CACHE/bin/validation" | sort); fi

OUT=${OCI_OUT:-/var/tmp/amphi-oci-runs/$(basename "$RT")-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$(mktemp -d /var/tmp/amphi-oci-work.XXXXXX)
chmod 755 "$WORK"
# The suite uses fixed cgroup paths: one run at a time.
exec 7> "$CACHE/run.lock"
flock -w 3600 7 || die "another run holds $CACHE/run.lock"

# The leaf cgroups the suite's configs name, in every hierarchy: /cgrouptest
# (absolute) and testdir/cgrouptest/container (relative to our own cgroup).
suite_cgroups() {
  awk '{ split($0, h, " - "); split(h[1], a, " "); split(h[2], b, " ");
         if (b[1] == "cgroup" || b[1] == "cgroup2") print a[5] }' /proc/self/mountinfo |
  while read -r m; do
    echo "$m/cgrouptest"
    for base in "$m" $(cut -d: -f3 /proc/self/cgroup | sort -u | grep -v '^/$' | sed "s|^|$m|"); do
      # leaf first, then the parents a runtime makes on the way
      echo "$base/testdir/cgrouptest/container"
      echo "$base/testdir/cgrouptest"
      echo "$base/testdir"
    done
  done | awk '!seen[$0]++'
}

# Whether process group PG has a process that is not a zombie.
live_in_group() {
  local pid
  for pid in $(pgrep -g "$1" 2>/dev/null); do
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] || return 0
  done
  return 1
}

# Removes what a test left behind and prints one line per leftover.
leftovers() {
  local d=$1 pg=$2 id c pid m
  for id in $(ls -A "$d/root" 2>/dev/null); do
    echo "container $id"
    timeout -k 2 10 "$RT" --root "$d/root" delete --force "$id" > /dev/null 2>&1
  done
  # A test's own helpers (linux_ns_path's namespace holders) may still be
  # exiting from the test's kill: give the group a second to empty.
  for _ in $(seq 20); do
    live_in_group "$pg" || break
    sleep 0.05
  done
  for pid in $(pgrep -g "$pg" 2>/dev/null); do
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && continue
    echo "process $pid"; kill -KILL "$pid" 2>/dev/null
  done
  for c in $(suite_cgroups); do
    [ -d "$c" ] && { echo "cgroup $c"; rmdir "$c" 2>/dev/null; }
  done
  for m in $(awk -v d="$d" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
    echo "mount $m"; umount -l "$m" 2>/dev/null
  done
  rm -rf "$d"
}

declare -A KNOWN=()
if [ -n "$known" ]; then
  while read -r t n _; do
    case $t in ''|'#'*) continue ;; esac
    KNOWN[$t]=$n
  done < "$known"
fi

echo "runtime: $RT ($("$RT" --version 2>/dev/null | head -n1))"
echo "suite: $(cat "$CACHE/source"), ${#TESTS[@]} programs, ${TIMEOUT}s each; logs in $OUT"
printf '%-34s %5s %6s %5s  %-7s %s\n' TEST OK NOT_OK SKIP STATUS NOTE
passed=0 failed=0 skipped=0 unexpected=()
for t in "${TESTS[@]}"; do
  bin=$CACHE/bin/validation/$t
  [ -x "$bin" ] || { echo "unknown test $t"; failed=$((failed + 1)); unexpected+=("$t"); continue; }
  d=$WORK/$t
  mkdir -p "$d/tmp" "$d/root"
  chmod 755 "$d" "$d/tmp"
  cp "$CACHE/bin/runtimetest" "$d/runtimetest"
  ln -s "$CACHE/bin/rootfs-amd64.tar.gz" "$d/rootfs-amd64.tar.gz"
  # The runtime as the suite calls it: a private --root, calls logged, and
  # bundles made 0755 so that user-namespace tests can reach their rootfs.
  cat > "$d/runtime" <<EOF
#!/bin/sh
echo "\$*" >> "$OUT/$t.calls"
if [ "\$1" = create ]; then prev=; for a; do [ "\$prev" = --bundle ] && chmod 755 "\$a"; prev=\$a; done; fi
exec "$RT" --root "$d/root" ${OCI_RUNTIME_ARGS:-} "\$@"
EOF
  chmod 755 "$d/runtime"
  ( cd "$d" && exec 7>&- && exec env RUNTIME="$d/runtime" TMPDIR="$d/tmp" \
      timeout -k 5 "$TIMEOUT" "$bin" > "$OUT/$t.tap" 2> "$OUT/$t.stderr" < /dev/null ) &
  pg=$!
  wait "$pg"; rc=$?
  left=$(leftovers "$d" "$pg")
  read -r ok notok skip plan diag < <(awk '
    /^ok/     { if ($0 ~ /# *[Ss][Kk][Ii][Pp]/) s++; else if ($0 ~ /# *TODO/) ; else o++; next }
    /^not ok/ { if ($0 !~ /# *TODO/) n++; next }
    /^1\.\.[0-9]+/ { split($1, a, ".."); p = a[2] + 0 }
    /^  +"error": "./ { e++ }
    END { printf "%d %d %d %d %d\n", o, n, s, (p == "" ? -1 : p), e }' "$OUT/$t.tap")
  missing=$(( plan > ok + notok + skip ? plan - ok - notok - skip : 0 ))
  fails=$((notok + missing))
  seen=$((ok + notok + skip))
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=TIMEOUT
  elif [ "$notok" -gt 0 ]; then status=FAIL
  elif [ "$rc" != 0 ]; then status=ERROR
  elif [ "$seen" = 0 ] && [ "$diag" -gt 0 ]; then status=FAIL
  elif [ "$seen" = 0 ]; then status=PASS ok=1
  elif [ "$plan" -lt 0 ] || [ "$missing" -gt 0 ]; then status=ERROR
  else status=PASS
  fi
  if [ "$status" != PASS ] && [ "$fails" = 0 ]; then fails=1; fi
  note=""
  if [ "$status" != PASS ]; then
    note=$(grep -m1 '^not ok' "$OUT/$t.tap" | sed 's/^not ok [0-9]* *-* *//')
    [ -n "$note" ] || note=$(grep -v '^$' "$OUT/$t.stderr" | tail -n1)
    note=${note:0:90}
  fi
  [ -n "$left" ] && note="$note [left behind: $(echo "$left" | awk '{print $1}' | sort | uniq -c | xargs)]"
  printf '%-34s %5d %6d %5d  %-7s %s\n' "$t" "$ok" "$fails" "$skip" "$status" "$note"
  passed=$((passed + ok)); failed=$((failed + fails)); skipped=$((skipped + skip))
  if [ "$fails" -gt "${KNOWN[$t]:-0}" ] || [ -n "$left" ]; then unexpected+=("$t"); fi
done
rmdir "$WORK" 2>/dev/null
echo "assertions skipped: $skipped"
[ -n "$known" ] && echo "unexpected failures: ${unexpected[*]:-none}"
echo "$passed passed, $failed failed"
[ ${#unexpected[@]} = 0 ] || [ -z "$known" ]
