#!/usr/bin/env bash
# The non-root mode's cost, side by side on the same files: an unprivileged user backing up
# files it may not read, through our privileged reader (file capability, and sudo) against what
# nc-backup-py's users did (its sudoers rule: `sudo tar czf`, which writes root-owned archives),
# and against filesbackup run by root. Prints wall, CPU, peak RSS, output size and ratios, for
# NCB_BENCH_ROUNDS rounds (default 3).
#   scripts/bench-privilege.sh [WORKDIR] [PATHS...]   (default /var/tmp/ncb-bench, /usr/share /usr/include)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
bench_paths "$@"
bench_setup
cargo build --release --locked -p filesbackup >&2
U=ncbbench
getent passwd $U >/dev/null || useradd -r -M -s /usr/sbin/nologin $U
G=$(id -g $U)
R=$W/priv
rm -rf "$R"; mkdir -p "$R/reader" "$R/out"; chmod 755 "$W" "$R" "$R/reader"
chown $U: "$R/out"
install -m 0750 -o root -g "$G" target/release/filesbackup "$R/reader/filesbackup-reader"
cp "$R/reader/filesbackup-reader" "$R/reader/filesbackup-reader-sudo"
setcap cap_dac_read_search=ep "$R/reader/filesbackup-reader"
RULE=/etc/sudoers.d/ncb-bench-$$
trap 'rm -f "$RULE"' EXIT
cat > "$RULE" <<SUDO
Cmnd_Alias NCB_READER = $R/reader/filesbackup-reader-sudo --privileged-reader *
Defaults!NCB_READER !requiretty, !use_pty, env_reset, env_keep += "NCB_*"
$U ALL = (root) NOPASSWD: NCB_READER
$U ALL = (root) NOPASSWD: /usr/bin/tar czf $R/out/sudo-tar.tar.gz -C / ${rel[*]}
SUDO
chmod 440 "$RULE"; visudo -cf "$RULE" >/dev/null
echo "== ${PATHS[*]} ($(du -sch "${PATHS[@]}" 2>/dev/null | tail -n1 | cut -f1)), read by user $U"
tar -cf /dev/null -C / "${rel[@]}"   # warm the page cache for everyone
args=(--HOSTNAME bench --WORK_FOLDER "$R/out" --LOG_FOLDER "$R/out" --FILESET_INCLUDE "${PATHS[*]}")
mkdir -p "$R/rootwork"
for round in $(seq 1 "${NCB_BENCH_ROUNDS:-3}"); do
  echo "-- round $round"
  rm -rf "$R"/out/cap "$R"/out/sudo "$R"/out/root "$R/out/sudo-tar.tar.gz"
  measure "reader, file capability (as $U)" runuser -u $U -- "$R/reader/filesbackup-reader" --privileged-reader "${args[@]}" --DESTINATION "$R/out/cap"
  BENCH_ROWS[-1]+="$(stat -c %s "$R"/out/cap/*.tar.gz)"
  measure "reader through sudo (as $U)" runuser -u $U -- sudo -n "$R/reader/filesbackup-reader-sudo" --privileged-reader "${args[@]}" --DESTINATION "$R/out/sudo"
  BENCH_ROWS[-1]+="$(stat -c %s "$R"/out/sudo/*.tar.gz)"
  measure "sudo tar czf (nc-backup-py's rule)" runuser -u $U -- sudo -n /usr/bin/tar czf "$R/out/sudo-tar.tar.gz" -C / "${rel[@]}"
  BENCH_ROWS[-1]+="$(stat -c %s "$R/out/sudo-tar.tar.gz")"
  measure "filesbackup as root" target/release/filesbackup --HOSTNAME bench --WORK_FOLDER "$R/rootwork" \
    --LOG_FOLDER "$R/rootwork" --FILESET_INCLUDE "${PATHS[*]}" --DESTINATION "$R/out/root"
  BENCH_ROWS[-1]+="$(stat -c %s "$R"/out/root/*.tar.gz)"
  table
done
echo "owners of the outputs:"
stat -c '  %U %n' "$R"/out/cap/*.tar.gz "$R"/out/sudo/*.tar.gz "$R/out/sudo-tar.tar.gz" "$R"/out/root/*.tar.gz
tar -tzf "$R"/out/cap/*.tar.gz >/dev/null && echo "(tar -tzf reads the reader's archive: ok)"
