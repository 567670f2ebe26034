//! `backup-runner apps`: Backopper's inventory-driven app backups (docs/APPS.md), against an
//! inventory and a media server run by the test (plain HTTP on 127.0.0.1), MariaDB and
//! PostgreSQL (scripts/servers.sh), a throwaway user's real crontab, and Garage read back by
//! the aws CLI.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use nc_backup_e2e::{Sandbox, Servers, bin, cmd, run, unique};
use sha2::Digest;

use crate::db::{make_mysql_db, make_pg_db, my_admin, mysql_restore_matches, pg_restore_matches, watch_argv};

/// One request the test server received.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What the server answers: status, content type, body. The media endpoint (POST) answers
/// `{"sha256", "size"}` of what it received when `status` is 200.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

struct HttpServer {
    addr: String,
    answer: Arc<Mutex<Answer>>,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl HttpServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new(Answer { status: 200, content_type: "application/json", body: "[]".into() }));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (Arc::clone(&answer), Arc::clone(&seen));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (a, s) = (Arc::clone(&a), Arc::clone(&s));
                std::thread::spawn(move || serve(conn, &a, &s));
            }
        });
        HttpServer { addr, answer, seen }
    }

    fn answer(&self, status: u16, content_type: &'static str, body: &str) {
        *self.answer.lock().unwrap() = Answer { status, content_type, body: body.to_owned() };
    }

    fn inventory(&self, apps: &[(&str, &str)]) {
        let list: Vec<serde_json::Value> =
            apps.iter().map(|(n, f)| serde_json::json!({"name": n, "frequency": f})).collect();
        self.answer(200, "application/json", &serde_json::Value::Array(list).to_string());
    }

    fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

/// An answer that comes only after a minute (a server that hangs).
const HANG: u16 = 999;

