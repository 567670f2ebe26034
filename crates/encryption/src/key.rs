//! Key files: 64 hexadecimal digits (32 random bytes), optionally surrounded by whitespace (a
//! trailing newline) — what `encryption --generate-key` writes, mode 0600; or, for key files
//! inherited from nc-backup-py (a passphrase for gpg), any other file of at least 32 bytes,
//! used whole (one trailing newline removed). A file whose first line is a hex key but that
//! holds more is refused naming the file: a hex key with a comment line after it must not
//! silently become a different key. Shorter files are refused, and so is a key file that
//! group or others may access.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::Mac;
use ncb_core::{Error, IoContext, Result};

/// The master key material of a key file (kept out of logs and Debug output).
pub struct MasterKey(Vec<u8>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A key from its bytes (a public-key file's file key).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MasterKey(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// HMAC-SHA256 of `data` under a key derived for `purpose` (HKDF-SHA256), hex: how records
    /// other than the encrypted stream (the run manifest) are authenticated.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> String {
        hex::encode(self.mac_of(purpose, data).finalize().into_bytes())
    }

    /// Whether `mac_hex` is the MAC of `data` for `purpose` (compared in constant time).
    pub fn verify_mac(&self, purpose: &str, data: &[u8], mac_hex: &str) -> bool {
        hex::decode(mac_hex).is_ok_and(|m| self.mac_of(purpose, data).verify_slice(&m).is_ok())
    }

    fn mac_of(&self, purpose: &str, data: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        let mut k = [0u8; 32];
        // 32 bytes are always a valid HKDF-SHA256 output length.
        let _ = hkdf::Hkdf::<sha2::Sha256>::new(None, &self.0).expand(purpose.as_bytes(), &mut k);
        let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&k)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        k.iter_mut().for_each(|b| *b = 0);
        m.update(data);
        m
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

pub fn load(path: &Path) -> Result<MasterKey> {
    let meta = std::fs::metadata(path).at("key file", path)?;
    if !meta.is_file() {
        return Err(Error::usage(format!("key file {} is not a regular file", path.display())));
    }
    check_private(path, "key file")?;
    let mut raw = std::fs::read(path).at("cannot read key file", path)?;
    let key = parse(&raw).map_err(|what| {
        Error::usage(format!(
            "key file {}: {what}; expected 64 hexadecimal digits (optionally followed by a newline), as `encryption --generate-key FILE` writes, or at least 32 raw bytes (an nc-backup-py key file, used whole)",
            path.display()
        ))
    });
    raw.iter_mut().for_each(|b| *b = 0);
    key
}

/// The key in a key file's bytes, or what is wrong with them (never quoting them).
fn parse(raw: &[u8]) -> std::result::Result<MasterKey, String> {
    let t = raw.trim_ascii();
    if t.len() == 64 && t.iter().all(u8::is_ascii_hexdigit) {
        return hex::decode(t).map(MasterKey).map_err(|e| e.to_string());
    }
    let first_line = raw.split(|&b| b == b'\n').next().unwrap_or_default().trim_ascii();
    if first_line.len() == 64 && first_line.iter().all(u8::is_ascii_hexdigit) {
        return Err("64 hexadecimal digits followed by more lines (a comment?): leave only the key in the file".into());
    }
    let bytes = match raw {
        [b @ .., b'\n'] => b,
        b => b,
    };
    if bytes.len() >= 32 {
        return Ok(MasterKey(bytes.to_vec()));
    }
    Err(format!("it holds {} bytes, fewer than the 32 a key needs", bytes.len()))
}

pub use ncb_core::sys::check_private;

/// Writes a new random key, mode 0600. Never overwrites: an existing file may be the only
/// key to years of backups.
pub fn generate(path: &Path) -> Result<()> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| Error::runtime(format!("no randomness: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .at("cannot create key file", path)?;
    writeln!(f, "{}", hex::encode(key)).at("cannot write key file", path)?;
    f.sync_all().at("cannot sync key file", path)?;
    key.iter_mut().for_each(|b| *b = 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn generate_load_and_refuse_loose_modes() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("key");
        generate(&k).unwrap();
        assert_eq!(std::fs::metadata(&k).unwrap().mode() & 0o777, 0o600);
        assert_eq!(load(&k).unwrap().bytes().len(), 32);
        assert!(generate(&k).is_err(), "overwrote a key");
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load(&k).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("0640"), "{e}");
    }

    fn write_key(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
        let k = dir.join("key");
        std::fs::write(&k, bytes).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        k
    }

    #[test]
    fn only_the_documented_forms_are_keys() {
        let d = tempfile::tempdir().unwrap();
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let want = hex::decode(hex64).unwrap();
        for ok in [hex64.to_owned(), format!("{hex64}\n"), format!("  {hex64}\r\n\n")] {
            let k = write_key(d.path(), ok.as_bytes());
            assert_eq!(load(&k).unwrap().bytes(), want, "{ok:?}");
        }
        let raw: Vec<u8> = (0u8..32).map(|b| b.wrapping_mul(37)).collect();
        assert_eq!(load(&write_key(d.path(), &raw)).unwrap().bytes(), raw);
        assert_eq!(load(&write_key(d.path(), &[raw.as_slice(), b"\n"].concat())).unwrap().bytes(), raw);
        let refused = [
            (format!("{hex64}\n# made 2026-01-01 for web1\n").into_bytes(), "followed by more lines"),
            (b"12345".to_vec(), "holds 5 bytes"),
            (b"password\n".to_vec(), "holds 8 bytes"),
            (Vec::new(), "holds 0 bytes"),
        ];
        // An nc-backup-py key file (a passphrase of 32 bytes or more) is used whole.
        let legacy = b"correct horse battery staple, and then some\n";
        assert_eq!(load(&write_key(d.path(), legacy)).unwrap().bytes(), &legacy[..legacy.len() - 1]);
        for (bytes, why) in refused {
            let k = write_key(d.path(), &bytes);
            let e = load(&k).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(why) && msg.contains(&k.display().to_string()), "{msg}");
            assert!(msg.contains("64 hexadecimal digits") && msg.contains("32 raw bytes"), "{msg}");
            assert_eq!(e.exit_status(), ncb_core::ExitStatus::Usage);
        }
    }
}
