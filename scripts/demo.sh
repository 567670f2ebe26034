#!/usr/bin/env bash
# A real backup on a fresh machine, with no servers: builds nc-backup, makes sample data
# under /tmp/nc-backup-demo, runs conf/demo.json, and shows the run report.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=/tmp/nc-backup-demo

cargo build --release --workspace --bins --locked
BIN=$PWD/target/release

rm -rf "$DEMO"
mkdir -p "$DEMO/data/docs" "$DEMO/data/photos"
for i in $(seq 1 50); do seq 1 "$((i * 200))" > "$DEMO/data/docs/file-$i.txt"; done
head -c 3000000 /dev/urandom > "$DEMO/data/photos/image.jpg"

echo "== checking conf/demo.json"
"$BIN/backup-runner" --check -c conf/demo.json
echo "== running the backup"
"$BIN/backup-runner" -r -v -c conf/demo.json --json > "$DEMO/report.json"
echo "== run report: $DEMO/report.json"
cat "$DEMO/report.json"
