//! encryption: each input file becomes an authenticated AES-256-GCM stream cut into parts of
//! FILE_SIZE MB plus a manifest; `-d` finds the parts by prefix, checks and joins them, and
//! decrypts atomically. The format is specified in docs/FORMAT.md.

pub mod crypt;
pub mod format;
pub mod key;
pub mod manifest;
pub mod paper;
pub mod pke;
pub mod sign;

use std::path::{Path, PathBuf};

use ncb_core::params::{Kind, ParamSpec, Params, Problem};
use ncb_core::{Error, IoContext, Result, StageCtx, StageDef, StageReport};

pub static PARAMS: [ParamSpec; 15] = [
    ParamSpec::new("KEY_FILE", Kind::Path, "The key file (64 hex digits, mode 0600; see --generate-key)").must_exist(),
    ParamSpec::new(
        "OBJECTIVES",
        Kind::Paths,
        "Encrypt: files, or folders whose files to encrypt. Decrypt (-d): the prefix of the parts",
    ),
    ParamSpec::new(
        "DESTINATION",
        Kind::Path,
        "Encrypt: folder for parts and manifests. Decrypt: the output file (or a folder: the original name is used)",
    ),
    ParamSpec::new("FILE_SIZE", Kind::Int, "Part size in MB (MiB); absent: one part per file"),
    ParamSpec::new(
        "REMOVE_OBJECTIVES",
        Kind::Bool,
        "Delete the inputs once every part and manifest is durable (default False)",
    ),
    ParamSpec::new("DECRYPT", Kind::Switch, "Decrypt and join parts (the restore path)").short('d'),
    ParamSpec::new(
        "GENERATE_KEY",
        Kind::Path,
        "Write a new random key to this file (mode 0600; never overwrites) and exit",
    ),
    ParamSpec::new(
        "RECIPIENTS",
        Kind::Paths,
        "Encrypt for these recipients (public keys, .pub files) instead of a KEY_FILE: this host cannot decrypt",
    ),
    ParamSpec::new(
        "IDENTITY",
        Kind::Paths,
        "Decrypt (-d) files made for recipients with these identities (private keys, mode 0600)",
    ),
    ParamSpec::new(
        "GENERATE_KEYPAIR",
        Kind::Path,
        "Write a new identity to this file (0600) and its recipient to FILE.pub, and exit",
    ),
    ParamSpec::new(
        "GENERATE_SIGNING_KEY",
        Kind::Path,
        "Write a new host signing key (Ed25519) to this file (0600) and its public key to FILE.pub, and exit",
    ),
    ParamSpec::new(
        "PROTECT",
        Kind::Path,
        "Seal this identity with a passphrase (NCB_PASSPHRASE_FILE or NCB_PASSPHRASE) into FILE.protected, and exit",
    ),
    ParamSpec::new(
        "EXPORT_PAPER",
        Kind::Path,
        "Print this key file in lines one can type back (with checks), and exit",
    ),
    ParamSpec::new(
        "IMPORT_PAPER",
        Kind::Path,
        "Read typed paper lines on stdin and write them as this key file (never over a file), and exit",
    ),
    ParamSpec::new(
        "REQUIRE_MANIFEST",
        Kind::Bool,
        "Decrypt: refuse parts without their manifest (default True; the stream stays authenticated without it)",
    ),
];

pub static STAGE: StageDef = StageDef {
    name: "encryption",
    aliases: &["encrypt"],
    legacy_executables: &["encryption.py"],
    about: "Encrypt files into authenticated AES-256-GCM parts with a manifest; -d joins and decrypts",
    params: &PARAMS,
    validate,
    run,
};

