//! encryption: round trips at the sizes that matter, and the tamper matrix.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nc_backup_e2e::{Out, Sandbox, bin, cmd, run};

const SEG: usize = 1 << 20;

fn data(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 11) as u8
        })
        .collect()
}

fn key(sb: &Sandbox) -> PathBuf {
    let k = sb.join("key");
    if !k.exists() {
        run(cmd(&bin("encryption")).arg("--generate-key").arg(&k)).expect(0);
    }
    k
}

fn encrypt(sb: &Sandbox, input: &Path, dest: &Path, file_size: Option<u32>) -> Out {
    let mut c = cmd(&bin("encryption"));
    c.arg("--KEY_FILE").arg(key(sb)).arg("--OBJECTIVES").arg(input).arg("--DESTINATION").arg(dest);
    if let Some(mb) = file_size {
        c.args(["--FILE_SIZE", &mb.to_string()]);
    }
    run(&mut c)
}

fn decrypt(sb: &Sandbox, prefix: &Path, out: &Path, extra: &[&str]) -> Out {
    run(cmd(&bin("encryption"))
        .arg("-d")
        .arg("--key-file")
        .arg(key(sb))
        .arg("--objectives")
        .arg(prefix)
        .arg("--destination")
        .arg(out)
        .args(extra))
}

#[test]
fn round_trips_at_every_boundary() {
    let sb = Sandbox::new();
    let cases: [(usize, Option<u32>); 8] = [
        (0, None),
        (1, None),
        (SEG - 1, None),
        (SEG, None),
        (SEG + 1, None),
        (SEG, Some(1)),
        (3 * SEG + 5, Some(1)),
        (20 * SEG + 123, Some(2)),
    ];
    for (i, (size, file_size)) in cases.into_iter().enumerate() {
        let plain = data(size, i as u32 + 1);
        let input = sb.write(&format!("in{i}/file{i}.tar.gz"), &plain);
        let dest = sb.join(format!("enc{i}"));
        let report = encrypt(&sb, &input, &dest, file_size).expect(0).json();
        let arts = report["artifacts"].as_array().unwrap();
        let manifest_path = arts.last().unwrap()["path"].as_str().unwrap();
        assert!(manifest_path.ends_with(".enc.manifest.json"), "{manifest_path}");
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest_path).unwrap()).unwrap();
        assert_eq!(m["plaintext_size"], size);
        let names: Vec<String> =
            m["parts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "part names do not sort in order");
        let expected_parts =
            file_size.map_or(1, |mb| (96 + size + 16 * size.div_ceil(SEG).max(1)).div_ceil(mb as usize * SEG));
        assert_eq!(names.len(), expected_parts, "case {i}");
        if file_size.is_none() {
            assert_eq!(names, [format!("file{i}.tar.gz.enc")]);
        }
        for a in arts {
            let mode = std::fs::metadata(a["path"].as_str().unwrap()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{a}");
        }
        let out = sb.join(format!("out{i}"));
        decrypt(&sb, &dest.join(format!("file{i}")), &out, &[]).expect(0);
        assert!(std::fs::read(&out).unwrap() == plain, "case {i}: bytes differ");
    }
}

/// Four parts of one file, and a second encryption of the same file (same key, new salt).
fn four_parts(sb: &Sandbox) -> (PathBuf, Vec<PathBuf>) {
    let input = sb.write("in/db.tar.gz", &data(3 * SEG + 500_000, 42));
    let dest = sb.join("enc");
    encrypt(sb, &input, &dest, Some(1)).expect(0);
    encrypt(sb, &input, &sb.join("other"), Some(1)).expect(0);
    let parts: Vec<PathBuf> = (0..4).map(|i| dest.join(format!("db.tar.gz.enc.{i:03}"))).collect();
    assert!(parts.iter().all(|p| p.is_file()));
    (dest, parts)
}

