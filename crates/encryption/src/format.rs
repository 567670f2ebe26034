//! The encrypted stream format, version 1. docs/FORMAT.md is the normative description;
//! this file is its implementation, and its tests pin the byte layout.
//!
//! ```text
//! stream  = header(96) || segment_0 || ... || segment_n
//! header  = magic "NCBENC\r\n" (8) | version 1 (1) | algorithm 1 = AES-256-GCM (1)
//!         | kdf 1 = HKDF-SHA256 (1) | flags 0 (1) | segment_size u32 LE (4)
//!         | salt (32) | nonce_prefix (7) | reserved 0 (1)                     = 56 bytes "prefix"
//!         | commitment = HMAC-SHA256(commit_key, prefix) (32)
//!         | check = SHA-256(prefix || commitment)[0..8] (8)
//! keys    = HKDF-SHA256(ikm = master key, salt = salt, info = "ncb-enc v1") -> 64 bytes:
//!           enc_key = [0..32], commit_key = [32..64]
//! segment = AES-256-GCM(enc_key, nonce, plaintext_i, aad = prefix) -> ciphertext_i || tag(16)
//! nonce   = nonce_prefix (7) || i as u32 BE (4) || last (1: 0x01 on the final segment, else 0x00)
//! ```
//! Every segment but the last holds exactly `segment_size` plaintext bytes; the last holds
//! 0..=segment_size (an empty input is one empty last segment).

use hmac::{Hmac, Mac};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"NCBENC\r\n";
pub const VERSION: u8 = 1;
pub const ALG_AES256GCM: u8 = 1;
pub const KDF_HKDF_SHA256: u8 = 1;
pub const PREFIX_LEN: usize = 56;
pub const HEADER_LEN: usize = 96;
pub const TAG_LEN: usize = 16;
pub const DEFAULT_SEGMENT: u32 = 1 << 20;
/// Segment sizes a reader accepts (bounds the memory a hostile header can ask for).
pub const MIN_SEGMENT: u32 = 1 << 10;
pub const MAX_SEGMENT: u32 = 1 << 24;

/// Why a stream cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    TooShort,
    BadMagic,
    UnsupportedVersion(u8),
    UnsupportedAlgorithm(u8, u8),
    BadSegmentSize(u32),
    /// The header's own checksum fails: the bytes are damaged.
    HeaderCorrupted,
    /// The header is intact but the key does not open it.
    WrongKey,
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::TooShort => write!(f, "too short to hold a header ({HEADER_LEN} bytes)"),
            FormatError::BadMagic => f.write_str("not an nc-backup encrypted stream (bad magic)"),
            FormatError::UnsupportedVersion(v) => {
                write!(f, "format version {v} is not supported (this build reads version {VERSION})")
            }
            FormatError::UnsupportedAlgorithm(a, k) => {
                write!(f, "algorithm {a} / kdf {k} is not supported")
            }
            FormatError::BadSegmentSize(s) => write!(f, "segment size {s} is out of range"),
            FormatError::HeaderCorrupted => f.write_str("header corrupted (its checksum does not match)"),
            FormatError::WrongKey => {
                f.write_str("wrong key: the key file does not match this backup (key commitment differs)")
            }
        }
    }
}

/// The parsed, unauthenticated fields of a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub segment_size: u32,
    pub salt: [u8; 32],
    pub nonce_prefix: [u8; 7],
    pub commitment: [u8; 32],
}

impl Header {
    pub fn new(segment_size: u32, salt: [u8; 32], nonce_prefix: [u8; 7], master: &[u8]) -> Self {
        let mut h = Header { segment_size, salt, nonce_prefix, commitment: [0; 32] };
        let keys = Keys::derive(master, &salt);
        h.commitment = keys.commit(&h.prefix());
        h
    }

    pub fn prefix(&self) -> [u8; PREFIX_LEN] {
        let mut p = [0u8; PREFIX_LEN];
        p[..8].copy_from_slice(MAGIC);
        p[8] = VERSION;
        p[9] = ALG_AES256GCM;
        p[10] = KDF_HKDF_SHA256;
        p[11] = 0;
        p[12..16].copy_from_slice(&self.segment_size.to_le_bytes());
        p[16..48].copy_from_slice(&self.salt);
        p[48..55].copy_from_slice(&self.nonce_prefix);
        p[55] = 0;
        p
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..PREFIX_LEN].copy_from_slice(&self.prefix());
        b[PREFIX_LEN..88].copy_from_slice(&self.commitment);
        let check = Sha256::digest(&b[..88]);
        b[88..].copy_from_slice(&check[..8]);
        b
    }

    /// Parses and checks the structure and checksum; the key is checked by [`Keys::open`].
    pub fn parse(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < HEADER_LEN {
            return Err(if b.len() >= 8 && &b[..8] != MAGIC { FormatError::BadMagic } else { FormatError::TooShort });
        }
        if &b[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        if Sha256::digest(&b[..88])[..8] != b[88..HEADER_LEN] {
            return Err(FormatError::HeaderCorrupted);
        }
        if b[8] != VERSION {
            return Err(FormatError::UnsupportedVersion(b[8]));
        }
        if b[9] != ALG_AES256GCM || b[10] != KDF_HKDF_SHA256 || b[11] != 0 || b[55] != 0 {
            return Err(FormatError::UnsupportedAlgorithm(b[9], b[10]));
        }
        let mut seg = [0u8; 4];
        seg.copy_from_slice(&b[12..16]);
        let segment_size = u32::from_le_bytes(seg);
        if !(MIN_SEGMENT..=MAX_SEGMENT).contains(&segment_size) {
            return Err(FormatError::BadSegmentSize(segment_size));
        }
        let mut h = Header { segment_size, salt: [0; 32], nonce_prefix: [0; 7], commitment: [0; 32] };
        h.salt.copy_from_slice(&b[16..48]);
        h.nonce_prefix.copy_from_slice(&b[48..55]);
        h.commitment.copy_from_slice(&b[56..88]);
        Ok(h)
    }

    /// Ciphertext size of a plaintext of `n` bytes, header included.
    pub fn stream_len(&self, n: u64) -> u64 {
        let seg = u64::from(self.segment_size);
        let segments = if n == 0 { 1 } else { n.div_ceil(seg) };
        HEADER_LEN as u64 + n + segments * TAG_LEN as u64
    }
}

