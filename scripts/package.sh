#!/usr/bin/env bash
# Builds the Debian package of nc-backup from this workspace with dpkg-deb (Debian's own tool):
# the binaries (stripped) in /usr/bin, man pages and shell completions generated from the same
# clap definitions, /etc/nc-backup/conf.json (a commented example, a conffile: never
# overwritten), sudoers.sample and the docs, systemd service and timer templates
# (nc-backup@<config>.timer), logrotate for /var/log/nc-backup, and a `nc-backup` system user.
#   scripts/package.sh [OUTDIR]          (default target/deb; prints the .deb's path)
#   NCB_PACKAGE_PROFILE=dev scripts/package.sh   package the debug build (CI: no second build)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/deb}
PROFILE=${NCB_PACKAGE_PROFILE:-dist}
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
ARCH=$(dpkg --print-architecture)
BINS=(backup-runner filesbackup compression encryption mysql-dump pg-dump storage size-calc object-mirror)
if [ "$PROFILE" = dev ]; then DIR=target/debug; else DIR=target/$PROFILE; fi
cargo build --locked --workspace --bins --profile "$PROFILE" >&2
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
P=$ROOT/nc-backup_${VERSION}_$ARCH
install -d "$P/DEBIAN" "$P/usr/bin" "$P/usr/share/man/man1" "$P/usr/share/doc/nc-backup" \
  "$P/usr/share/bash-completion/completions" "$P/usr/share/zsh/vendor-completions" \
  "$P/usr/share/fish/vendor_completions.d" "$P/etc/nc-backup" "$P/lib/systemd/system" "$P/etc/logrotate.d"
for b in "${BINS[@]}"; do
  install -m 0755 "$DIR/$b" "$P/usr/bin/$b"
  strip --strip-unneeded "$P/usr/bin/$b"
  "$P/usr/bin/$b" --generate-man | gzip -9n > "$P/usr/share/man/man1/$b.1.gz"
  "$P/usr/bin/$b" --generate-completion bash > "$P/usr/share/bash-completion/completions/$b"
  "$P/usr/bin/$b" --generate-completion zsh > "$P/usr/share/zsh/vendor-completions/_$b"
  "$P/usr/bin/$b" --generate-completion fish > "$P/usr/share/fish/vendor_completions.d/$b.fish"
done
# The privileged reader (docs/PRIVILEGE.md): filesbackup again, run by the nc-backup user with
# CAP_DAC_READ_SEARCH only; postinst gives it its group and capability (dpkg keeps neither).
install -d "$P/usr/libexec/nc-backup"
install -m 0750 "$DIR/filesbackup" "$P/usr/libexec/nc-backup/filesbackup-reader"
strip --strip-unneeded "$P/usr/libexec/nc-backup/filesbackup-reader"
install -m 0644 packaging/conf.json "$P/etc/nc-backup/conf.json"
install -m 0644 packaging/logrotate "$P/etc/logrotate.d/nc-backup"
install -m 0644 packaging/nc-backup@.service packaging/nc-backup@.timer "$P/lib/systemd/system/"
install -m 0644 sudoers.sample README.md "$P/usr/share/doc/nc-backup/"
for d in docs/*.md; do install -m 0644 "$d" "$P/usr/share/doc/nc-backup/"; done
install -m 0644 scripts/decrypt-reference.py "$P/usr/share/doc/nc-backup/"
printf 'Copyright: the nc-backup authors\nLicense: MIT OR Apache-2.0\n' > "$P/usr/share/doc/nc-backup/copyright"
printf '/etc/nc-backup/conf.json\n/etc/logrotate.d/nc-backup\n' > "$P/DEBIAN/conffiles"
install -m 0755 packaging/postinst packaging/postrm "$P/DEBIAN/"
SIZE=$(du -sk "$P" | cut -f1)
cat > "$P/DEBIAN/control" <<CONTROL
Package: nc-backup
Version: $VERSION
Architecture: $ARCH
Maintainer: nc-backup team <nc-backup@example.invalid>
Installed-Size: $SIZE
Depends: libc6 (>= 2.36), libgcc-s1, adduser, ca-certificates, libcap2-bin
Recommends: tar, gzip, cron | systemd-sysv
Suggests: sudo, mariadb-client | default-mysql-client, postgresql-client, rclone, openssh-client, acl, attr
Section: admin
Priority: optional
Homepage: https://example.invalid/nc-backup
Description: unattended backups of small Linux servers
 Files, MariaDB/MySQL and PostgreSQL dumps, compression, authenticated encryption (key files or
 public keys), storage to local folders, S3 and S3-compatible stores and rclone remotes,
 retention, verification and byte-for-byte restores, driven by an ordered conf.json (the
 nc-backup-py format) from cron or systemd timers.
CONTROL
mkdir -p "$OUT"
dpkg-deb --build --root-owner-group "$P" "$OUT" >&2
echo "$OUT/nc-backup_${VERSION}_$ARCH.deb"
