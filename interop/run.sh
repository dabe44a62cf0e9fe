#!/usr/bin/env bash
# Interop suite: real konnectivity-client (the library inside kube-apiserver)
# against real konnq-server and konnq-agent processes, at several client
# versions (one Go module each), plus kube-apiserver 1.37's own egress dialer
# (egress137: HTTP-CONNECT over UDS and TCP+mTLS) and `go tool pprof`'s
# profile parser on /debug/pprof/profile (pprof), h2spec's HTTP/2 conformance
# cases against the gRPC frontend (h2spec); then kc036 once more with
# the agent on its TCP transport (KONNQ_AGENT_TRANSPORT=tcp). See README.md.
#
# Usage: interop/run.sh [extra go test flags, e.g. -run Reusable]
# Env:   KONNQ_BIN_DIR  use these konnq-server/konnq-agent binaries, skip cargo
#        KONNQ_INTEROP_LOGS=1  print server/agent logs of passing tests too
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
modules=(kc031 kc036 kc037 egress137 pprof h2spec)

command -v go >/dev/null || { echo "run.sh: go is not installed" >&2; exit 2; }

if [[ -z "${KONNQ_BIN_DIR:-}" ]]; then
	echo "==> cargo build --release -p konnq-server -p konnq-agent"
	(cd "$root" && cargo build --release -p konnq-server -p konnq-agent)
	KONNQ_BIN_DIR="${CARGO_TARGET_DIR:-$root/target}/release"
fi
# Test a private copy: every module then runs the same binaries, even if a
# cargo build elsewhere replaces target/release meanwhile.
logs="$(mktemp -d "${TMPDIR:-/tmp}/konnq-interop.XXXXXX")"
mkdir "$logs/bin"
trap 'rm -rf "$logs/bin"' EXIT
for b in konnq-server konnq-agent; do
	[[ -x "$KONNQ_BIN_DIR/$b" ]] || { echo "run.sh: no $KONNQ_BIN_DIR/$b" >&2; exit 2; }
	cp "$KONNQ_BIN_DIR/$b" "$logs/bin/"
done
echo "==> binaries: copies of $KONNQ_BIN_DIR/konnq-{server,agent} in $logs/bin"
export KONNQ_BIN_DIR="$logs/bin"
echo "==> go vet (common)"
(cd "$here/common" && go vet ./...)

status=0
for m in "${modules[@]}"; do
	log="$logs/$m.log"
	echo "==> $m: go test -count=1 -timeout 10m -v ./... $*"
	rc=0
	(cd "$here/$m" && go vet ./... && go test -count=1 -timeout 10m -v ./... "$@") >"$log" 2>&1 || rc=$?
	# Per-scenario results and go test's summary lines.
	grep -E '^\s*--- (PASS|FAIL|SKIP)|^(ok|FAIL|PASS|panic:)|^\s+[a-z_]+\.go:[0-9]+: (module selects|conn\.Close|ReusableTunnel\.Close|dial error after|tunnel creation failed|dial failed after|kube-apiserver 1\.37 with|[0-9]+ of [0-9]+ server-first)|^[0-9]+ tests, [0-9]+ passed' "$log" || true
	if [[ $rc -ne 0 ]]; then
		status=1
		echo "==> $m FAILED (exit $rc); full output:"
		cat "$log"
	fi
done

# The same scenarios with the agent on the TCP transport (QUIC datagrams
# over TCP, as where UDP is blocked), with the client kube-apiserver 1.36 uses.
log="$logs/kc036-tcp.log"
echo "==> kc036 over the agent's TCP transport: KONNQ_AGENT_TRANSPORT=tcp go test -count=1 -timeout 10m -v ./... $*"
rc=0
(cd "$here/kc036" && KONNQ_AGENT_TRANSPORT=tcp go test -count=1 -timeout 10m -v ./... "$@") >"$log" 2>&1 || rc=$?
grep -E '^\s*--- (PASS|FAIL|SKIP)|^(ok|FAIL|PASS|panic:)' "$log" || true
if [[ $rc -ne 0 ]]; then
	status=1
	echo "==> kc036 over TCP FAILED (exit $rc); full output:"
	cat "$log"
fi

if [[ $status -eq 0 ]]; then
	echo "==> interop: all modules passed (logs in $logs)"
else
	echo "==> interop: FAILED (logs in $logs)"
fi
exit $status
