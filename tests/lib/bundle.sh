# Sourced by the test scripts (tests/crash, tests/load).
# test_bundle DIR ISOLATION ARG...: a copy of bundles/hello at DIR, fresh
# config from `amphi spec`, whose process runs ARG... without a terminal,
# in ISOLATION (container or vm, by annotation). Uses $amphi and $repo.
test_bundle() {
  local dir=$1 isolation=$2
  shift 2
  mkdir -p "$dir"
  cp -a "$repo/bundles/hello/rootfs" "$dir/"
  "$amphi" spec --bundle "$dir"
  python3 - "$dir/config.json" "$isolation" "$@" <<'PY'
import json, sys
path, isolation, args = sys.argv[1], sys.argv[2], sys.argv[3:]
c = json.load(open(path))
c["process"]["args"] = args
c["process"]["terminal"] = False
c.setdefault("annotations", {})["run.amphi.isolation"] = isolation
json.dump(c, open(path, "w"))
PY
}
