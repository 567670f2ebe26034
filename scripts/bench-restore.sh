#!/usr/bin/env bash
# Restore against backup, on the same data, in one run (restic users' loudest complaint is
# restores far slower than backups). Our pipeline (filesbackup -> encryption in 100 MiB parts
# -> local storage) backed up and restored with `backup-runner restore`, beside what users run
# instead: tar | gzip | gpg (and its restore), and restic (Debian's) backup and restore.
#   scripts/bench-restore.sh [WORKDIR] [DATA...]   (default /var/tmp/ncb-bench, /usr/share /usr/include)
# Prints wall, CPU, peak RSS, the stored size, and ratios to our backup (speedup: their wall / ours);
# each restore runs NCB_BENCH_ROUNDS times (default 3), taking turns, and the summary gives medians;
# then once each into tmpfs, when /dev/shm has room: the tools' own work without the disk's.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
W=${1:-/var/tmp/ncb-bench}
shift || true
DATA=("${@:-/usr/share /usr/include}")
read -r -a DATA <<<"${DATA[*]}"
bench_setup
command -v restic >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null
cargo build --release --locked --workspace --bins >&2
BIN=$PWD/target/release
R=$W/restore-bench
rm -rf "$R"; mkdir -p "$R"
"$BIN/encryption" --generate-key "$R/key" >/dev/null 2>&1
head -c 32 /dev/urandom | base64 > "$R/pass"; chmod 600 "$R/pass"
cat > "$R/conf.json" <<JSON
{
  "GENERAL": {"HOSTNAME": "bench", "WORK_FOLDER": "$R/work", "HOME_FOLDER": "$R", "LOG_FOLDER": "$R/log"},
  "FILES": {"ACTION": "execute", "NAME": "filesbackup",
            "PARAMETERS": {"FILESET_INCLUDE": "${DATA[*]}", "DESTINATION": "$R/work/files"}},
  "ENCRYPTION": {"ACTION": "execute", "NAME": "encryption",
            "PARAMETERS": {"KEY_FILE": "$R/key", "FILE_SIZE": "100", "OBJECTIVES": "$R/work/files",
                           "DESTINATION": "$R/work/encrypted", "REMOVE_OBJECTIVES": "True"}},
  "STORAGE": {"ACTION": "execute", "NAME": "storage",
            "PARAMETERS": {"OBJECTIVES": "$R/work/encrypted", "DESTINATION": "local", "PATH": "$R/store",
                           "REMOVE_OBJECTIVES": "True"}}
}
JSON
rel=(); for p in "${DATA[@]}"; do rel+=("${p#/}"); done
echo "== data: ${DATA[*]} ($(du -sch "${DATA[@]}" | tail -n1 | cut -f1), $(find "${DATA[@]}" | wc -l) entries)"
tar -cf /dev/null -C / "${rel[@]}"   # warm the page cache for everyone