fn flip(p: &Path, at: usize) {
    let mut b = std::fs::read(p).unwrap();
    b[at] ^= 0x01;
    std::fs::write(p, b).unwrap();
}

#[test]
fn tampering_is_detected_and_names_the_part() {
    type Tamper = fn(&Path, &[PathBuf], &Path);
    let cases: Vec<(&str, Tamper, bool, Vec<&str>)> = vec![
        ("flipped byte", |_, p, _| flip(&p[1], 700_000), true, vec!["db.tar.gz.enc.001"]),
        (
            "flipped byte, no manifest",
            |_, p, _| flip(&p[1], 700_000),
            false,
            vec!["authentication failed", "db.tar.gz.enc.001"],
        ),
        ("truncated last part", |_, p, _| truncate(&p[3]), true, vec!["db.tar.gz.enc.003", "truncated"]),
        ("truncated last part, no manifest", |_, p, _| truncate(&p[3]), false, vec!["db.tar.gz.enc.003"]),
        (
            "dropped last part",
            |_, p, _| std::fs::remove_file(&p[3]).unwrap(),
            true,
            vec!["db.tar.gz.enc.003", "missing"],
        ),
        (
            "dropped last part, no manifest",
            |_, p, _| std::fs::remove_file(&p[3]).unwrap(),
            false,
            vec!["ends early", "db.tar.gz.enc.002"],
        ),
        (
            "dropped middle part",
            |_, p, _| std::fs::remove_file(&p[1]).unwrap(),
            true,
            vec!["db.tar.gz.enc.001", "missing"],
        ),
        (
            "dropped middle part, no manifest",
            |_, p, _| std::fs::remove_file(&p[1]).unwrap(),
            false,
            vec!["authentication failed", "db.tar.gz.enc.002"],
        ),
        ("reordered parts", |_, p, _| swap(&p[1], &p[2]), true, vec!["db.tar.gz.enc.001", "SHA-256"]),
        (
            "reordered parts, no manifest",
            |_, p, _| swap(&p[1], &p[2]),
            false,
            vec!["authentication failed", "db.tar.gz.enc.001"],
        ),
        (
            "duplicated part",
            |d, p, _| {
                std::fs::copy(&p[1], d.join("db.tar.gz.enc.001.copy")).unwrap();
            },
            true,
            vec!["db.tar.gz.enc.001.copy", "not in the manifest"],
        ),
        (
            "duplicated part, no manifest",
            |d, p, _| {
                std::fs::copy(&p[1], d.join("db.tar.gz.enc.001.copy")).unwrap();
            },
            false,
            vec!["db.tar.gz.enc.001.copy"],
        ),
        (
            "part from another backup",
            |_, p, other| {
                std::fs::copy(other.join("db.tar.gz.enc.002"), &p[2]).unwrap();
            },
            true,
            vec!["db.tar.gz.enc.002"],
        ),
        (
            "part from another backup, no manifest",
            |_, p, other| {
                std::fs::copy(other.join("db.tar.gz.enc.002"), &p[2]).unwrap();
            },
            false,
            vec!["authentication failed", "db.tar.gz.enc.002"],
        ),
        (
            "manifest from another backup",
            |d, _, other| {
                std::fs::copy(other.join("db.tar.gz.enc.manifest.json"), d.join("db.tar.gz.enc.manifest.json"))
                    .unwrap();
            },
            true,
            vec!["db.tar.gz.enc.000"],
        ),
        (
            "header corrupted, no manifest",
            |_, p, _| flip(&p[0], 20),
            false,
            vec!["db.tar.gz.enc.000", "header corrupted"],
        ),
        (
            "missing manifest",
            |d, _, _| std::fs::remove_file(d.join("db.tar.gz.enc.manifest.json")).unwrap(),
            true,
            vec!["no manifest", "REQUIRE_MANIFEST False"],
        ),
    ];
    for (what, tamper, with_manifest, needles) in cases {
        let sb = Sandbox::new();
        let (dest, parts) = four_parts(&sb);
        tamper(&dest, &parts, &sb.join("other"));
        if !with_manifest {
            let _ = std::fs::remove_file(dest.join("db.tar.gz.enc.manifest.json"));
        }
        let out_file = sb.join("restored/db.tar.gz");
        std::fs::create_dir_all(out_file.parent().unwrap()).unwrap();
        let extra: &[&str] = if with_manifest { &[] } else { &["--REQUIRE_MANIFEST", "False"] };
        let out = decrypt(&sb, &dest.join("db.tar.gz"), &out_file, extra);
        assert_eq!(out.code, 1, "{what}: exit code, stderr:\n{}", out.stderr);
        for n in needles {
            assert!(out.stderr.contains(n), "{what}: error lacks {n:?}:\n{}", out.stderr);
        }
        let left: Vec<_> = std::fs::read_dir(sb.join("restored")).unwrap().collect();
        assert!(left.is_empty(), "{what}: output left behind: {left:?}");
    }
}

