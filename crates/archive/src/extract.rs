//! Restoring archives: a tar stream (plain, gzip with any number of members, or zstd, found by
//! its magic bytes) extracted under one folder and never outside it, whatever the archive holds.
//!
//! - Absolute names lose their leading `/` (as GNU tar does); names with `..` are refused.
//! - No entry is written through a symlink: every parent folder on the way must be a real
//!   folder, files are created with `O_EXCL|O_NOFOLLOW`, and the archive's own symlinks are
//!   created only after every other entry (a symlink pointing out of the folder can then never
//!   be written through), hard links last, and only to names inside the folder.
//! - Metadata: mode, modification time (folders last, deepest first, so filling a folder does
//!   not change its time) and, as root, owner and group.
//!
//! Refused entries do not stop the extraction; they are returned, for the caller to report.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use ncb_core::sys::Special;
use ncb_core::{Error, IoContext, Result};
use tar::EntryType;

/// What to restore of each entry beyond its content.
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    /// Restore owner and group (default: when running as root, as GNU tar does).
    pub same_owner: bool,
    /// Apply GNU dumpdir entries as `tar --incremental -x` does: what a folder holds on disk and
    /// its dumpdir does not list is removed (an archive of a chain of increments).
    pub incremental: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions { same_owner: ncb_core::sys::euid() == 0, incremental: false }
    }
}

/// What an extraction did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Extracted {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub special: u64,
    pub bytes: u64,
    /// Entries not restored, each with the reason.
    pub refused: Vec<String>,
    /// Regular files the caller's `divert` took.
    pub diverted: u64,
    /// Entries removed because an increment's dumpdir no longer lists them.
    pub removed: u64,
    /// Metadata that could not be restored (an extended attribute the file system refuses):
    /// the entries themselves are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Extracted {
    /// Adds another extraction's counts to these.
    pub fn absorb(&mut self, o: Extracted) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.links += o.links;
        self.special += o.special;
        self.bytes += o.bytes;
        self.refused.extend(o.refused);
        self.diverted += o.diverted;
        self.removed += o.removed;
        self.warnings.extend(o.warnings);
    }
}

/// Offered each regular file before it is written: its cleaned relative name and its content.
/// `Ok(true)`: the callback consumed the entry (it is not written); `Ok(false)`: extract it as
/// usual (the callback must not have read from it).
pub type Divert<'a> = dyn FnMut(&Path, &mut dyn Read) -> Result<bool> + 'a;

/// The archive formats a stored file can be in, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `.tar`, `.tar.gz`, `.tgz`, `.tar.zst`: extracted.
    Tar,
    /// `.gz` or `.zst` of anything else (a database dump): decompressed.
    Compressed,
    /// Anything else: placed as is.
    Plain,
}

/// Suffixes in the order they are tried; the first that ends the name wins.
const TAR_SUFFIXES: [&str; 5] = [".tar.gz", ".tar.zst", ".tgz", ".tar.zstd", ".tar"];
const COMPRESSED_SUFFIXES: [&str; 3] = [".gz", ".zst", ".zstd"];

/// The kind of a file by its name, and its name with the suffix removed.
pub fn kind_of(name: &str) -> (Kind, &str) {
    for s in TAR_SUFFIXES {
        if let Some(stem) = name.strip_suffix(s).filter(|s| !s.is_empty()) {
            return (Kind::Tar, stem);
        }
    }
    for s in COMPRESSED_SUFFIXES {
        if let Some(stem) = name.strip_suffix(s).filter(|s| !s.is_empty()) {
            return (Kind::Compressed, stem);
        }
    }
    (Kind::Plain, name)
}

type Head<R> = BufReader<io::Chain<io::Cursor<Vec<u8>>, R>>;

/// A stream decoded by its first bytes.
pub enum Decoded<R: Read> {
    Gzip(Box<flate2::bufread::MultiGzDecoder<Head<R>>>),
    /// Written by nc-backup's parallel gzip: inflated on every core.
    ParallelGzip(Box<crate::pgzip::ParallelGzReader<Head<R>>>),
    Zstd(zstd::stream::read::Decoder<'static, Head<R>>),
    Plain(Head<R>),
}

impl<R: Read> std::fmt::Debug for Decoded<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decoded::Gzip(_) => "Decoded::Gzip",
            Decoded::ParallelGzip(_) => "Decoded::ParallelGzip",
            Decoded::Zstd(_) => "Decoded::Zstd",
            Decoded::Plain(_) => "Decoded::Plain",
        })
    }
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::Gzip(d) => d.read(buf),
            Decoded::ParallelGzip(d) => d.read(buf),
            Decoded::Zstd(d) => d.read(buf),
            Decoded::Plain(d) => d.read(buf),
        }
    }
}

