//! object-mirror against the real parts: the application's tables in PostgreSQL (the shared
//! server) and in a private MariaDB (stopped mid-way), Garage as the application's object
//! storage with presigned URLs (`aws s3 presign`) as SignedDownloadUrl, and as a destination.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nc_backup_e2e::{Out, Sandbox, Servers, aws, bin, cmd, pseudo_random, run, unique};
use sha2::Digest;

use crate::db::pg_admin;
use crate::dbfaults::PrivateMariaDb;

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn gunzip(p: &Path) -> Vec<u8> {
    let out = Command::new("gzip").arg("-dc").arg(p).output().unwrap();
    assert!(out.status.success(), "gzip -dc {}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The application's bucket in Garage, with objects put and presigned by the aws CLI.
struct AppBucket<'a> {
    s: &'a Servers,
    name: String,
    sb: &'a Sandbox,
}

impl<'a> AppBucket<'a> {
    fn new(s: &'a Servers, sb: &'a Sandbox) -> Self {
        let name = unique("ncbapp").replace('_', "-");
        aws(s, &["s3", "mb", &format!("s3://{name}")]);
        AppBucket { s, name, sb }
    }

    fn put(&self, key: &str, body: &[u8]) {
        let f = self.sb.write(&format!("upload/{}", sha(key.as_bytes())), body);
        aws(self.s, &["s3", "cp", f.to_str().unwrap(), &format!("s3://{}/{key}", self.name)]);
    }

    fn presign(&self, key: &str, secs: u32) -> String {
        aws(self.s, &["s3", "presign", &format!("s3://{}/{key}", self.name), "--expires-in", &secs.to_string()])
            .trim()
            .to_owned()
    }
}

fn s3_env(c: &mut Command, s: &Servers) {
    c.env("AWS_ACCESS_KEY_ID", s.var("NCB_S3_ACCESS_KEY"))
        .env("AWS_SECRET_ACCESS_KEY", s.var("NCB_S3_SECRET_KEY"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

/// A PostgreSQL database holding the two tables, made by `--init-schema`, and a restricted
/// role that may only read them (docs/MIRROR.md's GRANTs).
struct PgApp {
    db: String,
    role: String,
    pw_file: PathBuf,
}

fn pg_app(s: &Servers, sb: &Sandbox) -> PgApp {
    let db = unique("ncbmir");
    pg_admin(s, "postgres", &format!("CREATE DATABASE {db};"));
    let admin_pw = sb.write("admin.pw", format!("{}\n", s.var("NCB_PG_PASSWORD")).as_bytes());
    std::fs::set_permissions(&admin_pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    run(cmd(&bin("object-mirror"))
        .arg("--init-schema")
        .args(["--DATABASE_URL", &format!("postgres://ncbadmin@127.0.0.1:{}/{db}", s.var("NCB_PG_PORT"))])
        .arg("--DATABASE_PASSWORD_FILE")
        .arg(&admin_pw)
        .args(["--SOURCE_BUCKET", "x", "--DESTINATION"])
        .arg(sb.join("unused"))
        .arg("--STATE_FILE")
        .arg(sb.join("unused.json")))
    .expect(0);
    let role = unique("ncbmirror");
    let pw = format!("ro-{}", unique("p"));
    pg_admin(
        s,
        &db,
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{pw}';
             GRANT SELECT ON \"ObjectStorageFiles\", \"ObjectStorageDeleteLog\" TO {role};"
        ),
    );
    let pw_file = sb.write("mirror.pw", format!("{pw}\n").as_bytes());
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    PgApp { db, role, pw_file }
}

#[allow(clippy::too_many_arguments)]
fn pg_insert(
    s: &Servers,
    app: &PgApp,
    name: &str,
    path: &str,
    storage: &str,
    version: i64,
    hash: &str,
    url: &str,
) -> i64 {
    let q = |v: &str| v.replace('\'', "''");
    pg_admin(
        s,
        &app.db,
        &format!(
            "INSERT INTO \"ObjectStorageFiles\" (\"Name\", \"Path\", \"Storage\", \"Version\", \"Hash\", \"SignedDownloadUrl\")
             VALUES ('{}', '{}', '{}', {version}, '{hash}', '{}') RETURNING \"Id\";",
            q(name),
            q(path),
            q(storage),
            q(url)
        ),
    )
    .trim()
    .parse()
    .unwrap()
}

struct Mirror<'a> {
    s: &'a Servers,
    args: Vec<String>,
    state: PathBuf,
}

impl Mirror<'_> {
    fn pass(&self) -> Out {
        let mut c = cmd(&bin("object-mirror"));
        c.args(&self.args);
        s3_env(&mut c, self.s);
        run(&mut c)
    }

    fn report(&self) -> serde_json::Value {
        let mut p = self.state.clone().into_os_string();
        p.push(".report.json");
        serde_json::from_slice(&std::fs::read(PathBuf::from(p)).unwrap()).unwrap()
    }
}

#[test]
fn mirror_garage_objects_from_postgres_records_to_a_folder() {
    let s = Servers::get();
    let sb = Sandbox::new();
    let bucket = AppBucket::new(&s, &sb);
    let app = pg_app(&s, &sb);
    let dest = sb.join("backups");
    let state = sb.join("state/mirror.json");
    let m = Mirror {
        s: &s,
        args: vec![
            "--DATABASE_URL".into(),
            format!("postgres://{}@127.0.0.1:{}/{}", app.role, s.var("NCB_PG_PORT"), app.db),
            "--DATABASE_PASSWORD_FILE".into(),
            app.pw_file.display().to_string(),
            "--SOURCE_BUCKET".into(),
            bucket.name.clone(),
            "--SOURCE_STORAGE".into(),
            "s3".into(),
            "--ENDPOINT_URL".into(),
            s.var("NCB_S3_ENDPOINT"),
            "--REGION".into(),
            s.var("NCB_S3_REGION"),
            "--DESTINATION".into(),
            dest.display().to_string(),
            "--STATE_FILE".into(),
            state.display().to_string(),
            "--DELETE_AFTER".into(),
            "3s".into(),
        ],
        state: state.clone(),
    };

    // The seed's example, through its presigned URL; one read straight from the bucket; a name
    // without extension, dots in folders, non-ASCII.
    let thumb = pseudo_random(200_000, 1);
    bucket.put("cars/id-1/thumbnail.png", &thumb);
    pg_insert(
        &s,
        &app,
        "thumbnail.png",
        "/cars/id-1/",
        "cdn",
        1,
        &sha(&thumb),
        &bucket.presign("cars/id-1/thumbnail.png", 600),
    );
    let direct = b"direct from the bucket".to_vec();
    bucket.put("docs/README", &direct);
    pg_insert(&s, &app, "README", "docs", "s3", 1, &sha(&direct), "");
    let umlaut = "Grüße aus Köln".as_bytes().to_vec();
    bucket.put("fotos/v1.2/Ölbild.tar.gz", &umlaut);
    pg_insert(&s, &app, "Ölbild.tar.gz", "fotos/v1.2/", "s3", 1, &sha(&umlaut), "");
    let out = m.pass();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let b = dest.join(&bucket.name);
    assert_eq!(gunzip(&b.join("cars/id-1/thumbnail/v1.gzip")), thumb);
    assert_eq!(gunzip(&b.join("docs/README/v1.gzip")), direct);
    assert_eq!(gunzip(&b.join("fotos/v1.2/Ölbild.tar/v1.gzip")), umlaut);
    assert_eq!(m.report()["new"], 3);
    // The state is private and the password never in argv or the state.
    let st = std::fs::read_to_string(&state).unwrap();
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!st.contains(std::fs::read_to_string(&app.pw_file).unwrap().trim()));

    // Again: nothing to do.
    m.pass().expect(0);
    assert_eq!(m.report()["new"], 0);
    assert_eq!(m.report()["records_read"], 0);

    // A hash that does not match, and an expired signed URL: exit 1, reported, no copy; both
    // retried, and stored once the records are right.
    let other = pseudo_random(5000, 2);
    bucket.put("cars/id-2/photo.jpg", &other);
    let bad = pg_insert(
        &s,
        &app,
        "photo.jpg",
        "cars/id-2",
        "cdn",
        1,
        &"0".repeat(64),
        &bucket.presign("cars/id-2/photo.jpg", 600),
    );
    bucket.put("cars/id-3/photo.jpg", &other);
    let expired = pg_insert(
        &s,
        &app,
        "photo.jpg",
        "cars/id-3",
        "cdn",
        1,
        &sha(&other),
        &bucket.presign("cars/id-3/photo.jpg", 1),
    );
    std::thread::sleep(Duration::from_millis(2100));
    let out = m.pass().expect(1);
    assert!(out.stderr.contains("2 record(s) failed"), "{}", out.stderr);
    let failed = m.report()["failed"].as_array().unwrap().clone();
    let why = |id: i64| failed.iter().find(|f| f["id"] == id).unwrap()["error"].as_str().unwrap().to_owned();
    assert!(why(bad).contains("SHA-256 mismatch"), "{failed:?}");
    assert!(why(expired).contains("expired or refused signed URL"), "{failed:?}");
    assert!(!b.join("cars/id-2").exists() && !b.join("cars/id-3").exists());
    pg_admin(
        &s,
        &app.db,
        &format!("UPDATE \"ObjectStorageFiles\" SET \"Hash\" = '{}' WHERE \"Id\" = {bad};", sha(&other)),
    );
    pg_admin(
        &s,
        &app.db,
        &format!(
            "UPDATE \"ObjectStorageFiles\" SET \"SignedDownloadUrl\" = '{}' WHERE \"Id\" = {expired};",
            bucket.presign("cars/id-3/photo.jpg", 600)
        ),
    );
    m.pass().expect(0);
    assert_eq!(gunzip(&b.join("cars/id-2/photo/v1.gzip")), other);
    assert_eq!(gunzip(&b.join("cars/id-3/photo/v1.gzip")), other);

    // A new version: stored; the old one stays through the grace period, then goes.
    let thumb2 = pseudo_random(100_000, 9);
    bucket.put("cars/id-1/thumbnail.png", &thumb2);
    pg_insert(&s, &app, "thumbnail.png", "/cars/id-1/", "s3", 2, &sha(&thumb2), "");
    m.pass().expect(0);
    assert_eq!(m.report()["updated"], 1);
    assert_eq!(gunzip(&b.join("cars/id-1/thumbnail/v2.gzip")), thumb2);
    assert!(b.join("cars/id-1/thumbnail/v1.gzip").exists(), "v1 removed before its grace period");
    std::thread::sleep(Duration::from_millis(3100));
    m.pass().expect(0);
    assert_eq!(m.report()["versions_removed"], 1);
    assert!(!b.join("cars/id-1/thumbnail/v1.gzip").exists());
    assert!(b.join("cars/id-1/thumbnail/v2.gzip").exists());

    // A delete: the copies stay through the grace period, then go; a version uploaded after
    // the delete was first seen stays.
    let readme_id =
        pg_admin(&s, &app.db, "SELECT \"Id\" FROM \"ObjectStorageFiles\" WHERE \"Name\" = 'README';").trim().to_owned();
    pg_admin(&s, &app.db, &format!("INSERT INTO \"ObjectStorageDeleteLog\" (\"FileId\") VALUES ({readme_id});"));
    let photo_id = pg_admin(&s, &app.db, &format!("SELECT {bad};")).trim().to_owned();
    pg_admin(&s, &app.db, &format!("INSERT INTO \"ObjectStorageDeleteLog\" (\"FileId\") VALUES ({photo_id});"));
    m.pass().expect(0);
    assert_eq!(m.report()["pending_deletes"], 2);
    assert!(b.join("docs/README/v1.gzip").exists());
    let again = b"photo uploaded again".to_vec();
    bucket.put("cars/id-2/photo.jpg", &again);
    pg_insert(&s, &app, "photo.jpg", "cars/id-2", "s3", 2, &sha(&again), "");
    m.pass().expect(0);
    std::thread::sleep(Duration::from_millis(3100));
    m.pass().expect(0);
    assert_eq!(m.report()["deleted"], 2, "{}", m.report());
    assert!(!b.join("docs/README").exists(), "the deleted file's folder stays");
    assert!(!b.join("cars/id-2/photo/v1.gzip").exists());
    assert_eq!(gunzip(&b.join("cars/id-2/photo/v2.gzip")), again, "a version uploaded after the delete was removed");

    // Hostile records: refused, reported, nothing written outside DESTINATION.
    for (name, path) in [("passwd", "../../etc"), ("passwd", "//etc"), ("x", &"a/".repeat(600) as &str), ("..", "a")] {
        pg_insert(&s, &app, name, path, "s3", 1, &sha(b"x"), "");
    }
    let out = m.pass().expect(1);
    assert!(out.stderr.contains("4 record(s) failed"), "{}", out.stderr);
    assert!(
        m.report()["failed"].as_array().unwrap().iter().all(|f| f["error"].as_str().unwrap().starts_with("refused: "))
    );
    assert!(!sb.join("etc").exists() && !Path::new("/etc/passwd/v1.gzip").exists());
    let mut outside = Vec::new();
    for e in std::fs::read_dir(sb.path()).unwrap().flatten() {
        outside.push(e.file_name().to_string_lossy().into_owned());
    }
    outside.sort();
    assert_eq!(outside, ["admin.pw", "backups", "mirror.pw", "state", "upload"], "{outside:?}");
    pg_admin(&s, "postgres", &format!("DROP DATABASE {} WITH (FORCE); DROP ROLE {};", app.db, app.role));
}

#[test]
fn mirror_garage_objects_from_a_mariadb_that_goes_down_to_a_second_bucket_encrypted() {
    let s = Servers::get();
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut my = PrivateMariaDb::install(&sb.join("mariadb"));
    my.sql("CREATE DATABASE app CHARACTER SET utf8mb4");
    let root_pw = sb.write("root.pw", b"\n");
    std::fs::set_permissions(&root_pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bucket = AppBucket::new(&s, &sb);
    let dest_bucket = unique("ncbdest").replace('_', "-");
    aws(&s, &["s3", "mb", &format!("s3://{dest_bucket}")]);
    // --init-schema, then a user that may only read the two tables.
    run(cmd(&bin("object-mirror"))
        .arg("--init-schema")
        .args(["--DATABASE_URL", &format!("mysql://root@127.0.0.1:{}/app", my.port)])
        .args(["--SOURCE_BUCKET", "x", "--DESTINATION"])
        .arg(sb.join("unused"))
        .arg("--STATE_FILE")
        .arg(sb.join("unused.json")))
    .expect(0);
    my.sql(
        "CREATE USER 'mirror'@'%' IDENTIFIED BY 'mirror-pw-7';
         GRANT SELECT ON app.ObjectStorageFiles TO 'mirror'@'%';
         GRANT SELECT ON app.ObjectStorageDeleteLog TO 'mirror'@'%';",
    );
    let pw = sb.write("mirror.pw", b"mirror-pw-7\n");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = sb.join("key");
    run(cmd(&bin("encryption")).arg("--generate-key").arg(&key)).expect(0);
    let state = sb.join("state.json");
    let m = Mirror {
        s: &s,
        args: [
            "--DATABASE_URL",
            &format!("mysql://mirror@127.0.0.1:{}/app", my.port),
            "--DATABASE_PASSWORD_FILE",
            pw.to_str().unwrap(),
            "--SOURCE_BUCKET",
            &bucket.name,
            "--ENDPOINT_URL",
            &s.var("NCB_S3_ENDPOINT"),
            "--REGION",
            &s.var("NCB_S3_REGION"),
            "--DESTINATION",
            "s3",
            "--BUCKET_NAME",
            &dest_bucket,
            "--PREFIX",
            "offsite",
            "--KEY_FILE",
            key.to_str().unwrap(),
            "--STATE_FILE",
            state.to_str().unwrap(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect(),
        state: state.clone(),
    };
    let insert = |name: &str, path: &str, body: &[u8]| {
        bucket.put(&format!("{path}{name}"), body);
        let url = bucket.presign(&format!("{path}{name}"), 600);
        my.sql(&format!(
            "INSERT INTO app.ObjectStorageFiles (Name, Path, Storage, Version, Hash, SignedDownloadUrl) VALUES ('{name}', '{path}', 'cdn', 1, '{}', '{url}')",
            sha(body)
        ));
    };
    let a = pseudo_random(3 << 20, 4);
    insert("big.bin", "uploads/", &a);
    insert("note.txt", "uploads/", b"note\ttab 'quoted' NULL\n");
    m.pass().expect(0);
    // Stored encrypted in the second bucket; decrypted and gunzipped: the objects.
    let listing = aws(&s, &["s3", "ls", "--recursive", &format!("s3://{dest_bucket}/offsite/")]);
    assert!(listing.contains(&format!("offsite/{}/uploads/big/v1.gzip.enc", bucket.name)), "{listing}");
    let fetched = sb.join("fetched");
    std::fs::create_dir_all(&fetched).unwrap();
    let enc = fetched.join("v1.gzip.enc");
    aws(
        &s,
        &[
            "s3",
            "cp",
            &format!("s3://{dest_bucket}/offsite/{}/uploads/big/v1.gzip.enc", bucket.name),
            enc.to_str().unwrap(),
        ],
    );
    let plain = sb.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    run(cmd(&bin("encryption"))
        .args(["-d", "--REQUIRE_MANIFEST", "False", "--KEY_FILE"])
        .arg(&key)
        .arg("--OBJECTIVES")
        .arg(&enc)
        .arg("--DESTINATION")
        .arg(plain.join("v1.gzip")))
    .expect(0);
    assert_eq!(gunzip(&plain.join("v1.gzip")), a);

    // The database goes away: exit 1, the state untouched, nothing stored lost.
    let before = std::fs::read(&state).unwrap();
    insert("later.txt", "uploads/", b"written while the database was down");
    my.stop("TERM");
    let out = m.pass().expect(1);
    assert!(out.stderr.contains(&format!("mysql://mirror@127.0.0.1:{}/app", my.port)), "{}", out.stderr);
    assert_eq!(std::fs::read(&state).unwrap(), before, "a failed pass changed the state");
    assert!(aws(&s, &["s3", "ls", "--recursive", &format!("s3://{dest_bucket}/offsite/")]).contains("big/v1.gzip.enc"));
    my.start();
    m.pass().expect(0);
    assert_eq!(m.report()["new"], 1);
    let mut buf = String::new();
    std::fs::File::open(&state).unwrap().read_to_string(&mut buf).unwrap();
    assert!(!buf.contains("mirror-pw-7"));
}

#[test]
fn mirror_garage_pass_killed_mid_copy_leaves_no_partial_copy_and_the_next_completes_it() {
    let s = Servers::get();
    let sb = Sandbox::new();
    let bucket = AppBucket::new(&s, &sb);
    let app = pg_app(&s, &sb);
    let big = pseudo_random(96 << 20, 5);
    bucket.put("media/huge.mov", &big);
    pg_insert(&s, &app, "huge.mov", "media/", "s3", 1, &sha(&big), "");
    let dest = sb.join("backups");
    let mut c = cmd(&bin("object-mirror"));
    c.args(["--DATABASE_URL", &format!("postgres://{}@127.0.0.1:{}/{}", app.role, s.var("NCB_PG_PORT"), app.db)])
        .arg("--DATABASE_PASSWORD_FILE")
        .arg(&app.pw_file)
        .args(["--SOURCE_BUCKET", &bucket.name, "--SOURCE_STORAGE", "s3"])
        .args(["--ENDPOINT_URL", &s.var("NCB_S3_ENDPOINT"), "--REGION", &s.var("NCB_S3_REGION")])
        .arg("--DESTINATION")
        .arg(&dest)
        .arg("--STATE_FILE")
        .arg(sb.join("state.json"));
    s3_env(&mut c, &s);
    let tmp = dest.join(".object-mirror-tmp");
    let mut child = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let started = nc_backup_e2e::wait_for(Duration::from_secs(60), || {
        std::fs::read_dir(&tmp).is_ok_and(|r| r.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > (1 << 20))))
    });
    assert!(started, "the copy never started");
    nc_backup_e2e::signal(child.id(), "KILL");
    child.wait().unwrap();
    let copy = dest.join(&bucket.name).join("media/huge/v1.gzip");
    assert!(!copy.exists(), "a partial copy is visible");
    let out = run(&mut c).expect(0);
    assert!(out.stderr.is_empty() || !out.stderr.contains("error"), "{}", out.stderr);
    assert_eq!(sha(&gunzip(&copy)), sha(&big));
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "temporaries left");

    // --watch: a record written while it runs is copied at the next poll; SIGTERM ends it
    // between passes, exit 0.
    let mut w = c.arg("--watch").args(["--POLL_INTERVAL", "1s"]).spawn().unwrap();
    let later = b"uploaded while watching".to_vec();
    bucket.put("media/later.txt", &later);
    pg_insert(&s, &app, "later.txt", "media/", "s3", 1, &sha(&later), "");
    let copy2 = dest.join(&bucket.name).join("media/later/v1.gzip");
    assert!(nc_backup_e2e::wait_for(Duration::from_secs(30), || copy2.exists()), "not copied while watching");
    assert_eq!(gunzip(&copy2), later);
    nc_backup_e2e::signal(w.id(), "TERM");
    assert!(w.wait().unwrap().success());
    pg_admin(&s, "postgres", &format!("DROP DATABASE {} WITH (FORCE); DROP ROLE {};", app.db, app.role));
}

#[test]
fn mirror_garage_as_a_conf_json_section_keeps_the_password_out_of_argv() {
    let s = Servers::get();
    let sb = Sandbox::new();
    let bucket = AppBucket::new(&s, &sb);
    let app = pg_app(&s, &sb);
    let body = b"an object mirrored by a conf.json section".to_vec();
    bucket.put("a/b.txt", &body);
    pg_insert(&s, &app, "b.txt", "a/", "s3", 1, &sha(&body), "");
    let pw = std::fs::read_to_string(&app.pw_file).unwrap().trim().to_owned();
    let dest = sb.join("offsite");
    let conf = sb.config(&[(
        "MIRROR",
        serde_json::json!({"ACTION": "execute", "NAME": "object-mirror", "PARAMETERS": {
            "DATABASE_URL": format!("postgres://{}@127.0.0.1:{}/{}", app.role, s.var("NCB_PG_PORT"), app.db),
            "DATABASE_PASSWORD": pw, "SOURCE_BUCKET": bucket.name, "SOURCE_STORAGE": "s3",
            "ENDPOINT_URL": s.var("NCB_S3_ENDPOINT"), "REGION": s.var("NCB_S3_REGION"),
            "DESTINATION": dest, "STATE_FILE": sb.join("state/m.json")}}),
    )]);
    let mut c = cmd(&bin("backup-runner"));
    c.args(["-r", "-c"]).arg(&conf);
    s3_env(&mut c, &s);
    crate::db::watch_argv(&pw, || run(&mut c)).expect(0);
    assert_eq!(gunzip(&dest.join(&bucket.name).join("a/b/v1.gzip")), body);
    pg_admin(&s, "postgres", &format!("DROP DATABASE {} WITH (FORCE); DROP ROLE {};", app.db, app.role));
}
