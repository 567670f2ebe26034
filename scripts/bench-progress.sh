#!/usr/bin/env bash
# What drawing progress costs: filesbackup under cron (no terminal: no bar, no estimate) and on
# a terminal (a pseudo-terminal made by script(1): the bar, and the total estimated by a
# metadata walk beside the archiving), beside tar czf on the same files. Wall, CPU, peak RSS,
# ratios; NCB_BENCH_ROUNDS rounds (default 3).
#   scripts/bench-progress.sh [WORKDIR] [PATHS...]   (default /var/tmp/ncb-bench, /usr/share /usr/include)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
bench_paths "$@"
bench_setup
cargo build --release --locked -p filesbackup >&2
FB=$PWD/target/release/filesbackup
O=$W/progress
rm -rf "$O"; mkdir -p "$O"
echo "== ${PATHS[*]} ($(du -sch "${PATHS[@]}" 2>/dev/null | tail -n1 | cut -f1))"
tar -cf /dev/null -C / "${rel[@]}"   # warm the page cache for everyone
args="--HOSTNAME bench --WORK_FOLDER $O --LOG_FOLDER $O --FILESET_INCLUDE '${PATHS[*]}'"
for round in $(seq 1 "${NCB_BENCH_ROUNDS:-3}"); do
  echo "-- round $round"
  rm -rf "$O"/cron "$O"/tty "$O/gnu.tar.gz"
  measure "filesbackup, no terminal (cron)" sh -c "$FB $args --DESTINATION $O/cron </dev/null 2>/dev/null"
  measure "filesbackup on a terminal (bar)" script -qefc "$FB $args --DESTINATION $O/tty" "$O/typescript"
  measure "tar czf" tar czf "$O/gnu.tar.gz" -C / "${rel[@]}"
  table
done
tr '\r' '\n' < "$O/typescript" | grep -a ' 100% ' | tail -n1 | sed 's/\x1b\[K//; s/^/last frame drawn: /'
