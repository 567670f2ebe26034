#!/usr/bin/env bash
# kill -9 soak: a real pipeline (filesbackup of real files, mysql-dump of a MariaDB database,
# compression, encryption in parts, storage to a local folder and to Garage) is killed at a
# random moment of a night, N times; after each kill the next night runs with no hand work and
# must leave everything as promised (docs/CONFIG.md "The run journal").
#
#   scripts/soak-kill.sh N
#
# Each round:
#   1. a night (`backup-runner -r`) starts in its own process group; after a random moment
#      within a clean night's duration (measured first, then kept up to date with each next
#      night's own sections as the machine's load changes), SIGKILL goes at random to the
#      runner alone, to its whole process group (`kill -KILL -- -PGID`), or to the stage it
#      is running;
#   2. the next night runs, and the round is clean when: it exits 0; its report's `recovered`
#      names the killed night as `completed` (it had finished a section) or `abandoned` (it
#      had not), or nothing when the kill left no journal; no process of the killed night
#      outlives it; `verify --run all --read-data` exits 0 and every stored run is complete;
#      no `.partial-` file or object and no open multipart upload is stored; the newest run
#      and the completed killed night restore (`backup-runner restore`) to the source's bytes
#      (SHA-256 of every file, every link's target, the night's marker) and a complete dump;
#      WORK_FOLDER holds nothing but its empty shared folders, journals of pending runs (none)
#      and the lock; no `.ncb-secret-*` file; KEEP_LAST holds the stored runs down.
# Prints a line per round, then "N rounds, M clean (P%)" and the failures; the details of
# each failed round (logs, reports, journals, listings) stay in the results folder. Exit 1 if
# any round is not clean. A failed round's state is set aside and the next round starts anew.
#
# Environment:
#   NCB_SOAK_DATA_MB      data to back up, MB (default 300): a copy of /usr/include and
#                         /usr/share/doc up to 2/3 of it, random bytes for the rest
#   NCB_SOAK_ROWS         rows in the database (default 100000)
#   NCB_SOAK_FILE_SIZE    encryption's FILE_SIZE, MB (default 16)
#   NCB_SOAK_KEEP_LAST    storage's KEEP_LAST (default 2)
#   NCB_SOAK_INCREMENTAL  a FULL_EVERY (e.g. 3): filesbackup INCREMENTAL True with it, the
#                         stores then hold up to KEEP_LAST + FULL_EVERY - 1 runs (whole chains)
#   NCB_SOAK_BIN          folder of the binaries (default target/release, built when missing)
#   NCB_SOAK_DIR          work folder of the soak (default a new /var/tmp/ncb-soak.XXXXXX,
#                         removed at the end)
#   NCB_SOAK_RESULTS      where the summary and failed rounds are kept (default
#                         /var/tmp/ncb-soak-results-<time>)
#   NCB_SOAK_RELOAD_EVERY reload the restored dump into MariaDB and compare CHECKSUM TABLE
#                         every this many rounds (default 10; the last round always)
#   NCB_SOAK_SEED         seed of the random choices (default: random, printed)
#   NCB_SERVERS_DIR       the test servers (default /var/tmp/ncb-servers; started with
#                         scripts/servers.sh start when none of them is up)
#   NCB_SOAK_GARAGE       `shared` (default): the Garage of the test servers; `private`: a
#                         Garage of the soak's own (other ports, its own bucket), for a long
#                         soak beside tests that stop and restart the shared one
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

N=${1:-}
[[ "$N" =~ ^[0-9]+$ && "$N" -ge 1 ]] || { echo "usage: $0 N (rounds)" >&2; exit 2; }
DATA_MB=${NCB_SOAK_DATA_MB:-300}
ROWS=${NCB_SOAK_ROWS:-100000}
FILE_SIZE=${NCB_SOAK_FILE_SIZE:-16}
KEEP_LAST=${NCB_SOAK_KEEP_LAST:-2}
INCREMENTAL=${NCB_SOAK_INCREMENTAL:-}
MAX_RUNS=$KEEP_LAST
INC_PARAMS=""
if [ -n "$INCREMENTAL" ]; then
  MAX_RUNS=$((KEEP_LAST + INCREMENTAL - 1))
