#!/usr/bin/env bash
# filesbackup against tar czf, tar | pigz and tar | zstd -T0, side by side on the same data:
#  1. real files of this machine: /usr/share and /usr/include (in place, read only)
#  2. one large file (>= 1 GiB, built from real text so it compresses like a dump)
# Prints wall, CPU, peak RSS, output size, and ratios (speedup: their wall / ours).
#   scripts/bench-files.sh [WORKDIR]   (default /var/tmp/ncb-bench; needs ~4 GiB free)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
W=${1:-/var/tmp/ncb-bench}
bench_setup
cargo build --release --locked -p filesbackup >&2
FB=$PWD/target/release/filesbackup
mkdir -p "$W/big" "$W/out"

big=$(ensure_big_file "$W")

run_set() {
  local name=$1; shift
  local -a inc=("$@") rel=()
  for p in "${inc[@]}"; do rel+=("${p#/}"); done
  echo; echo "== $name: ${inc[*]} ($(du -sch "${inc[@]}" | tail -n1 | cut -f1))"
  tar -cf /dev/null -C / "${rel[@]}"   # warm the page cache for everyone
  rm -rf "$W/out"/*
  measure "filesbackup (gzip -6, 2 threads)" "$FB" --FILESET_INCLUDE "${inc[*]}" --DESTINATION "$W/out/fb" --HOSTNAME bench
  BENCH_ROWS[-1]+="$(stat -c %s "$W"/out/fb/*.tar.gz)"
  measure "tar czf (gzip -6)" tar czf "$W/out/gnu.tar.gz" -C / "${rel[@]}"
  BENCH_ROWS[-1]+="$(stat -c %s "$W/out/gnu.tar.gz")"
  measure "tar -I pigz (-6, 2 threads)" tar -I pigz -cf "$W/out/pigz.tar.gz" -C / "${rel[@]}"
  BENCH_ROWS[-1]+="$(stat -c %s "$W/out/pigz.tar.gz")"
  measure "tar -I 'zstd -T0' (-3)" tar -I 'zstd -T0' -cf "$W/out/z.tar.zst" -C / "${rel[@]}"
  BENCH_ROWS[-1]+="$(stat -c %s "$W/out/z.tar.zst")"
  measure "filesbackup zstd (-3)" "$FB" --FILESET_INCLUDE "${inc[*]}" --DESTINATION "$W/out/fbz" --HOSTNAME bench --COMPRESSION_FORMAT zstd
  BENCH_ROWS[-1]+="$(stat -c %s "$W"/out/fbz/*.tar.zst)"
  table
  # What we wrote, GNU tar reads.
  tar -tzf "$W"/out/fb/*.tar.gz >/dev/null && echo "(tar -tzf reads our archive: ok)"
}

run_set "real files" /usr/share /usr/include
run_set "one large file" "$big"
rm -rf "$W/out"
