//! Keys on paper, and a passphrase around an identity.
//!
//! `encryption --export-paper FILE` prints any of our key files (key file, identity,
//! recipient, signing or verifying key) as lines one can type back: the key's text in groups
//! of 4 hex digits, 16 bytes a line, each line ending with a 2-digit check of that line, and a
//! last line checking the whole. `--import-paper FILE` reads such lines on stdin and writes the
//! key file again (never over an existing file), naming the line of any typo.
//!
//! `--protect FILE` seals an identity with a passphrase (Argon2id, 64 MiB, 3 passes; then
//! AES-256-GCM): the copy to keep off the host, in a safe or a password manager. Reading a
//! protected identity takes the passphrase from NCB_PASSPHRASE_FILE (a 0600 file) or
//! NCB_PASSPHRASE, never argv.

use std::io::BufRead;
use std::path::Path;

use ncb_core::{Error, IoContext, Result};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

pub const PROTECTED_TAG: &str = "ncb-identity-protected-v1:";
const PAPER_HEAD: &str = "ncb-paper-v1";
const M_KIB: u32 = 64 * 1024;
const T_COST: u32 = 3;

/// The one key line of one of our key files (comments and blank lines aside).
pub fn key_line(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).at("cannot read", path)?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    match lines.as_slice() {
        [l] => Ok((*l).to_owned()),
        _ => Err(Error::usage(format!("{} is not one of our key files (one key line)", path.display()))),
    }
}

fn check(index: usize, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((index as u32).to_be_bytes());
    h.update(bytes);
    hex::encode(&h.finalize()[..1])
}

/// The paper form of a key file.
pub fn export(path: &Path) -> Result<String> {
    let line = key_line(path)?;
    let bytes = line.as_bytes();
    let mut out = format!("{PAPER_HEAD} {} bytes: type each line back with encryption --import-paper\n", bytes.len());
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hexed = hex::encode(chunk);
        let groups: Vec<&str> = hexed.as_bytes().chunks(4).map(|g| std::str::from_utf8(g).unwrap_or("")).collect();
        out.push_str(&format!("{:02} {}  {}\n", i + 1, groups.join(" "), check(i, chunk)));
    }
    out.push_str(&format!("end {}\n", hex::encode(&Sha256::digest(bytes)[..4])));
    Ok(out)
}

/// Reads paper lines back; the key line, or the line that is wrong.
pub fn import(input: &mut dyn BufRead) -> Result<String> {
    let mut bytes = Vec::new();
    let mut index = 0usize;
    let mut end = None;
    for (n, l) in input.lines().enumerate() {
        let l = l.map_err(|e| Error::io("reading the paper lines", e))?;
        let t = l.trim();
        if t.is_empty() || t.starts_with(PAPER_HEAD) || t.starts_with('#') {
            continue;
        }
        if let Some(e) = t.strip_prefix("end ") {
            end = Some(e.trim().to_ascii_lowercase());
            break;
        }
        let mut words: Vec<&str> = t.split_whitespace().collect();
        let bad = || Error::usage(format!("line {}: not a paper line (NN group group … check)", n + 1));
        if words.len() < 3 {
            return Err(bad());
        }
        let num: usize = words.remove(0).parse().map_err(|_| bad())?;
        let sum = words.pop().ok_or_else(bad)?.to_ascii_lowercase();
        if num != index + 1 {
            return Err(Error::usage(format!(
                "line {}: numbered {num}, expected {} (a line missing or repeated?)",
                n + 1,
                index + 1
            )));
        }
        let chunk = hex::decode(words.concat().to_ascii_lowercase())
            .map_err(|_| Error::usage(format!("paper line {num}: not hexadecimal (a typo?)")))?;
        if check(index, &chunk) != sum {
            return Err(Error::usage(format!("paper line {num}: its check {sum} does not match: a typo in that line")));
        }
        bytes.extend_from_slice(&chunk);
        index += 1;
    }
    let end = end.ok_or_else(|| Error::usage("no 'end' line: the paper copy is incomplete"))?;
    if hex::encode(&Sha256::digest(&bytes)[..4]) != end {
        return Err(Error::usage("the end check does not match: a line is missing"));
    }
    String::from_utf8(bytes).map_err(|_| Error::usage("not a key line"))
}

/// Writes an imported key line as a key file (0600 for private keys), never over a file.
pub fn write_key_file(path: &Path, line: &str) -> Result<()> {
    let public = line.starts_with("ncb-recipient-v1:") || line.starts_with("ncb-verify-v1:");
    ncb_core::atomic::write_new_file(
        path,
        format!("# imported from paper\n{line}\n").as_bytes(),
        if public { 0o644 } else { 0o600 },
    )
}

