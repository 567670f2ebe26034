//! A database server that goes away in the middle of a night's dump, for real: a private
//! MariaDB instance (its own datadir, port and socket in the test's folder, so the shared one
//! and the tests using it are not touched) is killed or shut down while mysqldump streams a
//! large table. The night fails naming the database, leaves no dump that looks complete, and
//! the next night, with the server back, dumps it again; that dump loads back identically.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nc_backup_e2e::{Sandbox, bin, cmd, run, signal, wait_for};
use serde_json::json;

use crate::diskfull::{complete_looking, night, recovered, run_id, stored_runs, sub, walk};

/// A MariaDB server of the test's own, started as scripts/servers.sh starts the shared one.
pub(crate) struct PrivateMariaDb {
    dir: PathBuf,
    pub(crate) port: u16,
    server: Option<Child>,
}

impl PrivateMariaDb {
    pub(crate) fn install(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // Its own tmpdir: bootstraps sharing /tmp collide on their temporary tables.
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.display();
        let cnf = format!(
            "[mysqld]\ndatadir={d}/data\ntmpdir={d}/tmp\nsocket={d}/mysqld.sock\npid-file={d}/mysqld.pid\nlog-error={d}/error.log\n\
             port={port}\nbind-address=127.0.0.1\nuser=mysql\ncharacter-set-server=utf8mb4\nskip-name-resolve\n\
             innodb_buffer_pool_size=64M\n[client]\nsocket={d}/mysqld.sock\nuser=root\n"
        );
        std::fs::write(dir.join("my.cnf"), cnf).unwrap();
        assert!(Command::new("chown").args(["-R", "mysql:mysql"]).arg(dir).status().unwrap().success());
        let out = Command::new("mariadb-install-db")
            .arg(format!("--defaults-file={d}/my.cnf"))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mariadb-install-db: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        let mut db = PrivateMariaDb { dir: dir.to_path_buf(), port, server: None };
        db.start();
        db
    }

    fn cnf(&self) -> String {
        format!("--defaults-file={}", self.dir.join("my.cnf").display())
    }

    pub(crate) fn start(&mut self) {
        let child =
            Command::new("mariadbd").arg(self.cnf()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        self.server = Some(child);
        let up = wait_for(Duration::from_secs(60), || {
            Command::new("mariadb-admin").arg(self.cnf()).arg("ping").output().is_ok_and(|o| o.status.success())
        });
        assert!(
            up,
            "private mariadbd did not start: {}",
            std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
        );
    }

    /// Sends `sig` to the server and waits for it to be gone.
    pub(crate) fn stop(&mut self, sig: &str) {
        let mut child = self.server.take().expect("server running");
        signal(child.id(), sig);
        child.wait().unwrap();
    }

    pub(crate) fn sql(&self, sql: &str) -> String {
        let out = Command::new("mariadb")
            .arg(self.cnf())
            .args(["--default-character-set=utf8mb4", "-N", "-B", "-e", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn checksums(&self, db: &str) -> String {
        self.sql(&format!("CHECKSUM TABLE {db}.big, {db}.small"))
            .lines()
            .map(|l| l.split('\t').nth(1).unwrap_or("").to_owned())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// mysql-dump of `db` on the private server, then encryption and storage to a local folder.
fn pipeline(sb: &Sandbox, my: &PrivateMariaDb, db: &str) -> PathBuf {
    let creds = sb.write("my.credentials", b"[client]\nuser=backup\npassword=dump-pass\n");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let w = sb.join("work");
    run(cmd(&bin("encryption")).arg("--generate-key").arg(sb.join("key_file"))).expect(0);
    sb.config(&[
        (
            "DBSBACKUP",
            json!({"ACTION": "execute", "NAME": "mysql_backup", "PARAMETERS": {
                "CREDENTIAL_PATH": creds, "HOST": "127.0.0.1", "PORT": my.port.to_string(), "DATABASES": db,
                "DESTINATION": w.join("dumps")}}),
        ),
        (
            "ENCRYPTION",
            json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                "KEY_FILE": sb.join("key_file"), "FILE_SIZE": "4", "OBJECTIVES": w.join("dumps"),
                "DESTINATION": w.join("encrypted"), "REMOVE_OBJECTIVES": "True"}}),
        ),
        (
            "STORAGE",
            json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
                "OBJECTIVES": w.join("encrypted"), "DESTINATION": "local", "PATH": sb.join("store"),
                "REMOVE_OBJECTIVES": "True"}}),
        ),
    ])
}

