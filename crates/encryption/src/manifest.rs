//! The manifest written beside the parts: `<name>.enc.manifest.json`. It lists every part in
//! order with its size and SHA-256, and the plaintext's size and SHA-256. It is written last,
//! so parts without a manifest are visibly an unfinished encryption.

use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "ncb-enc";
pub const SUFFIX: &str = ".manifest.json";
/// Manifests larger than this are refused unread (a hostile file cannot exhaust memory).
pub const MAX_LEN: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u8,
    /// The input's file name, restored by `-d` when DESTINATION is a folder.
    pub file: String,
    pub plaintext_size: u64,
    pub plaintext_sha256: String,
    pub stream_size: u64,
    pub segment_size: u32,
    /// The header's salt, hex: ties the manifest to its stream.
    pub salt: String,
    /// Public-key files: the key ids of the recipients it is sealed for (their identities
    /// decrypt it); empty for a key file's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    pub created: String,
    pub parts: Vec<Part>,
}

impl Manifest {
    /// Parses and checks the manifest's own consistency.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
        if m.format != FORMAT {
            return Err(format!("format is '{}', expected '{FORMAT}'", m.format));
        }
        if m.version != crate::format::VERSION {
            return Err(format!("version {} is not supported", m.version));
        }
        if m.parts.is_empty() {
            return Err("lists no parts".into());
        }
        let total: u64 = m.parts.iter().try_fold(0u64, |a, p| a.checked_add(p.size)).ok_or("part sizes overflow")?;
        if total != m.stream_size {
            return Err(format!("part sizes add up to {total}, not the stream size {}", m.stream_size));
        }
        for p in &m.parts {
            if p.name.is_empty() || p.name.contains('/') || p.name.starts_with('.') {
                return Err(format!("part name '{}' is not a plain file name", p.name));
            }
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("part {}: sha256 is not 64 hex digits", p.name));
            }
        }
        let mut names: Vec<&str> = m.parts.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err("lists a part twice".into());
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: 1,
            file: "x.tar.gz".into(),
            plaintext_size: 1,
            plaintext_sha256: "0".repeat(64),
            stream_size: 10,
            segment_size: 1 << 20,
            salt: "00".repeat(32),
            recipients: Vec::new(),
            created: "2026-11-22T00:00:00Z".into(),
            parts: vec![
                Part { name: "a.000".into(), size: 4, sha256: "a".repeat(64) },
                Part { name: "a.001".into(), size: 6, sha256: "b".repeat(64) },
            ],
        }
    }

    #[test]
    fn round_trip_and_consistency() {
        let m = sample();
        assert_eq!(Manifest::parse(&serde_json::to_vec(&m).unwrap()).unwrap(), m);
        let mut bad = sample();
        bad.stream_size = 11;
        assert!(Manifest::parse(&serde_json::to_vec(&bad).unwrap()).unwrap_err().contains("add up"));
        let mut bad = sample();
        bad.parts[1].name = "a.000".into();
        assert!(Manifest::parse(&serde_json::to_vec(&bad).unwrap()).unwrap_err().contains("twice"));
        let mut bad = sample();
        bad.parts[0].name = "../etc/passwd".into();
        assert!(Manifest::parse(&serde_json::to_vec(&bad).unwrap()).is_err());
    }
}
