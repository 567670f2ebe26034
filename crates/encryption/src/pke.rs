//! Public-key encryption: a host holds only *recipients* (X25519 public keys) and can write
//! backups it cannot read; the *identity* (the private key) is kept elsewhere. docs/FORMAT.md
//! ("Public-key files") is the normative description; this is its implementation.
//!
//! ```text
//! file    = pk_header || stream(master = file_key)          (the version-1 stream, unchanged)
//! pk_header = magic "NCBPKE\r\n" (8) | version 1 (1) | kem 1 = X25519-HKDF-SHA256/AES-256-GCM (1)
//!           | count n, 1..=16 (1) | reserved 0 (1)
//!           | n × stanza (88) | mac (32)
//! stanza  = key_id (8) | ephemeral public key (32) | wrapped file key (48)
//! key_id  = SHA-256("ncb-pke key id" || recipient public key)[0..8]
//! shared  = X25519(ephemeral secret, recipient public) = X25519(identity secret, ephemeral public)
//! wrap    = HKDF-SHA256(ikm = shared, salt = ephemeral public || recipient public,
//!                       info = "ncb-pke v1 wrap") -> 32 bytes
//! wrapped = AES-256-GCM(wrap, nonce = 12 zero bytes, file_key, aad = key_id || ephemeral public)
//! mac     = HMAC-SHA256(HKDF-SHA256(ikm = file_key, salt = "", info = "ncb-pke v1 header"),
//!                       every pk_header byte before it)
//! ```
//! The file key (32 random bytes per file) is then the master key of the version-1 stream, so
//! its key commitment, segment authentication and truncation detection are unchanged. A fresh
//! ephemeral key per stanza (as age does) keeps the wrap key single-use under its zero nonce.

use std::path::Path;

use hmac::Mac;
use ncb_core::{Error, IoContext, Result};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

pub const MAGIC: &[u8; 8] = b"NCBPKE\r\n";
pub const VERSION: u8 = 1;
pub const KEM_X25519: u8 = 1;
pub const STANZA_LEN: usize = 88;
pub const MAX_RECIPIENTS: usize = 16;
const IDENTITY_TAG: &str = "ncb-identity-v1:";
const RECIPIENT_TAG: &str = "ncb-recipient-v1:";

/// A recipient: an X25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub public: [u8; 32],
}

/// An identity: the X25519 private key of a recipient (kept out of Debug).
pub struct Identity {
    secret: StaticSecret,
    pub public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", key_id(&self.public))
    }
}

/// The 8-byte id of a public key, hex: what headers, manifests and `verify` name.
pub fn key_id(public: &[u8; 32]) -> String {
    hex::encode(key_id_bytes(public))
}

fn key_id_bytes(public: &[u8; 32]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(b"ncb-pke key id");
    h.update(public);
    let d = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    id
}

impl Recipient {
    pub fn id(&self) -> String {
        key_id(&self.public)
    }
}

impl Identity {
    pub fn id(&self) -> String {
        key_id(&self.public)
    }

    /// The private key, for sealing it with a passphrase.
    pub(crate) fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    pub fn recipient(&self) -> Recipient {
        Recipient { public: self.public }
    }

    fn from_secret(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret).to_bytes();
        Identity { secret, public }
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::runtime(format!("no randomness: {e}")))?;
    Ok(b)
}

/// Writes an identity `path` (0600, never over an existing file) and its recipient
/// `path.pub`; returns the key id.
pub fn generate_keypair(path: &Path) -> Result<String> {
    let id = Identity::from_secret(random()?);
    let pub_path = {
        let mut p = path.as_os_str().to_owned();
        p.push(".pub");
        std::path::PathBuf::from(p)
    };
    let kid = id.id();
    let secret_text = format!(
        "# nc-backup identity {kid} (X25519 private key): it decrypts every backup made for {kid}.\n# Keep it off the hosts that make backups; they need only {}.\n{IDENTITY_TAG}{}\n",
        pub_path.display(),
        hex::encode(id.secret.to_bytes())
    );
    let public_text =
        format!("# nc-backup recipient {kid} (X25519 public key)\n{RECIPIENT_TAG}{}\n", hex::encode(id.public));
    // Never over an existing file (it may be the only key to years of backups), atomically.
    ncb_core::atomic::write_new_file(path, secret_text.as_bytes(), 0o600)?;
    ncb_core::atomic::write_new_file(&pub_path, public_text.as_bytes(), 0o644)?;
    Ok(kid)
}

