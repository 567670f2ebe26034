#!/usr/bin/env bash
# Test servers on 127.0.0.1, started once for the whole suite:
#   MariaDB (port 33306, binary log on), PostgreSQL 15 (port 55432), OpenSSH (port 22222),
#   and a podman container `ncb-dbtools` holding the database clients (host network).
#   scripts/servers.sh start    fresh data, users and keys under $NCB_SERVERS_DIR
#   scripts/servers.sh stop
# Connection facts and the test passwords go to $NCB_SERVERS_DIR/env (mode 0600), which the
# tests read. Default NCB_SERVERS_DIR: /var/tmp/ncb-servers (every parent must be traversable
# by the mysql and postgres users).
set -euo pipefail
S=${NCB_SERVERS_DIR:-/var/tmp/ncb-servers}
MY_PORT=33306 PG_PORT=55432 SSH_PORT=22222 S3_PORT=39000 S3_RPC=39001 MOTO_PORT=39100
MOTO=${NCB_MOTO_VENV:-/var/tmp/ncb-moto}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)

log() { echo "servers: $*" >&2; }

wait_for() { # wait_for SECONDS CMD...
  local n=$(( $1 * 10 )); shift
  while ! "$@" >/dev/null 2>&1; do
    n=$((n - 1)); [ "$n" -gt 0 ] || return 1; sleep 0.1
  done
}