fi
RELOAD_EVERY=${NCB_SOAK_RELOAD_EVERY:-10}
SEED=${NCB_SOAK_SEED:-$(( $(od -An -N2 -tu2 /dev/urandom) ))}
RANDOM=$SEED
export NCB_SERVERS_DIR=${NCB_SERVERS_DIR:-/var/tmp/ncb-servers}
RESULTS=${NCB_SOAK_RESULTS:-/var/tmp/ncb-soak-results-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS"
SUMMARY=$RESULTS/summary.txt
: > "$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }
die() { echo "soak: $*" >&2; exit 2; }
now() { echo "$EPOCHREALTIME"; }
# secs A B: B-A with one decimal
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# --- binaries -------------------------------------------------------------------------------
BIN=${NCB_SOAK_BIN:-$REPO/target/release}
BINARIES=(backup-runner filesbackup mysql-dump compression encryption storage)
have_bins() { local b; for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || return 1; done; }
if ! have_bins; then
  [ -z "${NCB_SOAK_BIN:-}" ] || die "NCB_SOAK_BIN=$BIN lacks one of: ${BINARIES[*]}"
  echo "== building release binaries" >&2
  cargo build --release --workspace --bins --locked >&2 || die "release build failed"
fi
BIN=$(cd "$BIN" && pwd)

# --- servers --------------------------------------------------------------------------------
ENVF=$NCB_SERVERS_DIR/env
my_up() { [ -f "$ENVF" ] && mariadb-admin --defaults-file="$NCB_SERVERS_DIR/mariadb/my.cnf" ping >/dev/null 2>&1; }
s3_up() { (exec 3<>/dev/tcp/127.0.0.1/39000) 2>/dev/null; }
if ! my_up && ! s3_up; then
  echo "== starting the test servers (scripts/servers.sh start)" >&2
  scripts/servers.sh start >&2 || die "cannot start the test servers"
fi
GARAGE=${NCB_SOAK_GARAGE:-shared}
[[ "$GARAGE" == shared || "$GARAGE" == private ]] || die "NCB_SOAK_GARAGE: shared or private, not '$GARAGE'"
my_up || die "MariaDB of $NCB_SERVERS_DIR is not answering (and other servers are up: not restarting them)"
[ "$GARAGE" = private ] || s3_up ||
  die "Garage of $NCB_SERVERS_DIR is not answering (and other servers are up: not restarting them)"
var() { sed -n "s/^$1=//p" "$ENVF" | head -n1; }
MY_CNF=$(var NCB_MYSQL_ADMIN_CNF)
MY_PORT=$(var NCB_MYSQL_PORT)
MY_PASS=$(var NCB_MYSQL_PASSWORD)
S3_ENDPOINT=$(var NCB_S3_ENDPOINT)
S3_REGION=$(var NCB_S3_REGION)
S3_BUCKET=$(var NCB_S3_BUCKET)
export AWS_ACCESS_KEY_ID=$(var NCB_S3_ACCESS_KEY)
export AWS_SECRET_ACCESS_KEY=$(var NCB_S3_SECRET_KEY)
export AWS_EC2_METADATA_DISABLED=true
command -v aws >/dev/null || die "the aws CLI is needed to list the bucket (scripts/install-deps.sh)"
aws_() { aws --endpoint-url "$S3_ENDPOINT" --region "$S3_REGION" "$@"; }
sql() { mariadb --defaults-file="$MY_CNF" --default-character-set=utf8mb4 -N -B "$@"; }

# --- the sandbox ----------------------------------------------------------------------------
if [ -n "${NCB_SOAK_DIR:-}" ]; then T=$NCB_SOAK_DIR; mkdir -p "$T"; else T=$(mktemp -d /var/tmp/ncb-soak.XXXXXX); fi
T=$(cd "$T" && pwd)
chmod 755 "$T"
DB=ncbsoak_$$
PREFIX_BASE=soak-$$-$(date -u +%H%M%S)
EPOCH=0
PREFIX=$PREFIX_BASE-$EPOCH
GARAGE_PID=""
cleanup() {
  sql -e "DROP DATABASE IF EXISTS $DB; DROP DATABASE IF EXISTS ${DB}_r" 2>/dev/null
  local e
  if [ -n "$GARAGE_PID" ]; then
    kill "$GARAGE_PID" 2>/dev/null; wait "$GARAGE_PID" 2>/dev/null
  else
    for e in $(seq 0 "$EPOCH"); do
      aws_ s3 rm --quiet --recursive "s3://$S3_BUCKET/$PREFIX_BASE-$e/" >/dev/null 2>&1
    done
  fi
  [ -n "${NCB_SOAK_DIR:-}" ] || rm -rf "$T"
}
trap cleanup EXIT
trap 'echo "soak: interrupted" >&2; exit 130' INT TERM

echo "== sandbox $T, results $RESULTS, seed $SEED" >&2
if [ "$GARAGE" = private ]; then
  # A single-node Garage as scripts/servers.sh starts the shared one, on free ports.
  G=$T/garage
  mkdir -p "$G/meta" "$G/data"
  read -r GP GR < <(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
  cat > "$G/garage.toml" <<CONF
metadata_dir = "$G/meta"
data_dir = "$G/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$GR"
rpc_public_addr = "127.0.0.1:$GR"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$GP"
root_domain = ".s3.garage.localhost"
CONF
  AWS_ACCESS_KEY_ID="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  AWS_SECRET_ACCESS_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY GARAGE_DEFAULT_BUCKET=soak \
    garage -c "$G/garage.toml" server --single-node --default-bucket > "$G/garage.log" 2>&1 &
  GARAGE_PID=$!
  for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$GP") 2>/dev/null && break; sleep 0.1; done
  (exec 3<>"/dev/tcp/127.0.0.1/$GP") 2>/dev/null || die "private Garage did not start: $(tail -5 "$G/garage.log")"
  sleep 0.5
  S3_ENDPOINT=http://127.0.0.1:$GP S3_REGION=garage S3_BUCKET=soak
  echo "== private Garage on 127.0.0.1:$GP" >&2
fi
DATA=$T/data
mkdir -p "$DATA"
# Real files: /usr/include and /usr/share/doc, in name order, up to 2/3 of the size.
budget=$(( DATA_MB * 1024 * 1024 * 2 / 3 ))
find /usr/include /usr/share/doc \( -type f -o -type l \) -printf '%s %p\n' 2>/dev/null | sort -k2 |
  awk -v b="$budget" '{ t += $1; if (t > b) exit; sub(/^[0-9]+ \//, ""); print }' > "$T/files.list"
tar -C / -cf - --files-from="$T/files.list" 2>/dev/null | tar -C "$DATA" -xf - || die "cannot copy the real files"
real=$(du -sb "$DATA" | cut -f1)
rest=$(( DATA_MB * 1024 * 1024 - real ))
i=0
while [ "$rest" -gt 0 ]; do
  chunk=$(( rest < 8 * 1024 * 1024 ? rest : 8 * 1024 * 1024 ))
  mkdir -p "$DATA/random"
  head -c "$chunk" /dev/urandom > "$DATA/random/r$i.bin"
  rest=$(( rest - chunk )); i=$(( i + 1 ))
done
echo "== data: $(du -sh "$DATA" | cut -f1) in $(find "$DATA" -type f | wc -l) files" >&2
# The source's bytes, for comparing restores (the night's marker apart).
manifest() { (cd "$1" && find . -type f ! -path ./marker.txt -print0 | sort -z | xargs -0 -r sha256sum
              find . -type l -printf '%p -> %l\n' | sort); }
manifest "$DATA" > "$T/source.manifest"

# A database of a few tables, $ROWS rows in the largest.
sql -e "CREATE DATABASE $DB CHARACTER SET utf8mb4; USE $DB;
  CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(80), email VARCHAR(120), created DATETIME);
  CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT, amount DECIMAL(12,2), note VARCHAR(200), KEY (customer_id));
  CREATE TABLE blobs (id INT PRIMARY KEY, data BLOB);
  INSERT INTO customers SELECT seq, CONCAT('customer ', seq), CONCAT('c', seq, '@example.org'), '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_$(( ROWS / 5 + 1 ));
  INSERT INTO orders SELECT seq, seq % $(( ROWS / 5 + 1 )) + 1, (seq * 37 % 100000) / 100, REPEAT(SUBSTR(MD5(seq), 1, 8), 1 + seq % 20) FROM seq_1_to_$ROWS;
  INSERT INTO blobs SELECT seq, UNHEX(REPEAT(SHA2(seq, 512), 8)) FROM seq_1_to_$(( ROWS / 20 + 1 ));" ||
  die "cannot create the database $DB"
