#!/usr/bin/env bash
# Installs, when missing, the system packages the tests and benchmarks use.
# Debian 12, as root (or with sudo). Safe to run again: it installs only what is missing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have tar      || need+=(tar)
have gzip     || need+=(gzip)
have pigz     || need+=(pigz)
have zstd     || need+=(zstd)
have gpg      || need+=(gnupg)
have openssl  || need+=(openssl)
have runuser  || need+=(util-linux)
have python3  || need+=(python3)
# Test servers and clients (scripts/servers.sh): MariaDB, PostgreSQL, OpenSSH, podman.
have mariadbd    || need+=(mariadb-server)
have mysqldump   || need+=(mariadb-client)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
have ssh         || need+=(openssh-client)
have podman      || need+=(podman)
have runc        || need+=(runc)
have bc          || need+=(bc)
have strace      || need+=(strace)
have setfacl     || need+=(acl)
have setfattr    || need+=(attr)
[ -x /usr/sbin/setcap ] || need+=(libcap2-bin)
[ -x /usr/bin/sudo ] || need+=(sudo)
have crontab     || need+=(cron)
have aws         || need+=(awscli)
have rclone      || need+=(rclone)
[ -x /usr/bin/time ] || need+=(time)

if ((${#need[@]})); then
  echo "install-deps: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The reference decryptor of docs/FORMAT.md (a test runs it) uses Python's cryptography.
if ! python3 -c 'import cryptography' 2>/dev/null; then
  echo "install-deps: installing python cryptography" >&2
  python3 -m pip install -q cryptography || { apt-get install -y -qq python3-cryptography >/dev/null; }
fi

# Garage, the S3 store of the storage tests: a crates.io package (about 22 minutes to build on
# 2 cores, once per machine).
if ! have garage; then
  echo "install-deps: building garage 2.5.0 (cargo install, ~22 min on 2 cores)" >&2
  cargo install garage --version 2.5.0 --locked >&2
fi

# moto in server mode: an S3 that keeps and reports storage classes (it checks no signatures,
# so it is never the only S3 server a test uses).
MOTO=${NCB_MOTO_VENV:-/var/tmp/ncb-moto}
if [ ! -x "$MOTO/bin/moto_server" ]; then
  echo "install-deps: installing moto into $MOTO" >&2
  python3 -m venv "$MOTO"
  "$MOTO/bin/pip" install -q 'moto[s3]==5.2.5' flask flask-cors
fi

if ! have cargo-nextest && ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-deps: cargo-nextest not found; tests will run with cargo test" >&2
fi