fn tagged_hex(path: &Path, tag: &str, what: &str) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).at(&format!("cannot read {what}"), path)?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let [line] = lines.as_slice() else {
        return Err(Error::usage(format!("{what} {} must hold one {tag}… line", path.display())));
    };
    let hexpart = line.strip_prefix(tag).ok_or_else(|| {
        let hint = if tag == RECIPIENT_TAG && line.starts_with(IDENTITY_TAG) {
            " (this is an identity, the private key: give the .pub file)"
        } else if tag == IDENTITY_TAG && line.starts_with(RECIPIENT_TAG) {
            " (this is a recipient, a public key: decrypting needs the identity)"
        } else {
            ""
        };
        Error::usage(format!("{} is not a {what}{hint}", path.display()))
    })?;
    let bytes = hex::decode(hexpart).map_err(|_| Error::usage(format!("{}: not hexadecimal", path.display())))?;
    bytes.try_into().map_err(|_| Error::usage(format!("{}: a key is 32 bytes", path.display())))
}

pub fn load_recipient(path: &Path) -> Result<Recipient> {
    Ok(Recipient { public: tagged_hex(path, RECIPIENT_TAG, "recipient file")? })
}

/// An identity file, refused when group or others may access it.
pub fn load_identity(path: &Path) -> Result<Identity> {
    // What the file is comes first: a recipient given as an identity is named as such.
    let line = crate::paper::key_line(path)?;
    let secret = if line.starts_with(crate::paper::PROTECTED_TAG) {
        crate::paper::unprotect(&line, &crate::paper::passphrase()?)
            .map_err(|e| Error::usage(format!("identity file {}: {e}", path.display())))?
    } else {
        tagged_hex(path, IDENTITY_TAG, "identity file")?
    };
    crate::key::check_private(path, "identity file")?;
    Ok(Identity::from_secret(secret))
}

fn wrap_key(shared: &[u8; 32], eph: &[u8; 32], recipient: &[u8; 32]) -> [u8; 32] {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph);
    salt[32..].copy_from_slice(recipient);
    let mut k = [0u8; 32];
    let _ = hkdf::Hkdf::<Sha256>::new(Some(&salt), shared).expand(b"ncb-pke v1 wrap", &mut k);
    k
}

fn header_mac(file_key: &[u8; 32], bytes: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 32];
    let _ = hkdf::Hkdf::<Sha256>::new(Some(b""), file_key).expand(b"ncb-pke v1 header", &mut k);
    let mut m = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&k).unwrap_or_else(|_| unreachable!("any key length"));
    m.update(bytes);
    m.finalize().into_bytes().into()
}

/// The header length for `n` recipients.
pub fn header_len(n: usize) -> usize {
    12 + n * STANZA_LEN + 32
}

/// A fresh file key sealed for every recipient: (the key, the pk_header bytes).
pub fn seal(recipients: &[Recipient]) -> Result<([u8; 32], Vec<u8>)> {
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(Error::usage(format!("1 to {MAX_RECIPIENTS} recipients, not {}", recipients.len())));
    }
    let file_key: [u8; 32] = random()?;
    let mut out = Vec::with_capacity(header_len(recipients.len()));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, KEM_X25519, recipients.len() as u8, 0]);
    for r in recipients {
        let eph = StaticSecret::from(random::<32>()?);
        let eph_pub = PublicKey::from(&eph).to_bytes();
        let shared = eph.diffie_hellman(&PublicKey::from(r.public));
        if !shared.was_contributory() {
            return Err(Error::usage(format!("recipient {} is not a usable X25519 key", r.id())));
        }
        let wk = wrap_key(shared.as_bytes(), &eph_pub, &r.public);
        let kid = key_id_bytes(&r.public);
        let mut aad = [0u8; 40];
        aad[..8].copy_from_slice(&kid);
        aad[8..].copy_from_slice(&eph_pub);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &wk).map_err(|_| Error::runtime("AES key"))?);
        let mut buf = file_key.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key([0u8; 12]), Aad::from(aad), &mut buf)
            .map_err(|_| Error::runtime("cannot seal the file key"))?;
        out.extend_from_slice(&kid);
        out.extend_from_slice(&eph_pub);
        out.extend_from_slice(&buf);
    }
    let mac = header_mac(&file_key, &out);
    out.extend_from_slice(&mac);
    Ok((file_key, out))
}