db_sums() { sql -e "CHECKSUM TABLE $1.customers, $1.orders, $1.blobs" | cut -f2 | tr '\n' ' '; }
DB_SUMS=$(db_sums "$DB")
CREDS=$T/mysql.credentials
printf '[client]\nuser=ncbackup\npassword=%s\n' "$MY_PASS" > "$CREDS"
chmod 600 "$CREDS"
"$BIN/encryption" --generate-key "$T/key_file" >/dev/null || die "cannot make a key"

W=$T/work
CONF=$T/conf.json
write_conf() {
  [ -n "$INCREMENTAL" ] && INC_PARAMS=", \"INCREMENTAL\": \"True\", \"FULL_EVERY\": \"$INCREMENTAL\", \"STATE_FOLDER\": \"$T/state\""
  cat > "$CONF" <<JSON
{
  "GENERAL": {"HOSTNAME": "soakhost", "WORK_FOLDER": "$W", "HOME_FOLDER": "$T", "LOG_FOLDER": "$T/log/nc-backup.log"},
  "FILESET": {"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
    "FILESET_INCLUDE": "$DATA", "DESTINATION": "$W/files"$INC_PARAMS}},
  "DBSBACKUP": {"ACTION": "execute", "NAME": "mysql_backup", "EXECUTABLE": "mysql_dump.py", "EXECUTE_WITH": "python", "PARAMETERS": {
    "CREDENTIAL_PATH": "$CREDS", "HOST": "127.0.0.1", "MY_INSTANCES": "$MY_PORT", "DATABASES": "$DB",
    "DESTINATION": "$W", "PREFIX_FOLDER": "mydump"}},
  "COMPRESSION": {"ACTION": "execute", "NAME": "compression", "PARAMETERS": {
    "OBJECTIVES": "$W/files $W/mydump", "DESTINATION": "$W/compressed", "REMOVE_OBJECTIVES": "True"}},
  "ENCRYPTION": {"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
    "KEY_FILE": "$T/key_file", "FILE_SIZE": "$FILE_SIZE", "OBJECTIVES": "$W/compressed",
    "DESTINATION": "$W/encrypted", "REMOVE_OBJECTIVES": "True"}},
  "STORAGE": {"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
    "OBJECTIVES": "$W/encrypted", "DESTINATION": ["local", "s3"], "PATH": "$T/store",
    "BUCKET_NAME": "$S3_BUCKET", "REGION": "$S3_REGION", "ENDPOINT_URL": "$S3_ENDPOINT", "PREFIX": "$PREFIX/",
    "REMOVE_OBJECTIVES": "True", "KEEP_LAST": "$KEEP_LAST"}}
}
JSON
}
write_conf
"$BIN/backup-runner" --check -c "$CONF" >/dev/null || die "the soak's config does not pass --check"

