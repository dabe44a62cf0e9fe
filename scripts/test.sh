#!/usr/bin/env bash
# The whole test suite: formatting, the Rust workspace (unit, codec and
# in-process end-to-end tests), then the interop suite against the real
# Go konnectivity-client, then the end-to-end suite against a real
# kube-apiserver and etcd (e2e/). Fails on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."

# netlab's tests build network namespaces with iproute2 (they need root).
if ! command -v ip >/dev/null 2>&1; then
    echo "== installing iproute2 (needed by netlab's tests)"
    apt-get update -qq && apt-get install -y -qq iproute2
fi

# The HA tests and the roll benchmark's smoke run put a real load balancer in
# front of the servers: nginx with its stream module, from Debian's packages.
if [ ! -x /usr/sbin/nginx ] || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
    echo "== installing nginx-light and libnginx-mod-stream (needed by server/tests/ha.rs and loadtest/tests/roll_smoke.rs)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-stream
fi

# loadtest/tests/udp_blocked.rs drops an agent's UDP with nftables inside a
# network namespace.
if ! command -v nft >/dev/null 2>&1; then
    echo "== installing nftables (needed by loadtest/tests/udp_blocked.rs)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables
fi

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test --workspace"
cargo test --workspace --all-targets

# Short runs of the fuzz targets (fuzz/), where nightly and cargo-fuzz are
# installed; cargo test above already replayed their corpora on stable. New
# inputs go to a scratch directory, not to the committed corpora.
if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
    echo "== fuzz (10 s per target)"
    # The instrumented build takes minutes; keep it outside the clone so
    # that later runs on this machine reuse it (cargo rebuilds what changed).
    fuzz_target_dir="${KONNQ_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/konnq/fuzz-target}"
    fuzz_scratch=$(mktemp -d)
    for target in $(cargo +nightly fuzz list); do
        mkdir -p "$fuzz_scratch/$target"
        cargo +nightly fuzz run --target-dir "$fuzz_target_dir" "$target" "$fuzz_scratch/$target" \
            "fuzz/corpus/$target" -- -max_total_time=10
    done
    rm -rf "$fuzz_scratch"
else
    echo "== fuzz: short fuzz runs skipped (needs a nightly toolchain and cargo-fuzz)"
fi

if [ -x interop/run.sh ]; then
    echo "== interop (real konnectivity-client)"
    # Debug binaries (dependencies optimised) reuse what cargo test just
    # compiled; a release build of the whole tree would double CI time.
    cargo build -p konnq-server -p konnq-agent -p konnq-loadtest --bins
    KONNQ_BIN_DIR="$PWD/target/debug" interop/run.sh
fi

echo "== e2e (real kube-apiserver and etcd; root, network namespaces)"
KONNQ_BIN_DIR="$PWD/target/debug" e2e/run.sh
