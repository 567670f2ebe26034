//! Key files. Format: 64 hexadecimal characters (32 random bytes), optionally followed by a
//! newline — what `encryption --generate-key` writes, mode 0600. Any other file of at least 32
//! bytes (an nc-backup-py key file) is used whole as high-entropy key material. A key file
//! that group or others may access is refused.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::usage(format!(
            "key file {} is accessible by group or others (mode {mode:04o}): run chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    let raw = std::fs::read(path).at("cannot read key file", path)?;
    let text = String::from_utf8_lossy(&raw);
    let t = text.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        let key = hex::decode(t).map_err(|e| Error::usage(format!("key file {}: {e}", path.display())))?;
        return Ok(MasterKey(key));
    }
    let material = raw.strip_suffix(b"\n").unwrap_or(&raw).to_vec();
    if material.len() < 32 {
        return Err(Error::usage(format!(
            "key file {} holds {} bytes: too short to be a key (generate one with: encryption --generate-key FILE)",
            path.display(),
            material.len()
        )));
    }
    Ok(MasterKey(material))
}

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
    use std::os::unix::fs::PermissionsExt;

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

    #[test]
    fn short_legacy_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("key");
        std::fs::write(&k, b"password\n").unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&k).unwrap_err().to_string().contains("too short"));
    }
}