/// Decodes a stream by its first bytes: gzip (every member; on every core when its members
/// carry their lengths), zstd, or as is.
pub fn decode<R: Read>(mut r: R) -> io::Result<Decoded<R>> {
    let mut magic = [0u8; 20];
    let mut n = 0;
    while n < magic.len() {
        match r.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = io::Cursor::new(magic[..n].to_vec()).chain(r);
    let buffered = BufReader::with_capacity(1 << 20, head);
    Ok(if crate::pgzip::has_member_sizes(&magic[..n]) {
        Decoded::ParallelGzip(Box::new(crate::pgzip::ParallelGzReader::new(buffered, 0)))
    } else if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Decoded::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buffered)))
    } else if n >= 4 && magic[..4] == [0x28, 0xb5, 0x2f, 0xfd] {
        Decoded::Zstd(zstd::stream::read::Decoder::with_buffer(buffered)?)
    } else {
        Decoded::Plain(buffered)
    })
}

/// Writes `reader` as the new regular file `rel` under `root` (mode 0600): every folder on the
/// way must be a real one (missing ones are created), the file must not exist yet, and
/// nothing is written through a symlink. The bytes written.
pub fn write_under(root: &Path, rel: &Path, reader: &mut dyn Read) -> Result<u64> {
    let shown = rel.display();
    let rel = clean(rel.as_os_str().as_bytes())
        .filter(|r| !r.as_os_str().is_empty())
        .ok_or_else(|| Error::runtime(format!("{shown}: not a plain relative name (refused)")))?;
    prepare_parents(root, &rel).map_err(|why| Error::runtime(format!("{shown}: {why} (refused)")))?;
    let path = root.join(&rel);
    let mut out = create_new(&path)?;
    let n = io::copy(reader, &mut out).at("cannot write", &path)?;
    out.sync_all().at("cannot write", &path)?;
    Ok(n)
}

