#!/usr/bin/env bash
# mysql-dump against `mysqldump | gzip` and `mysqldump | pigz`, and pg-dump against
# `pg_dump | gzip` and `pg_dump -Fc`, side by side on the same 1M-row tables of the test
# servers (scripts/servers.sh starts them if they are not running): wall, CPU, peak RSS,
# output size, ratios (speedup: their wall / ours).
#   scripts/bench-db.sh [ROWS]     (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
ROWS=${1:-1000000}
bench_setup
export NCB_SERVERS_DIR=${NCB_SERVERS_DIR:-/var/tmp/ncb-servers}
if ! [ -f "$NCB_SERVERS_DIR/env" ] || ! mariadb-admin --defaults-file="$NCB_SERVERS_DIR/mariadb/my.cnf" ping >/dev/null 2>&1; then
  scripts/servers.sh start
fi
set -a; . "$NCB_SERVERS_DIR/env"; set +a
cargo build --release --locked -p mysql-dump -p pg-dump >&2
BIN=$PWD/target/release
W=$(mktemp -d /var/tmp/ncb-bench-db.XXXXXX); trap 'rm -rf "$W"' EXIT
chmod 700 "$W"

echo "bench: loading $ROWS rows into MariaDB and PostgreSQL" >&2
mariadb --defaults-file="$NCB_MYSQL_ADMIN_CNF" -e "DROP DATABASE IF EXISTS benchdb; CREATE DATABASE benchdb;
  USE benchdb; CREATE TABLE benchdb.orders (id INT PRIMARY KEY, customer VARCHAR(64), amount DECIMAL(12,2), note TEXT, created DATETIME);
  INSERT INTO benchdb.orders SELECT seq, CONCAT('customer-', seq % 5000), (seq * 7919) % 100000 / 100, REPEAT(MD5(seq), 1 + seq % 3), '2026-01-01' + INTERVAL seq SECOND FROM seq_1_to_$ROWS;"
export PGPASSWORD=$NCB_PG_PASSWORD
psql -X -q -h 127.0.0.1 -p "$NCB_PG_PORT" -U ncbadmin -d postgres -c "DROP DATABASE IF EXISTS benchdb" -c "CREATE DATABASE benchdb"
psql -X -q -h 127.0.0.1 -p "$NCB_PG_PORT" -U ncbadmin -d benchdb -c "CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(12,2), note text, created timestamp);
  INSERT INTO orders SELECT g, 'customer-' || g % 5000, (g::bigint * 7919) % 100000 / 100.0, repeat(md5(g::text), 1 + g % 3), '2026-01-01'::timestamp + g * interval '1 second' FROM generate_series(1, $ROWS) g;"
printf '[client]\nuser=ncbadmin\npassword="%s"\nhost=127.0.0.1\nport=%s\n' "$NCB_MYSQL_PASSWORD" "$NCB_MYSQL_PORT" > "$W/my.cnf"
chmod 600 "$W/my.cnf"
MYDUMP="mysqldump --defaults-extra-file=$W/my.cnf --single-transaction --routines --triggers --events --hex-blob --quick benchdb"

size() { BENCH_ROWS[-1]+="$(stat -c %s "$1")"; }
echo; echo "== MariaDB, $ROWS rows ($($MYDUMP | wc -c) bytes of SQL)"
measure "mysql-dump (gzip -6, 2 threads)" "$BIN/mysql-dump" --CREDENTIAL_PATH "$W/my.cnf" --DATABASES benchdb --DESTINATION "$W/ours" --WORK_FOLDER "$W"
size "$W"/ours/benchdb_*.sql.gz
measure "mysqldump | gzip" sh -c "$MYDUMP | gzip > $W/gzip.sql.gz"; size "$W/gzip.sql.gz"
measure "mysqldump | pigz" sh -c "$MYDUMP | pigz > $W/pigz.sql.gz"; size "$W/pigz.sql.gz"
table
gzip -t "$W"/ours/benchdb_*.sql.gz && echo "(gzip -t reads our dump: ok)"

PGCONN="-h 127.0.0.1 -p $NCB_PG_PORT -U ncbadmin"
echo; echo "== PostgreSQL, $ROWS rows"
measure "pg-dump --FORMAT plain (gzip -6)" env NCB_PARAM_PASSWORD="$PGPASSWORD" "$BIN/pg-dump" --HOST 127.0.0.1 --PORT "$NCB_PG_PORT" --USER ncbadmin --DATABASES benchdb --FORMAT plain --DESTINATION "$W/pg" --WORK_FOLDER "$W"
size "$W"/pg/benchdb_*.sql.gz
measure "pg_dump | gzip" sh -c "pg_dump $PGCONN benchdb | gzip > $W/pg.sql.gz"; size "$W/pg.sql.gz"
measure "pg_dump | pigz" sh -c "pg_dump $PGCONN benchdb | pigz > $W/pgp.sql.gz"; size "$W/pgp.sql.gz"
measure "pg-dump --FORMAT custom" env NCB_PARAM_PASSWORD="$PGPASSWORD" "$BIN/pg-dump" --HOST 127.0.0.1 --PORT "$NCB_PG_PORT" --USER ncbadmin --DATABASES benchdb --DESTINATION "$W/pgc" --WORK_FOLDER "$W"
size "$W"/pgc/benchdb_*.dump
measure "pg_dump -Fc" sh -c "pg_dump $PGCONN -Fc benchdb > $W/pg.dump"; size "$W/pg.dump"
table
mariadb --defaults-file="$NCB_MYSQL_ADMIN_CNF" -e "DROP DATABASE benchdb"
psql -X -q $PGCONN -d postgres -c "DROP DATABASE benchdb"
