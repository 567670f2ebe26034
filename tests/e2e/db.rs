//! mysql-dump and pg-dump against real MariaDB and PostgreSQL servers (scripts/servers.sh),
//! locally, over sshd on 127.0.0.1 and inside a podman container; restored with the real
//! clients and compared.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nc_backup_e2e::{Out, Sandbox, Servers, bin, cmd, run, unique};

fn sh(script: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new("bash").arg("-c").arg(script).envs(env.iter().copied()).output().unwrap();
    assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn my_admin(s: &Servers, sql: &str) -> String {
    // The SQL goes on stdin: a password in it (CREATE USER) never shows in a process's argv,
    // where the argv watchers of other tests look.
    let mut c = Command::new("mariadb");
    c.arg(format!("--defaults-file={}", s.var("NCB_MYSQL_ADMIN_CNF")))
        .args(["--default-character-set=utf8mb4", "-N", "-B"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{sql}\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn make_mysql_db(s: &Servers) -> String {
    let db = unique("ncbmy");
    my_admin(
        s,
        &format!(
            "CREATE DATABASE {db} CHARACTER SET utf8mb4; USE {db};
             CREATE TABLE items (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(100), price DECIMAL(10,2), data BLOB, note TEXT);
             CREATE TABLE audit (id INT PRIMARY KEY AUTO_INCREMENT, item_id INT, at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
             CREATE TRIGGER items_ai AFTER INSERT ON items FOR EACH ROW INSERT INTO audit(item_id) VALUES (NEW.id);
             CREATE VIEW cheap AS SELECT id, name FROM items WHERE price < 10;
             CREATE PROCEDURE add_item(n VARCHAR(100)) INSERT INTO items(name, price) VALUES (n, 1);
             INSERT INTO items(name, price, data, note) VALUES ('héllo ✓ 😀', 5, X'00FF10', 'quote '' and \\\\ backslash');
             INSERT INTO items(name, price, data, note) SELECT CONCAT('n', seq), seq % 100, UNHEX(MD5(seq)), REPEAT('x', seq % 50) FROM seq_1_to_3000;"
        ),
    );
    db
}

fn mysql_checksums(s: &Servers, db: &str) -> String {
    let out = my_admin(s, &format!("CHECKSUM TABLE {db}.items, {db}.audit"));
    out.lines().map(|l| l.split('\t').nth(1).unwrap_or("").to_owned()).collect::<Vec<_>>().join(",")
}

/// Restores a .sql.gz into a new database and checks tables, view, trigger and routine.
pub(crate) fn mysql_restore_matches(s: &Servers, db: &str, dump: &Path, routines: bool) {
    let restored = format!("{db}_r");
    my_admin(s, &format!("CREATE DATABASE {restored} CHARACTER SET utf8mb4"));
    sh(
        &format!(
            "gzip -dc {} | mariadb --defaults-file={} --default-character-set=utf8mb4 {restored}",
            dump.display(),
            s.var("NCB_MYSQL_ADMIN_CNF")
        ),
        &[],
    );
    assert_eq!(mysql_checksums(s, &restored), mysql_checksums(s, db), "CHECKSUM TABLE differs after restore");
    let count = |q: &str| my_admin(s, q).trim().to_owned();
    assert_eq!(count(&format!("SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA='{restored}'")), "1");
    assert_eq!(
        count(&format!("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='{restored}'")),
        "1"
    );
    let want = if routines { "1" } else { "0" };
    assert_eq!(
        count(&format!("SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='{restored}'")),
        want
    );
    my_admin(s, &format!("DROP DATABASE {restored}"));
}

pub(crate) fn my_creds(sb: &Sandbox, s: &Servers, user: &str, password: &str) -> PathBuf {
    let p =
        sb.write(&format!("{user}.credentials"), format!("[client]\nuser={user}\npassword={password}\n").as_bytes());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _ = s;
    p
}

fn only_file(dir: &Path, ext: &str) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Every process's argv, scanned while `f` runs: the secret must never appear.
pub(crate) fn watch_argv<T>(secret: &str, f: impl FnOnce() -> T) -> T {
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, secret2) = (Arc::clone(&stop), secret.to_owned());
    let watcher = std::thread::spawn(move || {
        let mut scans = 0u32;
        while !stop2.load(Ordering::SeqCst) {
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                if let Ok(argv) = std::fs::read(e.path().join("cmdline"))
                    && String::from_utf8_lossy(&argv).contains(&secret2)
                {
                    return Err(String::from_utf8_lossy(&argv).replace('\0', " "));
                }
            }
            scans += 1;
        }
        Ok(scans)
    });
    let r = f();
    stop.store(true, Ordering::SeqCst);
    match watcher.join().unwrap() {
        Ok(scans) => assert!(scans > 0),
        Err(argv) => panic!("the password appeared in a process's argv: {argv}"),
    }
    r
}

#[test]
fn mysql_dump_through_the_runner_restores_identically_with_binlogs() {
    let s = Servers::get();
    let sb = Sandbox::new();
    let db = make_mysql_db(&s);
    let creds = my_creds(&sb, &s, "ncbadmin", &s.var("NCB_MYSQL_PASSWORD"));
    // nc-backup-py's own section, unchanged but for the paths.
    let conf = sb.config(&[(
        "DBSBACKUP",
        serde_json::json!({"ACTION": "execute", "NAME": "mysql_backup", "EXECUTABLE": "mysql_dump.py", "EXECUTE_WITH": "python", "PARAMETERS": {
            "CREDENTIAL_PATH": creds, "CONF_PATH": "/etc/mysql/my.cnf", "DATA_DIR": "/var/lib/mysql", "MY_INSTANCES": s.var("NCB_MYSQL_PORT"),
            "LOG": "/var/log/mysql/error.log", "BINLOG_PATH": s.var("NCB_MYSQL_BINLOG"), "BINLOG_FILE_PREFIX": "mysql-bin",
            "DESTINATION": sb.join("backup"), "TAR_COMMAND": "tar czf ", "MYSQL_DUMP_BINARY": "/usr/bin/mysqldump", "MYSQL_BINARY": "/usr/bin/mysql",
            "PREFIX_FOLDER": "mydump", "HOST": "127.0.0.1", "DATABASES": db}}),
    )]);
    let out = watch_argv(&s.var("NCB_MYSQL_PASSWORD"), || {
        run(cmd(&bin("backup-runner")).arg("-r").arg("-c").arg(&conf).arg("--json")).expect(0)
    });
    let section = &out.json()["sections"][0];
    assert_eq!(section["target"], "mysql-dump");
    let dump = only_file(&sb.join("backup/mydump"), ".sql.gz");
    assert!(dump.file_name().unwrap().to_string_lossy().starts_with(&format!("{db}_")));
    assert!(std::fs::read_dir(sb.join("backup/mydump/binlogs")).unwrap().count() >= 1, "no binlog copied");
    // The option file lived in WORK_FOLDER only while the stage ran.
    let left: Vec<_> = std::fs::read_dir(sb.join("work"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("mysql"))
        .collect();
    assert!(left.is_empty(), "credentials left behind: {left:?}");
    mysql_restore_matches(&s, &db, &dump, true);
    my_admin(&s, &format!("DROP DATABASE {db}"));
}

#[test]
fn mysql_dump_warns_when_routines_would_be_lost() {
    let s = Servers::get();
    let sb = Sandbox::new();
    let db = make_mysql_db(&s);
    // Grants on the database only, as many hosting set-ups give a backup user.
    my_admin(&s, &format!("GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON {db}.* TO 'ncblimited'@'%'"));
    let creds = my_creds(&sb, &s, "ncblimited", &s.var("NCB_MYSQL_PASSWORD"));
    let out = run(cmd(&bin("mysql-dump"))
        .arg("--CREDENTIAL_PATH")
        .arg(&creds)
        .args(["--HOST", "127.0.0.1", "--PORT", &s.var("NCB_MYSQL_PORT"), "--DATABASES", &db])
        .arg("--DESTINATION")
        .arg(sb.join("out"))
        .arg("--WORK_FOLDER")
        .arg(sb.join("work")))
    .expect(0);
    let w = out.json()["warnings"].to_string();
    assert!(w.contains("mysql.proc") && w.contains("routines"), "{w}");
    mysql_restore_matches(&s, &db, &only_file(&sb.join("out"), ".sql.gz"), false);
    my_admin(&s, &format!("DROP DATABASE {db}"));
}

/// A user without the EVENT privilege: `mysqldump --events` would fail the whole dump, while
/// missing routine grants only lose routines. EVENTS auto (the default) dumps without events
/// and says what to grant; True insists; with the grant, events are in the dump.
#[test]
fn mysql_dump_without_event_privilege_warns_and_dumps_the_rest() {
    let s = Servers::get();
    let sb = Sandbox::new();
    let db = make_mysql_db(&s);
    let user = unique("ncbnoev");
    let pw = s.var("NCB_MYSQL_PASSWORD");
    my_admin(
        &s,
        &format!(
            "CREATE EVENT {db}.nightly ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM {db}.audit;
             CREATE USER '{user}'@'%' IDENTIFIED BY '{pw}';
             GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES ON {db}.* TO '{user}'@'%';"
        ),
    );
    let creds = my_creds(&sb, &s, &user, &pw);
    let dump = |dest: &str, extra: &[&str]| {
        run(cmd(&bin("mysql-dump"))
            .arg("--CREDENTIAL_PATH")
            .arg(&creds)
            .args(["--HOST", "127.0.0.1", "--PORT", &s.var("NCB_MYSQL_PORT"), "--DATABASES", &db])
            .arg("--DESTINATION")
            .arg(sb.join(dest))
            .arg("--WORK_FOLDER")
            .arg(sb.join("work"))
            .args(extra))
    };
    let sql = |dest: &str| {
        let f = only_file(&sb.join(dest), ".sql.gz");
        sh(&format!("gzip -dc '{}'", f.display()), &[])
    };
    let out = dump("auto", &[]).expect(0);
    let w = out.json()["warnings"].to_string();
    assert!(w.contains("EVENT privilege") && w.contains(&format!("GRANT EVENT ON `{db}`.* TO '{user}'@'%'")), "{w}");
    assert!(!sql("auto").contains("EVENT `nightly`"));
    mysql_restore_matches(&s, &db, &only_file(&sb.join("auto"), ".sql.gz"), false);
    // EVENTS True: the dump needs them, and fails as mysqldump does, leaving nothing.
    assert_failed_clean(dump("strict", &["--EVENTS", "True"]), &sb.join("strict"), &[&db, "Access denied"]);
    // With the grant, the events are dumped and nothing is said about them.
    my_admin(&s, &format!("GRANT EVENT ON {db}.* TO '{user}'@'%'"));
    let out = dump("granted", &[]).expect(0);
    assert!(!out.json()["warnings"].to_string().contains("EVENT"), "{}", out.stdout);
    assert!(sql("granted").contains("EVENT `nightly`"));
    // EVENTS False: never.
    dump("never", &["--EVENTS", "False"]).expect(0);
    assert!(!sql("never").contains("EVENT `nightly`"));
    my_admin(&s, &format!("DROP USER '{user}'@'%'; DROP DATABASE {db}"));
}

pub(crate) fn pg_admin(s: &Servers, db: &str, sql: &str) -> String {
    sh(
        &format!(
            "psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {} -U ncbadmin -d {db} <<'SQL'\n{sql}\nSQL",
            s.var("NCB_PG_PORT")
        ),
        &[("PGPASSWORD", &s.var("NCB_PG_PASSWORD"))],
    )
}

pub(crate) fn make_pg_db(s: &Servers) -> String {
    let db = unique("ncbpg");
    pg_admin(s, "postgres", &format!("CREATE DATABASE {db};"));
    pg_admin(
        s,
        &db,
        "CREATE TABLE items (id serial PRIMARY KEY, name text, price numeric(10,2), data bytea, note text);
         CREATE TABLE audit (id serial PRIMARY KEY, item_id int, at timestamptz DEFAULT now());
         CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO audit(item_id) VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER items_ai AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION audit_fn();
         CREATE VIEW cheap AS SELECT id, name FROM items WHERE price < 10;
         CREATE FUNCTION add_item(n text) RETURNS void LANGUAGE sql AS $$ INSERT INTO items(name, price) VALUES (n, 1) $$;
         INSERT INTO items(name, price, data, note) VALUES ('héllo ✓ 😀', 5, '\\x00ff10', 'quote '' and \\ backslash');
         INSERT INTO items(name, price, data, note) SELECT 'n'||g, g % 100, decode(md5(g::text), 'hex'), repeat('x', g % 50) FROM generate_series(1, 3000) g;",
    );
    db
}

fn pg_fingerprint(s: &Servers, db: &str) -> String {
    pg_admin(
        s,
        db,
        "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM items t) || ' ' || (SELECT md5(string_agg(a::text, ',' ORDER BY id)) FROM audit a)
           || ' ' || (SELECT count(*) FROM pg_views WHERE viewname = 'cheap') || ' ' || (SELECT count(*) FROM pg_trigger WHERE tgname = 'items_ai')
           || ' ' || (SELECT count(*) FROM pg_proc WHERE proname IN ('add_item', 'audit_fn'));",
    )
}

pub(crate) fn pg_restore_matches(s: &Servers, db: &str, dump: &Path) {
    let restored = format!("{db}_r");
    pg_admin(s, "postgres", &format!("CREATE DATABASE {restored};"));
    let port = s.var("NCB_PG_PORT");
    let load = if dump.to_string_lossy().ends_with(".dump") {
        format!("pg_restore --exit-on-error -h 127.0.0.1 -p {port} -U ncbadmin -d {restored} {}", dump.display())
    } else {
        format!(
            "gzip -dc {} | psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {port} -U ncbadmin -d {restored} >/dev/null",
            dump.display()
        )
    };
    sh(&load, &[("PGPASSWORD", &s.var("NCB_PG_PASSWORD"))]);
    let (a, b) = (pg_fingerprint(s, db), pg_fingerprint(s, &restored));
    assert!(a.ends_with(" 1 1 2\n"), "fixture incomplete: {a}");
    assert_eq!(b, a, "restored database differs");
    pg_admin(s, "postgres", &format!("DROP DATABASE {restored};"));
}

fn pg_dump_cmd(s: &Servers, sb: &Sandbox, user: &str, dest: &str) -> Command {
    let mut c = cmd(&bin("pg-dump"));
    c.args(["--HOST", "127.0.0.1", "--PORT", &s.var("NCB_PG_PORT"), "--USER", user])
        .arg("--DESTINATION")
        .arg(sb.join(dest))
        .arg("--WORK_FOLDER")
        .arg(sb.join("work"))
        .env("NCB_PARAM_PASSWORD", s.var("NCB_PG_PASSWORD"));
    c
}

#[test]
fn pg_dump_custom_plain_and_globals_restore_identically() {
    let s = Servers::get();
    let sb = Sandbox::new();
    let db = make_pg_db(&s);
    let pw = s.var("NCB_PG_PASSWORD");
    watch_argv(&pw, || {
        run(pg_dump_cmd(&s, &sb, "ncbackup", "custom").args(["--DATABASES", &db])).expect(0);
        run(pg_dump_cmd(&s, &sb, "ncbadmin", "plain").args([
            "--DATABASES",
            &db,
            "--FORMAT",
            "plain",
            "--GLOBALS",
            "True",
        ]))
        .expect(0);
    });
    pg_restore_matches(&s, &db, &only_file(&sb.join("custom"), ".dump"));
    pg_restore_matches(&s, &db, &only_db_file(&sb.join("plain"), &db));
    let globals = std::fs::read_dir(sb.join("plain"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("globals_"))
        .unwrap();
    let text = sh(&format!("gzip -dc {}", globals.path().display()), &[]);
    assert!(text.contains("CREATE ROLE ncbackup"), "{text}");
    let left: Vec<_> = std::fs::read_dir(sb.join("work")).unwrap().flatten().collect();
    assert!(left.is_empty(), "passfile left behind");
    pg_admin(&s, "postgres", &format!("DROP DATABASE {db};"));
}

fn only_db_file(dir: &Path, db: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{db}_")))
        .unwrap()
}

fn ssh_args(s: &Servers, sb: &Sandbox) -> Vec<String> {
    vec![
        "--SSH_HOST".into(),
        "127.0.0.1".into(),
        "--SSH_PORT".into(),
        s.var("NCB_SSH_PORT"),
        "--SSH_USER".into(),
        "root".into(),
        "--SSH_KEY".into(),
        s.var("NCB_SSH_KEY"),
        "--SSH_KNOWN_HOSTS".into(),
        sb.join("known_hosts").display().to_string(),
    ]
}

#[test]
fn dumps_over_ssh_and_in_a_container_restore_identically() {
    let s = Servers::get();
    let sb = Sandbox::new();
    let (mydb, pgdb) = (make_mysql_db(&s), make_pg_db(&s));
    let creds = my_creds(&sb, &s, "ncbadmin", &s.var("NCB_MYSQL_PASSWORD"));
    let container =
        vec!["--DOCKER_CONTAINER".to_owned(), s.var("NCB_CONTAINER"), "--CONTAINER_CLI".into(), "podman".into()];
    for (name, via) in [("ssh", ssh_args(&s, &sb)), ("container", container)] {
        let my_out = sb.join(format!("my-{name}"));
        let pw = s.var("NCB_MYSQL_PASSWORD");
        watch_argv(&pw, || {
            let mut c = cmd(&bin("mysql-dump"));
            c.arg("--CREDENTIAL_PATH")
                .arg(&creds)
                .args(["--HOST", "127.0.0.1", "--PORT", &s.var("NCB_MYSQL_PORT"), "--DATABASES", &mydb])
                .arg("--DESTINATION")
                .arg(&my_out)
                .args(&via);
            run(&mut c).expect(0)
        });
        mysql_restore_matches(&s, &mydb, &only_file(&my_out, ".sql.gz"), true);

        let pw = s.var("NCB_PG_PASSWORD");
        watch_argv(&pw, || {
            run(pg_dump_cmd(&s, &sb, "ncbackup", &format!("pg-{name}")).args(["--DATABASES", &pgdb]).args(&via))
                .expect(0)
        });
        pg_restore_matches(&s, &pgdb, &only_file(&sb.join(format!("pg-{name}")), ".dump"));
    }
    my_admin(&s, &format!("DROP DATABASE {mydb}"));
    pg_admin(&s, "postgres", &format!("DROP DATABASE {pgdb};"));
}

fn assert_failed_clean(out: Out, dest: &Path, needles: &[&str]) {
    let out = out.expect(1);
    for n in needles {
        assert!(out.stderr.contains(n), "error lacks {n:?}:\n{}", out.stderr);
    }
    let left: Vec<_> =
        std::fs::read_dir(dest).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a failed dump left {left:?}");
}

#[test]
fn failures_exit_1_name_the_database_or_host_and_leave_no_file() {
    let s = Servers::get();
    let sb = Sandbox::new();
    let mydb = make_mysql_db(&s);
    let port = s.var("NCB_MYSQL_PORT");
    let good = my_creds(&sb, &s, "ncbadmin", &s.var("NCB_MYSQL_PASSWORD"));
    let bad = my_creds(&sb, &s, "ncbackup", "wrong-password");
    let my = |creds: &Path, port: &str, db: &str, dest: &str, extra: &[String]| {
        run(cmd(&bin("mysql-dump"))
            .arg("--CREDENTIAL_PATH")
            .arg(creds)
            .args(["--HOST", "127.0.0.1", "--PORT", port, "--DATABASES", db])
            .arg("--DESTINATION")
            .arg(sb.join(dest))
            .arg("--WORK_FOLDER")
            .arg(sb.join("work"))
            .args(extra))
    };
    assert_failed_clean(my(&bad, &port, &mydb, "m1", &[]), &sb.join("m1"), &[&mydb, "Access denied"]);
    // A missing database fails the stage, and the dump of the good one before it goes too.
    assert_failed_clean(my(&good, &port, &format!("{mydb} no_such_db"), "m2", &[]), &sb.join("m2"), &["no_such_db"]);
    assert_failed_clean(my(&good, "1", &mydb, "m3", &[]), &sb.join("m3"), &[&mydb, "127.0.0.1:1"]);
    let mut refused = ssh_args(&s, &sb);
    refused[3] = "1".into();
    assert_failed_clean(my(&good, &port, &mydb, "m4", &refused), &sb.join("m4"), &["127.0.0.1 (ssh)", "refused"]);
    let pgdb = make_pg_db(&s);
    let mut c = pg_dump_cmd(&s, &sb, "ncbackup", "p1");
    c.args(["--DATABASES", &pgdb]).env("NCB_PARAM_PASSWORD", "wrong-password");
    assert_failed_clean(run(&mut c), &sb.join("p1"), &[&pgdb, "password authentication failed"]);
    assert_failed_clean(
        run(pg_dump_cmd(&s, &sb, "ncbackup", "p2").args(["--DATABASES", "no_such_pg_db"])),
        &sb.join("p2"),
        &["no_such_pg_db"],
    );
    // A credentials file others can read is refused before anything runs.
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = my(&good, &port, &mydb, "m5", &[]).expect(2);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
    let _ = Stdio::null();
    my_admin(&s, &format!("DROP DATABASE {mydb}"));
    pg_admin(&s, "postgres", &format!("DROP DATABASE {pgdb};"));
}

/// A database name is data, not options or a connection string.
#[test]
fn hostile_database_names_are_only_names() {
    let s = Servers::get();
    let sb = Sandbox::new();
    // Were the name taken as a connection string, pg_dump would go to 127.0.0.2, where
    // nothing listens, and fail.
    let name = format!("{} host=127.0.0.2 x'y", unique("ncbweird"));
    pg_admin(&s, "postgres", &format!("CREATE DATABASE \"{name}\";"));
    let list = serde_json::to_string(&[&name]).unwrap();
    let out =
        run(pg_dump_cmd(&s, &sb, "ncbadmin", "weird").args(["--DATABASES", &list, "--FORMAT", "plain"])).expect(0);
    let file = out.json()["artifacts"][0]["path"].as_str().unwrap().to_owned();
    let stem = std::path::Path::new(&file).file_name().unwrap().to_string_lossy().into_owned();
    assert!(!stem.contains(' ') && !stem.contains('\''), "unsafe file name {stem}");
    pg_admin(&s, "postgres", &format!("DROP DATABASE \"{name}\";"));
}
