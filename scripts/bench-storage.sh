#!/usr/bin/env bash
# storage (upload and --download) against `aws s3 cp`, side by side on the same S3 server
# (Garage on 127.0.0.1, started by scripts/servers.sh if needed) and the same files: one 1 GiB
# file and 1,000 small ones. Prints wall, CPU, peak RSS and ratios (speedup: their wall / ours).
#   scripts/bench-storage.sh [WORKDIR]     (default /var/tmp/ncb-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
W=${1:-/var/tmp/ncb-bench}
bench_setup
bench_servers
cargo build --release --locked -p storage >&2
ST=$PWD/target/release/storage
big=$(ensure_big_file "$W")
small=$W/small; rm -rf "$small"; mkdir -p "$small/files"
for i in $(seq 1 1000); do head -c 4096 /dev/urandom > "$small/files/f$i"; done
out=$W/s3out; rm -rf "$out"; mkdir -p "$out"
mkdir -p "$W/bigdir"; ln -f "$big" "$W/bigdir/dump.sql" 2>/dev/null || cp "$big" "$W/bigdir/dump.sql"
tag=$(date +%s)
# aws wall / our wall for the upload pair (rows 0, 1) and the download pair (rows 2, 3).
pair_ratios() {
  local w=(); for r in "${BENCH_ROWS[@]}"; do w+=("$(cut -d';' -f2 <<<"$r")"); done
  echo "speedup vs aws CLI: upload $(echo "scale=2; ${w[1]} / ${w[0]}" | bc)x, download $(echo "scale=2; ${w[3]} / ${w[2]}" | bc)x (above 1: we are faster)"
}
AWS="aws --endpoint-url $NCB_S3_ENDPOINT --region $NCB_S3_REGION"
S3="--BUCKET_NAME $NCB_S3_BUCKET --ENDPOINT_URL $NCB_S3_ENDPOINT --REGION $NCB_S3_REGION --HOSTNAME bench"

# Three rounds: one run on 2 shared cores (Garage uses them too) varies by several percent.
for round in 1 2 3; do
  echo "== one 1 GiB file, round $round"
  t=$tag-$round
  measure "storage upload (8 MiB parts x4)" env NCB_RUN_ID=20261122T000000Z-$t "$ST" $S3 --DESTINATION s3 --PREFIX ours-$t --OBJECTIVES "$W/bigdir"
  measure "aws s3 cp (upload)" $AWS s3 cp --only-show-errors "$big" "s3://$NCB_S3_BUCKET/aws-$t/dump.sql"
  measure "storage --download" "$ST" $S3 --download --SOURCE s3 --PREFIX ours-$t --DESTINATION "$out/ours"
  measure "aws s3 cp (download)" $AWS s3 cp --only-show-errors "s3://$NCB_S3_BUCKET/aws-$t/dump.sql" "$out/aws.sql"
  pairs=$(pair_ratios)
  table
  echo "$pairs"
  cmp "$big" "$out/ours/dump.sql" && echo "(our download is byte-identical)"
  rm -rf "${out:?}"/*
done

echo; echo "== 1,000 files of 4 KiB"
measure "storage upload" env NCB_RUN_ID=20261122T000001Z-$tag "$ST" $S3 --DESTINATION s3 --PREFIX small-ours-$tag --OBJECTIVES "$small/files"
measure "aws s3 cp --recursive (upload)" $AWS s3 cp --only-show-errors --recursive "$small/files" "s3://$NCB_S3_BUCKET/small-aws-$tag/"
measure "storage --download" "$ST" $S3 --download --SOURCE s3 --PREFIX small-ours-$tag --DESTINATION "$out/ours"
measure "aws s3 cp --recursive (download)" $AWS s3 cp --only-show-errors --recursive "s3://$NCB_S3_BUCKET/small-aws-$tag/" "$out/aws"
pairs=$(pair_ratios)
table
echo "$pairs"
rm -rf "$out" "$small" "$W/bigdir"