stop() {
  if [ -f "$S/mariadb/mysqld.pid" ]; then
    kill "$(cat "$S/mariadb/mysqld.pid")" 2>/dev/null || true
    wait_for 20 sh -c "! kill -0 $(cat "$S/mariadb/mysqld.pid") 2>/dev/null" || true
  fi
  if [ -f "$S/pg/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$S/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  if [ -f "$S/sshd/sshd.pid" ]; then kill "$(cat "$S/sshd/sshd.pid")" 2>/dev/null || true; fi
  if command -v podman >/dev/null; then podman rm -f ncb-dbtools >/dev/null 2>&1 || true; fi
  if [ -f "$S/garage/garage.pid" ]; then kill "$(cat "$S/garage/garage.pid")" 2>/dev/null || true; fi
  if [ -f "$S/moto/moto.pid" ]; then kill "$(cat "$S/moto/moto.pid")" 2>/dev/null || true; fi
  log "stopped"
}

start_mariadb() {
  local D=$S/mariadb
  mkdir -p "$D/data" "$D/binlog"
  cat > "$D/my.cnf" <<CNF
[mysqld]
datadir=$D/data
socket=$D/mysqld.sock
pid-file=$D/mysqld.pid
log-error=$D/error.log
port=$MY_PORT
bind-address=127.0.0.1
user=mysql
character-set-server=utf8mb4
log-bin=$D/binlog/mysql-bin
server-id=1
skip-name-resolve
[client]
socket=$D/mysqld.sock
user=root
CNF
  chown -R mysql:mysql "$D"
  mariadb-install-db --defaults-file="$D/my.cnf" --auth-root-authentication-method=normal --skip-test-db >"$D/install.log" 2>&1
  mariadbd --defaults-file="$D/my.cnf" >/dev/null 2>&1 &
  wait_for 60 mariadb-admin --defaults-file="$D/my.cnf" ping || { cat "$D/error.log" >&2; return 1; }
  mariadb --defaults-file="$D/my.cnf" <<SQL
CREATE USER 'ncbackup'@'%' IDENTIFIED BY '$MY_PASS';
GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES, RELOAD, PROCESS, BINLOG MONITOR ON *.* TO 'ncbackup'@'%';
CREATE USER 'ncblimited'@'%' IDENTIFIED BY '$MY_PASS';
CREATE USER 'ncbadmin'@'%' IDENTIFIED BY '$MY_PASS';
GRANT ALL ON *.* TO 'ncbadmin'@'%' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
  log "MariaDB on 127.0.0.1:$MY_PORT"
}

start_postgres() {
  local P=$S/pg
  mkdir -p "$P"
  chown postgres:postgres "$P"
  runuser -u postgres -- "$PGBIN/initdb" -D "$P/data" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >"$P/initdb.log" 2>&1
  cat >> "$P/data/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$P'
CONF
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$P/data" -l "$P/server.log" -w start >/dev/null
  runuser -u postgres -- "$PGBIN/psql" -q -h "$P" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 <<SQL
CREATE ROLE ncbackup LOGIN PASSWORD '$PG_PASS';
GRANT pg_read_all_data TO ncbackup;
CREATE ROLE ncbadmin LOGIN SUPERUSER PASSWORD '$PG_PASS';
SQL
  log "PostgreSQL on 127.0.0.1:$PG_PORT"
}

start_sshd() {
  local D=$S/sshd
  mkdir -p "$D" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$D/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$D/client_key"
  cp "$D/client_key.pub" "$D/authorized_keys"
  cat > "$D/sshd_config" <<CONF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $D/host_key
PidFile $D/sshd.pid
AuthorizedKeysFile $D/authorized_keys
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
LogLevel VERBOSE
Subsystem sftp internal-sftp
CONF
  /usr/sbin/sshd -f "$D/sshd_config" -E "$D/sshd.log"
  wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SSH_PORT"
  log "sshd on 127.0.0.1:$SSH_PORT"
}

# A container holding the database clients (no registry here: imported from a tarball of the
# host's binaries and the libraries they need), running with host networking so it reaches
# the servers on 127.0.0.1. The runtime is runc: crun fails on this machine kind.
start_container() {
  local R=$S/rootfs
  mkdir -p "$R/usr/bin" "$R/bin" "$R/tmp" "$R/etc" "$R/dev" "$R/proc"
  local bins=(/bin/sh /bin/sleep /bin/cat "$(command -v mysqldump)" "$(command -v mysql)" \
    "$PGBIN/pg_dump" "$PGBIN/psql" "$PGBIN/pg_dumpall")
  for b in "${bins[@]}"; do
    local name; name=$(basename "$b")
    b=$(readlink -f "$b")
    cp "$b" "$R/usr/bin/$name"
    ldd "$b" | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do
      [ -n "$lib" ] && [ -e "$lib" ] && mkdir -p "$R$(dirname "$lib")" && cp -n "$(readlink -f "$lib")" "$R$lib"
    done
  done
  ln -sf /usr/bin/sh "$R/bin/sh"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
  printf 'root:x:0:\n' > "$R/etc/group"
  podman rm -f ncb-dbtools >/dev/null 2>&1 || true
  tar -C "$R" -c . | podman import - localhost/ncb-dbtools:test >/dev/null
  podman --runtime runc run -d --name ncb-dbtools --network host \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 localhost/ncb-dbtools:test /usr/bin/sleep infinity >/dev/null
  podman exec ncb-dbtools mysqldump --version >/dev/null
  log "container ncb-dbtools (podman, runc) with mysqldump and pg_dump"
}

# Garage (a real S3 store: it checks signatures and keeps data across restarts), single node.
start_garage() {
  local G=$S/garage
  mkdir -p "$G/meta" "$G/data"
  cat > "$G/garage.toml" <<CONF
metadata_dir = "$G/meta"
data_dir = "$G/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$S3_RPC"
rpc_public_addr = "127.0.0.1:$S3_RPC"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"
CONF
  S3_KEY="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  S3_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  printf 'GARAGE_DEFAULT_ACCESS_KEY=%s\nGARAGE_DEFAULT_SECRET_KEY=%s\nGARAGE_DEFAULT_BUCKET=ncb-test\n' "$S3_KEY" "$S3_SECRET" > "$G/keys.env"
  chmod 600 "$G/keys.env"
  garage_up
  log "Garage S3 on 127.0.0.1:$S3_PORT (bucket ncb-test)"
}

# Starts (or restarts, for the persistence tests) the Garage of $S/garage.
garage_up() {
  local G=$S/garage
  ( set -a; . "$G/keys.env"; set +a
    exec garage -c "$G/garage.toml" server --single-node --default-bucket >>"$G/garage.log" 2>&1 ) &
  echo $! > "$G/garage.pid"
  wait_for 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$S3_PORT" || { tail -20 "$G/garage.log" >&2; return 1; }
  sleep 0.5
}

start_moto() {
  mkdir -p "$S/moto"
  "$MOTO/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$S/moto/moto.log" 2>&1 &
  echo $! > "$S/moto/moto.pid"
  wait_for 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$MOTO_PORT" || { tail -20 "$S/moto/moto.log" >&2; return 1; }
  log "moto S3 on 127.0.0.1:$MOTO_PORT"
}

start() {
  [ -n "$PGBIN" ] || { log "PostgreSQL is not installed (scripts/install-deps.sh)"; exit 1; }
  stop >/dev/null 2>&1 || true
  rm -rf "$S"
  mkdir -p "$S"
  chmod 755 "$S"
  MY_PASS="my-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  PG_PASS="pg-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  start_mariadb
  start_postgres
  start_sshd
  start_container
  start_garage
  start_moto
  umask 077
  cat > "$S/env" <<ENV
NCB_MYSQL_PORT=$MY_PORT
NCB_MYSQL_SOCKET=$S/mariadb/mysqld.sock
NCB_MYSQL_ADMIN_CNF=$S/mariadb/my.cnf
NCB_MYSQL_BINLOG=$S/mariadb/binlog
NCB_MYSQL_PASSWORD=$MY_PASS
NCB_PG_PORT=$PG_PORT
NCB_PG_SOCKET_DIR=$S/pg
NCB_PG_PASSWORD=$PG_PASS
NCB_PG_BIN=$PGBIN
NCB_SSH_PORT=$SSH_PORT
NCB_SSH_KEY=$S/sshd/client_key
NCB_CONTAINER=ncb-dbtools
NCB_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
NCB_S3_REGION=garage
NCB_S3_BUCKET=ncb-test
NCB_S3_ACCESS_KEY=$S3_KEY
NCB_S3_SECRET_KEY=$S3_SECRET
NCB_GARAGE_DIR=$S/garage
NCB_MOTO_ENDPOINT=http://127.0.0.1:$MOTO_PORT
ENV
  log "ready: $S/env"
}

case "${1:-}" in
  start) start ;;
  garage-stop) kill "$(cat "$S/garage/garage.pid")"; sleep 0.5 ;;
  garage-start) garage_up ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