/// A folder whose metadata is set once everything in it is written.
struct PendingDir {
    path: PathBuf,
    mode: u32,
    mtime: (u64, u32),
    owner: Option<(u64, u64)>,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct PendingLink {
    name: String,
    path: PathBuf,
    target: PathBuf,
    hard: bool,
    mtime: (u64, u32),
    owner: Option<(u64, u64)>,
}

/// Extracts a tar stream under `dest` (which must exist).
/// `divert` is offered each regular file before it is written (see [`Divert`]).
pub fn extract(
    reader: impl Read,
    dest: &Path,
    opts: ExtractOptions,
    divert: Option<&mut Divert<'_>>,
) -> Result<Extracted> {
    extract_selected(reader, dest, opts, divert, None)
}

/// [`extract`], of only the entries whose cleaned name `select` accepts (a selective restore:
/// the others are read past, never written).
pub fn extract_selected(
    reader: impl Read,
    dest: &Path,
    opts: ExtractOptions,
    mut divert: Option<&mut Divert<'_>>,
    select: Option<&dyn Fn(&Path) -> bool>,
) -> Result<Extracted> {
    let root = dest.to_path_buf();
    let (tap, paxes) = crate::meta::PaxTap::new(reader);
    let mut archive = tar::Archive::new(tap);
    let mut stats = Extracted::default();
    let mut dirs: Vec<PendingDir> = Vec::new();
    let mut links: Vec<PendingLink> = Vec::new();
    let mut at = DirStack::open(&root)?;
    let owners = crate::owners::Owners::load();
    for (entry_no, entry) in archive.entries().at("cannot read archive", dest)?.enumerate() {
        let mut entry = entry.at("cannot read archive", dest)?;
        // PAX records read by their lengths (see `meta::PaxTap`).
        let pax = paxes.borrow_mut().take(entry_no as u64);
        let extra = match &pax {
            Some(data) => {
                let recs = crate::meta::parse_pax(data);
                crate::meta::Extra::from_pax(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())), &owners)
            }
            None => crate::meta::Extra::default(),
        };
        // A PAX 1.0 sparse file is stored under a made-up name; its own is in the records.
        let raw = match &extra.sparse {
            Some((name, _)) => name.clone(),
            None => entry.path_bytes().into_owned(),
        };
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let Some(rel) = clean(&raw) else {
            stats.refused.push(format!("{shown}: name with '..' or nothing but '/' (refused)"));
            continue;
        };
        let dumpdir = entry.header().entry_type().as_byte() == b'D';
        // A regular file is offered to `divert` first (an archive inside this one may hold
        // what is selected); everything else not selected is passed over here.
        let selected = select.is_none_or(|f| f(&rel));
        let regular =
            matches!(entry.header().entry_type(), EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse);
        if regular
            && let Some(divert) = divert.as_mut()
            && divert(&rel, &mut entry)?
        {
            stats.diverted += 1;
            continue;
        }
        if !selected {
            continue;
        }
        if rel.as_os_str().is_empty() {
            // "./" or "/": the folder itself.
            if dumpdir && opts.incremental {
                at.reset();
                purge(&root, &mut entry, &shown, &mut stats)?;
            }
            continue;
        }
        let path = root.join(&rel);
        let parent = match at.parent_of(&rel) {
            Ok(fd) => fd,
            Err(why) => {
                stats.refused.push(format!("{shown}: {why} (refused)"));
                continue;
            }
        };
        let Some(name) = rel.file_name() else { continue };
        let h = entry.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let mtime = h.mtime().unwrap_or(0);
        let mtime_ns = (mtime, extra.mtime_nanos);
        let owner = if opts.same_owner {
            match (h.uid(), h.gid()) {
                (Ok(u), Ok(g)) => Some((u, g)),
                _ => None,
            }
        } else {
            None
        };
        let kind = if dumpdir { EntryType::Directory } else { h.entry_type() };
        match kind {
            EntryType::Directory => {
                match rustix::fs::statat(parent, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory => {}
                    Ok(_) => {
                        stats.refused.push(format!("{shown}: a non-folder of that name is already there (refused)"));
                        continue;
                    }
                    Err(_) => {
                        // One folder that cannot be made costs that folder, not the restore.
                        if let Err(e) = rustix::fs::mkdirat(parent, name, rustix::fs::Mode::from_raw_mode(0o700)) {
                            stats.refused.push(format!("{shown}: cannot create folder: {e}"));
                            continue;
                        }
                    }
                }
                if dumpdir && opts.incremental {
                    purge(&path, &mut entry, &shown, &mut stats)?;
                }
                dirs.push(PendingDir { path, mode, mtime: mtime_ns, owner, xattrs: extra.xattrs });
                stats.dirs += 1;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                if let Err(why) = clear_at(parent, name) {
                    stats.refused.push(format!("{shown}: {why} (refused)"));
                    continue;
                }
                // A file that cannot be created (a name the file system refuses, a place
                // taken) is listed and skipped; a failing write (a full disk) stops the restore.
                let mut out = match create_at(parent, name, &path) {
                    Ok(f) => f,
                    Err(e) => {
                        stats.refused.push(format!("{shown}: {}", ncb_core::stage::error_chain(&e)));
                        continue;
                    }
                };
                // A stream cut short (a damaged part, a lost connection) leaves no half file.
                let copied = match extra.sparse {
                    Some((_, size)) => copy_sparse_pax(&mut entry, &mut out, size),
                    None if kind == EntryType::GNUSparse => copy_sparse(&mut entry, &mut out),
                    None => io::copy(&mut entry, &mut out),
                };
                let n = match copied {
                    Ok(n) => n,
                    Err(e) => {
                        drop(out);
                        let _ = std::fs::remove_file(&path);
                        return Err(Error::path("cannot write", &path, e));
                    }
                };
                stats.bytes += n;
                stats.files += 1;
                if let Err(e) = finish_file(&out, &path, mode, mtime_ns, owner, opts) {
                    stats.refused.push(format!("{shown}: restored, but {}", ncb_core::stage::error_chain(&e)));
                }
                // After the owner (a chown clears security.capability) and the content.
                for (n, v) in &extra.xattrs {
                    if let Err(e) = rustix::fs::fsetxattr(&out, n.as_str(), v, rustix::fs::XattrFlags::empty()) {
                        stats.warnings.push(format!("{shown}: extended attribute {n} not restored: {e}"));
                    }
                }
            }
            EntryType::Symlink | EntryType::Link => {
                let Some(target) = entry.link_name_bytes().map(|b| b.into_owned()) else {
                    stats.refused.push(format!("{shown}: link without a target (refused)"));
                    continue;
                };
                let hard = kind == EntryType::Link;
                let target = if hard {
                    match clean(&target).filter(|t| !t.as_os_str().is_empty()) {
                        Some(t) => t,
                        None => {
                            stats.refused.push(format!(
                                "{shown}: hard link to '{}', outside the folder (refused)",
                                String::from_utf8_lossy(&target)
                            ));
                            continue;
                        }
                    }
                } else {
                    PathBuf::from(std::ffi::OsStr::from_bytes(&target))
                };
                links.push(PendingLink { name: shown, path, target, hard, mtime: mtime_ns, owner });
            }
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                if let Err(why) = clear_for(&path) {
                    stats.refused.push(format!("{shown}: {why} (refused)"));
                    continue;
                }
                let (major, minor) =
                    (h.device_major().ok().flatten().unwrap_or(0), h.device_minor().ok().flatten().unwrap_or(0));
                match make_special(&path, kind, mode, major, minor) {
                    Ok(()) => {
                        stats.special += 1;
                        set_meta_nofollow(&path, mtime_ns, owner)?;
                    }
                    Err(e) => stats.refused.push(format!("{shown}: cannot create special file: {e}")),
                }
            }
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => {}
            other => stats.refused.push(format!("{shown}: entry type {other:?} not restored")),
        }
    }
    // Symlinks after every other entry, so nothing is ever written through one; hard links
    // after them, so they may point at a symlink of the archive.
    links.sort_by_key(|l| l.hard);
    for l in links {
        if let Err(why) = prepare_parents(&root, l.path.strip_prefix(&root).unwrap_or(&l.path)) {
            stats.refused.push(format!("{}: {why} (refused)", l.name));
            continue;
        }
        if let Err(why) = clear_for(&l.path) {
            stats.refused.push(format!("{}: {why} (refused)", l.name));
            continue;
        }
        if l.hard {
            let target = root.join(&l.target);
            if let Err(why) = prepare_parents(&root, &l.target) {
                stats.refused.push(format!("{}: hard link target {why} (refused)", l.name));
                continue;
            }
            // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked itself, not followed.
            if let Err(e) = std::fs::hard_link(&target, &l.path) {
                stats.refused.push(format!("{}: cannot link to {}: {e}", l.name, l.target.display()));
                continue;
            }
        } else {
            std::os::unix::fs::symlink(&l.target, &l.path).at("cannot create symlink", &l.path)?;
            set_meta_nofollow(&l.path, l.mtime, l.owner)?;
        }
        stats.links += 1;
    }
    // Deepest first: setting a folder's time after its children were written.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.path.components().count()));
    for d in dirs {
        if let Some((uid, gid)) = d.owner {
            lchown(&d.path, uid, gid)?;
        }
        std::fs::set_permissions(&d.path, std::fs::Permissions::from_mode(d.mode))
            .at("cannot set the mode of", &d.path)?;
        for (n, v) in &d.xattrs {
            if let Err(e) = rustix::fs::lsetxattr(&d.path, n.as_str(), v, rustix::fs::XattrFlags::empty()) {
                stats.warnings.push(format!("{}: extended attribute {n} not restored: {e}", d.path.display()));
            }
        }
        set_times_nofollow(&d.path, d.mtime.0, d.mtime.1)?;
    }
    Ok(stats)
}

