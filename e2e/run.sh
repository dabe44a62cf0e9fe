#!/usr/bin/env bash
# The end-to-end suite: konnq against a real kube-apiserver and etcd, with a
# fake node in a network namespace reachable only through konnq-agent.
#
# Builds, each only when missing or when its module changed (cached under
# target/e2e-tools/): kube-apiserver and etcd from the Go module proxy
# through the wrapper modules in tools/, and the fake node (fakenode/).
# Needs root (network namespaces, nftables) and Go; installs nftables and
# iproute2 from Debian's packages when missing.
#
# Usage: e2e/run.sh [extra go test flags, e.g. -run 'TestRealControlPlane/GRPC']
# Env:   KONNQ_BIN_DIR  use these konnq-server/konnq-agent/konnq-loadtest binaries, skip cargo
#        KONNQ_E2E_STORM_AGENTS  agents in the reconnect storm (default 200)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
tools="${CARGO_TARGET_DIR:-$root/target}/e2e-tools"
mkdir -p "$tools"

command -v go >/dev/null || { echo "e2e/run.sh: go is not installed" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "e2e/run.sh: needs root (network namespaces, nftables)" >&2; exit 2; }
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
if [[ ${#missing[@]} -gt 0 ]]; then
	echo "==> installing ${missing[*]} (Debian packages)"
	apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# build NAME DIR PACKAGE: go build PACKAGE in module DIR into $tools/NAME
# unless the binary exists and was built from the same module files.
build() {
	local name=$1 dir=$2 pkg=$3
	local stamp
	stamp=$(cd "$dir" && find . -name '*.go' -o -name 'go.mod' -o -name 'go.sum' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
	if [[ -x "$tools/$name" && "$(cat "$tools/$name.stamp" 2>/dev/null)" == "$stamp" ]]; then
		echo "==> $name: cached ($tools/$name)"
		return
	fi
	echo "==> building $name ($pkg)"
	local start=$SECONDS
	(cd "$dir" && go build -trimpath -o "$tools/$name.tmp" "$pkg")
	mv "$tools/$name.tmp" "$tools/$name"
	echo "$stamp" >"$tools/$name.stamp"
	echo "==> $name built in $((SECONDS - start)) s"
}
build kube-apiserver "$here/tools/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
build etcd "$here/tools/etcd" go.etcd.io/etcd/server/v3
build fakenode "$here/fakenode" .

if [[ -z "${KONNQ_BIN_DIR:-}" ]]; then
	echo "==> cargo build -p konnq-server -p konnq-agent -p konnq-loadtest"
	(cd "$root" && cargo build -p konnq-server -p konnq-agent -p konnq-loadtest --bins)
	KONNQ_BIN_DIR="${CARGO_TARGET_DIR:-$root/target}/debug"
fi
export KONNQ_BIN_DIR KONNQ_E2E_TOOLS="$tools"

echo "==> go vet (e2e)"
(cd "$here" && go vet ./...)
echo "==> go test (e2e) $*"
log="$(mktemp "${TMPDIR:-/tmp}/konnq-e2e.XXXXXX.log")"
rc=0
(cd "$here" && go test -count=1 -timeout 30m -v ./... "$@") >"$log" 2>&1 || rc=$?
# Scenario results, measured figures and go test's summary lines.
grep -E '^\s*--- (PASS|FAIL|SKIP)|RESULT |^(ok|FAIL|PASS|panic:)' "$log" || true
if [[ $rc -ne 0 ]]; then
	echo "==> e2e FAILED (exit $rc); full output:"
	cat "$log"
	exit $rc
fi
echo "==> e2e passed (full output in $log)"