/// The passphrase for protected identities: NCB_PASSPHRASE_FILE (0600) or NCB_PASSPHRASE.
pub fn passphrase() -> Result<String> {
    if let Some(f) = std::env::var_os("NCB_PASSPHRASE_FILE") {
        let p = Path::new(&f);
        crate::key::check_private(p, "passphrase file")?;
        let t = std::fs::read_to_string(p).at("cannot read", p)?;
        return Ok(t.trim_end_matches(['\n', '\r']).to_owned());
    }
    if let Ok(p) = std::env::var("NCB_PASSPHRASE") {
        return Ok(p);
    }
    Err(Error::usage(
        "the identity is protected by a passphrase: set NCB_PASSPHRASE_FILE (a 0600 file) or NCB_PASSPHRASE",
    ))
}

fn derive(pass: &str, salt: &[u8], m: u32, t: u32) -> Result<[u8; 32]> {
    let params = argon2::Params::new(m, t, 1, Some(32)).map_err(|e| Error::usage(format!("Argon2 parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut k = [0u8; 32];
    a.hash_password_into(pass.as_bytes(), salt, &mut k).map_err(|e| Error::runtime(format!("Argon2: {e}")))?;
    Ok(k)
}

/// Seals a 32-byte identity secret with a passphrase: the protected key line.
pub fn protect_secret(secret: &[u8; 32], pass: &str) -> Result<String> {
    if pass.chars().count() < 12 {
        return Err(Error::usage("the passphrase must have at least 12 characters"));
    }
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut salt)
        .and_then(|()| getrandom::fill(&mut nonce))
        .map_err(|e| Error::runtime(format!("no randomness: {e}")))?;
    let k = derive(pass, &salt, M_KIB, T_COST)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).map_err(|_| Error::runtime("AES key"))?);
    let mut buf = secret.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(PROTECTED_TAG.as_bytes()), &mut buf)
        .map_err(|_| Error::runtime("cannot seal"))?;
    Ok(format!("{PROTECTED_TAG}{}:{M_KIB}:{T_COST}:{}:{}", hex::encode(salt), hex::encode(nonce), hex::encode(buf)))
}

/// Opens a protected key line with the passphrase.
pub fn unprotect(line: &str, pass: &str) -> Result<[u8; 32]> {
    let rest = line.strip_prefix(PROTECTED_TAG).ok_or_else(|| Error::usage("not a protected identity"))?;
    let f: Vec<&str> = rest.split(':').collect();
    let [salt, m, t, nonce, ct] = f.as_slice() else {
        return Err(Error::usage("a protected identity has 5 fields"));
    };
    let bad = || Error::usage("a protected identity field is malformed");
    let (salt, nonce, ct) = (
        hex::decode(salt).map_err(|_| bad())?,
        hex::decode(nonce).map_err(|_| bad())?,
        hex::decode(ct).map_err(|_| bad())?,
    );
    let (m, t): (u32, u32) = (m.parse().map_err(|_| bad())?, t.parse().map_err(|_| bad())?);
    if !(8 * 1024..=1024 * 1024).contains(&m) || !(1..=16).contains(&t) {
        return Err(bad());
    }
    let k = derive(pass, &salt, m, t)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).map_err(|_| Error::runtime("AES key"))?);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| bad())?;
    let mut buf = ct;
    let plain = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(PROTECTED_TAG.as_bytes()), &mut buf)
        .map_err(|_| Error::usage("wrong passphrase (or the protected identity is damaged)"))?;
    plain.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_round_trip_and_typos_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("id");
        crate::pke::generate_keypair(&p).unwrap();
        let paper = export(&p).unwrap();
        let line = import(&mut paper.as_bytes()).unwrap();
        assert_eq!(line, key_line(&p).unwrap());
        // A typo in line 3: named.
        let mut lines: Vec<String> = paper.lines().map(str::to_owned).collect();
        let l3 = lines[3].clone();
        let flipped = if l3.as_bytes()[3] == b'a' { "b" } else { "a" };
        lines[3] = format!("{}{flipped}{}", &l3[..3], &l3[4..]);
        let e = import(&mut lines.join("\n").as_bytes()).unwrap_err().to_string();
        assert!(e.contains("paper line 3"), "{e}");
        // A missing line: caught.
        let mut short: Vec<&str> = paper.lines().collect();
        short.remove(2);
        assert!(import(&mut short.join("\n").as_bytes()).is_err());
    }

    #[test]
    fn protected_secret_round_trip() {
        let s = [9u8; 32];
        let line = protect_secret(&s, "correct horse battery").unwrap();
        assert_eq!(unprotect(&line, "correct horse battery").unwrap(), s);
        assert!(unprotect(&line, "wrong horse battery").unwrap_err().to_string().contains("wrong passphrase"));
        assert!(protect_secret(&s, "short").is_err());
    }
}
