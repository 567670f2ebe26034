#!/usr/bin/env bash
# A real backup and its restore on a fresh machine, with no servers: builds nc-backup, makes
# sample data and a key under /tmp/nc-backup-demo, runs conf/demo.json (files -> compression
# -> encryption into split parts -> local storage with retention), then fetches the run back
# with `storage --download`, decrypts with `encryption -d`, unpacks with GNU tar and compares
# the restored files with the originals.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=/tmp/nc-backup-demo

cargo build --release --workspace --bins --locked
BIN=$PWD/target/release

rm -rf "$DEMO"
mkdir -p "$DEMO/data/docs" "$DEMO/data/photos" "$DEMO/data/cache"
for i in $(seq 1 50); do seq 1 "$((i * 2000))" > "$DEMO/data/docs/file-$i.txt"; done
head -c 3000000 /dev/urandom > "$DEMO/data/photos/image.jpg"
ln -s docs/file-1.txt "$DEMO/data/latest.txt"
echo "scratch" > "$DEMO/data/scratch.tmp"
echo "cached" > "$DEMO/data/cache/c.bin"
"$BIN/encryption" --generate-key "$DEMO/key_file"

echo "== checking conf/demo.json"
"$BIN/backup-runner" --check -c conf/demo.json
echo "== running the backup"
"$BIN/backup-runner" -r -v -c conf/demo.json --json > "$DEMO/report.json"
run_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$DEMO/report.json")
echo "== stored run $run_id:"
ls -l "$DEMO/backups/demo-host/$run_id"

echo "== restoring: storage --download, encryption -d, then tar"
"$BIN/storage" --download --PATH "$DEMO/backups" --PREFIX demo-host --RUN latest --DESTINATION "$DEMO/restore/fetched"
"$BIN/encryption" -d --KEY_FILE "$DEMO/key_file" --OBJECTIVES "$DEMO/restore/fetched/files.tar.gz" --DESTINATION "$DEMO/restore/files.tar.gz"
tar -xzf "$DEMO/restore/files.tar.gz" -C "$DEMO/restore"            # files/<host>_FILESET_<time>.tar.gz
tar -xzf "$DEMO/restore"/files/*.tar.gz -C "$DEMO/restore"           # tmp/nc-backup-demo/data/...
diff -r --exclude='*.tmp' --exclude=cache "$DEMO/data" "$DEMO/restore$DEMO/data"
echo "== restored files are identical to the originals (run report: $DEMO/report.json)"
