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

# loadtest/tests/veth_smoke.rs samples the server and agent with perf.
if ! command -v perf >/dev/null 2>&1; then
    echo "== installing linux-perf (needed by loadtest/tests/veth_smoke.rs)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf
fi

# A whole-suite run gains nothing from incremental compilation, whose
# caches would add a third to the test build's disk use.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# cargo-fuzz, installed for the short fuzz runs below when it is missing.
cargo_fuzz_version=0.13.2

# Disk: the suite's peak use (the Rust test build, the fuzz build, the Go
# builds of the end-to-end suite and their caches) was about 10 GiB on a
# fresh machine. Say so before starting rather than fail later inside a
# linker.
need_gib=11
free_gib=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "$free_gib" -lt "$need_gib" ]; then
    echo "warning: $free_gib GiB free on $(df -P . | awk 'NR == 2 { print $6 }'); the suite needs about $need_gib GiB" >&2
fi

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test --workspace"
cargo test --workspace --all-targets

# Short runs of the fuzz targets (fuzz/) where a nightly toolchain is
# installed, with cargo-fuzz installed from crates.io if it is missing;
# cargo test above already replayed their corpora on stable. New inputs go
# to a scratch directory, not to the committed corpora.
if cargo +nightly --version >/dev/null 2>&1; then
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "== installing cargo-fuzz $cargo_fuzz_version (runs the fuzz targets)"
        cargo install --locked cargo-fuzz --version "$cargo_fuzz_version"
    fi
    echo "== fuzz (10 s per target)"
    # The instrumented build serves only these runs. Unless a directory to
    # keep it in is given, it goes inside the clone and is removed after
    # them, so that the Go builds that follow have its disk space.
    fuzz_target_dir="${KONNQ_FUZZ_TARGET_DIR:-$PWD/target/fuzz}"
    fuzz_scratch=$(mktemp -d)
    for target in $(cargo +nightly fuzz list); do
        mkdir -p "$fuzz_scratch/$target"
        cargo +nightly fuzz run --target-dir "$fuzz_target_dir" "$target" "$fuzz_scratch/$target" \
            "fuzz/corpus/$target" -- -max_total_time=10
    done
    rm -rf "$fuzz_scratch"
    if [ -z "${KONNQ_FUZZ_TARGET_DIR:-}" ]; then
        rm -rf "$fuzz_target_dir"
    fi
else
    echo "== fuzz: short fuzz runs skipped (needs a nightly toolchain: rustup toolchain install nightly)"
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