/// Removes from the folder `dir` what its dumpdir (the entry's data) does not list, or lists
/// as the other kind (a folder where a non-folder is, or the reverse), as
/// `tar --incremental -x` does. Never follows a symlink: a listed name that is a symlink on
/// disk is removed as the link it is.
fn purge(dir: &Path, listing: &mut dyn Read, shown: &str, stats: &mut Extracted) -> Result<()> {
    let mut bytes = Vec::new();
    listing.read_to_end(&mut bytes).at("cannot read archive entry", Path::new(shown))?;
    let mut keep = std::collections::HashMap::new();
    for rec in bytes.split(|b| *b == 0) {
        match rec.split_first() {
            Some((code @ (b'Y' | b'N' | b'D'), name)) if !name.is_empty() => {
                keep.insert(name.to_vec(), *code == b'D');
            }
            _ => {}
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            stats.refused.push(format!("{shown}: cannot list the folder to apply the increment: {e}"));
            return Ok(());
        }
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if keep.get(name.as_bytes()) == Some(&is_dir) {
            continue;
        }
        let p = e.path();
        let gone = if is_dir { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        match gone {
            Ok(()) => stats.removed += 1,
            Err(err) => stats.refused.push(format!(
                "{shown}/{}: removed since the earlier run, but cannot be removed here: {err}",
                name.to_string_lossy()
            )),
        }
    }
    Ok(())
}

/// The folders on the way to the current entry, held open: entries come depth first, so the
/// next one's folder is mostly this chain or a prefix of it. Each folder is opened from its
/// parent's handle with `O_NOFOLLOW|O_DIRECTORY`, so no symlink is ever followed on the way
/// and nothing is looked up twice (the safe extractors' way: no path re-checking per entry).
struct DirStack {
    root: std::os::fd::OwnedFd,
    open: Vec<(std::ffi::OsString, std::os::fd::OwnedFd)>,
}

impl DirStack {
    fn open(root: &Path) -> Result<DirStack> {
        let fd = rustix::fs::open(root, Self::flags(), rustix::fs::Mode::empty())
            .map_err(|e| Error::path("cannot open", root, e.into()))?;
        Ok(DirStack { root: fd, open: Vec::new() })
    }

    fn flags() -> rustix::fs::OFlags {
        use rustix::fs::OFlags;
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
    }

    /// Forgets the folders held (before anything removes folders).
    fn reset(&mut self) {
        self.open.clear();
    }

    /// The folder that holds `rel`, every folder on the way a real one (missing ones created
    /// 0700); why not when one is a symlink or not a folder.
    fn parent_of(&mut self, rel: &Path) -> std::result::Result<std::os::fd::BorrowedFd<'_>, String> {
        use std::os::fd::AsFd;
        let comps: Vec<&std::ffi::OsStr> = rel.parent().map(|p| p.iter().collect()).unwrap_or_default();
        let same = self.open.iter().zip(&comps).take_while(|(o, c)| o.0.as_os_str() == **c).count();
        self.open.truncate(same);
        for (i, c) in comps.iter().enumerate().skip(same) {
            let shown = || comps[..=i].iter().collect::<PathBuf>().display().to_string();
            let parent = self.open.last().map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
            let fd = match rustix::fs::openat(parent, *c, Self::flags(), rustix::fs::Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    rustix::fs::mkdirat(parent, *c, rustix::fs::Mode::from_raw_mode(0o700))
                        .map_err(|e| format!("cannot create folder {}: {e}", shown()))?;
                    rustix::fs::openat(parent, *c, Self::flags(), rustix::fs::Mode::empty())
                        .map_err(|e| format!("cannot open folder {}: {e}", shown()))?
                }
                Err(rustix::io::Errno::LOOP) => return Err(format!("its folder {} is a symlink", shown())),
                Err(rustix::io::Errno::NOTDIR) => return Err(format!("{} is not a folder", shown())),
                Err(e) => return Err(format!("cannot open folder {}: {e}", shown())),
            };
            self.open.push(((*c).to_owned(), fd));
        }
        Ok(self.open.last().map_or(self.root.as_fd(), |(_, fd)| fd.as_fd()))
    }
}

