#!/usr/bin/env bash
# encryption (encrypt and -d) against gpg --symmetric AES256 and openssl enc -aes-256-ctr on the
# same 1 GiB file, side by side: wall, CPU, peak RSS, ratios (speedup: their wall / ours).
# Ours fsyncs every part and the manifest; openssl and gpg do not, so "openssl + sync" is
# shown too. A second table runs everything in RAM (/dev/shm) to compare CPU cost alone.
#   scripts/bench-crypto.sh [WORKDIR]   (default /var/tmp/ncb-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
W=${1:-/var/tmp/ncb-bench}
bench_setup
cargo build --release --locked -p encryption >&2
ENC=$PWD/target/release/encryption
big=$(ensure_big_file "$W")

run_set() {
  local dir=$1 input=$2
  mkdir -p "$dir"
  rm -rf "$dir/out" "$dir/key" && mkdir -p "$dir/out"
  "$ENC" --generate-key "$dir/key" >/dev/null 2>&1
  echo "bench-passphrase-$$" > "$dir/pass"
  cat "$input" > /dev/null
  echo "-- encrypt $(basename "$input") ($(stat -c %s "$input") bytes) in $dir"
  measure "encryption (AES-256-GCM, fsync)" "$ENC" --KEY_FILE "$dir/key" --OBJECTIVES "$input" --DESTINATION "$dir/out/ours" --FILE_SIZE 100
  measure "openssl enc -aes-256-ctr" openssl enc -aes-256-ctr -pbkdf2 -pass "file:$dir/pass" -in "$input" -out "$dir/out/o.enc"
  measure "openssl enc -aes-256-ctr + sync" sh -c "openssl enc -aes-256-ctr -pbkdf2 -pass file:$dir/pass -in '$input' -out '$dir/out/o2.enc' && sync '$dir/out/o2.enc'"
  measure "gpg --symmetric AES256" gpg --batch --yes --pinentry-mode loopback --passphrase-file "$dir/pass" --symmetric --cipher-algo AES256 --compress-algo none -o "$dir/out/g.gpg" "$input"
  table
  echo "-- decrypt"
  measure "encryption -d (verify + fsync)" "$ENC" -d --KEY_FILE "$dir/key" --OBJECTIVES "$dir/out/ours/$(basename "$input")" --DESTINATION "$dir/out/back"
  measure "openssl enc -d -aes-256-ctr" openssl enc -d -aes-256-ctr -pbkdf2 -pass "file:$dir/pass" -in "$dir/out/o.enc" -out "$dir/out/o.back"
  measure "gpg --decrypt" gpg --batch --yes --pinentry-mode loopback --passphrase-file "$dir/pass" -o "$dir/out/g.back" --decrypt "$dir/out/g.gpg"
  table
  cmp "$input" "$dir/out/back" && echo "(our restore is byte-identical)"
  rm -rf "$dir/out" "$dir/pass" "$dir/key"
}

echo "== on disk"
run_set "$W/crypto" "$big"
echo
echo "== in RAM (/dev/shm): CPU cost without the disk"
mkdir -p /dev/shm/ncb-bench && cp "$big" /dev/shm/ncb-bench/dump.sql
run_set /dev/shm/ncb-bench/crypto /dev/shm/ncb-bench/dump.sql
rm -rf /dev/shm/ncb-bench
