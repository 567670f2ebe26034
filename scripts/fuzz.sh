#!/usr/bin/env bash
# Fuzzes the encrypted-stream header and manifest parsers with cargo-fuzz (libFuzzer).
#   scripts/fuzz.sh [SECONDS]     (default 300)
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p fuzz/corpus/header_manifest
# Seeds: a real header, a real manifest.
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
cargo build -q -p encryption
target/debug/encryption --generate-key "$d/k" >/dev/null 2>&1
head -c 5000 /dev/urandom > "$d/in"
target/debug/encryption --KEY_FILE "$d/k" --OBJECTIVES "$d/in" --DESTINATION "$d/out" >/dev/null 2>&1
cp "$d/out/in.enc" fuzz/corpus/header_manifest/seed-stream
cp "$d/out/in.enc.manifest.json" fuzz/corpus/header_manifest/seed-manifest
cd fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run header_manifest corpus/header_manifest -- -max_total_time="$secs" -max_len=4096
