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

/// Passes reads through, counting and hashing them; at the end of the input the size and
/// SHA-256 must be the expected ones, else the last read fails (InvalidData, naming `what`).
/// A reader that is not read to its end checks nothing: call [`CheckedReader::finish`].
pub struct CheckedReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    size: u64,
    sha256: String,
    what: String,
    checked: bool,
}

impl<R> std::fmt::Debug for CheckedReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedReader").field("what", &self.what).field("bytes", &self.bytes).finish()
    }
}

impl<R: Read> CheckedReader<R> {
    pub fn new(inner: R, size: u64, sha256: &str, what: impl Into<String>) -> Self {
        CheckedReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            size,
            sha256: sha256.to_owned(),
            what: what.into(),
            checked: false,
        }
    }

    /// Reads what is left (into nothing) and checks the whole.
    pub fn finish(mut self) -> io::Result<u64> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.bytes)
    }

    fn check(&mut self) -> io::Result<()> {
        let digest = hex::encode(self.hasher.clone().finalize());
        if self.bytes == self.size && digest == self.sha256 {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {} bytes with sha256 {digest}, the run manifest says {} bytes with {} (damaged or replaced)",
                self.what, self.bytes, self.size, self.sha256
            ),
        ))
    }
}

impl<R: Read> Read for CheckedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if !self.checked {
                self.check()?;
                self.checked = true;
            }
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        if self.bytes > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: longer than the {} bytes the run manifest says (damaged or replaced)",
                    self.what, self.size
                ),
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_reader_accepts_the_right_bytes_only() {
        let data = b"hello world";
        let sha = hex::encode(Sha256::digest(data));
        assert_eq!(CheckedReader::new(&data[..], 11, &sha, "x").finish().unwrap(), 11);
        let e = CheckedReader::new(&b"hello worle"[..], 11, &sha, "part.000").finish().unwrap_err();
        assert!(e.to_string().contains("part.000: 11 bytes with sha256"), "{e}");
        let e = CheckedReader::new(&b"hello"[..], 11, &sha, "p").finish().unwrap_err();
        assert!(e.to_string().contains("5 bytes"), "{e}");
        let e = CheckedReader::new(&b"hello world!"[..], 11, &sha, "p").finish().unwrap_err();
        assert!(e.to_string().contains("longer than the 11 bytes"), "{e}");
    }
}
