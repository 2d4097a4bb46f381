#!/usr/bin/env bash
# amphi's demo: the example bundle (bundles/hello) as a Linux container,
# then amphi's own VMM booting a stock Debian kernel to the guest agent.
#
# The VM half runs where hardware virtualization can boot a stock kernel:
# directly on a host with VMX/SVM, or, on a PVM host like this project's
# machines, inside the nested test host (QEMU with an emulated SVM CPU).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "$(id -u)" = 0 ] || { echo "demo: run as root" >&2; exit 2; }
scripts/setup.sh --quiet

id=demo-$$
echo "== container isolation: amphi run --bundle bundles/hello $id"
start=$(date +%s%N)
amphi run --bundle bundles/hello "$id"
echo "(create, start, wait and delete in $(( ($(date +%s%N) - start) / 1000000 )) ms)"

echo
echo "== the same container, step by step"
jq '.process.args = ["/bin/sleep", "30"]' bundles/hello/config.json > /tmp/amphi-demo-config.json
mkdir -p /tmp/amphi-demo-bundle
cp /tmp/amphi-demo-config.json /tmp/amphi-demo-bundle/config.json
ln -sfn "$root/bundles/hello/rootfs" /tmp/amphi-demo-bundle/rootfs
amphi create --bundle /tmp/amphi-demo-bundle "$id"
amphi list
amphi start "$id"
amphi state "$id"
amphi kill "$id" KILL
sleep 0.2
amphi delete "$id"
rm -rf /tmp/amphi-demo-bundle /tmp/amphi-demo-config.json

echo
echo "== vm isolation: amphi's VMM boots Debian's kernel to amphi-agent over vsock"
AMPHI=$(command -v amphi) tests/vm/demo.sh