runner() { "$BIN/backup-runner" "$@"; }
# Run ids count whole seconds: each night starts in a second of its own, as cron's would.
next_second() {
  local ns; ns=$(date +%N)
  local ms=$(( (1000000000 - 10#$ns) / 1000000 + 5 ))
  sleep "$(printf '%d.%03d' $(( ms / 1000 )) $(( ms % 1000 )))"
}
alive() { [ -e "/proc/$1" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }
descendants() { local c; for c in $(pgrep -P "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done; }
json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$@" 2>/dev/null; }

# A clean night: the baseline run and the night's typical duration.
echo "== a clean night" >&2
next_second
echo "baseline" > "$DATA/marker.txt"
t0=$(now)
runner -r -c "$CONF" --json > "$T/baseline.json" 2> "$T/baseline.err" || {
  cp "$T/baseline.json" "$T/baseline.err" "$RESULTS/" 2>/dev/null; die "the clean night failed: $(tail -5 "$T/baseline.err")"; }
t1=$(now)
NIGHT_MS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", (b - a) * 1000 }')
say "soak: $N rounds, data $(du -sh "$DATA" | cut -f1), $ROWS rows, FILE_SIZE $FILE_SIZE, KEEP_LAST $KEEP_LAST${INCREMENTAL:+, INCREMENTAL FULL_EVERY $INCREMENTAL}, $GARAGE Garage $S3_ENDPOINT, seed $SEED; a clean night takes $(secs "$t0" "$t1") s"
sections=$(json_get "$T/baseline.json" "' '.join('%s=%.1fs' % (s['name'], s['duration_ms']/1000) for s in d['sections'])")
say "clean night: $sections"

CLEAN=0
FAILED_ROUNDS=()
declare -A KILLS PROBLEMS
# Sets the state aside after a failed round and starts anew: a fresh work folder, store and
# S3 prefix, and a clean night.
reset_state() {
  local keep=$1
  [ -d "$W" ] && mv "$W" "$keep/work" 2>/dev/null
  # The data of a set-aside work folder is not needed to read the failure: listings are kept.
  find "$keep/work" -type f -size +64k -delete 2>/dev/null
  rm -rf "$T/store"
  EPOCH=$(( EPOCH + 1 )); PREFIX=$PREFIX_BASE-$EPOCH
  write_conf
  next_second
  echo "reset $EPOCH" > "$DATA/marker.txt"
  runner -r -c "$CONF" --json > "$keep/reset-night.json" 2> "$keep/reset-night.err" ||
    echo "  (the clean night after the reset failed too: $keep/reset-night.err)"
}

restore_check() { # restore_check RUN MARKER LABEL DUMPED -> problems on stdout
  local run=$1 marker=$2 label=$3 dumped=$4 to=$T/restore
  rm -rf "$to"
  if ! timeout -s KILL 600 "$BIN/backup-runner" restore -c "$CONF" --run "$run" --to "$to" > "$R/restore-$label.out" 2>&1; then
    echo "restore of $label run $run failed: $(tail -3 "$R/restore-$label.out" | tr '\n' ' ')"; return
  fi
  local d=$to${DATA}
  if [ ! -d "$d" ]; then echo "restore of $label run $run holds no $DATA"; return; fi
  manifest "$d" > "$R/restored-$label.manifest"
  if ! cmp -s "$T/source.manifest" "$R/restored-$label.manifest"; then
    echo "restore of $label run $run differs from the source: $(diff "$T/source.manifest" "$R/restored-$label.manifest" | head -4 | tr '\n' ' ')"
  fi
  [ "$(cat "$d/marker.txt" 2>/dev/null)" = "$marker" ] ||
    echo "restore of $label run $run: marker '$(cat "$d/marker.txt" 2>/dev/null)', expected '$marker'"
  local dumps; dumps=$(find "$to" -name "${DB}_*.sql*" -type f)
  if [ "$dumped" != True ]; then
    # Killed before its dump was finished: the completed run holds the files only.
    [ -z "$dumps" ] || echo "restore of $label run $run: a dump its night never finished: $dumps"
    rm -rf "$to"; return
  fi
  if [ "$(echo "$dumps" | grep -c .)" != 1 ]; then echo "restore of $label run $run: dumps found: [$dumps]"; return; fi
  local cat=cat; [[ "$dumps" == *.gz ]] && cat="gzip -dc"
  $cat "$dumps" | tail -n1 | grep -q '^-- Dump completed' ||
    echo "restore of $label run $run: the dump $(basename "$dumps") is not complete (no '-- Dump completed' at its end)"
  if [ "$RELOAD" = 1 ]; then
    sql -e "DROP DATABASE IF EXISTS ${DB}_r; CREATE DATABASE ${DB}_r CHARACTER SET utf8mb4"
    if ! $cat "$dumps" | sql "${DB}_r" 2> "$R/reload-$label.err"; then
      echo "the dump of $label run $run does not load: $(head -3 "$R/reload-$label.err" | tr '\n' ' ')"
    elif [ "$(db_sums "${DB}_r")" != "$DB_SUMS" ]; then
      echo "the dump of $label run $run loads with other CHECKSUM TABLE: $(db_sums "${DB}_r") vs $DB_SUMS"
    fi
    sql -e "DROP DATABASE IF EXISTS ${DB}_r"
  fi
  rm -rf "$to"
}

for r in $(seq 1 "$N"); do
  R=$RESULTS/round-$r
  # A results folder used before (NCB_SOAK_RESULTS given again) must not lend this round its files.
  rm -rf "$R"
  mkdir -p "$R"
  problems=()
  rt0=$(now)
  # --- the night that is killed --------------------------------------------------------------
  marker1="round $r killed"
  echo "$marker1" > "$DATA/marker.txt"
  next_second
  setsid "$BIN/backup-runner" -r -c "$CONF" --json > "$R/killed.json" 2> "$R/killed.err" &
  pid=$!
  delay_ms=$(( (NIGHT_MS * (20 + RANDOM % 980)) / 1000 ))
  sleep "$(printf '%d.%03d' $(( delay_ms / 1000 )) $(( delay_ms % 1000 )))"
  modes=(runner group stage)
  mode=${modes[RANDOM % 3]}
  where="-"
  stage_pid=$(pgrep -P "$pid" | head -n1)
  if [ -n "$stage_pid" ]; then where=$(cat "/proc/$stage_pid/comm" 2>/dev/null || echo "?"); else where="runner"; fi
  tree=$(descendants "$pid")
  killed=1
  if ! alive "$pid"; then
    killed=0; what="missed: the night had ended"
  else
    case $mode in
      runner) kill -KILL "$pid"; what="kill -KILL runner $pid" ;;
      group)  kill -KILL -- "-$pid"; what="kill -KILL -- -$pid (process group)" ;;
      stage)
        if [ -n "$stage_pid" ] && alive "$stage_pid"; then
          kill -KILL "$stage_pid"; what="kill -KILL stage $where $stage_pid"
        else
          kill -KILL "$pid"; mode=runner; what="kill -KILL runner $pid (no stage running)"
        fi ;;
    esac
  fi
  { wait "$pid"; rc1=$?; } 2>/dev/null
  if [ "$killed" = 0 ]; then
    # A night that ended before its kill was shorter than expected (an incremental night is a
    # fraction of a full one): it weighs in too, so kills keep landing inside nights.
    ran_ms=$(json_get "$R/killed.json" "sum(s['duration_ms'] for s in d['sections']) if d['status'] == 'ok' else 0")
    [ "${ran_ms:-0}" -gt 0 ] && NIGHT_MS=$(( (NIGHT_MS * 2 + ran_ms + 150) / 3 ))
  fi
  # Nothing of the killed night runs on (stages get SIGTERM when their runner dies).
  for p in $tree; do
    for _ in $(seq 1 300); do alive "$p" || break; sleep 0.1; done
    alive "$p" && problems+=("process $p ($(cat "/proc/$p/comm" 2>/dev/null)) of the killed night still runs 30 s later")
  done
  if [ "$killed" = 1 ] && [ "$mode" = stage ] && [ "$rc1" != 1 ]; then
    # A SIGKILL that reaches a stage already exiting (its report written, exit code 0) kills
    # nothing: the runner then rightly sees the stage succeed. Only a stage that really died
    # of the signal must fail the night.
    exited0=$(json_get "$R/killed.json" "sum(1 for s in d['sections'] if s['target'] == '$where' and s.get('exit_code') == 0 and s['status'] == 'ok')")
    if [ "$rc1" = 0 ] && [ "${exited0:-0}" -ge 1 ] && ! grep -q "killed by SIGKILL" "$R/killed.err"; then
      killed=0; what="missed: $where had already exited 0 when the kill came ($what)"
    else
      problems+=("its stage killed, the runner exited $rc1 (expected 1)")
    fi
  fi
  [ "$killed" = 1 ] && KILLS["$mode/$where"]=$(( ${KILLS["$mode/$where"]:-0} + 1 ))
  at=$(printf '%d.%03d' $(( delay_ms / 1000 )) $(( delay_ms % 1000 )))
  at="$at/$(( NIGHT_MS / 1000 )).$(( NIGHT_MS % 1000 / 100 ))"
  # What the killed night left: its journal (the run id), the work folder.
  mkdir -p "$R/journal-before"
  cp -a "$W/.ncb-journal/." "$R/journal-before/" 2>/dev/null
  (cd "$W" && find . -printf '%y %s %p\n' | sort -k3) > "$R/work-before.txt" 2>/dev/null
  jn=$(ls "$R/journal-before" 2>/dev/null | grep -c '\.json$')
  killed_id=""; expect=""; dumped=False
  if [ "$jn" -gt 1 ]; then
    problems+=("$jn journals after the killed night: $(ls "$R/journal-before" | tr '\n' ' ')")
  elif [ "$jn" = 1 ]; then
    jf=$(ls "$R/journal-before"/*.json)
    killed_id=$(basename "$jf" .json)
    oks=$(json_get "$jf" "sum(1 for s in d['sections'] if s['status'] == 'ok')")
    # Completed when it had finished a section, else nothing to complete.
    [ "${oks:-0}" -gt 0 ] && expect=completed || expect=abandoned
    dumped=$(json_get "$jf" "any(s['name'] == 'DBSBACKUP' and s['status'] == 'ok' for s in d['sections'])")
  fi
  # --- the next night --------------------------------------------------------------------------
  marker2="round $r next"
  echo "$marker2" > "$DATA/marker.txt"
  next_second
  n0=$(now)
  timeout -s KILL 900 "$BIN/backup-runner" -r -c "$CONF" --json > "$R/next.json" 2> "$R/next.err"; rc2=$?
  n1=$(now)
  [ "$rc2" = 0 ] || problems+=("the next night exited $rc2: $(grep -v '^\s*$' "$R/next.err" | tail -3 | tr '\n' ' ')")
  next_id=$(json_get "$R/next.json" "d['run_id']")
  # The night's typical duration follows the machine's load: tonight's own sections (its
  # recovery of the killed night apart) weigh in, so kills keep landing over the whole night.
  own_ms=$(json_get "$R/next.json" "sum(s['duration_ms'] for s in d['sections']) if d['status'] == 'ok' else 0")
  [ "${own_ms:-0}" -gt 0 ] && NIGHT_MS=$(( (NIGHT_MS * 2 + own_ms + 150) / 3 ))
  recovered=$(json_get "$R/next.json" "' '.join('%s:%s' % (x['run_id'], x['outcome']) for x in d.get('recovered', []))")
  want=""; [ -n "$killed_id" ] && want="$killed_id:$expect"
  [ "$recovered" = "$want" ] || problems+=("recovered [$recovered], expected [$want]")
  # --- the stores ------------------------------------------------------------------------------
  TIMES="killed+next $(secs "$rt0" "$n1")s"
  p0=$(now)
  runner runs -c "$CONF" --json > "$R/runs.json" 2> "$R/runs.err" || problems+=("runs exited $?")
  incomplete=$(json_get "$R/runs.json" "' '.join(x['destination'] + ':' + x['run_id'] for x in d if not x['complete'])")
  [ -z "$incomplete" ] || problems+=("incomplete runs stored: $incomplete")
  for dest in local s3; do
    ids=$(json_get "$R/runs.json" "' '.join(sorted(x['run_id'] for x in d if x['destination'].startswith('$dest')))")
    [ -n "$next_id" ] && [[ " $ids " != *" $next_id "* ]] && problems+=("$dest does not hold tonight's run $next_id: [$ids]")
    [ "$expect" = completed ] && [[ " $ids " != *" $killed_id "* ]] && problems+=("$dest does not hold the completed run $killed_id: [$ids]")
    n=$(echo "$ids" | wc -w)
    [ "$n" -le "$MAX_RUNS" ] || problems+=("$dest holds $n runs (KEEP_LAST $KEEP_LAST, at most $MAX_RUNS): [$ids]")
  done
  timeout -s KILL 900 "$BIN/backup-runner" verify -c "$CONF" --run all --read-data > "$R/verify.out" 2>&1 ||
    problems+=("verify --run all --read-data exited $?: $(grep -E 'FAILED|error' "$R/verify.out" | head -3 | tr '\n' ' ')")
  p1=$(now); TIMES="$TIMES, runs+verify $(secs "$p0" "$p1")s"
  partial=$(find "$T/store" -name '*.partial-*' 2>/dev/null)
  [ -z "$partial" ] || problems+=("temporaries stored locally: $partial")
  aws_ s3api list-objects-v2 --bucket "$S3_BUCKET" --prefix "$PREFIX/" --query 'Contents[].[Key,Size]' --output text > "$R/s3-keys.txt" 2>&1 ||
    problems+=("cannot list the bucket: $(tail -1 "$R/s3-keys.txt")")
  grep -q '\.partial-' "$R/s3-keys.txt" && problems+=("temporaries stored in S3: $(grep '\.partial-' "$R/s3-keys.txt" | head -3 | tr '\n' ' ')")
  uploads=$(aws_ s3api list-multipart-uploads --bucket "$S3_BUCKET" --prefix "$PREFIX/" --query 'Uploads[].Key' --output text 2>&1)
  [ -z "$uploads" ] || [ "$uploads" = None ] || problems+=("open multipart uploads: $uploads")
  p2=$(now); TIMES="$TIMES, s3 listing $(secs "$p1" "$p2")s"
  # --- restores ----------------------------------------------------------------------------------
  RELOAD=0
  { [ $(( r % RELOAD_EVERY )) = 0 ] || [ "$r" = "$N" ]; } && RELOAD=1
  if [ -n "$next_id" ]; then
    while read -r p; do [ -n "$p" ] && problems+=("$p"); done < <(restore_check "$next_id" "$marker2" next True)
  fi
  if [ "$expect" = completed ] && [[ "$recovered" == *":completed"* ]]; then
    RELOAD=0
    while read -r p; do [ -n "$p" ] && problems+=("$p"); done < <(restore_check "$killed_id" "$marker1" killed "$dumped")
  fi
  p3=$(now); TIMES="$TIMES, restores $(secs "$p2" "$p3")s"
  # --- the work folder ----------------------------------------------------------------------------
  left=$(cd "$W" && find . -mindepth 1 \
    \( -path ./.backup-runner.lock -o -path ./.ncb-journal -o -path ./.ncb-aside \
       -o -path ./files -o -path ./mydump -o -path ./compressed -o -path ./encrypted \) -prune -o -print
    find ./.ncb-journal ./files ./mydump ./compressed ./encrypted -mindepth 1 2>/dev/null
    find ./.ncb-aside -type f 2>/dev/null)
  [ -z "$left" ] || problems+=("left in WORK_FOLDER: $(echo "$left" | head -5 | tr '\n' ' ')")
  secrets=$(find "$W" -name '.ncb-secret-*' 2>/dev/null)
  [ -z "$secrets" ] || problems+=("secrets left: $secrets")

  rt1=$(now)
  line="round $r/$N: $what in $where at ${at}s; night rc=$rc1 ${killed_id:-(no journal)} -> next night rc=$rc2 in $(secs "$n0" "$n1")s, recovered [${recovered}]"
  if [ ${#problems[@]} = 0 ]; then
    CLEAN=$(( CLEAN + 1 ))
    say "$line: clean ($(secs "$rt0" "$rt1")s: $TIMES)"
    rm -rf "$R"
  else
    say "$line: NOT CLEAN ($(secs "$rt0" "$rt1")s: $TIMES)"
    for p in "${problems[@]}"; do
      say "    - $p"
      kind=$(echo "$p" | sed -E 's/[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4}/RUN/g; s/[0-9]+/N/g; s/:.*//' | cut -c1-60)
      PROBLEMS["$kind"]=$(( ${PROBLEMS["$kind"]:-0} + 1 ))
    done
    printf '%s\n' "$line" "${problems[@]}" > "$R/problems.txt"
    (cd "$W" && find . -printf '%y %s %p\n' | sort -k3) > "$R/work-after.txt" 2>/dev/null
    cp -a "$W/.ncb-journal" "$R/journal-after" 2>/dev/null
    (cd "$T/store" 2>/dev/null && find . -printf '%y %s %p\n' | sort -k3) > "$R/store.txt"
    cp "$T/log/nc-backup.log" "$R/nc-backup.log" 2>/dev/null
    : > "$T/log/nc-backup.log"
    FAILED_ROUNDS+=("$r")
    reset_state "$R"
  fi
  # The log of clean rounds is not needed.
  [ ${#problems[@]} = 0 ] && : > "$T/log/nc-backup.log"
done

pct=$(awk -v c="$CLEAN" -v n="$N" 'BEGIN { printf "%.1f", 100 * c / n }')
kills=$(for k in "${!KILLS[@]}"; do echo "$k=${KILLS[$k]}"; done | sort | tr '\n' ' ')
say "kills: $kills"
say "$N rounds, $CLEAN clean ($pct%)"
if [ ${#FAILED_ROUNDS[@]} -gt 0 ]; then
  for k in "${!PROBLEMS[@]}"; do say "  ${PROBLEMS[$k]} x $k"; done
  say "not clean: rounds ${FAILED_ROUNDS[*]}; details in $RESULTS/round-*/ (problems.txt, killed.err, next.json, journal-before/)"
  exit 1
fi
exit 0
