#!/usr/bin/env bash
# The test command: installs what the tests need when missing, checks formatting and lints,
# builds the workspace once, and runs every test (unit and end-to-end).
#   scripts/test.sh            everything
#   scripts/test.sh FILTER     only tests whose name matches FILTER
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== fmt" >&2
cargo fmt --all -- --check
echo "== clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build" >&2
# The end-to-end tests run the built binaries: build them all first.
cargo build --workspace --bins --locked

echo "== servers" >&2
# MariaDB, PostgreSQL, sshd and a podman container on 127.0.0.1, once for the whole suite.
export NCB_SERVERS_DIR=${NCB_SERVERS_DIR:-/var/tmp/ncb-servers}
trap 'scripts/servers.sh stop' EXIT
scripts/servers.sh start

echo "== test" >&2
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast -- "$@"
fi

if [ $# -eq 0 ]; then
  echo "== soak: 3 nights killed with SIGKILL at random moments, each next night checked" >&2
  # Small data and the debug binaries just built: about a minute (scripts/soak-kill.sh).
  NCB_SOAK_BIN=target/debug NCB_SOAK_DATA_MB=20 NCB_SOAK_ROWS=20000 NCB_SOAK_FILE_SIZE=2 scripts/soak-kill.sh 3
  echo "== soak: the same with incremental file backups (FULL_EVERY 2)" >&2
  NCB_SOAK_INCREMENTAL=2 NCB_SOAK_BIN=target/debug NCB_SOAK_DATA_MB=20 NCB_SOAK_ROWS=20000 NCB_SOAK_FILE_SIZE=2 \
    scripts/soak-kill.sh 3
  echo "== package: built, installed in a clean Debian container, used, upgraded, removed, purged" >&2
  # The debug build just made, stripped (scripts/package.sh alone builds the release profile).
  NCB_PACKAGE_PROFILE=dev scripts/test-package.sh
fi
