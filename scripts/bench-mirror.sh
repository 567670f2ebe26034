#!/usr/bin/env bash
# object-mirror against what users would run instead to copy an application's bucket off-site:
# `rclone copy` and `aws s3 sync`, side by side on the same Garage bucket, into the same disk.
# The bucket holds N small objects (default 10,000, 1-16 KiB of text) and 3 large ones
# (64 MiB each), all registered in ObjectStorageFiles (PostgreSQL of scripts/servers.sh) with
# their SHA-256. Two rounds each: the first copy, then a second run with nothing new (the
# others list the bucket again; we read the table's new rows). Prints wall, CPU, peak RSS,
# stored bytes and ratios (speedup: their wall / ours).
#   scripts/bench-mirror.sh [WORKDIR] [N]     (default /var/tmp/ncb-bench, 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
W=${1:-/var/tmp/ncb-bench}
N=${2:-10000}
bench_setup
bench_servers
cargo build --release --locked -p object-mirror >&2
OM=$PWD/target/release/object-mirror
M=$W/mirror-bench
rm -rf "$M"; mkdir -p "$M/src"
AWS="aws --endpoint-url $NCB_S3_ENDPOINT --region $NCB_S3_REGION"
BUCKET=ncb-mirror-bench-$(date +%s)
$AWS s3 mb "s3://$BUCKET" >/dev/null

echo "== building $N small objects and 3 large ones" >&2
tar -cf "$M/seed.tar" -C / usr/include 2>/dev/null || true
python3 - "$M/src" "$N" "$M/seed.tar" <<'PY'
import os, random, sys
root, n, seed = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], 'rb').read()
random.seed(7)
for i in range(n):
    d = os.path.join(root, 'uploads', f'{i % 100:02d}')
    os.makedirs(d, exist_ok=True)
    size = random.randint(1024, 16384)
    off = random.randint(0, len(seed) - size)
    open(os.path.join(d, f'file-{i}.txt'), 'wb').write(seed[off:off + size])
os.makedirs(os.path.join(root, 'videos'), exist_ok=True)
for i in range(3):
    with open(os.path.join(root, 'videos', f'clip-{i}.mov'), 'wb') as f:
        f.write(os.urandom(32 << 20) + seed[:32 << 20])
PY
rm -f "$M/seed.tar"
$AWS s3 sync --only-show-errors "$M/src" "s3://$BUCKET/" >&2

echo "== registering them in ObjectStorageFiles" >&2
DB=ncbmirrorbench
export PGPASSWORD=$NCB_PG_PASSWORD
psql -X -q -h 127.0.0.1 -p "$NCB_PG_PORT" -U ncbadmin -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
printf '%s\n' "$NCB_PG_PASSWORD" > "$M/pw"; chmod 600 "$M/pw"
URL=postgres://ncbadmin@127.0.0.1:$NCB_PG_PORT/$DB
"$OM" --init-schema --DATABASE_URL "$URL" --DATABASE_PASSWORD_FILE "$M/pw" --SOURCE_BUCKET x --DESTINATION "$M/x" -q
(cd "$M/src" && find . -type f -printf '%P\n' | sort | while read -r f; do
  h=$(sha256sum "$f" | cut -d' ' -f1)
  printf '%s\t%s\ts3\t1\t%s\n' "$(basename "$f")" "$(dirname "$f")/" "$h"
done) > "$M/rows.tsv"
psql -X -q -h 127.0.0.1 -p "$NCB_PG_PORT" -U ncbadmin -d "$DB" \
  -c "\\copy \"ObjectStorageFiles\" (\"Name\", \"Path\", \"Storage\", \"Version\", \"Hash\") FROM '$M/rows.tsv'"
unset PGPASSWORD
src_bytes=$(du -sb "$M/src" | cut -f1)
rm -rf "$M/src"

export RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other RCLONE_CONFIG_GARAGE_ENDPOINT=$NCB_S3_ENDPOINT \
  RCLONE_CONFIG_GARAGE_REGION=$NCB_S3_REGION RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID=$NCB_S3_ACCESS_KEY \
  RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY=$NCB_S3_SECRET_KEY RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE=true
OURS=(--DATABASE_URL "$URL" --DATABASE_PASSWORD_FILE "$M/pw" --SOURCE_BUCKET "$BUCKET" --SOURCE_STORAGE s3
      --ENDPOINT_URL "$NCB_S3_ENDPOINT" --REGION "$NCB_S3_REGION" --DESTINATION "$M/ours" --STATE_FILE "$M/state.json" -q)
echo "== $N small objects + 3 x 64 MiB ($src_bytes bytes) in s3://$BUCKET"
for round in first second; do
  measure "object-mirror ($round pass)" "$OM" "${OURS[@]}"
  BENCH_ROWS[-1]+="$(du -sb "$M/ours" | cut -f1)"
  measure "rclone copy ($round)" env -u AWS_CA_BUNDLE rclone copy --transfers 8 --checkers 16 "garage:$BUCKET" "$M/rclone"
  BENCH_ROWS[-1]+="$(du -sb "$M/rclone" | cut -f1)"
  measure "aws s3 sync ($round)" $AWS s3 sync --only-show-errors "s3://$BUCKET" "$M/aws"
  BENCH_ROWS[-1]+="$(du -sb "$M/aws" | cut -f1)"
  echo "-- $round run"
  table
done
# Every copy is the object: a few decompressed and compared with rclone's.
for f in uploads/07/file-7.txt videos/clip-1.mov; do
  d=${f%.*}
  cmp <(gzip -dc "$M/ours/$BUCKET/$d/v1.gzip") "$M/rclone/$f" || { echo "bench: $f differs" >&2; exit 1; }
done
echo "(copies checked against rclone's: identical)"
$AWS s3 rb --force "s3://$BUCKET" >/dev/null
rm -rf "$M"
