#!/usr/bin/env bash
# Three nights of the same real tree, side by side with restic, both to the same S3 server
# (Garage on 127.0.0.1, started by scripts/servers.sh if needed): night 1 full, night 2 with
# nothing changed, night 3 with 1% of the files modified and some added and removed. Ours is
# the nightly pipeline (filesbackup INCREMENTAL -> encryption -> storage to Garage); restic's
# is `restic backup` to a repository in the same bucket. Prints, per night, wall, CPU, peak
# RSS and the bytes stored so far (speedup: restic's wall / ours), then verifies both (ours:
# `verify --read-data` of the whole chain; restic: `check --read-data`) and restores the
# last night with `backup-runner restore`, compared with the tree by diff -r.
#   scripts/bench-incremental.sh [WORKDIR] [DATA...]   (default /var/tmp/ncb-bench, /usr/share /usr/include)
#   NCB_BENCH_KEEP=1 keeps WORKDIR/incremental-bench afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
W=${1:-/var/tmp/ncb-bench}
shift || true
DATA=("${@:-/usr/share /usr/include}")
read -r -a DATA <<<"${DATA[*]}"
bench_setup
command -v restic >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null
bench_servers
AWS="aws --endpoint-url $NCB_S3_ENDPOINT --region $NCB_S3_REGION"
cargo build --release --locked --workspace --bins >&2
BIN=$PWD/target/release
R=$W/incremental-bench
rm -rf "$R"; mkdir -p "$R"
tag=inc-$(date +%s)
# The tree is a copy, so that nights 2 and 3 can change it.
T=$R/tree
mkdir -p "$T"
for p in "${DATA[@]}"; do cp -a "$p" "$T/"; done
"$BIN/encryption" --generate-key "$R/key" >/dev/null 2>&1
head -c 32 /dev/urandom | base64 > "$R/pass"; chmod 600 "$R/pass"
cat > "$R/conf.json" <<JSON
{
  "GENERAL": {"HOSTNAME": "bench", "WORK_FOLDER": "$R/work", "HOME_FOLDER": "$R", "LOG_FOLDER": "$R/log"},
  "FILES": {"ACTION": "execute", "NAME": "filesbackup",
            "PARAMETERS": {"FILESET_INCLUDE": "$T", "DESTINATION": "$R/work/files",
                           "INCREMENTAL": "True", "STATE_FOLDER": "$R/state"}},
  "ENCRYPTION": {"ACTION": "execute", "NAME": "encryption",
            "PARAMETERS": {"KEY_FILE": "$R/key", "FILE_SIZE": "100", "OBJECTIVES": "$R/work/files",
                           "DESTINATION": "$R/work/encrypted", "REMOVE_OBJECTIVES": "True"}},
  "STORAGE": {"ACTION": "execute", "NAME": "storage",
            "PARAMETERS": {"OBJECTIVES": "$R/work/encrypted", "DESTINATION": "s3", "BUCKET_NAME": "$NCB_S3_BUCKET",
                           "ENDPOINT_URL": "$NCB_S3_ENDPOINT", "REGION": "$NCB_S3_REGION", "PREFIX": "$tag-ours",
                           "REMOVE_OBJECTIVES": "True", "KEEP_LAST": "1"}}
}
JSON
export RESTIC_PASSWORD_FILE=$R/pass RESTIC_CACHE_DIR=$R/restic-cache
export RESTIC_REPOSITORY=s3:$NCB_S3_ENDPOINT/$NCB_S3_BUCKET/$tag-restic
restic init -q >/dev/null
bucket_bytes() { $AWS s3 ls --recursive --summarize "s3://$NCB_S3_BUCKET/$1/" | awk '/Total Size/ {print $3}'; }
echo "== data: ${DATA[*]} copied to $T ($(du -sh "$T" | cut -f1), $(find "$T" | wc -l) entries); restic $(restic version | cut -d' ' -f2)"
tar -cf /dev/null -C "$T" .   # warm the page cache for both

WALLS=()
night() {
  echo "== night $1: $2"
  measure "nc-backup night $1 (runner)" "$BIN/backup-runner" -r -q -c "$R/conf.json"
  BENCH_ROWS[-1]+="$(bucket_bytes "$tag-ours")"
  WALLS+=("$(cut -d';' -f2 <<<"${BENCH_ROWS[-1]}")")
  measure "restic backup $1" restic backup -q "$T"
  BENCH_ROWS[-1]+="$(bucket_bytes "$tag-restic")"
  WALLS+=("$(cut -d';' -f2 <<<"${BENCH_ROWS[-1]}")")
  table
  sleep 1   # run ids count seconds
}
night 1 "full"
night 2 "nothing changed"
# 1% of the files modified (appended to), 0.1% removed, as many added.
mapfile -t files < <(find "$T" -type f | sort)
n=${#files[@]}
for ((i = 0; i < n; i += 100)); do echo "night 3 change $i" >> "${files[$i]}"; done
for ((i = 50; i < n; i += 1000)); do rm -f "${files[$i]}"; done
mkdir -p "$T/added"
for ((i = 0; i < n / 1000; i++)); do head -c 20000 /dev/urandom > "$T/added/f$i"; done
night 3 "$((n / 100)) files modified, $((n / 1000)) removed, $((n / 1000)) added"

ratio() { echo "scale=2; $1 / $2" | bc; }
echo "our wall / restic's: night 1 $(ratio "${WALLS[0]}" "${WALLS[1]}"), night 2 $(ratio "${WALLS[2]}" "${WALLS[3]}"), night 3 $(ratio "${WALLS[4]}" "${WALLS[5]}") (below 1: we are faster)"
ours=$(bucket_bytes "$tag-ours"); theirs=$(bucket_bytes "$tag-restic")
echo "bytes stored after three nights: ours $ours, restic $theirs (ours / restic's: $(ratio "$ours" "$theirs"))"

echo "== verify and restore"
measure "nc-backup verify --read-data (chain)" "$BIN/backup-runner" verify -q -c "$R/conf.json" --run latest --read-data
measure "restic check --read-data" restic check -q --read-data
table
measure "nc-backup restore (chain)" "$BIN/backup-runner" restore -q -c "$R/conf.json" --run latest --to "$R/ours"
measure "restic restore" restic restore -q latest --target "$R/restic-out"
table
diff -r --no-dereference "$T" "$R/ours${T}" >/dev/null || { echo "bench: our restore of night 3 differs from the tree" >&2; exit 1; }
echo "(our restore of night 3 is identical to the tree: diff -r ok)"
$AWS s3 rm --quiet --recursive "s3://$NCB_S3_BUCKET/$tag-ours/" >/dev/null
$AWS s3 rm --quiet --recursive "s3://$NCB_S3_BUCKET/$tag-restic/" >/dev/null
[ -n "${NCB_BENCH_KEEP:-}" ] || rm -rf "$R"
