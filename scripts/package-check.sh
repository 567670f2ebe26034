#!/bin/sh
# Runs inside the clean container (scripts/test-package.sh): install, use, upgrade, remove, purge.
set -eu
fail() { echo "package check failed: $*" >&2; exit 1; }
dpkg -i /pkg/nc-backup.deb >/dev/null
for b in backup-runner filesbackup compression encryption mysql-dump pg-dump storage size-calc object-mirror; do
  [ -x "/usr/bin/$b" ] || fail "/usr/bin/$b missing"
  [ -f "/usr/share/man/man1/$b.1.gz" ] || fail "man page of $b missing"
  [ -f "/usr/share/bash-completion/completions/$b" ] || fail "bash completion of $b missing"
  "$b" --version >/dev/null || fail "$b --version"
done
file_size=$(stat -c %s /usr/bin/backup-runner)
[ "$file_size" -lt 60000000 ] || fail "backup-runner is $file_size bytes: not stripped?"
getent passwd nc-backup >/dev/null || fail "no nc-backup user"
[ -f /etc/nc-backup/conf.json ] && [ -f /lib/systemd/system/nc-backup@.timer ] && [ -f /etc/logrotate.d/nc-backup ] \
  || fail "conffile, timer or logrotate missing"
[ -f /usr/share/doc/nc-backup/sudoers.sample ] && [ -f /usr/share/doc/nc-backup/RESTORE.md ] || fail "docs missing"

# A real backup and its restore, from /usr/bin, on local storage.
encryption --generate-key /root/key >/dev/null
cat > /root/conf.json <<JSON
{"GENERAL": {"HOSTNAME": "pkgtest", "WORK_FOLDER": "/var/lib/nc-backup/work", "LOG_FOLDER": "/var/log/nc-backup"},
 "FILES": {"ACTION": "execute", "NAME": "filesbackup",
           "PARAMETERS": {"FILESET_INCLUDE": "/usr/share/doc /etc", "DESTINATION": "/var/lib/nc-backup/work/files"}},
 "ENCRYPTION": {"ACTION": "execute", "NAME": "encryption",
           "PARAMETERS": {"KEY_FILE": "/root/key", "OBJECTIVES": "/var/lib/nc-backup/work/files",
                          "DESTINATION": "/var/lib/nc-backup/work/enc", "FILE_SIZE": "1", "REMOVE_OBJECTIVES": "True"}},
 "STORAGE": {"ACTION": "execute", "NAME": "storage",
           "PARAMETERS": {"OBJECTIVES": "/var/lib/nc-backup/work/enc", "DESTINATION": "local",
                          "PATH": "/var/backups/nc-backup", "REMOVE_OBJECTIVES": "True"}}}
JSON
backup-runner --check -c /root/conf.json >/dev/null || fail "--check"
backup-runner -r -q -c /root/conf.json || fail "the backup"
backup-runner verify -q -c /root/conf.json --read-data >/dev/null || fail "verify"
backup-runner restore -q -c /root/conf.json --to /root/restored || fail "the restore"
diff -r /usr/share/doc /root/restored/usr/share/doc >/dev/null || fail "restored files differ"
diff -r /etc/apt /root/restored/etc/apt >/dev/null || fail "restored /etc differs"

# Upgrade over itself: an edited conffile is kept.
sed -i 's/"HOSTNAME": "server1"/"HOSTNAME": "edited-here"/' /etc/nc-backup/conf.json
dpkg -i /pkg/nc-backup.deb >/dev/null
grep -q edited-here /etc/nc-backup/conf.json || fail "the upgrade overwrote the edited conffile"
backup-runner --version >/dev/null || fail "after the upgrade"

# Remove: the programs go, the configuration stays; purge: nothing is left.
dpkg -r nc-backup >/dev/null
[ ! -e /usr/bin/backup-runner ] || fail "remove left /usr/bin/backup-runner"
[ -f /etc/nc-backup/conf.json ] || fail "remove deleted the conffile"
dpkg -P nc-backup >/dev/null
for p in /etc/nc-backup /var/lib/nc-backup /var/log/nc-backup /lib/systemd/system/nc-backup@.timer /usr/share/doc/nc-backup; do
  [ ! -e "$p" ] || fail "purge left $p"
done
! getent passwd nc-backup >/dev/null || fail "purge left the nc-backup user"
dpkg -s nc-backup >/dev/null 2>&1 && fail "dpkg still knows nc-backup"
echo "package checks passed: installed, backup and restore from /usr/bin, upgraded over itself (edited conffile kept), removed, purged"