fn truncate(p: &Path) {
    let len = std::fs::metadata(p).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(len - 1000).unwrap();
}

fn swap(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    std::fs::write(a, y).unwrap();
    std::fs::write(b, x).unwrap();
}

#[test]
fn a_wrong_key_is_told_apart_from_corruption() {
    let sb = Sandbox::new();
    let (dest, _) = four_parts(&sb);
    let other = sb.join("other-key");
    run(cmd(&bin("encryption")).arg("--generate-key").arg(&other)).expect(0);
    let out_file = sb.join("out.bin");
    let out = run(cmd(&bin("encryption"))
        .arg("-d")
        .arg("--KEY_FILE")
        .arg(&other)
        .arg("--OBJECTIVES")
        .arg(dest.join("db"))
        .arg("--DESTINATION")
        .arg(&out_file))
    .expect(1);
    assert!(out.stderr.contains("wrong key"), "{}", out.stderr);
    assert!(!out_file.exists());
}

#[test]
fn key_files_are_guarded() {
    let sb = Sandbox::new();
    let k = key(&sb);
    assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
    let out = run(cmd(&bin("encryption")).arg("--generate-key").arg(&k)).expect(1);
    assert!(out.stderr.contains("File exists"), "{}", out.stderr);
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
    let input = sb.write("x", b"x");
    let out = encrypt(&sb, &input, &sb.join("e"), None).expect(2);
    assert!(out.stderr.contains("chmod 600") && out.stderr.contains(&k.display().to_string()), "{}", out.stderr);
    assert!(!sb.join("e").exists());
}

#[test]
fn folders_remove_objectives_and_restore_by_name() {
    let sb = Sandbox::new();
    let a = data(2 * SEG + 3, 5);
    sb.write("compressed/files.tar.gz", &a);
    sb.write("compressed/mydump.tar.gz", b"dump");
    let dest = sb.join("encrypted");
    let report = run(cmd(&bin("encryption"))
        .arg("--KEY_FILE")
        .arg(key(&sb))
        .arg("--OBJECTIVES")
        .arg(sb.join("compressed"))
        .arg("--DESTINATION")
        .arg(&dest)
        .args(["--FILE_SIZE", "1", "--REMOVE_OBJECTIVES", "True"]))
    .expect(0)
    .json();
    assert_eq!(report["data"]["files"], 2);
    assert!(!sb.join("compressed").exists(), "inputs not removed");
    let back = sb.join("back");
    std::fs::create_dir(&back).unwrap();
    decrypt(&sb, &dest.join("files.tar.gz"), &back, &[]).expect(0);
    assert!(std::fs::read(back.join("files.tar.gz")).unwrap() == a);
    // A prefix that matches two backups is refused, naming both.
    let out = decrypt(&sb, &dest.join(""), &back, &[]).expect(2);
    assert!(out.stderr.contains("several backups"), "{}", out.stderr);
}