/// A later entry of the same name replaces an earlier one, as with tar; a folder stays.
fn clear_at(dir: std::os::fd::BorrowedFd<'_>, name: &std::ffi::OsStr) -> std::result::Result<(), String> {
    use rustix::fs::{AtFlags, FileType};
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            Err("a folder of that name is already there".into())
        }
        Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty())
            .map_err(|e| format!("cannot replace the earlier entry: {e}")),
        Err(_) => Ok(()),
    }
}

/// A new file in `dir` (mode 0600 until its own mode is set), never through a symlink.
fn create_at(dir: std::os::fd::BorrowedFd<'_>, name: &std::ffi::OsStr, shown: &Path) -> Result<File> {
    use rustix::fs::OFlags;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, rustix::fs::Mode::from_raw_mode(0o600))
        .map(File::from)
        .map_err(|e| Error::path("cannot create", shown, e.into()))
}

/// Copies a sparse entry's content (its holes read as zeros) leaving holes where whole 4 KiB
/// blocks are zero, as `tar --sparse -x` recreates them; the bytes copied.
fn copy_sparse(from: &mut dyn Read, out: &mut File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    const BLOCK: usize = 4096;
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for block in buf[..n].chunks(BLOCK) {
            if block.iter().all(|b| *b == 0) {
                out.seek(SeekFrom::Current(block.len() as i64))?;
            } else {
                out.write_all(block)?;
            }
        }
        total += n as u64;
    }
    out.set_len(total)?;
    Ok(total)
}

