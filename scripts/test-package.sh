#!/usr/bin/env bash
# The package tested the way a user meets it: built by scripts/package.sh, installed with dpkg
# in a clean Debian 12 container (podman; its root file system made by debootstrap from
# Debian's archive, once, cached), a real backup and restore run from /usr/bin, an upgrade over
# itself keeping an edited conffile, then remove and purge leaving nothing.
#   scripts/test-package.sh          (NCB_PACKAGE_PROFILE=dev: package the debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
DEB=$(scripts/package.sh target/deb)
# The root file system and image carry a version: a new package dependency means a new one.
ROOTFS=${NCB_DEBROOT:-/var/tmp/ncb-debroot-3}
if [ ! -x "$ROOTFS/usr/sbin/logrotate" ]; then
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase --include=adduser,ca-certificates,diffutils,libcap2-bin,logrotate bookworm "$ROOTFS" \
    http://deb.debian.org/debian >&2
fi
# The systemd units, checked by systemd's own parser when this machine has it (the container
# runs no systemd): any complaint (an unknown key, a bad value) fails the test.
if command -v systemd-analyze >/dev/null; then
  U=$(mktemp -d)
  sed 's#^ExecStart=/usr/bin/backup-runner#ExecStart=/bin/true#' packaging/nc-backup@.service > "$U/nc-backup@check.service"
  cp packaging/nc-backup@.timer "$U/nc-backup@check.timer"
  said=$(cd "$U" && systemd-analyze verify --man=no ./nc-backup@check.service ./nc-backup@check.timer 2>&1) || true
  rm -rf "$U"
  [ -z "$said" ] || { echo "systemd-analyze verify: $said" >&2; exit 1; }
  echo "== systemd-analyze verify: nc-backup@.service and .timer clean" >&2
fi
IMG=localhost/ncb-debian:bookworm-3
podman image exists "$IMG" || tar -C "$ROOTFS" -c . | podman import - "$IMG" >/dev/null
echo "== $DEB ($(du -h "$DEB" | cut -f1)) in a clean bookworm container" >&2
# CAP_DAC_READ_SEARCH in the container's bounding set, as on a host: the package's reader gets it
# from its file capability (podman's default set leaves it out).
podman --runtime runc run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  --cap-add CAP_DAC_READ_SEARCH \
  -v "$PWD/$DEB:/pkg/nc-backup.deb:ro" -v "$PWD/scripts/package-check.sh:/check.sh:ro" \
  "$IMG" sh /check.sh
