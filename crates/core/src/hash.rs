//! Streaming SHA-256: of a file, or of bytes as they are written.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};

/// Size and hex SHA-256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).at("cannot open", path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).at("cannot read", path)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Passes writes through to `inner`, counting and hashing them.
#[derive(Debug)]
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter { inner, hasher: Sha256::new(), bytes: 0 }
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
    /// The inner writer, the byte count and the hex digest.
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