measure "nc-backup backup (runner)" "$BIN/backup-runner" -r -q -c "$R/conf.json"
BENCH_ROWS[-1]+="$(du -sb "$R/store" | cut -f1)"
measure "tar|gzip|gpg backup" sh -c "tar -cf - -C / ${rel[*]} | gzip -6 | gpg --batch -q --symmetric --cipher-algo AES256 --compress-algo none --passphrase-file $R/pass -o $R/tgz.gpg"
BENCH_ROWS[-1]+="$(stat -c %s "$R/tgz.gpg")"
export RESTIC_PASSWORD_FILE=$R/pass RESTIC_REPOSITORY=$R/restic RESTIC_CACHE_DIR=$R/restic-cache
restic init -q >/dev/null
measure "restic backup" restic backup -q "${DATA[@]}"
BENCH_ROWS[-1]+="$(du -sb "$R/restic" | cut -f1)"
# Before each restore, the previous one is deleted and the kernel's caches dropped, then the
# stored backups read back into the page cache. Why: on an ext4 without a journal (this VM's
# root), creating a file scans the inode table for inodes deleted in the last minutes
# (fs/ext4/ialloc.c recently_deleted(), for every free inode whose table block is cached), so
# a restore started right after `rm -rf` of the previous one's 60,000 files spent up to 4 s
# of kernel time there (perf: 60% of the samples), whichever tool it was: the benchmark was
# measuring its own deletions. A user's restore does not follow a mass deletion on the same
# disk by seconds; dropping the caches gives every tool the disk a user has.
fresh_disk() {
  rm -rf "$R/ours" "$R/gpg" "$R/restic-out"
  sync
  if ! echo 3 2>/dev/null >/proc/sys/vm/drop_caches; then
    echo "bench: cannot drop the kernel's caches (not root?): restores after a deletion measure ext4's recently-deleted scan too" >&2
  fi
  # What every restore reads comes from memory, as in the backups (the page cache was warmed).
  tar -cf /dev/null -C "$R" store tgz.gpg restic
}
ROUNDS=${NCB_BENCH_ROUNDS:-3}
for i in $(seq 1 "$ROUNDS"); do
  fresh_disk
  measure "nc-backup restore (runner) #$i" "$BIN/backup-runner" restore -q -c "$R/conf.json" --to "$R/ours"
  if [ "$i" = "$ROUNDS" ]; then mv "$R/ours" "$R/ours-kept"; fi
  fresh_disk
  measure "gpg|gunzip|tar restore #$i" sh -c "mkdir -p $R/gpg && gpg --batch -q -d --passphrase-file $R/pass $R/tgz.gpg | gzip -dc | tar -xf - -C $R/gpg"
  fresh_disk
  measure "restic restore #$i" restic restore -q latest --target "$R/restic-out"
done
fresh_disk
# The same restores into memory (tmpfs), once each: the tools' own work, without the disk's.
SHM=/dev/shm/ncb-bench-restore.$$
shm_rows=0
if [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt $(( $(du -sk "${DATA[@]}" | awk '{s+=$1} END {print s}') * 3 )) ]; then
  measure "nc-backup restore into tmpfs" "$BIN/backup-runner" restore -q -c "$R/conf.json" --to "$SHM/ours"
  rm -rf "$SHM"
  measure "restic restore into tmpfs" restic restore -q latest --target "$SHM/restic"
  rm -rf "$SHM"
  shm_rows=2
fi
wall() { cut -d';' -f2 <<<"${BENCH_ROWS[$1]}"; }
# Median wall of the restores of one tool: rows FIRST, FIRST+3, …
median() { local w=(); for i in $(seq 0 $((ROUNDS - 1))); do w+=("$(wall $(($1 + 3 * i)))"); done; printf '%s\n' "${w[@]}" | sort -n | sed -n "$(((ROUNDS + 1) / 2))p"; }
ours=$(median 3); gpgr=$(median 4); resr=$(median 5)
summary=$(printf 'median restore wall (of %s): nc-backup %s s, tar|gzip|gpg %s s, restic %s s; restore / backup: nc-backup %s, tar|gzip|gpg %s, restic %s; restic restore / ours: %s (above 1: ours is faster)' \
  "$ROUNDS" "$ours" "$gpgr" "$resr" \
  "$(echo "scale=2; $ours / $(wall 0)" | bc)" "$(echo "scale=2; $gpgr / $(wall 1)" | bc)" "$(echo "scale=2; $resr / $(wall 2)" | bc)" \
  "$(echo "scale=2; $resr / $ours" | bc)")
if [ "$shm_rows" = 2 ]; then
  n=${#BENCH_ROWS[@]}
  summary="$summary; into tmpfs (no disk): nc-backup $(wall $((n - 2))) s, restic $(wall $((n - 1))) s, our restore / our backup $(echo "scale=2; $(wall $((n - 2))) / $(wall 0)" | bc)"
fi
table
echo "$summary"

# Every restore gave the same files back.
for p in "${rel[@]}"; do
  diff -r --no-dereference "/$p" "$R/ours-kept/$p" >/dev/null || { echo "bench: our restore differs in /$p" >&2; exit 1; }
done
echo "(our restore is identical to the data: diff -r ok)"
rm -rf "$R"