/// docs/FORMAT.md is enough to decrypt: a decryptor written from it alone (Python,
/// `cryptography`) reads what the tool writes.
#[test]
fn the_documented_format_is_what_we_write() {
    let sb = Sandbox::new();
    for (i, size) in [0usize, 1, SEG, 2 * SEG + 7].into_iter().enumerate() {
        let plain = data(size, 100 + i as u32);
        let input = sb.write(&format!("in/f{i}"), &plain);
        let dest = sb.join(format!("e{i}"));
        let report = encrypt(&sb, &input, &dest, Some(1)).expect(0).json();
        let parts: Vec<&str> = report["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["path"].as_str().unwrap())
            .filter(|p| !p.ends_with(".json"))
            .collect();
        let out = std::process::Command::new("python3")
            .arg(nc_backup_e2e::repo().join("scripts/decrypt-reference.py"))
            .arg(key(&sb))
            .args(&parts)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == plain, "size {size}: reference decryptor disagrees");
    }
}

#[test]
fn an_earlier_encryption_is_never_overwritten() {
    let sb = Sandbox::new();
    let input = sb.write("in/db.tar.gz", &data(3 * SEG, 9));
    let dest = sb.join("enc");
    encrypt(&sb, &input, &dest, Some(1)).expect(0);
    let before: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dest)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    let out = encrypt(&sb, &input, &dest, Some(1)).expect(1);
    assert!(out.stderr.contains("earlier encryption"), "{}", out.stderr);
    let mut after: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dest)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert!(before == after, "the earlier encryption changed");
}

/// Public-key encryption (issue 16): the host holds only recipients.
mod public_key {
    use super::*;

    fn keypair(sb: &Sandbox, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let id = sb.join(format!("keys/{name}"));
        std::fs::create_dir_all(sb.join("keys")).unwrap();
        let out = run(cmd(&bin("encryption")).arg("--generate-keypair").arg(&id)).expect(0);
        assert!(out.stdout.contains("key_id"), "{}", out.stdout);
        (id.clone(), sb.join(format!("keys/{name}.pub")))
    }

    fn seal(input: &Path, dest: &Path, recipients: &[&Path]) -> nc_backup_e2e::Out {
        let mut c = cmd(&bin("encryption"));
        c.arg("--OBJECTIVES").arg(input).arg("--DESTINATION").arg(dest).args(["--FILE_SIZE", "1"]);
        for r in recipients {
            c.arg("--RECIPIENTS").arg(r);
        }
        run(&mut c)
    }

    fn open(prefix: &Path, out: &Path, identities: &[&Path]) -> nc_backup_e2e::Out {
        let mut c = cmd(&bin("encryption"));
        c.arg("-d").arg("--OBJECTIVES").arg(prefix).arg("--DESTINATION").arg(out);
        for i in identities {
            c.arg("--IDENTITY").arg(i);
        }
        run(&mut c)
    }

