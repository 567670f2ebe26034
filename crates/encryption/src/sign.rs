//! Host signing keys (Ed25519, ring): a host signs its run manifests with a private key it
//! holds; anyone with the public key checks them. Unlike the key-file MAC, checking needs no
//! secret, so a host that encrypts for recipients (and holds no key file) still proves which
//! files a run holds. docs/FORMAT.md ("Signed run manifests") says what it proves.
//!
//! Files: `NAME` (0600): `ncb-signing-v1:<hex PKCS#8 v2 document>`; `NAME.pub`:
//! `ncb-verify-v1:<hex 32-byte public key>`. Key id: SHA-256("ncb-sign key id" || public)[0..8].

use std::path::Path;

use ncb_core::{Error, IoContext, Result};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

const SIGNING_TAG: &str = "ncb-signing-v1:";
const VERIFY_TAG: &str = "ncb-verify-v1:";

pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.id())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyKey {
    pub public: [u8; 32],
}

pub fn key_id(public: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"ncb-sign key id");
    h.update(public);
    hex::encode(&h.finalize()[..8])
}

impl SigningKey {
    pub fn id(&self) -> String {
        key_id(self.pair.public_key().as_ref())
    }

    /// The Ed25519 signature of `data`, hex.
    pub fn sign(&self, data: &[u8]) -> String {
        hex::encode(self.pair.sign(data).as_ref())
    }
}

impl VerifyKey {
    pub fn id(&self) -> String {
        key_id(&self.public)
    }

    pub fn verify(&self, data: &[u8], signature_hex: &str) -> bool {
        hex::decode(signature_hex).is_ok_and(|s| UnparsedPublicKey::new(&ED25519, self.public).verify(data, &s).is_ok())
    }
}

fn one_line(path: &Path, tag: &str, what: &str) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).at(&format!("cannot read {what}"), path)?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    match lines.as_slice() {
        [l] if l.starts_with(tag) => {
            hex::decode(&l[tag.len()..]).map_err(|_| Error::usage(format!("{}: not hexadecimal", path.display())))
        }
        [l] if l.starts_with(SIGNING_TAG) || l.starts_with(VERIFY_TAG) => Err(Error::usage(format!(
            "{} is a {} key, not a {what}",
            path.display(),
            if l.starts_with(SIGNING_TAG) { "signing (private)" } else { "verifying (public)" }
        ))),
        _ => Err(Error::usage(format!("{} is not a {what} (one {tag}… line)", path.display()))),
    }
}

/// Writes a signing key `path` (0600, never overwritten) and its public key `path.pub`.
pub fn generate(path: &Path) -> Result<String> {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| Error::runtime("cannot generate an Ed25519 key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| Error::runtime("bad generated key"))?;
    let id = key_id(pair.public_key().as_ref());
    let pub_path = {
        let mut p = path.as_os_str().to_owned();
        p.push(".pub");
        std::path::PathBuf::from(p)
    };
    let secret = format!(
        "# nc-backup host signing key {id} (Ed25519): signs this host's run manifests\n{SIGNING_TAG}{}\n",
        hex::encode(doc.as_ref())
    );
    let public = format!(
        "# nc-backup host verifying key {id}: keep a copy with the identities; restore and verify take it as --signer\n{VERIFY_TAG}{}\n",
        hex::encode(pair.public_key().as_ref())
    );
    ncb_core::atomic::write_new_file(path, secret.as_bytes(), 0o600)?;
    ncb_core::atomic::write_new_file(&pub_path, public.as_bytes(), 0o644)?;
    Ok(id)
}

pub fn load_signing(path: &Path) -> Result<SigningKey> {
    let doc = one_line(path, SIGNING_TAG, "signing key")?;
    crate::key::check_private(path, "signing key")?;
    let pair = Ed25519KeyPair::from_pkcs8(&doc)
        .map_err(|_| Error::usage(format!("{}: not an Ed25519 key", path.display())))?;
    Ok(SigningKey { pair })
}

pub fn load_verify(path: &Path) -> Result<VerifyKey> {
    let b = one_line(path, VERIFY_TAG, "verifying key")?;
    let public: [u8; 32] =
        b.try_into().map_err(|_| Error::usage(format!("{}: a public key is 32 bytes", path.display())))?;
    Ok(VerifyKey { public })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_with_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("host.sign");
        let id = generate(&p).unwrap();
        let sk = load_signing(&p).unwrap();
        let vk = load_verify(&d.path().join("host.sign.pub")).unwrap();
        assert_eq!((sk.id(), vk.id()), (id.clone(), id));
        let sig = sk.sign(b"manifest");
        assert!(vk.verify(b"manifest", &sig));
        assert!(!vk.verify(b"manifesT", &sig));
        assert!(load_verify(&p).unwrap_err().to_string().contains("signing (private)"));
        assert!(generate(&p).is_err());
    }
}