fn validate(p: &Params) -> Vec<Problem> {
    let mut problems = Vec::new();
    let need = |problems: &mut Vec<Problem>, key: &str, why: &str| {
        if p.str(key).is_none() {
            problems.push(Problem { key: key.into(), message: format!("missing required parameter ({why})") });
        }
    };
    if ["GENERATE_KEY", "GENERATE_KEYPAIR", "GENERATE_SIGNING_KEY", "PROTECT", "EXPORT_PAPER", "IMPORT_PAPER"]
        .iter()
        .any(|k| p.str(k).is_some())
    {
        return problems;
    }
    let decrypting = p.flag("DECRYPT", false).unwrap_or(false);
    let recipients = p.list("RECIPIENTS").unwrap_or_default();
    let identities = p.list("IDENTITY").unwrap_or_default();
    if !recipients.is_empty() {
        if p.has("KEY_FILE") {
            problems
                .push(Problem { key: "RECIPIENTS".into(), message: "give RECIPIENTS or KEY_FILE, not both".into() });
        }
        if decrypting {
            problems.push(Problem {
                key: "RECIPIENTS".into(),
                message: "recipients encrypt; decrypting (-d) needs their IDENTITY".into(),
            });
        }
        for r in &recipients {
            if let Err(e) = pke::load_recipient(Path::new(r)) {
                problems.push(Problem { key: "RECIPIENTS".into(), message: e.to_string() });
            }
        }
    } else if !identities.is_empty() {
        if !decrypting {
            problems.push(Problem {
                key: "IDENTITY".into(),
                message: "an identity decrypts (-d); to encrypt, give its recipient (RECIPIENTS FILE.pub)".into(),
            });
        }
        for i in &identities {
            if let Err(e) = pke::load_identity(Path::new(i)) {
                problems.push(Problem { key: "IDENTITY".into(), message: e.to_string() });
            }
        }
    } else {
        need(&mut problems, "KEY_FILE", "or RECIPIENTS (public keys), -d with IDENTITY, or --generate-key FILE");
    }
    need(&mut problems, "OBJECTIVES", "what to encrypt, or with -d the prefix of the parts");
    need(&mut problems, "DESTINATION", "where to write");
    if p.u64("FILE_SIZE").ok().flatten() == Some(0) {
        problems.push(Problem { key: "FILE_SIZE".into(), message: "must be at least 1 (MB)".into() });
    }
    // Its mode and its form, as the run will find them (the key itself is dropped at once).
    if let Some(k) = p.path("KEY_FILE")
        && let Err(e) = key::load(&k)
    {
        problems.push(Problem { key: "KEY_FILE".into(), message: e.to_string() });
    }
    problems
}

fn run(_ctx: &StageCtx, p: &Params) -> Result<StageReport> {
    let mut report = StageReport::new(STAGE.name);
    if let Some(path) = p.path("GENERATE_KEY") {
        key::generate(&path)?;
        log::info!("wrote a new key to {} (mode 0600): keep a copy off this server", path.display());
        report.set("key_file", path.display().to_string());
        return Ok(report);
    }
    if let Some(path) = p.path("PROTECT") {
        let id = pke::load_identity(&path)?;
        let line = paper::protect_secret(&id.secret_bytes(), &paper::passphrase()?)?;
        let mut out = path.as_os_str().to_owned();
        out.push(".protected");
        let out = PathBuf::from(out);
        let text =
            format!("# nc-backup identity {} protected by a passphrase (Argon2id, AES-256-GCM)\n{line}\n", id.id());
        ncb_core::atomic::write_new_file(&out, text.as_bytes(), 0o600)?;
        log::info!("wrote {} (identity {} behind the passphrase)", out.display(), id.id());
        report.set("protected", out.display().to_string());
        return Ok(report);
    }
    if let Some(path) = p.path("EXPORT_PAPER") {
        let text = paper::export(&path)?;
        let mut so = std::io::stdout().lock();
        std::io::Write::write_all(&mut so, text.as_bytes()).map_err(|e| Error::io("stdout", e))?;
        return Ok(report);
    }
    if let Some(path) = p.path("IMPORT_PAPER") {
        let line = paper::import(&mut std::io::stdin().lock())?;
        paper::write_key_file(&path, &line)?;
        log::info!("wrote {} from the paper lines", path.display());
        report.set("imported", path.display().to_string());
        return Ok(report);
    }
    if let Some(path) = p.path("GENERATE_SIGNING_KEY") {
        let kid = sign::generate(&path)?;
        log::info!(
            "wrote signing key {kid} to {} (mode 0600, for storage's SIGNING_KEY) and its public key to {}.pub (keep a copy off this host: restore and verify check runs against it)",
            path.display(),
            path.display()
        );
        report.set("signing_key", path.display().to_string());
        report.set("key_id", kid);
        return Ok(report);
    }
    if let Some(path) = p.path("GENERATE_KEYPAIR") {
        let kid = pke::generate_keypair(&path)?;
        log::info!(
            "wrote identity {kid} to {} (mode 0600: keep it off the hosts that back up) and its recipient to {}.pub",
            path.display(),
            path.display()
        );
        report.set("identity", path.display().to_string());
        report.set("key_id", kid);
        return Ok(report);
    }
    let recipients: Vec<pke::Recipient> =
        p.paths("RECIPIENTS")?.iter().map(|r| pke::load_recipient(r)).collect::<Result<_>>()?;
    let identities: Vec<pke::Identity> =
        p.paths("IDENTITY")?.iter().map(|i| pke::load_identity(i)).collect::<Result<_>>()?;
    let master = if recipients.is_empty() && identities.is_empty() {
        Some(key::load(&p.required_path("KEY_FILE")?)?)
    } else {
        None
    };
    let sealing = match &master {
        Some(m) => crypt::Sealing::Key(m),
        None => crypt::Sealing::Recipients(&recipients),
    };
    let opening = match &master {
        Some(m) => crypt::Opening::Key(m),
        None => crypt::Opening::Identities(&identities),
    };
    if p.flag("DECRYPT", false)? {
        decrypt(p, opening, &mut report)?;
    } else {
        if !recipients.is_empty() {
            let ids: Vec<String> = recipients.iter().map(pke::Recipient::id).collect();
            report.set("recipients", ids);
        }
        encrypt(p, sealing, &mut report)?;
    }
    Ok(report)
}