/// The recipient count of a pk_header's first 12 bytes (checked), to know its length.
pub fn count(first12: &[u8]) -> std::result::Result<usize, String> {
    if first12.len() < 12 || &first12[..8] != MAGIC {
        return Err("not a public-key file (bad magic)".into());
    }
    if first12[8] != VERSION || first12[9] != KEM_X25519 || first12[11] != 0 {
        return Err(format!("public-key format version {} / kem {} is not supported", first12[8], first12[9]));
    }
    let n = first12[10] as usize;
    if n == 0 || n > MAX_RECIPIENTS {
        return Err(format!("{n} recipients is out of range"));
    }
    Ok(n)
}

/// The key ids a pk_header is sealed for.
pub fn recipients_of(header: &[u8]) -> Vec<String> {
    let n = count(header).unwrap_or(0);
    (0..n).filter_map(|i| header.get(12 + i * STANZA_LEN..12 + i * STANZA_LEN + 8).map(hex::encode)).collect()
}

/// Opens a pk_header with one of `identities`: the file key, or why not.
pub fn open(header: &[u8], identities: &[Identity]) -> std::result::Result<[u8; 32], String> {
    let n = count(header)?;
    if header.len() != header_len(n) {
        return Err("the public-key header is truncated".into());
    }
    let body = &header[..header.len() - 32];
    let mac = &header[header.len() - 32..];
    for i in 0..n {
        let st = &header[12 + i * STANZA_LEN..12 + (i + 1) * STANZA_LEN];
        let (kid, eph_pub, wrapped) = (&st[..8], &st[8..40], &st[40..]);
        for id in identities.iter().filter(|id| key_id_bytes(&id.public) == kid) {
            let eph: [u8; 32] = eph_pub.try_into().unwrap_or([0; 32]);
            let shared = id.secret.diffie_hellman(&PublicKey::from(eph));
            let wk = wrap_key(shared.as_bytes(), &eph, &id.public);
            let Ok(unbound) = UnboundKey::new(&AES_256_GCM, &wk) else { continue };
            let key = LessSafeKey::new(unbound);
            let mut buf = wrapped.to_vec();
            let Ok(plain) = key.open_in_place(Nonce::assume_unique_for_key([0u8; 12]), Aad::from(&st[..40]), &mut buf)
            else {
                return Err(format!("the stanza for key {} does not open: the header is corrupted", hex::encode(kid)));
            };
            let fk: [u8; 32] = plain.try_into().map_err(|_| "a wrapped file key is 32 bytes".to_owned())?;
            if !bool::from(subtle::ConstantTimeEq::ct_eq(&header_mac(&fk, body)[..], mac)) {
                return Err("the public-key header was altered (its MAC does not match)".into());
            }
            return Ok(fk);
        }
    }
    let ids: Vec<String> = identities.iter().map(Identity::id).collect();
    Err(format!(
        "no identity given opens it: it is sealed for key(s) {}, the identities given are {}",
        recipients_of(header).join(", "),
        if ids.is_empty() { "none".into() } else { ids.join(", ") }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_with_each_recipient_only() {
        let a = Identity::from_secret([1; 32]);
        let b = Identity::from_secret([2; 32]);
        let c = Identity::from_secret([3; 32]);
        let (k, h) = seal(&[a.recipient(), b.recipient()]).unwrap();
        assert_eq!(h.len(), header_len(2));
        assert_eq!(open(&h, std::slice::from_ref(&a)).unwrap(), k);
        assert_eq!(open(&h, std::slice::from_ref(&b)).unwrap(), k);
        let e = open(&h, std::slice::from_ref(&c)).unwrap_err();
        assert!(e.contains(&a.id()) && e.contains(&c.id()), "{e}");
        assert_eq!(recipients_of(&h), [a.id(), b.id()]);
        // Any altered byte of the header is caught.
        for i in 0..h.len() {
            let mut t = h.clone();
            t[i] ^= 0x40;
            assert!(open(&t, std::slice::from_ref(&a)).is_err(), "byte {i} altered unnoticed");
        }
    }

    #[test]
    fn key_files_round_trip_and_are_not_confused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("backup-key");
        let kid = generate_keypair(&p).unwrap();
        let id = load_identity(&p).unwrap();
        let r = load_recipient(&d.path().join("backup-key.pub")).unwrap();
        assert_eq!((id.id(), r.id()), (kid.clone(), kid));
        assert!(load_recipient(&p).unwrap_err().to_string().contains("give the .pub file"));
        std::fs::set_permissions(d.path().join("backup-key.pub"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        assert!(
            load_identity(&d.path().join("backup-key.pub"))
                .unwrap_err()
                .to_string()
                .contains("decrypting needs the identity")
        );
        assert!(generate_keypair(&p).is_err(), "an identity was overwritten");
    }
}
