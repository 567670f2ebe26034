//! The compression formats a stage can write: gzip (parallel, multi-member), zstd
//! (multithreaded) or none.

use std::io::{self, BufWriter, Write};

use ncb_core::{Error, Params, Result};

use crate::pgzip::{DEFAULT_BLOCK, ParallelGzWriter};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Zstd,
    None,
}

impl Format {
    /// The file-name suffix after `.tar`/`.sql`: `.gz`, `.zst` or nothing.
    pub fn suffix(self) -> &'static str {
        match self {
            Format::Gzip => ".gz",
            Format::Zstd => ".zst",
            Format::None => "",
        }
    }
    pub fn default_level(self) -> u32 {
        match self {
            Format::Gzip => 6,
            Format::Zstd => 3,
            Format::None => 0,
        }
    }
    fn max_level(self) -> u32 {
        match self {
            Format::Gzip => 9,
            Format::Zstd => 19,
            Format::None => 0,
        }
    }
}

/// COMPRESSION_FORMAT and COMPRESSION_LEVEL as every stage that compresses reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub format: Format,
    pub level: u32,
    /// Compressing threads; 0 means one per core.
    pub threads: usize,
}

pub const FORMATS: &[&str] = &["gzip", "zstd", "none"];

/// The parameters of every stage that compresses.
pub const FORMAT_PARAM: ncb_core::ParamSpec = ncb_core::ParamSpec::new(
    "COMPRESSION_FORMAT",
    ncb_core::Kind::Choice(FORMATS),
    "gzip (default, parallel, readable by gzip and tar), zstd (multithreaded) or none",
);
pub const LEVEL_PARAM: ncb_core::ParamSpec =
    ncb_core::ParamSpec::new("COMPRESSION_LEVEL", ncb_core::Kind::Int, "gzip 1-9 (default 6), zstd 1-19 (default 3)");

impl Settings {
    /// The problem with COMPRESSION_FORMAT / COMPRESSION_LEVEL, for a stage's `validate`.
    pub fn check(p: &Params) -> Option<ncb_core::Problem> {
        Self::from_params(p)
            .err()
            .map(|e| ncb_core::Problem { key: "COMPRESSION_LEVEL".into(), message: e.to_string() })
    }

    pub fn from_params(p: &Params) -> Result<Self> {
        let format = match p.choice("COMPRESSION_FORMAT", FORMATS, "gzip")?.as_str() {
            "zstd" => Format::Zstd,
            "none" => Format::None,
            _ => Format::Gzip,
        };
        let level = match p.u64("COMPRESSION_LEVEL")? {
            None => format.default_level(),
            Some(l) => {
                let l = u32::try_from(l).unwrap_or(u32::MAX);
                if format != Format::None && (l == 0 || l > format.max_level()) {
                    return Err(Error::usage(format!(
                        "--COMPRESSION_LEVEL: {l} is out of range for {format:?} (1 to {})",
                        format.max_level()
                    )));
                }
                l
            }
        };
        Ok(Settings { format, level, threads: 0 })
    }
}

/// A compressing writer over `W`.
pub enum Compressor<W: Write + Send + 'static> {
    Gzip(ParallelGzWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    None(BufWriter<W>),
}

impl<W: Write + Send + 'static> Compressor<W> {
    pub fn new(s: Settings, inner: W) -> io::Result<Self> {
        let threads =
            if s.threads == 0 { std::thread::available_parallelism().map_or(2, usize::from) } else { s.threads };
        Ok(match s.format {
            Format::Gzip => Compressor::Gzip(ParallelGzWriter::new(inner, s.level, threads, DEFAULT_BLOCK)),
            Format::Zstd => {
                let level = i32::try_from(s.level).unwrap_or(3);
                let mut z = zstd::stream::write::Encoder::new(inner, level)?;
                z.multithread(u32::try_from(threads).unwrap_or(2))?;
                Compressor::Zstd(z)
            }
            Format::None => Compressor::None(BufWriter::with_capacity(1 << 20, inner)),
        })
    }

    /// Ends the stream and returns the inner writer, everything written to it.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(g) => g.finish(),
            Compressor::Zstd(z) => z.finish(),
            Compressor::None(b) => b.into_inner().map_err(io::IntoInnerError::into_error),
        }
    }
}

impl<W: Write + Send + 'static> std::fmt::Debug for Compressor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compressor::Gzip(_) => "Compressor::Gzip",
            Compressor::Zstd(_) => "Compressor::Zstd",
            Compressor::None(_) => "Compressor::None",
        })
    }
}

impl<W: Write + Send + 'static> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(g) => g.write(buf),
            Compressor::Zstd(z) => z.write(buf),
            Compressor::None(b) => b.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Compressor::Gzip(g) => g.write_all(buf),
            Compressor::Zstd(z) => z.write_all(buf),
            Compressor::None(b) => b.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(g) => g.flush(),
            Compressor::Zstd(z) => z.flush(),
            Compressor::None(b) => b.flush(),
        }
    }
}