    #[test]
    fn recipients_encrypt_identities_decrypt_and_the_host_cannot() {
        let sb = Sandbox::new();
        let (a, a_pub) = keypair(&sb, "offsite-a");
        let (b, b_pub) = keypair(&sb, "offsite-b");
        let (c, _) = keypair(&sb, "stranger");
        assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);
        for (i, size) in [0usize, 1, SEG, 2 * SEG + 7].into_iter().enumerate() {
            let plain = data(size, 500 + i as u32);
            let input = sb.write(&format!("in/f{i}.tar.gz"), &plain);
            let dest = sb.join(format!("e{i}"));
            // Two recipients: each identity alone decrypts.
            let r = seal(&input, &dest, &[&a_pub, &b_pub]).expect(0).json();
            assert_eq!(r["data"]["recipients"].as_array().unwrap().len(), 2, "{r}");
            let prefix = dest.join(format!("f{i}.tar.gz.enc"));
            for (n, id) in [(0, &a), (1, &b)] {
                let out = sb.join(format!("out{i}-{n}"));
                open(&prefix, &out, &[id]).expect(0);
                assert!(std::fs::read(&out).unwrap() == plain, "size {size}, identity {n}");
            }
            // The reference decryptor (docs/FORMAT.md alone) reads it too.
            let parts: Vec<String> = {
                let mut v: Vec<String> = std::fs::read_dir(&dest)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path().display().to_string())
                    .filter(|p| !p.ends_with(".json"))
                    .collect();
                v.sort();
                v
            };
            let out = std::process::Command::new("python3")
                .arg(nc_backup_e2e::repo().join("scripts/decrypt-reference.py"))
                .arg(&b)
                .args(&parts)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert!(out.stdout == plain, "size {size}: the reference decryptor disagrees");
        }
        let prefix = sb.join("e3/f3.tar.gz.enc");
        // The wrong identity: exit 1, naming the keys it is sealed for; nothing written.
        let o = open(&prefix, &sb.join("wrong"), &[&c]).expect(1);
        assert!(o.stderr.contains("no identity given opens it"), "{}", o.stderr);
        assert!(!sb.join("wrong").exists());
        // What the host holds (the .pub files, no key file) cannot decrypt.
        let o = open(&prefix, &sb.join("host"), &[&a_pub]).expect(2);
        assert!(o.stderr.contains("decrypting needs the identity"), "{}", o.stderr);
        let o = run(cmd(&bin("encryption"))
            .arg("-d")
            .arg("--OBJECTIVES")
            .arg(&prefix)
            .arg("--DESTINATION")
            .arg(sb.join("host")))
        .expect(2);
        assert!(o.stderr.contains("KEY_FILE"), "{}", o.stderr);
        // A key file cannot open a public-key file, and an identity cannot open a key file's.
        std::fs::write(sb.join("k"), format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(sb.join("k"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let o = run(cmd(&bin("encryption"))
            .arg("-d")
            .arg("--KEY_FILE")
            .arg(sb.join("k"))
            .arg("--OBJECTIVES")
            .arg(&prefix)
            .arg("--DESTINATION")
            .arg(sb.join("kf")))
        .expect(1);
        assert!(o.stderr.contains("encrypted for recipients"), "{}", o.stderr);
        // An identity others can read is refused.
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
        let o = open(&prefix, &sb.join("loose"), &[&a]).expect(2);
        assert!(o.stderr.contains("chmod 600"), "{}", o.stderr);
    }

    /// Every altered byte of the public-key header, the stream header, a segment, or a part
    /// cut short: exit 1, nothing written.
    #[test]
    fn the_tamper_matrix_on_public_key_files() {
        let sb = Sandbox::new();
        let (a, a_pub) = keypair(&sb, "a");
        let plain = data(2 * SEG + 100, 77);
        let input = sb.write("in/x.bin", &plain);
        let dest = sb.join("e");
        seal(&input, &dest, &[&a_pub]).expect(0);
        let p0 = dest.join("x.bin.enc.000");
        let original = std::fs::read(&p0).unwrap();
        let pk_len = 12 + 88 + 32;
        let spots = [
            0,
            9,
            10,
            12,
            20,
            12 + 40,
            12 + 87,
            pk_len - 1,
            pk_len + 3,
            pk_len + 60,
            pk_len + 96 + 10,
            original.len() - 1,
        ];
        for (n, spot) in spots.into_iter().enumerate() {
            let mut t = original.clone();
            t[spot] ^= 0x01;
            std::fs::write(&p0, &t).unwrap();
            let out = sb.join(format!("o{n}"));
            let o = open(&dest.join("x.bin.enc"), &out, &[&a]);
            assert!(o.code == 1 || o.code == 2, "byte {spot} altered: exit {}: {}", o.code, o.stderr);
            assert!(!out.exists(), "byte {spot} altered: output written");
        }
        std::fs::write(&p0, &original[..original.len() - 5]).unwrap();
        let o = open(&dest.join("x.bin.enc"), &sb.join("cut"), &[&a]);
        assert_ne!(o.code, 0, "a cut part was accepted");
        std::fs::write(&p0, &original).unwrap();
        open(&dest.join("x.bin.enc"), &sb.join("ok"), &[&a]).expect(0);
        assert!(std::fs::read(sb.join("ok")).unwrap() == plain);
    }
}

/// A whole night made by a host that holds only a recipient and a signing key: it cannot read
/// its own backups; the restore takes the identity kept elsewhere and checks the host's
/// signature; an altered, unsigned or foreign-signed manifest is refused.
#[test]
fn a_write_only_host_night_restored_with_the_identity_and_its_signature_checked() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.join("offsite")).unwrap();
    std::fs::create_dir_all(sb.join("host")).unwrap();
    let identity = sb.join("offsite/backup-id");
    run(cmd(&bin("encryption")).arg("--generate-keypair").arg(&identity)).expect(0);
    let recipient = sb.join("host/backup-id.pub");
    std::fs::rename(sb.join("offsite/backup-id.pub"), &recipient).unwrap();
    let signing = sb.join("host/sign");
    run(cmd(&bin("encryption")).arg("--generate-signing-key").arg(&signing)).expect(0);
    let signer = sb.join("host/sign.pub");
    let other = sb.join("offsite/other-sign");
    run(cmd(&bin("encryption")).arg("--generate-signing-key").arg(&other)).expect(0);
    for (rel, body) in [("data/etc/app.conf", &b"key = value\n"[..]), ("data/var/blob.bin", &data(3 << 20, 4)[..])] {
        sb.write(rel, body);
    }
    let w = sb.join("work");
    let conf = sb.config(&[
        (
            "FILES",
            serde_json::json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
            "FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files")}}),
        ),
        (
            "ENCRYPTION",
            serde_json::json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
            "RECIPIENTS": recipient, "OBJECTIVES": w.join("files"), "DESTINATION": w.join("enc"),
            "FILE_SIZE": "1", "REMOVE_OBJECTIVES": "True"}}),
        ),
        (
            "STORAGE",
            serde_json::json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
            "OBJECTIVES": w.join("enc"), "DESTINATION": "local", "PATH": sb.join("store"),
            "SIGNING_KEY": signing, "REMOVE_OBJECTIVES": "True"}}),
        ),
    ]);
    run(cmd(&bin("backup-runner")).args(["-r", "-c"]).arg(&conf)).expect(0);
    let restore = |to: &str, extra: &[&Path]| {
        let mut c = cmd(&bin("backup-runner"));
        c.args(["restore", "-c"]).arg(&conf).arg("--to").arg(sb.join(to));
        for (i, p) in extra.iter().enumerate() {
            c.arg(if i == 0 { "--identity" } else { "--signer" }).arg(p);
        }
        run(&mut c)
    };
    // What the host has cannot decrypt.
    let o = restore("r0", &[]).expect(2);
    assert!(o.stderr.contains("--identity"), "{}", o.stderr);
    // The identity and the host's public key: restored, byte for byte.
    restore("r1", &[&identity, &signer]).expect(0);
    let back = sb.join("r1").join(sb.join("data").strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(back.join("var/blob.bin")).unwrap(), data(3 << 20, 4));
    assert_eq!(std::fs::read(back.join("etc/app.conf")).unwrap(), b"key = value\n");
    let v = run(cmd(&bin("backup-runner"))
        .args(["verify", "--read-data", "-c"])
        .arg(&conf)
        .arg("--identity")
        .arg(&identity)
        .arg("--signer")
        .arg(&signer))
    .expect(0);
    assert!(
        v.stdout.contains("signature checked") || v.stderr.contains("signature checked"),
        "{}{}",
        v.stdout,
        v.stderr
    );
    // The manifest altered after signing, unsigned, or signed by another host: refused.
    let manifest = std::fs::read_dir(sb.join("store/testhost"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("RUN-MANIFEST.json"))
        .find(|p| p.is_file())
        .unwrap();
    let original = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, original.replacen("\"host\": \"testhost\"", "\"host\": \"elsewhere\"", 1)).unwrap();
    let o = restore("r2", &[&identity, &signer]).expect(1);
    assert!(o.stderr.contains("fails its signature check"), "{}", o.stderr);
    let mut m: serde_json::Value = serde_json::from_str(&original).unwrap();
    m.as_object_mut().unwrap().remove("signature");
    std::fs::write(&manifest, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let o = restore("r3", &[&identity, &signer]).expect(1);
    assert!(o.stderr.contains("is not signed"), "{}", o.stderr);
    std::fs::write(&manifest, &original).unwrap();
    let o = restore("r4", &[&identity, &sb.join("offsite/other-sign.pub")]).expect(1);
    assert!(o.stderr.contains("not one of the --signer keys"), "{}", o.stderr);
}