/// A PAX 1.0 sparse entry's data: the map (decimal lines: how many segments, then each
/// one's offset and size), padded to 512 bytes, then the segments, written at their offsets
/// with holes between; the file's real size at the end.
fn copy_sparse_pax(from: &mut dyn Read, out: &mut File, size: u64) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sparse map");
    let mut read = 0u64;
    let mut line = || -> io::Result<u64> {
        let mut s = Vec::new();
        let mut b = [0u8; 1];
        loop {
            from.read_exact(&mut b)?;
            read += 1;
            if b[0] == b'\n' {
                break;
            }
            s.push(b[0]);
            if s.len() > 20 {
                return Err(bad());
            }
        }
        std::str::from_utf8(&s).ok().and_then(|t| t.parse().ok()).ok_or_else(bad)
    };
    let count = line()?;
    let mut map = Vec::new();
    for _ in 0..count.min(1 << 24) {
        let off = line()?;
        let len = line()?;
        map.push((off, len));
    }
    let pad = (512 - read % 512) % 512;
    io::copy(&mut from.take(pad), &mut io::sink())?;
    let mut total = 0;
    for (off, len) in map {
        if off.checked_add(len).is_none_or(|end| end > size) {
            return Err(bad());
        }
        out.seek(SeekFrom::Start(off))?;
        let n = io::copy(&mut from.take(len), out)?;
        if n != len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "sparse data cut short"));
        }
        total += n;
    }
    out.set_len(size)?;
    Ok(total)
}

/// The entry name as a relative path: leading `/` and `./` dropped, `..` refused.
fn clean(raw: &[u8]) -> Option<PathBuf> {
    let p = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Makes every parent of `rel` under `root` a real folder, creating missing ones; refuses a
/// symlink or a file on the way.
fn prepare_parents(root: &Path, rel: &Path) -> std::result::Result<(), String> {
    let mut cur = root.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for c in parents.iter().take(parents.len().saturating_sub(1)) {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("its folder {} is a symlink", cur.strip_prefix(root).unwrap_or(&cur).display()));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a folder", cur.strip_prefix(root).unwrap_or(&cur).display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&cur)
                    .map_err(|e| format!("cannot create folder: {e}"))?;
            }
            Err(e) => return Err(format!("cannot inspect {}: {e}", cur.display())),
        }
    }
    Ok(())
}

/// A later entry of the same name replaces an earlier one, as with tar; a folder stays.
fn clear_for(path: &Path) -> std::result::Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err("a folder of that name is already there".into()),
        Ok(_) => std::fs::remove_file(path).map_err(|e| format!("cannot replace the earlier entry: {e}")),
        Err(_) => Ok(()),
    }
}

/// A new file (mode 0600 until its own mode is set), never through a symlink.
fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at("cannot create", path)
}

fn finish_file(
    f: &File,
    path: &Path,
    mode: u32,
    mtime: (u64, u32),
    owner: Option<(u64, u64)>,
    opts: ExtractOptions,
) -> Result<()> {
    use std::os::unix::fs::fchown;
    // Owner first: chown clears set-user-id bits, the mode puts them back.
    if let Some((uid, gid)) = owner {
        fchown(f, u32::try_from(uid).ok(), u32::try_from(gid).ok()).at("cannot set the owner of", path)?;
    }
    let mode = if opts.same_owner { mode } else { mode & 0o1777 };
    f.set_permissions(std::fs::Permissions::from_mode(mode)).at("cannot set the mode of", path)?;
    let t = SystemTime::UNIX_EPOCH + Duration::new(mtime.0, mtime.1);
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t)).at("cannot set the time of", path)
}