fn serve(conn: TcpStream, answer: &Mutex<Answer>, seen: &Mutex<Vec<Request>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let len: usize =
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    let a = answer.lock().unwrap().clone();
    let text = if method == "POST" && a.status == 200 {
        serde_json::json!({"sha256": hex::encode(sha2::Sha256::digest(&body)), "size": body.len()}).to_string()
    } else {
        a.body.clone()
    };
    seen.lock().unwrap().push(Request { method, target, headers, body });
    if a.status == HANG {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
    let mut w = conn;
    let _ = write!(
        w,
        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        a.status,
        a.content_type,
        text.len()
    );
}

fn private(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

struct Apps {
    sb: Sandbox,
    conf: PathBuf,
    http: HttpServer,
}

impl Apps {
    /// An apps config with the inventory and media server of the test; `extra` merged in.
    fn new(extra: serde_json::Value) -> Self {
        let sb = Sandbox::new();
        let http = HttpServer::start();
        let token = sb.write("inventory.token", b"inv-token-123\n");
        private(&token);
        let media_token = sb.write("media.token", b"media-token-456\n");
        private(&media_token);
        let mut conf = serde_json::json!({
            "API_URL": format!("{}/api/apps", http.addr),
            "TOKEN_FILE": token,
            "ENVIRONMENT": "production",
            "APPS_ROOT": sb.join("apps"),
            "BACKUPS_ROOT": sb.join("backups"),
            "HOSTNAME": "web1",
            "MEDIA": {"URL": format!("{}/media", http.addr), "TOKEN_FILE": media_token, "ATTEMPTS": 2},
        });
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        std::fs::create_dir_all(sb.join("apps")).unwrap();
        let path = sb.config_text("apps.json", &conf.to_string());
        Apps { sb, conf: path, http }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = cmd(&bin("backup-runner"));
        c.args(["apps"]).args(args).arg("-c").arg(&self.conf);
        c
    }

    fn app(&self, name: &str, env: &str) -> PathBuf {
        let root = self.sb.join(format!("apps/{name}"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join(".env"), env).unwrap();
        root
    }

    fn dumps(&self, app: &str) -> Vec<PathBuf> {
        let mut d: Vec<PathBuf> = std::fs::read_dir(self.sb.join(format!("backups/{app}")))
            .map(|r| r.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(".sql.gz")).collect())
            .unwrap_or_default();
        d.sort();
        d
    }
}

fn mysql_env(s: &Servers, db: &str, user: &str, pw: &str) -> String {
    format!(
        "APP_NAME=\"Shop\"\n# database\nexport DB_CONNECTION=mysql\nDB_HOST=127.0.0.1\nDB_PORT={}\nDB_DATABASE={db}\nDB_USERNAME={user}\nDB_PASSWORD=\"{pw}\"\n",
        s.var("NCB_MYSQL_PORT")
    )
}

fn mysql_app_user(s: &Servers, db: &str) -> (String, String) {
    let user = unique("ncbapp");
    let pw = format!("app-{}-pw", unique("s"));
    my_admin(
        s,
        &format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY '{pw}';
             GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT ON {db}.* TO '{user}'@'%';
             GRANT SELECT ON mysql.proc TO '{user}'@'%';"
        ),
    );
    (user, pw)
}

const USER: &str = "ncbappscron";

fn crontab_l() -> String {
    let out = Command::new("crontab").args(["-u", USER, "-l"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn apps_sync_keeps_one_tagged_line_per_app_and_touches_nothing_else() {
    if Command::new("id").arg(USER).output().unwrap().status.code() != Some(0) {
        assert!(Command::new("useradd").args(["-M", "-s", "/usr/sbin/nologin", USER]).status().unwrap().success());
    }
    let unrelated = "0 1 * * * /bin/true # someone else's job\n@daily /bin/bash -c '/opt/backups/backopper/backup.sh shop /opt/backups/backopper' # shop\n";
    let mut c = Command::new("crontab").args(["-u", USER, "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    c.stdin.as_mut().unwrap().write_all(unrelated.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());

    let a = Apps::new(serde_json::json!({"CRONTAB_USER": USER}));
    a.http.inventory(&[("shop", "daily"), ("blog", "weekly"), ("crm", "30 2 * * 1")]);
    let out = run(&mut a.cmd(&["sync"])).expect(0);
    assert!(out.stdout.contains("3 added, 0 removed"), "{}", out.stdout);
    let tab = crontab_l();
    assert!(tab.starts_with(unrelated), "other lines moved or changed:\n{tab}");
    let conf = a.conf.canonicalize().unwrap();
    for (sched, app) in [("@daily", "shop"), ("@weekly", "blog"), ("30 2 * * 1", "crm")] {
        let want = format!("apps backup {app} -c {} # nc-backup app {app}: {}", conf.display(), conf.display());
        assert!(tab.lines().any(|l| l.starts_with(&format!("{sched} ")) && l.ends_with(&want)), "{app}:\n{tab}");
    }
    // The request: the environment in the query, the token in a header.
    let req = a.http.seen().pop().unwrap();
    assert_eq!((req.method.as_str(), req.target.as_str()), ("GET", "/api/apps?environment=production"));
    assert_eq!(req.header("authorization"), Some("Bearer inv-token-123"));

    // Idempotent.
    let out = run(&mut a.cmd(&["sync"])).expect(0);
    assert!(out.stdout.contains("already in line"), "{}", out.stdout);
    assert_eq!(crontab_l(), tab);

    // blog leaves the inventory, shop becomes hourly: a dry run says so and changes nothing.
    a.http.inventory(&[("shop", "hourly"), ("crm", "30 2 * * 1")]);
    let out = run(&mut a.cmd(&["sync", "--dry-run"])).expect(0);
    assert!(out.stdout.contains("dry run: 1 to add, 2 to remove"), "{}", out.stdout);
    assert!(out.stdout.lines().any(|l| l.starts_with("- @weekly ") && l.contains(" blog ")), "{}", out.stdout);
    assert_eq!(crontab_l(), tab);
    run(&mut a.cmd(&["sync"])).expect(0);
    let tab2 = crontab_l();
    assert!(tab2.starts_with(unrelated), "{tab2}");
    assert!(!tab2.contains("apps backup blog"), "{tab2}");
    assert!(tab2.lines().any(|l| l.starts_with("@hourly ") && l.contains("apps backup shop ")), "{tab2}");
    assert_eq!(tab2.matches("# nc-backup app ").count(), 2, "{tab2}");
    let list = run(&mut a.cmd(&["list"])).expect(0).stdout;
    assert!(list.lines().any(|l| l.starts_with("shop ") && l.contains("@hourly") && l.contains("never")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("crm ") && l.contains("30 2 * * 1")), "{list}");

    // Bad answers: exit 1, the crontab untouched.
    for (status, ctype, body, want) in [
        (200, "text/html", "<html><body>Maintenance</body></html>", "not JSON"),
        (500, "application/json", "[]", "HTTP 500"),
        (200, "application/json", r#"[{"name": "../x", "frequency": "daily"}]"#, "not a plain app name"),
        (200, "application/json", r#"[{"name": "a b", "frequency": "daily"}]"#, "not a plain app name"),
        (200, "application/json", r#"[{"name": "ok", "frequency": "sometimes"}]"#, "frequency 'sometimes'"),
        (200, "application/json", r#"{"apps": []}"#, "not a JSON list"),
    ] {
        a.http.answer(status, ctype, body);
        let out = run(&mut a.cmd(&["sync"])).expect(1);
        assert!(out.stderr.contains(want), "{body}: {}", out.stderr);
        assert_eq!(crontab_l(), tab2, "{body}: the crontab changed");
    }
    // The inventory down.
    let mut conf: serde_json::Value = serde_json::from_slice(&std::fs::read(&a.conf).unwrap()).unwrap();
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    conf["API_URL"] = format!("http://{dead}/api/apps").into();
    std::fs::write(&a.conf, conf.to_string()).unwrap();
    let out = run(&mut a.cmd(&["sync"])).expect(1);
    assert!(out.stderr.contains("cannot be reached"), "{}", out.stderr);
    assert_eq!(crontab_l(), tab2);
    // A token file others can read: exit 2, nothing asked.
    std::fs::set_permissions(a.sb.join("inventory.token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&mut a.cmd(&["sync"])).expect(2);
    assert!(out.stderr.contains("inventory.token") && out.stderr.contains("chmod 600"), "{}", out.stderr);

    // Cleaning up: an empty inventory removes our lines, and only ours.
    std::fs::set_permissions(a.sb.join("inventory.token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    conf["API_URL"] = format!("{}/api/apps", a.http.addr).into();
    std::fs::write(&a.conf, conf.to_string()).unwrap();
    a.http.inventory(&[]);
    run(&mut a.cmd(&["sync"])).expect(0);
    assert_eq!(crontab_l(), unrelated);
}

#[test]
fn apps_backup_of_mariadb_and_postgres_apps_with_media_synced_to_garage() {
    let s = Servers::get();
    let prefix = unique("apps");
    let a = Apps::new(serde_json::json!({
        "KEEP_LOCAL": 1,
        "SYNC": {"DESTINATION": "s3", "BUCKET_NAME": s.var("NCB_S3_BUCKET"), "REGION": s.var("NCB_S3_REGION"),
                 "ENDPOINT_URL": s.var("NCB_S3_ENDPOINT"), "PREFIX": prefix},
        "APPS": {"blog": {"SKIP_MEDIA": true}},
    }));
    let aws = |args: &[&str]| nc_backup_e2e::aws(&s, args);
    let with_s3 = |c: &mut Command| {
        c.env("AWS_ACCESS_KEY_ID", s.var("NCB_S3_ACCESS_KEY"))
            .env("AWS_SECRET_ACCESS_KEY", s.var("NCB_S3_SECRET_KEY"))
            .env("AWS_EC2_METADATA_DISABLED", "true");
    };

    // shop: MariaDB, its own user; media in storage/app/public.
    let db = make_mysql_db(&s);
    let (user, pw) = mysql_app_user(&s, &db);
    let root = a.app("shop", &mysql_env(&s, &db, &user, &pw));
    let media = root.join("storage/app/public");
    std::fs::create_dir_all(media.join("img ü")).unwrap();
    std::fs::write(media.join("img ü/a.png"), nc_backup_e2e::pseudo_random(300_000, 7)).unwrap();
    std::fs::write(media.join("notes.txt"), b"hello\n").unwrap();

    let mut c = a.cmd(&["backup", "shop"]);
    with_s3(&mut c);
    let out = watch_argv(&pw, || run(&mut c));
    let out = out.expect(0);
    assert!(out.stdout.contains("shop: ok"), "{}", out.stdout);
    let dumps = a.dumps("shop");
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    let name = dumps[0].file_name().unwrap().to_string_lossy().into_owned();
    let t: i64 = name.strip_suffix(".sql.gz").unwrap().parse().expect("<unix time>.sql.gz");
    assert!((chrono::Utc::now().timestamp() - t).abs() < 600, "{name}");
    mysql_restore_matches(&s, &db, &dumps[0], true);

    // The media archive reached the server whole, with the token, and GNU tar reads it.
    let post = a.http.seen().into_iter().find(|r| r.method == "POST").expect("no media POST");
    assert_eq!(post.target, "/media");
    assert_eq!(post.header("authorization"), Some("Bearer media-token-456"));
    assert_eq!(post.header("x-backup-app"), Some("shop"));
    assert_eq!(post.header("x-content-sha256"), Some(hex::encode(sha2::Sha256::digest(&post.body)).as_str()));
    let got = a.sb.join("media-got");
    std::fs::create_dir_all(&got).unwrap();
    let tgz = a.sb.write("media.tar.gz", &post.body);
    assert!(Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&got).status().unwrap().success());
    let rel = media.strip_prefix("/").unwrap();
    assert!(Command::new("diff").arg("-r").arg(&media).arg(got.join(rel)).status().unwrap().success());

    // The sync: the dump is in Garage, byte for byte (read by the aws CLI).
    let key = format!("{prefix}/shop/{name}");
    let back = a.sb.join("from-s3.sql.gz");
    aws(&["s3", "cp", &format!("s3://{}/{key}", s.var("NCB_S3_BUCKET")), back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&dumps[0]).unwrap());

    // A second night: the new dump goes up, the first stays there, and locally only the newest
    // is kept (KEEP_LOCAL 1), after the sync.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut c = a.cmd(&["backup", "shop"]);
    with_s3(&mut c);
    let out = run(&mut c).expect(0);
    assert!(out.stdout.contains("1 file(s) synced") && out.stdout.contains("1 old file(s) removed"), "{}", out.stdout);
    let dumps2 = a.dumps("shop");
    assert_eq!(dumps2.len(), 1);
    assert_ne!(dumps2[0], dumps[0]);
    let listing = aws(&["s3", "ls", &format!("s3://{}/{prefix}/shop/", s.var("NCB_S3_BUCKET"))]);
    assert_eq!(listing.matches(".sql.gz").count(), 2, "{listing}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.sb.join("backups/shop/.last-report.json")).unwrap()).unwrap();
    assert_eq!(report["ok"], true);

    // blog: PostgreSQL (pgsql), no media.
    let pdb = make_pg_db(&s);
    a.app(
        "blog",
        &format!(
            "DB_CONNECTION=pgsql\nDB_HOST=127.0.0.1\nDB_PORT={}\nDB_DATABASE={pdb}\nDB_USERNAME=ncbadmin\nDB_PASSWORD='{}'\n",
            s.var("NCB_PG_PORT"),
            s.var("NCB_PG_PASSWORD")
        ),
    );
    let mut c = a.cmd(&["backup", "blog"]);
    with_s3(&mut c);
    run(&mut c).expect(0);
    let pd = a.dumps("blog");
    assert_eq!(pd.len(), 1);
    pg_restore_matches(&s, &pdb, &pd[0]);
    let listing = aws(&["s3", "ls", &format!("s3://{}/{prefix}/blog/", s.var("NCB_S3_BUCKET"))]);
    assert!(listing.contains(&pd[0].file_name().unwrap().to_string_lossy().into_owned()), "{listing}");

    my_admin(&s, &format!("DROP USER '{user}'@'%'; DROP DATABASE {db}"));
}

#[test]
fn apps_backup_refuses_bad_apps_and_leaves_nothing_half_made() {
    let s = Servers::get();
    let a = Apps::new(serde_json::json!({}));
    let db = make_mysql_db(&s);
    let (user, pw) = mysql_app_user(&s, &db);
    let leftovers = |app: &str| -> Vec<String> {
        let mut v = Vec::new();
        for d in [a.sb.join(format!("backups/{app}")), a.sb.join(format!("backups/.work/{app}"))] {
            if let Ok(r) = std::fs::read_dir(&d) {
                v.extend(
                    r.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n != ".lock" && n != ".last-report.json"),
                );
            }
        }
        v
    };

    // A .env without DB_PASSWORD: exit 2, naming the file and the key.
    let env = mysql_env(&s, &db, &user, &pw);
    let no_pw: String = env.lines().filter(|l| !l.starts_with("DB_PASSWORD")).map(|l| format!("{l}\n")).collect();
    let root = a.app("nopw", &no_pw);
    let out = run(&mut a.cmd(&["backup", "nopw"])).expect(2);
    assert!(out.stderr.contains(&format!("{}: DB_PASSWORD is not set", root.join(".env").display())), "{}", out.stderr);
    assert!(leftovers("nopw").is_empty(), "{:?}", leftovers("nopw"));

    // A wrong password: exit 1, no dump, no partial file, the report says why.
    a.app("wrongpw", &mysql_env(&s, &db, &user, "not-the-password"));
    let out = run(&mut a.cmd(&["backup", "wrongpw"])).expect(1);
    assert!(out.stderr.contains("Access denied"), "{}", out.stderr);
    assert!(leftovers("wrongpw").is_empty(), "{:?}", leftovers("wrongpw"));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.sb.join("backups/wrongpw/.last-report.json")).unwrap()).unwrap();
    assert_eq!(report["ok"], false);
    assert!(report["errors"][0].as_str().unwrap().starts_with("dump: "), "{report}");

    // Hostile names never reach the file system.
    for bad in ["../x", "a b", "", ".env", "-rf"] {
        let out =
            run(cmd(&bin("backup-runner")).args(["apps", "-c"]).arg(&a.conf).args(["backup", "--", bad])).expect(2);
        assert!(out.stderr.contains("not a plain app name"), "{bad}: {}", out.stderr);
    }
    // An app folder that does not exist.
    let out = run(&mut a.cmd(&["backup", "ghost"])).expect(2);
    assert!(out.stderr.contains("no such app folder"), "{}", out.stderr);

    // The media server refuses (403): exit 1, the dump is kept, the refusal reported.
    let root = a.app("shop", &env);
    std::fs::create_dir_all(root.join("storage/app/public")).unwrap();
    std::fs::write(root.join("storage/app/public/x.txt"), b"x").unwrap();
    a.http.answer(403, "text/plain", "forbidden");
    let out = run(&mut a.cmd(&["backup", "shop"])).expect(1);
    assert!(out.stderr.contains("HTTP 403") && out.stderr.contains("not retried"), "{}", out.stderr);
    assert_eq!(a.dumps("shop").len(), 1);
    // A server error is retried (ATTEMPTS 2), then fails.
    a.http.answer(503, "text/plain", "busy");
    let before = a.http.seen().iter().filter(|r| r.method == "POST").count();
    let out = run(&mut a.cmd(&["backup", "shop"])).expect(1);
    assert!(out.stderr.contains("failed after 2 attempts: HTTP 503"), "{}", out.stderr);
    assert_eq!(a.http.seen().iter().filter(|r| r.method == "POST").count(), before + 2);
    assert!(!leftovers("shop").iter().any(|n| n.contains("tmp") || n.contains("partial")), "{:?}", leftovers("shop"));

    my_admin(&s, &format!("DROP USER '{user}'@'%'; DROP DATABASE {db}"));
}

#[test]
fn apps_backup_synced_encrypted_to_a_folder_decrypts_and_is_not_sent_twice() {
    let s = Servers::get();
    let a0 = Sandbox::new();
    let key = a0.join("key");
    run(cmd(&bin("encryption")).arg("--generate-key").arg(&key)).expect(0);
    let store = a0.join("store");
    let a = Apps::new(serde_json::json!({
        "SYNC": {"DESTINATION": "local", "PATH": store, "PREFIX": "fleet", "KEY_FILE": key},
        "MEDIA": {"DESTINATION": "sync"},
    }));
    let db = make_mysql_db(&s);
    let (user, pw) = mysql_app_user(&s, &db);
    let root = a.app("shop", &mysql_env(&s, &db, &user, &pw));
    std::fs::create_dir_all(root.join("storage/app/public")).unwrap();
    std::fs::write(root.join("storage/app/public/logo.svg"), b"<svg/>").unwrap();
    run(&mut a.cmd(&["backup", "shop"])).expect(0);
    let dump = a.dumps("shop").pop().unwrap();
    let name = dump.file_name().unwrap().to_string_lossy().into_owned();
    let stored = store.join("fleet/shop");
    assert!(
        stored.join(format!("{name}.enc")).is_file(),
        "{:?}",
        std::fs::read_dir(&stored).unwrap().collect::<Vec<_>>()
    );
    assert!(!stored.join(&name).exists(), "a plain copy left the host");
    assert!(std::fs::read_dir(stored.join("media")).unwrap().count() >= 2, "the media archive and its manifest");
    // Decrypted by the encryption stage: the dump, byte for byte.
    let out = a0.join("out");
    std::fs::create_dir_all(&out).unwrap();
    run(cmd(&bin("encryption"))
        .arg("-d")
        .arg("--KEY_FILE")
        .arg(&key)
        .arg("--OBJECTIVES")
        .arg(stored.join(format!("{name}.enc")))
        .arg("--DESTINATION")
        .arg(&out))
    .expect(0);
    assert_eq!(std::fs::read(out.join(&name)).unwrap(), std::fs::read(&dump).unwrap());
    // The next night sends only the new dump.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = run(&mut a.cmd(&["backup", "shop"])).expect(0);
    assert!(o.stdout.contains("2 file(s) synced, 2 already stored"), "{}", o.stdout);
    my_admin(&s, &format!("DROP USER '{user}'@'%'; DROP DATABASE {db}"));
}

#[test]
fn apps_backup_killed_mid_upload_blocks_nothing_and_a_second_one_waits_its_turn() {
    let s = Servers::get();
    let a = Apps::new(serde_json::json!({
        "NOTIFY": {"ON_FAILURE": "echo \"$NCB_RUN_STATUS $NCB_RUN_ID\" > \"$(dirname \"$NCB_REPORT\")/../notified\""},
    }));
    let db = make_mysql_db(&s);
    let (user, pw) = mysql_app_user(&s, &db);
    let root = a.app("shop", &mysql_env(&s, &db, &user, &pw));
    std::fs::create_dir_all(root.join("storage/app/public")).unwrap();
    std::fs::write(root.join("storage/app/public/x.bin"), nc_backup_e2e::pseudo_random(1 << 20, 3)).unwrap();
    a.http.answer(HANG, "application/json", "");
    let mut first = a
        .cmd(&["backup", "shop"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        nc_backup_e2e::wait_for(std::time::Duration::from_secs(30), || a
            .http
            .seen()
            .iter()
            .any(|r| r.method == "POST")),
        "the media POST never came"
    );
    // While it hangs in the upload, a second backup of the same app is refused.
    let out = run(&mut a.cmd(&["backup", "shop"])).expect(1);
    assert!(out.stderr.contains("another backup of this app is running"), "{}", out.stderr);
    // Killed there: the dump it placed is whole, its scratch space is swept by the next run,
    // and the lock died with it.
    nc_backup_e2e::signal(first.id(), "KILL");
    first.wait().unwrap();
    let dumps = a.dumps("shop");
    assert_eq!(dumps.len(), 1);
    assert!(Command::new("gzip").arg("-t").arg(&dumps[0]).status().unwrap().success());
    assert!(a.sb.join("backups/.work/shop").exists(), "the killed run's scratch space");
    a.http.answer(200, "application/json", "");
    let out = run(&mut a.cmd(&["backup", "shop"])).expect(0);
    assert!(out.stdout.contains("shop: ok"), "{}", out.stdout);
    assert!(!a.sb.join("backups/.work/shop").exists(), "scratch space left after a run");
    assert_eq!(a.dumps("shop").len(), 2);
    // A failure notifies (NOTIFY as for a run), with the app as the run id.
    a.http.answer(500, "text/plain", "down");
    run(&mut a.cmd(&["backup", "shop"])).expect(1);
    let notified = std::fs::read_to_string(a.sb.join("backups/notified")).unwrap();
    assert_eq!(notified.trim(), "failed shop");
    my_admin(&s, &format!("DROP USER '{user}'@'%'; DROP DATABASE {db}"));
}

#[test]
fn apps_config_problems_are_named_by_key_path() {
    let a = Apps::new(
        serde_json::json!({"KEEP_LOCAL": 0, "SYNC": {"DESTINATION": "tape"}, "APPS": {"shop": {"MEDIA_PATHS": ["/etc"]}}}),
    );
    let out = run(&mut a.cmd(&["list"])).expect(2);
    for want in [
        "KEEP_LOCAL: must be a whole number",
        "SYNC.DESTINATION: must be one of",
        "APPS.shop.MEDIA_PATHS: '/etc' must be a folder inside",
    ] {
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
    }
    assert!(out.stderr.contains("apps.json"), "{}", out.stderr);
}
