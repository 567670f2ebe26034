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
ROOTFS=${NCB_DEBROOT:-/var/tmp/ncb-debroot}
if [ ! -x "$ROOTFS/usr/bin/dpkg" ]; then
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase --include=adduser,ca-certificates,diffutils bookworm "$ROOTFS" \
    http://deb.debian.org/debian >&2
fi
IMG=localhost/ncb-debian:bookworm
podman image exists "$IMG" || tar -C "$ROOTFS" -c . | podman import - "$IMG" >/dev/null
echo "== $DEB ($(du -h "$DEB" | cut -f1)) in a clean bookworm container" >&2
podman --runtime runc run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  -v "$PWD/$DEB:/pkg/nc-backup.deb:ro" -v "$PWD/scripts/package-check.sh:/check.sh:ro" \
  "$IMG" sh /check.sh
