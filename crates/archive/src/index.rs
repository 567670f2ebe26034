//! The index of a file archive: every entry of the tree as the run saw it (name, type, size,
//! modification time) and whether this archive holds it (an increment leaves unchanged entries
//! out). Small beside the archive (gzip'd JSON lines), stored beside it, so that browsing
//! (`backup-runner ls`, `find`) and choosing what a selective restore must fetch read only it.
//!
//! First line: `{"format":"ncb-index","version":1,"run_id":…,"section":…,"archive":…}`; then one line per entry: `{"p":NAME,"t":"f|d|l|h|s","s":SIZE,"m":MTIME,"in":BOOL}`
//! (NAME as stored in the archive: relative to `/`; `h` a hard link to an earlier name).

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use ncb_core::atomic::AtomicFile;
use ncb_core::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};

/// Names of index files end so: restore never unpacks them as data.
pub const SUFFIX: &str = ".ncb-index.jsonl.gz";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub run_id: String,
    pub section: String,
    /// The archive's file name.
    pub archive: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(rename = "p")]
    pub path: String,
    #[serde(rename = "t")]
    pub kind: char,
    #[serde(rename = "s")]
    pub size: u64,
    #[serde(rename = "m")]
    pub mtime: i64,
    /// Whether this archive holds the entry (else an earlier archive of the chain does).
    #[serde(rename = "in")]
    pub stored: bool,
}

/// Writes an index as the archive is written.
pub struct Writer {
    out: flate2::write::GzEncoder<BufWriter<AtomicFile>>,
    path: std::path::PathBuf,
    pub entries: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "index::Writer({})", self.path.display())
    }
}

impl Writer {
    pub fn create(path: &Path, header: &Header) -> Result<Writer> {
        let file = AtomicFile::create(path)?;
        let mut out = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::new(6));
        let line = serde_json::to_string(header).map_err(|e| Error::runtime(format!("index header: {e}")))?;
        writeln!(out, "{line}").at("cannot write", path)?;
        Ok(Writer { out, path: path.to_path_buf(), entries: 0 })
    }

    pub fn entry(&mut self, name: &Path, kind: char, size: u64, mtime: i64, stored: bool) -> Result<()> {
        let e = Entry { path: name.to_string_lossy().into_owned(), kind, size, mtime, stored };
        let line = serde_json::to_string(&e).map_err(|e| Error::runtime(format!("index entry: {e}")))?;
        writeln!(self.out, "{line}").at("cannot write", &self.path)?;
        self.entries += 1;
        Ok(())
    }

    /// Puts the index in place (atomically, durably).
    pub fn finish(self) -> Result<std::path::PathBuf> {
        let buf = self.out.finish().at("cannot write", &self.path)?;
        let file =
            buf.into_inner().map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e.into_error()))?;
        file.commit()
    }
}

/// Reads an index: its header, then each entry in turn (memory holds one line).
pub fn read(input: impl Read, mut each: impl FnMut(&Header, Entry) -> Result<()>) -> Result<Header> {
    let mut lines = BufReader::new(flate2::read::MultiGzDecoder::new(input)).lines();
    let first = lines
        .next()
        .ok_or_else(|| Error::runtime("empty index"))?
        .map_err(|e| Error::runtime(format!("index: {e}")))?;
    let header: Header = serde_json::from_str(&first).map_err(|e| Error::runtime(format!("index header: {e}")))?;
    if header.format != "ncb-index" || header.version != 1 {
        return Err(Error::runtime(format!("unsupported index {} v{}", header.format, header.version)));
    }
    for line in lines {
        let line = line.map_err(|e| Error::runtime(format!("index: {e}")))?;
        let e: Entry = serde_json::from_str(&line).map_err(|e| Error::runtime(format!("index entry: {e}")))?;
        each(&header, e)?;
    }
    Ok(header)
}