fn server_gone_mid_dump(sig: &str) {
    let sb = Sandbox::new();
    // mariadbd runs as mysql: every folder on the way must be traversable.
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut my = PrivateMariaDb::install(&sb.join("mariadb"));
    let db = "shop";
    // ~50 MB of SQL: mysqldump streams it for a second or more.
    my.sql(&format!(
        "CREATE DATABASE {db}; USE {db};
         CREATE TABLE big (id INT PRIMARY KEY, name VARCHAR(100), body VARCHAR(200), n BIGINT);
         INSERT INTO big SELECT seq, CONCAT('item ', seq), REPEAT(MD5(seq), 4), seq * 7919 FROM seq_1_to_300000;
         CREATE TABLE small (id INT PRIMARY KEY, note TEXT);
         INSERT INTO small SELECT seq, CONCAT('note ', seq) FROM seq_1_to_100;
         CREATE USER 'backup'@'%' IDENTIFIED BY 'dump-pass';
         GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES, RELOAD, PROCESS ON *.* TO 'backup'@'%';"
    ));
    let sums = my.checksums(db);
    let conf = pipeline(&sb, &my, db);
    let dumps = sb.join("work/dumps");

    // Night 1: the server goes while mysqldump streams the big table.
    let mut c = cmd(&bin("backup-runner"));
    c.arg("-r").arg("-c").arg(&conf).arg("--json").stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let streaming = wait_for(Duration::from_secs(60), || {
        walk(&dumps).iter().any(|p| {
            p.file_name().unwrap().to_string_lossy().contains(".partial-")
                && std::fs::metadata(p).is_ok_and(|m| m.len() > 256 << 10)
        })
    });
    my.stop(sig);
    let out = nc_backup_e2e::Out::from(child.wait_with_output().unwrap());
    assert!(streaming, "the dump ended before the server could be stopped:\n{}", out.stderr);
    let out = out.expect(1);
    let night1 = run_id(&out);
    let report = out.json();
    assert_eq!(report["sections"][0]["status"], "failed", "{report:#}");
    let error = report["sections"][0]["error"].as_str().unwrap().to_owned();
    assert!(error.contains(&format!("dump of database {db}")) && error.contains("mysqldump"), "{error}");
    assert!(out.stderr.contains("DBSBACKUP") && out.stderr.contains(db), "{}", out.stderr);
    let looks_done = complete_looking(&dumps);
    assert!(looks_done.is_empty(), "the interrupted dump left files that look complete: {looks_done:?}");
    assert!(!sb.join("store").exists(), "a night whose dump failed stored something");

    // Night 2: the server is back; night 1 had finished nothing, its temporary goes.
    my.start();
    let out = night(&conf).expect(0);
    let report = out.json();
    assert_eq!(recovered(&report), [(night1.clone(), "abandoned".to_owned())], "{report:#}");
    let night2 = run_id(&out);
    let left: Vec<PathBuf> =
        walk(&sb.join("work")).into_iter().filter(|p| !p.ends_with(".backup-runner.lock")).collect();
    assert!(left.is_empty(), "left in WORK_FOLDER after night 2: {left:?}");
    assert_eq!(stored_runs(&conf), (vec![night2.clone()], vec![]));
    sub(&conf, &["verify", "--run", "all", "--read-data"]).expect(0);

    // Night 2's dump, restored and loaded back into a new database: the same tables.
    let to = sb.join("restored");
    sub(&conf, &["restore", "--run", &night2, "--to", to.to_str().unwrap()]).expect(0);
    let sql: Vec<PathBuf> = walk(&to).into_iter().filter(|p| p.to_string_lossy().ends_with(".sql")).collect();
    assert_eq!(sql.len(), 1, "{sql:?}");
    my.sql("CREATE DATABASE reloaded");
    let load = Command::new("mariadb")
        .arg(my.cnf())
        .args(["--default-character-set=utf8mb4", "reloaded"])
        .stdin(std::fs::File::open(&sql[0]).unwrap())
        .output()
        .unwrap();
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    assert_eq!(my.checksums("reloaded"), sums, "CHECKSUM TABLE differs after reloading night 2's dump");
    assert_eq!(my.sql("SELECT COUNT(*) FROM reloaded.big").trim(), "300000");
}

#[test]
fn mariadb_killed_mid_dump_fails_the_night_and_the_next_dumps_it_whole() {
    server_gone_mid_dump("KILL");
}

#[test]
fn mariadb_shut_down_mid_dump_fails_the_night_and_the_next_dumps_it_whole() {
    server_gone_mid_dump("TERM");
}