/// Rotating the recipient: new runs use the new key, old runs still decrypt with the old
/// identity, and `verify` says which key each run needs.
#[test]
fn a_rotated_recipient_old_runs_need_the_old_identity_and_verify_says_which() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.join("keys")).unwrap();
    let (old, new) = (sb.join("keys/2026"), sb.join("keys/2027"));
    let kid = |p: &Path| {
        run(cmd(&bin("encryption")).arg("--generate-keypair").arg(p)).expect(0).json()["data"]["key_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (old_id, new_id) = (kid(&old), kid(&new));
    sb.write("data/a.txt", b"first night\n");
    let w = sb.join("work");
    let conf_for = |recipient: &Path| {
        sb.config(&[
            ("FILES", serde_json::json!({"ACTION": "execute", "NAME": "filesbackup", "PARAMETERS": {
                "FILESET_INCLUDE": sb.join("data"), "DESTINATION": w.join("files")}})),
            ("ENCRYPTION", serde_json::json!({"ACTION": "execute", "NAME": "encryption", "PARAMETERS": {
                "RECIPIENTS": recipient, "OBJECTIVES": w.join("files"), "DESTINATION": w.join("enc"),
                "REMOVE_OBJECTIVES": "True"}})),
            ("STORAGE", serde_json::json!({"ACTION": "execute", "NAME": "storage", "PARAMETERS": {
                "OBJECTIVES": w.join("enc"), "DESTINATION": "local", "PATH": sb.join("store"), "REMOVE_OBJECTIVES": "True"}})),
        ])
    };
    let conf = conf_for(&sb.join("keys/2026.pub"));
    run(cmd(&bin("backup-runner")).args(["-r", "-c"]).arg(&conf)).expect(0);
    let first = std::fs::read_dir(sb.join("store/testhost"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    sb.write("data/a.txt", b"second night\n");
    let conf = conf_for(&sb.join("keys/2027.pub"));
    run(cmd(&bin("backup-runner")).args(["-r", "-c"]).arg(&conf)).expect(0);
    let v = run(cmd(&bin("backup-runner")).args(["verify", "--run", "all", "-c"]).arg(&conf)).expect(0);
    let all = format!("{}{}", v.stdout, v.stderr);
    assert!(all.contains(&format!("decrypts with an identity of recipient(s) {old_id}")), "{all}");
    assert!(all.contains(&format!("decrypts with an identity of recipient(s) {new_id}")), "{all}");
    // The old run with the old identity; the new one with the new; each refuses the other.
    let restore = |runid: &str, id: &Path, to: &str| {
        run(cmd(&bin("backup-runner"))
            .args(["restore", "--run", runid, "-c"])
            .arg(&conf)
            .arg("--identity")
            .arg(id)
            .arg("--to")
            .arg(sb.join(to)))
    };
    restore(&first, &old, "r1").expect(0);
    let rel = sb.join("data/a.txt");
    let rel = rel.strip_prefix("/").unwrap();
    assert_eq!(std::fs::read(sb.join("r1").join(rel)).unwrap(), b"first night\n");
    restore("latest", &new, "r2").expect(0);
    assert_eq!(std::fs::read(sb.join("r2").join(rel)).unwrap(), b"second night\n");
    let o = restore(&first, &new, "r3");
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains(&old_id), "the error should name the key the run needs: {}", o.stderr);
}

/// The copy kept off the host: an identity behind a passphrase, and on paper.
#[test]
fn a_protected_identity_and_a_paper_copy_decrypt_what_the_identity_does() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.join("keys")).unwrap();
    let id = sb.join("keys/offsite");
    run(cmd(&bin("encryption")).arg("--generate-keypair").arg(&id)).expect(0);
    let plain = data(SEG + 3, 42);
    let input = sb.write("in/db.sql.gz", &plain);
    run(cmd(&bin("encryption"))
        .arg("--RECIPIENTS")
        .arg(sb.join("keys/offsite.pub"))
        .arg("--OBJECTIVES")
        .arg(&input)
        .arg("--DESTINATION")
        .arg(sb.join("enc")))
    .expect(0);
    let decrypt = |identity: &Path, out: &str, pass: Option<&Path>| {
        let mut c = cmd(&bin("encryption"));
        c.arg("-d")
            .arg("--IDENTITY")
            .arg(identity)
            .arg("--OBJECTIVES")
            .arg(sb.join("enc/db.sql.gz.enc"))
            .arg("--DESTINATION")
            .arg(sb.join(out));
        if let Some(p) = pass {
            c.env("NCB_PASSPHRASE_FILE", p);
        }
        run(&mut c)
    };
    // Protected by a passphrase (from a 0600 file, never argv).
    let pass = sb.write("pass", b"correct horse battery staple\n");
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    run(cmd(&bin("encryption")).arg("--protect").arg(&id).env("NCB_PASSPHRASE_FILE", &pass)).expect(0);
    let protected = sb.join("keys/offsite.protected");
    assert!(
        !std::fs::read_to_string(&protected)
            .unwrap()
            .contains(&std::fs::read_to_string(&id).unwrap().lines().last().unwrap()[16..])
    );
    decrypt(&protected, "p1", Some(&pass)).expect(0);
    assert!(std::fs::read(sb.join("p1")).unwrap() == plain);
    let o = decrypt(&protected, "p2", None).expect(2);
    assert!(o.stderr.contains("NCB_PASSPHRASE_FILE"), "{}", o.stderr);
    let wrong = sb.write("wrong", b"not the passphrase at all\n");
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = decrypt(&protected, "p3", Some(&wrong)).expect(2);
    assert!(o.stderr.contains("wrong passphrase"), "{}", o.stderr);
    // On paper: printed, typed back (here: piped), it decrypts; a typo is named by its line.
    let paper = run(cmd(&bin("encryption")).arg("--export-paper").arg(&id)).expect(0).stdout;
    assert!(paper.starts_with("ncb-paper-v1"), "{paper}");
    let typed = sb.join("keys/typed");
    let mut c = cmd(&bin("encryption"));
    c.arg("--import-paper")
        .arg(&typed)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), paper.as_bytes()).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    decrypt(&typed, "p4", None).expect(0);
    assert!(std::fs::read(sb.join("p4")).unwrap() == plain);
    let typo = paper.replacen(" 6", " 7", 1);
    let mut c = cmd(&bin("encryption"));
    c.arg("--import-paper")
        .arg(sb.join("keys/typo"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), typo.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("paper line"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!sb.join("keys/typo").exists());
}
