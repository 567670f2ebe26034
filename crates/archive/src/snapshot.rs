//! What an incremental archive knows of the run before it: for every folder archived, its
//! entries with what tells a change (type, inode, size, modification and change times).
//!
//! A snapshot is written while its archive is, one folder block at a time in the order the
//! archive visits folders (depth first, names in byte order: the order of [`Path`]'s
//! comparison), and read back by the next run in step with its own walk, so memory holds one
//! folder whatever the size of the tree.
//!
//! File layout: `NCBSNAP1\n`, a zstd stream of blocks, then the header as JSON, its length
//! (u32 LE), and the SHA-256 of everything before it. [`Reader::open`] checks that hash
//! before anything is trusted: a damaged snapshot is refused whole, never half used.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use ncb_core::atomic::AtomicFile;
use ncb_core::hash::HashWriter;
use ncb_core::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 9] = b"NCBSNAP1\n";
/// Ends the block stream.
const END: u32 = u32::MAX;

/// What a snapshot says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// The run whose archive this snapshot describes.
    pub run_id: String,
    /// 0 for a full archive, n for the n-th increment after it.
    pub level: u32,
    /// The run holding the full archive this chain starts with.
    pub full_run: String,
    /// The run this one's archive is an increment on (none for a full one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_run: Option<String>,
    /// What was archived (roots, excludes, options): another fileset starts a new chain.
    pub fileset: String,
    pub created: String,
    /// Names listed as in the archive that could not be read into it: the next run stores
    /// them again whatever their times say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// The kind of an entry, as far as a change goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    File = b'f',
    Dir = b'd',
    Symlink = b'l',
    Special = b's',
}

impl Kind {
    pub fn of(m: &std::fs::Metadata) -> Kind {
        let t = m.file_type();
        if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else if t.is_file() {
            Kind::File
        } else {
            let _ = t.is_fifo();
            Kind::Special
        }
    }

    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            b'f' => Kind::File,
            b'd' => Kind::Dir,
            b'l' => Kind::Symlink,
            b's' => Kind::Special,
            _ => return None,
        })
    }
}

/// One entry of a folder and what tells whether it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Child {
    pub fn of(name: &[u8], m: &std::fs::Metadata) -> Child {
        Child {
            name: name.to_vec(),
            kind: Kind::of(m),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), u32::try_from(m.mtime_nsec()).unwrap_or(0)),
            ctime: (m.ctime(), u32::try_from(m.ctime_nsec()).unwrap_or(0)),
        }
    }

    /// Whether `self` (now) is the entry `before` was: same type, inode, size and times.
    pub fn unchanged_since(&self, before: &Child) -> bool {
        self.kind == before.kind
            && self.ino == before.ino
            && self.size == before.size
            && self.mtime == before.mtime
            && self.ctime == before.ctime
    }
}

/// One folder: which root of the archive it is under, its name in the archive, its entries
/// (sorted by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub root: u32,
    pub path: Vec<u8>,
    pub children: Vec<Child>,
}

impl Block {
    pub fn child(&self, name: &[u8]) -> Option<&Child> {
        self.children.binary_search_by(|c| c.name.as_slice().cmp(name)).ok().map(|i| &self.children[i])
    }
}

/// The order in which the archive visits folders: by root, then depth first by name.
pub fn walk_order(a: (u32, &[u8]), b: (u32, &[u8])) -> Ordering {
    a.0.cmp(&b.0)
        .then_with(|| Path::new(std::ffi::OsStr::from_bytes(a.1)).cmp(Path::new(std::ffi::OsStr::from_bytes(b.1))))
}

/// Writes a snapshot as its archive is written.
pub struct Writer {
    out: zstd::stream::write::Encoder<'static, HashWriter<BufWriter<AtomicFile>>>,
    path: std::path::PathBuf,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "snapshot::Writer({})", self.path.display())
    }
}

impl Writer {
    pub fn create(path: &Path) -> Result<Writer> {
        let file = AtomicFile::create(path)?;
        let mut hw = HashWriter::new(BufWriter::with_capacity(256 << 10, file));
        hw.write_all(MAGIC).at("cannot write", path)?;
        let out = zstd::stream::write::Encoder::new(hw, 3).at("cannot write", path)?;
        Ok(Writer { out, path: path.to_path_buf() })
    }