/// AES-GCM refused to seal a segment (only possible past its per-message size limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealError;

/// The per-file keys.
pub struct Keys {
    cipher: LessSafeKey,
    commit_key: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn derive(master: &[u8], salt: &[u8; 32]) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(salt), master);
        let mut okm = [0u8; 64];
        // 64 bytes is far below HKDF-SHA256's 8160-byte limit.
        let _ = hk.expand(b"ncb-enc v1", &mut okm);
        let key = UnboundKey::new(&AES_256_GCM, &okm[..32]).unwrap_or_else(|_| unreachable!("32-byte key"));
        let cipher = LessSafeKey::new(key);
        let mut commit_key = [0u8; 32];
        commit_key.copy_from_slice(&okm[32..]);
        Keys { cipher, commit_key }
    }

    fn commit(&self, prefix: &[u8]) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.commit_key).unwrap_or_else(|_| unreachable!("any key length"));
        mac.update(prefix);
        mac.finalize().into_bytes().into()
    }

    /// The keys of `header`, after checking the key commitment in constant time.
    pub fn open(master: &[u8], header: &Header) -> Result<Self, FormatError> {
        use subtle::ConstantTimeEq;
        let keys = Keys::derive(master, &header.salt);
        let expect = keys.commit(&header.prefix());
        if bool::from(expect.ct_eq(&header.commitment)) { Ok(keys) } else { Err(FormatError::WrongKey) }
    }

    fn nonce(prefix: &[u8; 7], index: u32, last: bool) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..7].copy_from_slice(prefix);
        n[7..11].copy_from_slice(&index.to_be_bytes());
        n[11] = u8::from(last);
        n
    }

    /// Encrypts `buf` in place and appends the tag.
    /// Fails only past AES-GCM's 64 GiB per-message limit (segments are at most 16 MiB);
    /// the buffer is then cleared, so plaintext can never be written as if sealed.
    pub fn seal(&self, h: &Header, aad: &[u8], index: u32, last: bool, buf: &mut Vec<u8>) -> Result<(), SealError> {
        let nonce = Nonce::assume_unique_for_key(Self::nonce(&h.nonce_prefix, index, last));
        match self.cipher.seal_in_place_separate_tag(nonce, Aad::from(aad), buf) {
            Ok(tag) => {
                buf.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                buf.clear();
                Err(SealError)
            }
        }
    }

    /// Checks and decrypts `buf` (ciphertext || tag) in place; false when it does not
    /// authenticate at this index with this last-flag.
    pub fn open_segment(&self, h: &Header, aad: &[u8], index: u32, last: bool, buf: &mut Vec<u8>) -> bool {
        if buf.len() < TAG_LEN {
            return false;
        }
        let split = buf.len() - TAG_LEN;
        let Ok(tag) = ring::aead::Tag::try_from(&buf[split..]) else { return false };
        buf.truncate(split);
        let nonce = Nonce::assume_unique_for_key(Self::nonce(&h.nonce_prefix, index, last));
        self.cipher.open_in_place_separate_tag(nonce, Aad::from(aad), tag, buf, 0..).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_layout() {
        let h = Header::new(DEFAULT_SEGMENT, [7; 32], [9; 7], &[1; 32]);
        let b = h.to_bytes();
        assert_eq!(&b[..8], b"NCBENC\r\n");
        assert_eq!(b[8], 1);
        assert_eq!(&b[12..16], &DEFAULT_SEGMENT.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap(), h);
        assert!(Keys::open(&[1; 32], &h).is_ok());
        assert_eq!(Keys::open(&[2; 32], &h).unwrap_err(), FormatError::WrongKey);
    }

    #[test]
    fn every_header_byte_is_checked() {
        let b = Header::new(DEFAULT_SEGMENT, [7; 32], [9; 7], &[1; 32]).to_bytes();
        for i in 0..HEADER_LEN {
            let mut c = b;
            c[i] ^= 0x20;
            let r = Header::parse(&c).and_then(|h| Keys::open(&[1; 32], &h).map(|_| ()));
            assert!(r.is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn segments_bind_index_and_last_flag() {
        let h = Header::new(DEFAULT_SEGMENT, [3; 32], [4; 7], &[5; 32]);
        let k = Keys::open(&[5; 32], &h).unwrap();
        let aad = h.prefix();
        let mut buf = b"segment".to_vec();
        k.seal(&h, &aad, 3, false, &mut buf).unwrap();
        for (i, last) in [(2, false), (3, true), (4, false)] {
            let mut c = buf.clone();
            assert!(!k.open_segment(&h, &aad, i, last, &mut c));
        }
        assert!(k.open_segment(&h, &aad, 3, false, &mut buf));
        assert_eq!(buf, b"segment");
    }

    #[test]
    fn stream_length() {
        let h = Header::new(1024, [0; 32], [0; 7], &[0; 32]);
        assert_eq!(h.stream_len(0), 96 + 16);
        assert_eq!(h.stream_len(1024), 96 + 1024 + 16);
        assert_eq!(h.stream_len(1025), 96 + 1025 + 32);
    }
}