fn lchown(path: &Path, uid: u64, gid: u64) -> Result<()> {
    std::os::unix::fs::lchown(path, u32::try_from(uid).ok(), u32::try_from(gid).ok())
        .at("cannot set the owner of", path)
}

fn set_meta_nofollow(path: &Path, mtime: (u64, u32), owner: Option<(u64, u64)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        lchown(path, uid, gid)?;
    }
    set_times_nofollow(path, mtime.0, mtime.1)
}

/// Sets access and modification time without following a symlink.
fn set_times_nofollow(path: &Path, secs: u64, nanos: u32) -> Result<()> {
    ncb_core::sys::set_times_nofollow(path, secs, nanos).at("cannot set the time of", path)
}

fn make_special(path: &Path, kind: EntryType, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let kind = match kind {
        EntryType::Fifo => Special::Fifo,
        EntryType::Char => Special::Char,
        _ => Special::Block,
    };
    ncb_core::sys::mknod(path, kind, mode, major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_or_refused() {
        assert_eq!(clean(b"/etc/passwd"), Some(PathBuf::from("etc/passwd")));
        assert_eq!(clean(b"./a/./b"), Some(PathBuf::from("a/b")));
        assert_eq!(clean(b"a/../../b"), None);
        assert_eq!(clean(b"../x"), None);
        assert_eq!(clean(b"./"), Some(PathBuf::new()));
        assert_eq!(clean(b"/"), Some(PathBuf::new()));
    }

    #[test]
    fn kinds_by_name() {
        assert_eq!(kind_of("a.tar.gz"), (Kind::Tar, "a"));
        assert_eq!(kind_of("a.tgz"), (Kind::Tar, "a"));
        assert_eq!(kind_of("a.tar.zst"), (Kind::Tar, "a"));
        assert_eq!(kind_of("db.sql.gz"), (Kind::Compressed, "db.sql"));
        assert_eq!(kind_of("db.dump"), (Kind::Plain, "db.dump"));
        assert_eq!(kind_of(".gz"), (Kind::Plain, ".gz"));
    }

    /// An archive crafted to escape: absolute names, `..`, an outward symlink then a file
    /// through it, a hard link out. Nothing may land outside the folder.
    #[test]
    fn hostile_archive_writes_nothing_outside() {
        let base = tempfile::tempdir().unwrap();
        let dest = base.path().join("dest");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &[u8], kind: EntryType, link: Option<&[u8]>, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                h.set_link_name_literal(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, data).unwrap();
        };
        let out = outside.to_str().unwrap().as_bytes().to_vec();
        add(b"../escape.txt", EntryType::Regular, None, b"x");
        add(b"a/../../escape2.txt", EntryType::Regular, None, b"x");
        add(&[b"/".as_slice(), &out[1..], b"/abs.txt"].concat(), EntryType::Regular, None, b"abs");
        add(b"out", EntryType::Symlink, Some(&out), b"");
        add(b"out/through.txt", EntryType::Regular, None, b"through");
        add(b"hl", EntryType::Link, Some(b"../outside/x"), b"");
        add(b"ok.txt", EntryType::Regular, None, b"fine");
        let bytes = b.into_inner().unwrap();
        let got = extract(&bytes[..], &dest, ExtractOptions { same_owner: false, incremental: false }, None).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside");
        assert!(!base.path().join("escape.txt").exists() && !base.path().join("escape2.txt").exists());
        assert_eq!(std::fs::read(dest.join("ok.txt")).unwrap(), b"fine");
        // The absolute name lands inside, with its leading / dropped.
        let abs = dest.join(outside.strip_prefix("/").unwrap()).join("abs.txt");
        assert_eq!(std::fs::read(abs).unwrap(), b"abs");
        // out/through.txt made out a real folder, so the symlink could not be created after it.
        assert_eq!(std::fs::read(dest.join("out/through.txt")).unwrap(), b"through");
        assert!(got.refused.iter().any(|r| r.starts_with("../escape.txt")), "{:?}", got.refused);
        assert!(got.refused.iter().any(|r| r.starts_with("a/../../escape2.txt")), "{:?}", got.refused);
        assert!(got.refused.iter().any(|r| r.starts_with("hl:")), "{:?}", got.refused);
        assert!(got.refused.iter().any(|r| r.starts_with("out:")), "{:?}", got.refused);
    }
}