    pub fn block(&mut self, root: u32, path: &[u8], children: &[Child]) -> Result<()> {
        let mut b = Vec::with_capacity(16 + path.len() + children.len() * 48);
        b.extend_from_slice(&root.to_le_bytes());
        put_bytes(&mut b, path);
        b.extend_from_slice(&(children.len() as u32).to_le_bytes());
        for c in children {
            put_bytes(&mut b, &c.name);
            b.push(c.kind as u8);
            b.extend_from_slice(&c.ino.to_le_bytes());
            b.extend_from_slice(&c.size.to_le_bytes());
            b.extend_from_slice(&c.mtime.0.to_le_bytes());
            b.extend_from_slice(&c.mtime.1.to_le_bytes());
            b.extend_from_slice(&c.ctime.0.to_le_bytes());
            b.extend_from_slice(&c.ctime.1.to_le_bytes());
        }
        self.out.write_all(&b).at("cannot write", &self.path)
    }

    /// Ends the snapshot with `header` and puts it in place (atomically, durably); the one it
    /// replaces becomes `previous` when given.
    pub fn finish(mut self, header: &Header, previous: Option<&Path>) -> Result<()> {
        self.out.write_all(&END.to_le_bytes()).at("cannot write", &self.path)?;
        let mut hw = self.out.finish().at("cannot write", &self.path)?;
        let json = serde_json::to_vec(header).map_err(|e| Error::runtime(format!("snapshot header: {e}")))?;
        hw.write_all(&json).at("cannot write", &self.path)?;
        hw.write_all(&(json.len() as u32).to_le_bytes()).at("cannot write", &self.path)?;
        let (buf, _, sha) = hw.finish();
        let mut file =
            buf.into_inner().map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e.into_error()))?;
        let sum = hex::decode(&sha).unwrap_or_default();
        file.write_all(&sum).at("cannot write", &self.path)?;
        if let Some(prev) = previous
            && std::fs::symlink_metadata(&self.path).is_ok()
        {
            std::fs::rename(&self.path, prev).at("cannot rename", &self.path)?;
        }
        file.commit()?;
        Ok(())
    }
}

fn put_bytes(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s);
}

/// Reads the header of a snapshot, after checking the whole file against its hash.
pub fn read_header(path: &Path) -> Result<Header> {
    Ok(check(path)?.0)
}

/// The header and where the body ends, once the file matches its hash.
fn check(path: &Path) -> Result<(Header, u64)> {
    let damaged = |why: &str| Error::runtime(format!("{}: damaged snapshot ({why})", path.display()));
    let mut f = File::open(path).at("cannot open", path)?;
    let len = f.metadata().at("cannot stat", path)?.len();
    if len < (MAGIC.len() + 4 + 32) as u64 {
        return Err(damaged("too short"));
    }
    let mut h = Sha256::new();
    let mut left = len - 32;
    let mut buf = vec![0u8; 256 << 10];
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        f.read_exact(&mut buf[..n]).at("cannot read", path)?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    let mut sum = [0u8; 32];
    f.read_exact(&mut sum).at("cannot read", path)?;
    if h.finalize().as_slice() != sum {
        return Err(damaged("its hash does not match"));
    }
    f.seek(SeekFrom::Start(len - 36)).at("cannot read", path)?;
    let mut n = [0u8; 4];
    f.read_exact(&mut n).at("cannot read", path)?;
    let n = u64::from(u32::from_le_bytes(n));
    if n + 36 + MAGIC.len() as u64 > len {
        return Err(damaged("bad header length"));
    }
    let mut json = vec![0u8; n as usize];
    f.seek(SeekFrom::Start(len - 36 - n)).at("cannot read", path)?;
    f.read_exact(&mut json).at("cannot read", path)?;
    let header: Header = serde_json::from_slice(&json).map_err(|e| damaged(&format!("header: {e}")))?;
    let mut magic = [0u8; 9];
    f.seek(SeekFrom::Start(0)).at("cannot read", path)?;
    f.read_exact(&mut magic).at("cannot read", path)?;
    if &magic != MAGIC || header.format != "ncb-snapshot" || header.version != 1 {
        return Err(damaged("not an nc-backup snapshot of a known version"));
    }
    Ok((header, len - 36 - n))
}

/// Reads a snapshot's blocks in step with a walk.
pub struct Reader {
    input: zstd::stream::read::Decoder<'static, BufReader<io::Take<File>>>,
    next: Option<Block>,
    done: bool,
    path: std::path::PathBuf,
    failed: std::collections::HashSet<Vec<u8>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "snapshot::Reader({})", self.path.display())
    }
}

impl Reader {
    pub fn open(path: &Path) -> Result<(Header, Reader)> {
        let (header, body_end) = check(path)?;
        let mut f = File::open(path).at("cannot open", path)?;
        f.seek(SeekFrom::Start(MAGIC.len() as u64)).at("cannot read", path)?;
        let body = BufReader::new(f.take(body_end - MAGIC.len() as u64));
        let input = zstd::stream::read::Decoder::with_buffer(body).at("cannot read", path)?;
        let failed = header.failed.iter().map(|s| s.as_bytes().to_vec()).collect();
        Ok((header, Reader { input, next: None, done: false, path: path.to_path_buf(), failed }))
    }