fn decrypt(p: &Params, opening: crypt::Opening<'_>, report: &mut StageReport) -> Result<()> {
    let prefix = p.required_path("OBJECTIVES")?;
    let located = crypt::locate(&prefix, p.flag("REQUIRE_MANIFEST", true)?)?;
    let mut dest = p.required_path("DESTINATION")?;
    if dest.is_dir() {
        let name = located
            .manifest
            .as_ref()
            .map(|m| m.file.clone())
            .filter(|n| !n.contains('/') && !n.starts_with('.') && !n.is_empty());
        let Some(name) = name else {
            return Err(Error::usage(format!(
                "DESTINATION {} is a folder and there is no manifest to name the file: give a file path",
                dest.display()
            )));
        };
        dest = dest.join(name);
    }
    let artifact = crypt::decrypt_with(opening, &located, &dest)?;
    log::info!("decrypted {} part(s) into {} ({} bytes)", located.parts.len(), artifact.path.display(), artifact.bytes);
    report.set("parts", located.parts.len());
    report.set("manifest", located.manifest.is_some());
    report.artifacts.push(artifact);
    Ok(())
}

/// The files to encrypt: files as given, and the regular files directly inside folders.
fn inputs(p: &Params, dest: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for obj in p.paths("OBJECTIVES")? {
        let meta = std::fs::metadata(&obj).at("objective", &obj)?;
        if !meta.is_dir() {
            out.push(obj);
            continue;
        }
        if std::path::absolute(&obj).ok() == std::path::absolute(dest).ok() {
            return Err(Error::usage(format!("DESTINATION {} is also an objective", dest.display())));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&obj)
            .at("cannot list", &obj)?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect();
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

fn encrypt(p: &Params, sealing: crypt::Sealing<'_>, report: &mut StageReport) -> Result<()> {
    let dest = p.required_path("DESTINATION")?;
    let part_size = p.u64("FILE_SIZE")?.map(|mb| mb.saturating_mul(1 << 20));
    let files = inputs(p, &dest)?;
    ncb_core::atomic::ensure_dir(&dest, 0o700)?;
    let mut plain = 0u64;
    for f in &files {
        match crypt::encrypt_file_with(sealing, f, &dest, part_size, format::DEFAULT_SEGMENT) {
            Ok(e) => {
                log::info!("{}: {} part(s), manifest {}", f.display(), e.parts.len(), e.manifest.path.display());
                plain += e.plaintext_size;
                report.artifacts.extend(e.parts);
                report.artifacts.push(e.manifest);
            }
            Err(err) => {
                report.discard_artifacts();
                return Err(err);
            }
        }
    }
    if files.is_empty() {
        report.warn("no file to encrypt in OBJECTIVES");
    }
    if p.flag("REMOVE_OBJECTIVES", false)? {
        for f in &files {
            ncb_core::atomic::remove_input(f)?;
        }
        for obj in p.paths("OBJECTIVES")? {
            if obj.is_dir() {
                let _ = std::fs::remove_dir(&obj);
            }
        }
    }
    report.set("files", files.len());
    report.set("plaintext_bytes", plain);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// `--check` (and the stage before it starts) refuses a key file the run would refuse.
    #[test]
    fn validate_checks_the_key_file() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("key");
        key::generate(&k).unwrap();
        let mut p = Params::new();
        p.set("KEY_FILE", k.display().to_string());
        p.set("OBJECTIVES", "/x");
        p.set("DESTINATION", "/y");
        assert_eq!(STAGE.check(&p), []);
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        let found = STAGE.check(&p);
        assert!(found.len() == 1 && found[0].key == "KEY_FILE" && found[0].message.contains("chmod 600"), "{found:?}");
        std::fs::write(&k, b"12345").unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        let found = STAGE.check(&p);
        assert!(found.len() == 1 && found[0].message.contains("holds 5 bytes"), "{found:?}");
    }
}
