#!/bin/sh
# Runs inside the clean container (scripts/test-package.sh): install, use, upgrade, remove, purge.
set -eu
fail() { echo "package check failed: $*" >&2; exit 1; }
# What an earlier package, whose backups ran as root, left behind: the new one takes it over.
install -d -m 0750 /var/lib/nc-backup/work /var/log/nc-backup
install -m 0600 /dev/null /var/lib/nc-backup/work/.backup-runner.lock
echo "an old root run" > /var/log/nc-backup/nc-backup.log
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

# The package's own way: the example config, as the nc-backup user, files of root and of
# another user read by the privileged reader; root restores them byte for byte.
reader=/usr/libexec/nc-backup/filesbackup-reader
[ "$(stat -c '%a %U %G' $reader)" = "750 root nc-backup" ] || fail "$reader is $(stat -c '%a %U %G' $reader)"
getcap $reader | grep -q 'cap_dac_read_search=ep' || fail "$reader has no CAP_DAC_READ_SEARCH"
adduser --quiet --disabled-password --gecos "" alice
install -d -m 0700 -o alice -g alice /home/alice/private /srv/www
echo "alice's notes" > /home/alice/private/notes && chown alice: /home/alice/private/notes && chmod 600 /home/alice/private/notes
install -d -m 0700 /var/www/site && head -c 300000 /dev/urandom > /var/www/site/db.key && chmod 600 /var/www/site/db.key
encryption --generate-key /etc/nc-backup/key >/dev/null && chown nc-backup: /etc/nc-backup/key
sed 's#"FILESET_INCLUDE": \["/etc", "/var/www"\]#"FILESET_INCLUDE": ["/etc", "/var/www", "/home/alice"]#' \
  /etc/nc-backup/conf.json > /etc/nc-backup/nightly.json
grep -q /home/alice /etc/nc-backup/nightly.json || fail "could not edit the example config"
runuser -u nc-backup -- backup-runner --check -c /etc/nc-backup/nightly.json >/dev/null || fail "--check as nc-backup"
runuser -u nc-backup -- backup-runner -r -q -c /etc/nc-backup/nightly.json || fail "the nightly run as nc-backup"
grep -q "CAP_DAC_READ_SEARCH only (capability)" /var/log/nc-backup/*.log || fail "the reader did not run"
! grep -q "cannot read" /var/log/nc-backup/*.log || fail "files were skipped: $(grep 'cannot read' /var/log/nc-backup/*.log)"
root_owned=$(find /var/lib/nc-backup /var/log/nc-backup /var/backups/nc-backup -user root)
[ -z "$root_owned" ] || fail "written as root: $root_owned"
# logrotate's weekly turn, forced: the next night still logs and runs (as nc-backup).
logrotate -f /etc/logrotate.d/nc-backup || fail "logrotate"
[ "$(stat -c %U /var/log/nc-backup/nc-backup.log)" = nc-backup ] || fail "the rotated log is $(stat -c %U /var/log/nc-backup/nc-backup.log)'s"
runuser -u nc-backup -- backup-runner -r -q -c /etc/nc-backup/nightly.json || fail "the nightly run after logrotate"
grep -q "run .* ok" /var/log/nc-backup/nc-backup.log || fail "the run after logrotate did not log"
backup-runner restore -q -c /etc/nc-backup/nightly.json --to /root/restored-nightly || fail "restoring the nightly run"
diff -r /home/alice /root/restored-nightly/home/alice >/dev/null || fail "alice's files differ"
cmp /var/www/site/db.key /root/restored-nightly/var/www/site/db.key || fail "root's file differs"
[ "$(stat -c '%U %a' /root/restored-nightly/home/alice/private/notes)" = "alice 600" ] || fail "owner or mode lost"
cp /etc/nc-backup/conf.json /root/conf.example.json

# A real backup and its restore as root, from /usr/bin, on local storage.
encryption --generate-key /root/key >/dev/null
cat > /root/conf.json <<JSON
{"GENERAL": {"HOSTNAME": "pkgtest", "WORK_FOLDER": "/root/work", "LOG_FOLDER": "/root/log"},
 "FILES": {"ACTION": "execute", "NAME": "filesbackup",
           "PARAMETERS": {"FILESET_INCLUDE": "/usr/share/doc /etc", "DESTINATION": "/root/work/files"}},
 "ENCRYPTION": {"ACTION": "execute", "NAME": "encryption",
           "PARAMETERS": {"KEY_FILE": "/root/key", "OBJECTIVES": "/root/work/files",
                          "DESTINATION": "/root/work/enc", "FILE_SIZE": "1", "REMOVE_OBJECTIVES": "True"}},
 "STORAGE": {"ACTION": "execute", "NAME": "storage",
           "PARAMETERS": {"OBJECTIVES": "/root/work/enc", "DESTINATION": "local",
                          "PATH": "/root/backups", "REMOVE_OBJECTIVES": "True"}}}
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
getcap $reader | grep -q 'cap_dac_read_search=ep' || fail "the upgrade lost the reader's capability"

# Remove: the programs go, the configuration stays; purge: nothing is left.
dpkg -r nc-backup >/dev/null
[ ! -e /usr/bin/backup-runner ] || fail "remove left /usr/bin/backup-runner"
[ -f /etc/nc-backup/conf.json ] || fail "remove deleted the conffile"
rm -f /etc/nc-backup/key /etc/nc-backup/nightly.json
dpkg -P nc-backup >/dev/null
# The backups are data: kept (owned by a user that is gone); the rest of the package is not.
[ -d /var/backups/nc-backup/server1 ] || fail "purge deleted the backups"
rm -rf /var/backups/nc-backup
for p in /etc/nc-backup /var/lib/nc-backup /var/log/nc-backup /lib/systemd/system/nc-backup@.timer /usr/share/doc/nc-backup /usr/libexec/nc-backup; do
  [ ! -e "$p" ] || fail "purge left $p"
done
! getent passwd nc-backup >/dev/null || fail "purge left the nc-backup user"
dpkg -s nc-backup >/dev/null 2>&1 && fail "dpkg still knows nc-backup"
echo "package checks passed: installed over what a root-run install left, the example config run as nc-backup through the privileged reader (root's and alice's private files restored by root; again after logrotate), backup and restore as root from /usr/bin, upgraded over itself (edited conffile kept), removed, purged"
