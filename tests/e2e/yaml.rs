//! seeds/000's config.yaml, run as it is (paths and hosts changed): a project whose files are
//! read over SSH (the test sshd, a throwaway user) and whose PostgreSQL database is dumped
//! inside a podman container, uploaded to Garage (S3) and to an rclone remote (its ONEDRIVE,
//! an SFTP remote here), credentials from the `.env` beside it; restored and compared.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use nc_backup_e2e::{Sandbox, Servers, aws, bin, cmd, run, unique};

use crate::db::{make_mysql_db, make_pg_db, my_admin, mysql_restore_matches, pg_admin, pg_restore_matches};

const SSH_USER: &str = "ncbsshfiles";
const CRON_USER: &str = "ncbyamlcron";

pub(crate) fn ensure_user(name: &str, shell: &str) {
    if Command::new("id").arg(name).output().unwrap().status.code() != Some(0) {
        assert!(Command::new("useradd").args(["-M", "-s", shell, name]).status().unwrap().success());
    }
    assert!(Command::new("usermod").args(["-p", "*", name]).status().unwrap().success());
}

fn private(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn runner(conf: &Path, args: &[&str]) -> Command {
    let mut c = cmd(&bin("backup-runner"));
    c.args(args).arg("-c").arg(conf);
    c
}

#[test]
fn seed_000_config_yaml_runs_as_it_is_against_garage_sftp_ssh_and_a_container() {
    let s = Servers::get();
    ensure_user(SSH_USER, "/bin/sh");
    ensure_user(CRON_USER, "/usr/sbin/nologin");
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let site = sb.join("site");
    std::fs::create_dir_all(site.join("img")).unwrap();
    std::fs::write(site.join("index.html"), b"<h1>shop</h1>\n").unwrap();
    std::fs::write(site.join("img/logo.bin"), nc_backup_e2e::pseudo_random(200_000, 11)).unwrap();
    assert!(Command::new("chown").args(["-R", &format!("{SSH_USER}:")]).arg(&site).status().unwrap().success());
    let db = make_pg_db(&s);
    let my_db = make_mysql_db(&s);
    let my_user = unique("ncbyamlmy");
    let my_pw = format!("my-{}", unique("pw"));
    my_admin(
        &s,
        &format!(
            "CREATE USER '{my_user}'@'%' IDENTIFIED BY '{my_pw}';
             GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT ON {my_db}.* TO '{my_user}'@'%';
             GRANT SELECT ON mysql.proc TO '{my_user}'@'%';"
        ),
    );
    let my_pw_file = sb.write("conf/mariadb.pw", format!("{my_pw}\n").as_bytes());
    private(&my_pw_file);
    let prefix = unique("yaml").replace('_', "-");
    let onedrive = sb.join("onedrive");
    let yaml = format!(
        r#"PROJECTS:
  - NAME : shop
    BACKUPS:
      - FILE_BACKUP :
          - FILE_PATH:
              - {site}
          - INTERVALS:
              - "3 2 * * *"
              - "1 4 * * 0"
          - UPLOAD_TO:
              - STORAGE_NAME : S3
                PATH: {prefix}/files
              - STORAGE_NAME : ONEDRIVE
                PATH: {onedrive}
          - SSH:
              USERNAME: {SSH_USER}
              IP_ADDRESS: 127.0.0.1
      - DB_BACKUPS :
          - INTERVALS:
              - "30 1 * * *"
          - UPLOAD_TO:
              - STORAGE_NAME : S3
                PATH: {prefix}/db
          - DB_INFO:
              USERNAME : ncbadmin
              PASSWORD : {pw}
              PORT : {port}
              NAME : {db}
              HOST : 127.0.0.1
          - DOCKER :
              CONTAINER_NAME : {container}
      - DB_BACKUPS :
          - INTERVALS:
              - "45 1 * * *"
          - UPLOAD_TO:
              - STORAGE_NAME : S3
                PATH: {prefix}/mariadb
          - DB_INFO:
              TYPE : mariadb
              USERNAME : {my_user}
              PASSWORD_FILE : {my_pw_file}
              PORT : {my_port}
              NAME : {my_db}
              HOST : 127.0.0.1
"#,
        my_user = my_user,
        my_pw_file = my_pw_file.display(),
        my_port = s.var("NCB_MYSQL_PORT"),
        my_db = my_db,
        site = site.display(),
        onedrive = onedrive.display(),
        pw = s.var("NCB_PG_PASSWORD"),
        port = s.var("NCB_PG_PORT"),
        container = s.var("NCB_CONTAINER"),
    );
    let conf = sb.write("conf/config.yaml", yaml.as_bytes());
    let key = s.var("NCB_SSH_KEY");
    let env = format!(
        "# storage credentials, as seeds/000 keeps them\nS3_BUCKET_NAME={}\nS3_ENDPOINT_URL={}\nAWS_REGION={}\nAWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\nAWS_EC2_METADATA_DISABLED=true\n\
         ONEDRIVE_REMOTE=:sftp,host=127.0.0.1,port={},user=root,key_file={key}\nSSH_PORT={}\nSSH_KEY={key}\nSSH_KNOWN_HOSTS={}\n\
         CONTAINER_CLI=podman\nNC_BACKUP_WORK_FOLDER={}\nNC_BACKUP_LOG_FOLDER={}\n",
        s.var("NCB_S3_BUCKET"),
        s.var("NCB_S3_ENDPOINT"),
        s.var("NCB_S3_REGION"),
        s.var("NCB_S3_ACCESS_KEY"),
        s.var("NCB_S3_SECRET_KEY"),
        s.var("NCB_SSH_PORT"),
        s.var("NCB_SSH_PORT"),
        sb.join("known_hosts").display(),
        sb.join("work").display(),
        sb.join("log").display(),
    );
    let dotenv = sb.write("conf/.env", env.as_bytes());

    // A .env others can read is refused.
    std::fs::set_permissions(&dotenv, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&mut runner(&conf, &["--check", "--job", "shop/1"])).expect(2);
    assert!(o.stderr.contains(".env") && o.stderr.contains("chmod 600"), "{}", o.stderr);
    private(&dotenv);

    // Several jobs: --job chooses; convert shows them, the password masked.
    let o = run(&mut runner(&conf, &["--check"])).expect(2);
    assert!(o.stderr.contains("holds 3 jobs") && o.stderr.contains("shop/1, shop/2, shop/3"), "{}", o.stderr);
    let converted = run(&mut runner(&conf, &["convert"])).expect(0).stdout;
    assert!(converted.contains("// job shop/1: runs at 3 2 * * *, 1 4 * * 0"), "{converted}");
    assert!(converted.contains("\"NAME\": \"pg-dump\"") && converted.contains("\"DOCKER_CONTAINER\""), "{converted}");
    assert!(!converted.contains(&s.var("NCB_PG_PASSWORD")), "convert printed the password");
    run(&mut runner(&conf, &["--check", "--job", "shop/1"])).expect(0);

    // The file backup over SSH, to Garage and the SFTP remote; restored from Garage.
    let o = crate::db::watch_argv(&s.var("NCB_PG_PASSWORD"), || run(&mut runner(&conf, &["-r", "--job", "shop/1"])));
    let o = o.expect(0);
    let _ = o;
    let keys = aws(&s, &["s3", "ls", "--recursive", &format!("s3://{}/{prefix}/files/", s.var("NCB_S3_BUCKET"))]);
    assert!(keys.contains("RUN-MANIFEST.json"), "{keys}");
    assert!(std::fs::read_dir(&onedrive).unwrap().count() == 1, "one run on the rclone remote");
    let back = sb.join("restored-files");
    run(&mut runner(&conf, &["restore", "--job", "shop/1", "--to", back.to_str().unwrap()])).expect(0);
    let got = back.join(site.strip_prefix("/").unwrap());
    assert!(Command::new("diff").arg("-r").arg(&site).arg(&got).status().unwrap().success());

    // The database, dumped inside the container (password on its stdin, never argv).
    let o = crate::db::watch_argv(&s.var("NCB_PG_PASSWORD"), || run(&mut runner(&conf, &["-r", "--job", "shop/2"])));
    o.expect(0);
    let dback = sb.join("restored-db");
    run(&mut runner(&conf, &["restore", "--job", "shop/2", "--to", dback.to_str().unwrap()])).expect(0);
    let dumps: Vec<_> = walk(&dback).into_iter().filter(|p| p.to_string_lossy().ends_with(".dump")).collect();
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    pg_restore_matches(&s, &db, &dumps[0]);

    // MariaDB (TYPE mariadb), its password from a 0600 PASSWORD_FILE.
    run(&mut runner(&conf, &["-r", "--job", "shop/3"])).expect(0);
    let mback = sb.join("restored-mariadb");
    run(&mut runner(&conf, &["restore", "--job", "shop/3", "--to", mback.to_str().unwrap()])).expect(0);
    // Restore gives the dump back decompressed (`.sql`).
    let mdumps: Vec<_> = walk(&mback).into_iter().filter(|p| p.to_string_lossy().ends_with(".sql")).collect();
    assert_eq!(mdumps.len(), 1, "{mdumps:?}");
    let gz = sb.join("mariadb.sql.gz");
    let out = Command::new("gzip").arg("-c").arg(&mdumps[0]).output().unwrap();
    std::fs::write(&gz, out.stdout).unwrap();
    mysql_restore_matches(&s, &my_db, &gz, true);

    // schedule sync: one line per job and interval, tagged; idempotent; a removed interval goes.
    let sched = |extra: &[&str]| run(&mut runner(&conf, &[&["schedule", "sync", "--user", CRON_USER], extra].concat()));
    let o = sched(&[]).expect(0);
    assert!(o.stdout.contains("4 added, 0 removed"), "{}", o.stdout);
    assert!(sched(&[]).expect(0).stdout.contains("already in line"));
    let tab = String::from_utf8_lossy(&Command::new("crontab").args(["-u", CRON_USER, "-l"]).output().unwrap().stdout)
        .into_owned();
    assert!(
        tab.lines().any(|l| l.starts_with("30 1 * * * ") && l.contains("--job shop/2 # nc-backup job shop/2: ")),
        "{tab}"
    );
    std::fs::write(&conf, yaml.replace("              - \"1 4 * * 0\"\n", "")).unwrap();
    let o = sched(&["--dry-run"]).expect(0);
    assert!(o.stdout.contains("dry run: 0 to add, 1 to remove"), "{}", o.stdout);
    assert!(sched(&[]).expect(0).stdout.contains("0 added, 1 removed"));
    assert!(
        run(&mut runner(&conf, &["schedule", "remove", "--user", CRON_USER])).expect(0).stdout.contains("3 removed")
    );
    pg_admin(&s, "postgres", &format!("DROP DATABASE {db} WITH (FORCE);"));
    my_admin(&s, &format!("DROP USER '{my_user}'@'%'; DROP DATABASE {my_db}"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn malformed_yaml_is_refused_with_the_key_path_and_line() {
    let sb = Sandbox::new();
    let cases: [(&str, &str); 6] = [
        ("PROJECTS:\n\t- NAME: x\n", "line 2"),
        ("PROJECTS:\n  - NAME: x\n   BACKUPS: []\n", "line 3"),
        (
            "PROJECTS:\n  - NAME: shop\n    BACKUPS:\n      - FILE_BACKUP:\n          FILE_PATH: /srv\n          INTERVALS: [\"* * *\"]\n          UPLOAD_TO: [{STORAGE_NAME: LOCAL, PATH: /x}]\n",
            "PROJECTS[0].BACKUPS[0].FILE_BACKUP.INTERVALS[0] (line 6)",
        ),
        (
            "PROJECTS:\n  - NAME: shop\n    BACKUPS:\n      - FILE_BACKUP:\n          FILE_PATH: /srv\n          INTERVALS: [\"@daily\"]\n          COLOUR: blue\n          UPLOAD_TO: [{STORAGE_NAME: LOCAL, PATH: /x}]\n",
            "PROJECTS[0].BACKUPS[0].FILE_BACKUP.COLOUR (line 7): unknown key",
        ),
        (
            "PROJECTS:\n  - NAME: shop\n    BACKUPS:\n      - DB_BACKUPS:\n          INTERVALS: [\"@daily\"]\n          UPLOAD_TO: [{STORAGE_NAME: LOCAL, PATH: /x}]\n          DB_INFO:\n            NAME: shop\n            PORT: [5432]\n",
            "PROJECTS[0].BACKUPS[0].DB_BACKUPS.DB_INFO.PORT (line 9): must be a non-empty string",
        ),
        (
            "PROJECTS:\n  - NAME: shop\n    BACKUPS:\n      - FILE_BACKUP:\n          FILE_PATH: /srv\n          INTERVALS: [\"@daily\"]\n          UPLOAD_TO: [{STORAGE_NAME: DROPBOX, PATH: /x}]\n",
            "'DROPBOX' is not S3, ONEDRIVE or LOCAL",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let conf = sb.write(&format!("c{i}/config.yaml"), text.as_bytes());
        let o = run(&mut runner(&conf, &["--check"])).expect(2);
        assert!(o.stderr.contains(want), "case {i}: want {want:?} in:\n{}", o.stderr);
    }
}

/// C3's config.yaml and command line (seeds/001), on moto (it keeps storage classes).
#[test]
fn c3_config_yaml_uploads_each_file_once_with_caps_and_its_class_and_downloads() {
    let s = Servers::get();
    // Its own crontab user: the seeds/000 test edits CRON_USER's at the same time.
    const C3_CRON_USER: &str = "ncbc3cron";
    ensure_user(C3_CRON_USER, "/usr/sbin/nologin");
    let sb = Sandbox::new();
    let endpoint = s.var("NCB_MOTO_ENDPOINT");
    let bucket = unique("ncbc3").replace('_', "-");
    let moto = crate::classes::Moto { endpoint: endpoint.clone(), bucket: bucket.clone() };
    let aws_moto = |args: &[&str]| moto.aws(args);
    aws_moto(&["s3api", "create-bucket", "--bucket", &bucket]);
    sb.write("c3/photos/a.jpg", b"jpeg a");
    sb.write("c3/photos/b.png", &nc_backup_e2e::pseudo_random(100_000, 3));
    sb.write("c3/photos/notes.txt", b"not a photo");
    sb.write("c3/photos/trip/d.JPG", b"jpeg d");
    // C3's sample config, with the bucket changed.
    let conf = sb.write(
        "c3/config.yaml",
        format!(
            "input:\n  path: \"./photos\"\n  file-extensions:\n    - '.jpg'\n    - '.png'\n\ntarget:\n  max-uploaded-file: 2\n  max-download-file:\n  provider:\n    aws:\n      region: \"us-east-1\"\n      bucket-name: \"{bucket}\"\n      storage-policy: \"STANDARD_IA\"\n\njob:\n  job-description: \"test backup!\"\n  runtime:\n    at:\n      - second: 1\n      - minute: 10\n      - hour: 2\n"
        )
        .as_bytes(),
    );
    let with_moto = |c: &mut Command| {
        c.env("AWS_ACCESS_KEY_ID", "moto")
            .env("AWS_SECRET_ACCESS_KEY", "moto")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("NC_BACKUP_WORK_FOLDER", sb.join("work"))
            .env("NC_BACKUP_LOG_FOLDER", sb.join("log"));
    };
    let keys = || {
        let out = aws_moto(&[
            "s3api",
            "list-objects-v2",
            "--bucket",
            &bucket,
            "--query",
            "Contents[].[Key,StorageClass]",
            "--output",
            "text",
        ]);
        let mut v: Vec<String> = out.lines().filter(|l| *l != "None").map(|l| l.replace('\t', " ")).collect();
        v.sort();
        v
    };
    // backup-runner -r -c config.yaml: the upload; the cap sends 2 now (name order), 1 waits.
    let mut c = runner(&conf, &["-r", "--json"]);
    with_moto(&mut c);
    let o = run(&mut c).expect(0);
    assert!(o.stdout.contains("\"waiting\": 1") || o.stdout.contains("\"waiting\":1"), "{}", o.stdout);
    assert_eq!(keys(), ["a.jpg STANDARD_IA", "b.png STANDARD_IA"]);
    // The next run sends the one that waited and nothing twice; notes.txt never.
    let mut c = runner(&conf, &["-r"]);
    with_moto(&mut c);
    run(&mut c).expect(0);
    assert_eq!(keys(), ["a.jpg STANDARD_IA", "b.png STANDARD_IA", "trip/d.JPG STANDARD_IA"]);
    let mut c = cmd(&bin("backup-runner"));
    c.args(["c3", "--run", "upload", "-f"]).arg(&conf);
    with_moto(&mut c);
    let o = run(&mut c).expect(0);
    assert!(o.stdout.contains("\"stored\": 0") && o.stdout.contains("\"skipped\": 3"), "{}", o.stdout);

    // -d: download into input.path; the photos come back byte for byte.
    std::fs::remove_dir_all(sb.join("c3/photos")).unwrap();
    let mut c = cmd(&bin("backup-runner"));
    c.args(["c3", "--run", "download", "-f"]).arg(&conf);
    with_moto(&mut c);
    run(&mut c).expect(0);
    assert_eq!(std::fs::read(sb.join("c3/photos/b.png")).unwrap(), nc_backup_e2e::pseudo_random(100_000, 3));
    assert_eq!(std::fs::read(sb.join("c3/photos/trip/d.JPG")).unwrap(), b"jpeg d");
    assert!(!sb.join("c3/photos/notes.txt").exists());

    // -n and -d: the jobs in the crontab at job.runtime.at, once each.
    for _ in 0..2 {
        let mut c = cmd(&bin("backup-runner"));
        c.args(["c3", "-n", "-d", "--user", C3_CRON_USER, "-f"]).arg(&conf);
        run(&mut c).expect(0);
    }
    let tab =
        String::from_utf8_lossy(&Command::new("crontab").args(["-u", C3_CRON_USER, "-l"]).output().unwrap().stdout)
            .into_owned();
    let conf_shown = conf.canonicalize().unwrap().display().to_string();
    let ours: Vec<&str> = tab.lines().filter(|l| l.contains("# nc-backup c3 ") && l.ends_with(&conf_shown)).collect();
    assert_eq!(ours.len(), 2, "{tab}");
    assert!(ours.iter().all(|l| l.starts_with("10 2 * * * ")), "{tab}");
    assert!(ours.iter().any(|l| l.contains("c3 --run download -f ")), "{tab}");

    // A policy C3 does not know, and a bad cap: exit 2 naming the key and line.
    let bad = sb.write("bad/config.yaml", b"input:\n  path: ./p\ntarget:\n  max-uploaded-file: -3\n  provider:\n    aws:\n      region: us-east-1\n      bucket-name: b\n      storage-policy: standard\njob:\n  runtime:\n    at:\n      - hour: 2\n");
    let o = run(&mut runner(&bad, &["--check"])).expect(2);
    assert!(o.stderr.contains("target.max-uploaded-file (line 4)"), "{}", o.stderr);
    assert!(o.stderr.contains("target.provider.aws.storage-policy (line 9)"), "{}", o.stderr);
}