    /// The snapshot file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the run before could not store `name` (an archive name) it meant to.
    pub fn failed(&self, name: &[u8]) -> bool {
        self.failed.contains(name)
    }

    /// The block of folder `path` under `root`, when the snapshot has one; blocks of folders
    /// before it in walk order (gone since) are passed over.
    pub fn take(&mut self, root: u32, path: &[u8]) -> Result<Option<Block>> {
        loop {
            if self.next.is_none() && !self.done {
                self.next = self.read_block()?;
                self.done = self.next.is_none();
            }
            let Some(b) = &self.next else { return Ok(None) };
            match walk_order((b.root, &b.path), (root, path)) {
                Ordering::Less => self.next = None,
                Ordering::Equal => return Ok(self.next.take()),
                Ordering::Greater => return Ok(None),
            }
        }
    }

    fn read_block(&mut self) -> Result<Option<Block>> {
        let root = self.u32()?;
        if root == END {
            return Ok(None);
        }
        let path = self.bytes()?;
        let n = self.u32()?;
        let mut children = Vec::with_capacity(n.min(1 << 16) as usize);
        for _ in 0..n {
            let name = self.bytes()?;
            let mut k = [0u8; 1];
            self.read(&mut k)?;
            let kind = Kind::from_u8(k[0]).ok_or_else(|| self.damaged("unknown entry kind"))?;
            let ino = self.u64()?;
            let size = self.u64()?;
            let mtime = (self.u64()? as i64, self.u32()?);
            let ctime = (self.u64()? as i64, self.u32()?);
            children.push(Child { name, kind, ino, size, mtime, ctime });
        }
        if !children.windows(2).all(|w| w[0].name < w[1].name) {
            return Err(self.damaged("entries out of order"));
        }
        Ok(Some(Block { root, path, children }))
    }

    fn damaged(&self, why: &str) -> Error {
        Error::runtime(format!("{}: damaged snapshot ({why})", self.path.display()))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        let path = self.path.clone();
        self.input.read_exact(buf).at("cannot read", &path)
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        if n > 1 << 20 {
            return Err(self.damaged("name too long"));
        }
        let mut b = vec![0u8; n];
        self.read(&mut b)?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(name: &str, size: u64) -> Child {
        Child { name: name.into(), kind: Kind::File, ino: 7, size, mtime: (1, 2), ctime: (3, 4) }
    }

    fn header() -> Header {
        Header {
            format: "ncb-snapshot".into(),
            version: 1,
            run_id: "r1".into(),
            level: 0,
            full_run: "r1".into(),
            base_run: None,
            fileset: "x".into(),
            created: "now".into(),
            failed: vec!["a/b".into()],
        }
    }

    #[test]
    fn blocks_come_back_in_step_with_the_walk() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.snap");
        let mut w = Writer::create(&p).unwrap();
        w.block(0, b"", &[child("a", 1), child("b", 2)]).unwrap();
        w.block(0, b"a", &[child("x", 3)]).unwrap();
        w.block(0, b"a/gone", &[]).unwrap();
        w.block(0, b"a-c", &[]).unwrap();
        w.block(1, b"etc", &[child("passwd", 4)]).unwrap();
        w.finish(&header(), None).unwrap();
        let (h, mut r) = Reader::open(&p).unwrap();
        assert_eq!(h, header());
        assert!(r.failed(b"a/b") && !r.failed(b"a"));
        assert_eq!(r.take(0, b"").unwrap().unwrap().child(b"b").unwrap().size, 2);
        assert_eq!(r.take(0, b"a").unwrap().unwrap().children, [child("x", 3)]);
        // A new folder between two known ones, then one past a folder gone since.
        assert_eq!(r.take(0, b"a/b").unwrap(), None);
        assert!(r.take(0, b"a-c").unwrap().is_some());
        assert_eq!(r.take(1, b"etc").unwrap().unwrap().child(b"passwd").unwrap().size, 4);
        assert_eq!(r.take(1, b"var").unwrap(), None);
    }

    #[test]
    fn a_damaged_snapshot_is_refused_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.snap");
        let mut w = Writer::create(&p).unwrap();
        w.block(0, b"", &[child("a", 1)]).unwrap();
        w.finish(&header(), None).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[12] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let e = Reader::open(&p).err().unwrap().to_string();
        assert!(e.contains("damaged snapshot"), "{e}");
        std::fs::write(&p, &bytes[..20]).unwrap();
        assert!(read_header(&p).is_err());
    }
}
