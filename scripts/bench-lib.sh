# Shared by the benchmarks: `measure LABEL CMD...` runs CMD once (after a sync) under GNU time and records
# wall seconds, CPU seconds and peak RSS (LABEL must not contain ';'); appending a size to
# the last row (BENCH_ROWS[-1]+=BYTES) adds it to the table; `table` prints the rows with
# ratios to the first one.
BENCH_ROWS=()
measure() {
  local label=$1; shift
  local t; t=$(mktemp)
  # Each tool starts with nothing of the one before still being written back to the disk.
  sync
  if ! /usr/bin/time -f '%e %U %S %M' -o "$t" "$@" >/dev/null 2>"$t.err"; then
    echo "bench: $label failed:" >&2; cat "$t.err" >&2; rm -f "$t" "$t.err"; return 1
  fi
  read -r wall user sys rss < <(tail -n1 "$t")
  rm -f "$t" "$t.err"
  BENCH_ROWS+=("$label;$wall;$(echo "$user + $sys" | bc);$rss;")
}
# table: the first row is ours; ratios are other/ours for time (>1: we are faster).
table() {
  local first=1 ours_wall ours_size
  printf '%-34s %9s %9s %10s %14s %10s %10s\n' tool wall_s cpu_s rss_MiB out_bytes speedup size_vs_us
  for row in "${BENCH_ROWS[@]}"; do
    IFS=';' read -r label wall cpu rss size <<<"$row"
    if ((first)); then ours_wall=$wall; ours_size=${size:-0}; first=0; fi
    local speed size_ratio="-"
    speed=$(echo "scale=2; $wall / $ours_wall" | bc)
    if [ -n "$size" ] && [ "$ours_size" != 0 ]; then size_ratio=$(echo "scale=4; $size / $ours_size" | bc); fi
    printf '%-34s %9s %9s %10s %14s %9sx %10s\n' "$label" "$wall" "$cpu" "$((rss / 1024))" "${size:--}" "$speed" "$size_ratio"
  done
  BENCH_ROWS=()
}

# ensure_big_file DIR: prints the path of a 1 GiB file built from real text (it compresses
# like a database dump), making it once.
ensure_big_file() {
  local big=$1/big/dump.sql
  mkdir -p "$1/big"
  if [ ! -s "$big" ] || [ "$(stat -c %s "$big")" -lt $((1 << 30)) ]; then
    echo "bench: building $big (1 GiB from /usr/include and /usr/share/doc text)" >&2
    tar -cf "$1/seed.tar" -C / usr/include usr/share/doc 2>/dev/null || true
    : > "$big"
    while [ "$(stat -c %s "$big")" -lt $((1 << 30)) ]; do cat "$1/seed.tar" >> "$big"; done
    truncate -s $((1 << 30)) "$big"
    rm -f "$1/seed.tar"
  fi
  echo "$big"
}

# bench_setup: the tools every benchmark needs (GNU time, bc, the test dependencies).
bench_setup() {
  command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
  command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null
  scripts/install-deps.sh
}

# bench_servers: the servers of scripts/servers.sh (started when Garage does not answer), their
# variables exported, and the aws CLI and our S3 client pointed at Garage's key.
bench_servers() {
  export NCB_SERVERS_DIR=${NCB_SERVERS_DIR:-/var/tmp/ncb-servers}
  if ! [ -f "$NCB_SERVERS_DIR/env" ] || ! bash -c "exec 3<>/dev/tcp/127.0.0.1/39000" 2>/dev/null; then
    scripts/servers.sh start
  fi
  set -a; . "$NCB_SERVERS_DIR/env"; set +a
  export AWS_ACCESS_KEY_ID=$NCB_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$NCB_S3_SECRET_KEY AWS_EC2_METADATA_DISABLED=true
}

# bench_paths [WORKDIR] [PATHS...]: W (default /var/tmp/ncb-bench), PATHS (default /usr/share
# /usr/include) and rel (PATHS without their leading /, for tar -C /).
bench_paths() {
  W=${1:-/var/tmp/ncb-bench}
  shift || true
  if [ "$#" -gt 0 ]; then PATHS=("$@"); else PATHS=(/usr/share /usr/include); fi
  rel=(); for p in "${PATHS[@]}"; do rel+=("${p#/}"); done
}
