//! Writes one tar archive of a set of roots, streamed through a [`Compressor`] into an
//! atomic output file, hashed on the way. GNU tar reads what this writes: GNU headers (long
//! names and link targets, big sizes), mode, numeric and named owner/group, mtime,
//! symlinks, hard links, empty folders, fifos and devices; sockets are skipped (as GNU tar
//! does), non-UTF-8 names kept byte for byte.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ncb_core::atomic::AtomicFile;
use ncb_core::hash::HashWriter;
use ncb_core::{Artifact, Error, IoContext, Result, StageReport};
use tar::{EntryType, Header};

use crate::encoder::{Compressor, Settings};
use crate::glob;
use crate::longpath::Short;
use crate::owners::Owners;
use crate::snapshot;

/// A tree to archive: `path` on disk, stored under `name` in the archive.
#[derive(Debug, Clone)]
pub struct Root {
    pub path: PathBuf,
    pub name: PathBuf,
}

impl Root {
    /// Stored relative to `/`, as `tar -C / -c path` does.
    pub fn from_slash(path: &Path) -> Result<Self> {
        let abs = std::path::absolute(path).at("cannot resolve", path)?;
        let name = abs.strip_prefix("/").unwrap_or(&abs).to_path_buf();
        Ok(Root { path: abs, name })
    }
    /// Stored under its own last component, as `tar -C parent -c name` does.
    pub fn from_parent(path: &Path) -> Result<Self> {
        let abs = std::path::absolute(path).at("cannot resolve", path)?;
        let name = abs
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| Error::usage(format!("cannot archive {}: no file name", abs.display())))?;
        Ok(Root { path: abs, name })
    }
}

/// One FILESET_EXCLUDE entry.
#[derive(Debug, Clone)]
pub enum Exclude {
    /// An absolute path: it and everything below it.
    Path(Vec<u8>),
    /// A bare name (`node_modules`, `*.log`): any entry with that file name.
    Name(Vec<u8>),
    /// A pattern with `/`, matched against the whole absolute path.
    Pattern(Vec<u8>),
}

impl Exclude {
    pub fn parse(s: &str) -> Self {
        let t = s.trim();
        let t = if t.len() > 1 { t.trim_end_matches('/') } else { t };
        let b = t.as_bytes().to_vec();
        if !t.contains('/') {
            Exclude::Name(b)
        } else if t.starts_with('/') && !glob::is_glob(&b) {
            Exclude::Path(b)
        } else if t.starts_with('/') {
            Exclude::Pattern(b)
        } else {
            Exclude::Pattern([b"**/".as_slice(), &b].concat())
        }
    }

    fn hits(&self, abs: &[u8], name: &[u8]) -> bool {
        match self {
            Exclude::Path(p) => abs.starts_with(p) && (abs.len() == p.len() || abs[p.len()] == b'/'),
            Exclude::Name(n) if glob::is_glob(n) => glob::matches(n, name),
            Exclude::Name(n) => n == name,
            Exclude::Pattern(p) => glob::matches(p, abs),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub excludes: Vec<Exclude>,
    /// Lower-case extensions without the dot; empty: every file.
    pub extensions: Vec<String>,
    pub follow_symlinks: bool,
    pub one_file_system: bool,
    /// A file that cannot be read, vanishes or changes is fatal instead of a warning.
    pub strict: bool,
    /// A root that does not exist is a warning instead of an error.
    pub ignore_missing: bool,
    pub compression: Settings,
    /// Replace an existing file at the destination (else the archive fails: it is never
    /// written over an earlier backup).
    pub replace_existing: bool,
    /// Leave out unfinished outputs of any stage (`.NAME.partial-*`) and the runner's own
    /// `.ncb-*` files: for archives of work folders, never of users' data.
    pub skip_temporaries: bool,
}

/// What went into an archive.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub special: u64,
    pub skipped: u64,
    pub bytes: u64,
    /// Entries an incremental archive left out as unchanged since the run before.
    pub unchanged: u64,
}

/// What makes an archive incremental: the snapshot of the run before (none: a full archive,
/// every entry in it) and the one written for the next run. Every folder is then a GNU
/// dumpdir entry (type `D`) listing its entries, `Y` for one in this archive, `N` for one left
/// out as unchanged, `D` for a folder, as `tar --listed-incremental` writes them.
#[derive(Debug)]
pub struct Incremental {
    pub before: Option<snapshot::Reader>,
    pub after: snapshot::Writer,
    /// Archive names listed as in the archive that could not be read into it.
    pub failed: Vec<String>,
}

struct Writer<'a> {
    tar: tar::Builder<Compressor<HashWriter<AtomicFile>>>,
    opts: &'a Options,
    report: &'a mut StageReport,
    owners: Owners,
    links: HashMap<(u64, u64), PathBuf>,
    stats: Stats,
    /// The output's own temporary file, never archived.
    own: (u64, u64),
    /// Folders already archived (FOLLOW_SYMLINKS only): a link back to one is a loop.
    visited: std::collections::HashSet<(u64, u64)>,
    root_dev: u64,
    /// Bytes archived, on a terminal.
    bar: std::sync::Arc<ncb_core::progress::Progress>,
    inc: Option<&'a mut Incremental>,
    /// The index of the root being archived (snapshot blocks are per root).
    root_idx: u32,
    index: Option<&'a mut crate::index::Writer>,
}

/// Archives `roots` into `dest` (atomically) and returns the artifact and the counts.
pub fn write_archive(
    roots: &[Root],
    opts: &Options,
    dest: &Path,
    report: &mut StageReport,
) -> Result<(Artifact, Stats)> {
    write_archive_with(roots, opts, dest, report, None, None)
}

/// [`write_archive`], incremental when `inc` is given.
pub fn write_archive_with(
    roots: &[Root],
    opts: &Options,
    dest: &Path,
    report: &mut StageReport,
    inc: Option<&mut Incremental>,
    index: Option<&mut crate::index::Writer>,
) -> Result<(Artifact, Stats)> {
    let out = AtomicFile::create(dest)?;
    let own = out_id(&out)?;
    let comp = Compressor::new(opts.compression, HashWriter::new(out)).at("cannot start compressor for", dest)?;
    let mut tar = tar::Builder::new(comp);
    tar.mode(tar::HeaderMode::Complete);
    let mut w = Writer {
        tar,
        opts,
        report,
        owners: Owners::load(),
        links: HashMap::new(),
        stats: Stats::default(),
        own,
        root_dev: 0,
        visited: Default::default(),
        bar: std::sync::Arc::new(ncb_core::progress::Progress::new(
            format!("archive {}", dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
            0,
        )),
        inc,
        root_idx: 0,
        index,
    };
    let bar = std::sync::Arc::clone(&w.bar);
    // An incremental archive reads only what changed: no total to estimate.
    let estimating = bar.shown() && w.inc.is_none();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        if estimating {
            s.spawn(|| estimate(roots, opts, &bar, &stop));
        }
        let archived = (|| {
            for (i, root) in roots.iter().enumerate() {
                w.root_idx = u32::try_from(i).unwrap_or(u32::MAX);
                w.root(root)?;
            }
            Ok::<(), Error>(())
        })();
        stop.store(true, Ordering::Relaxed);
        archived
    })?;
    w.bar.finish();
    let comp = w.tar.into_inner().at("cannot write", dest)?;
    let sink = comp.finish().at("cannot write", dest)?;
    let (out, bytes, sha256) = sink.finish();
    let path = if opts.replace_existing { out.commit()? } else { out.commit_new()? };
    Ok((Artifact { path, bytes, sha256 }, w.stats))
}

fn excluded(opts: &Options, path: &Path) -> bool {
    let abs = path.as_os_str().as_bytes();
    let name = path.file_name().map_or(abs, OsStrExt::as_bytes);
    if opts.skip_temporaries
        && let Some(n) = path.file_name()
        && (ncb_core::atomic::is_partial(n) || ncb_core::journal::is_runner_own(&n.to_string_lossy()))
    {
        return true;
    }
    opts.excludes.iter().any(|x| x.hits(abs, name))
}

/// The bytes a full archive of `roots` will read, for a bar's total and ETA: a walk of the
/// metadata only (excludes, ONE_FILE_SYSTEM and extensions applied; links not followed),
/// beside the archiving, given up when `stop` is set. Only on a terminal or under a runner
/// that draws it.
fn estimate(roots: &[Root], opts: &Options, bar: &ncb_core::progress::Progress, stop: &AtomicBool) {
    let mut total = 0u64;
    for root in roots {
        let Ok(meta) = std::fs::symlink_metadata(&root.path) else { continue };
        let dev = meta.dev();
        let mut stack = vec![(root.path.clone(), meta)];
        while let Some((path, meta)) = stack.pop() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if excluded(opts, &path) {
                continue;
            }
            if meta.is_dir() {
                if opts.one_file_system && meta.dev() != dev {
                    continue;
                }
                // Only folders wait on the stack: a folder of a million files costs no memory.
                for e in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(m) = e.metadata() else { continue };
                    let child = e.path();
                    if m.is_dir() {
                        stack.push((child, m));
                    } else if m.is_file() && !excluded(opts, &child) && wanted(opts, &child) {
                        total += m.len();
                    }
                }
            } else if meta.is_file() && wanted(opts, &path) {
                total += meta.len();
            }
        }
    }
    bar.set_total(total);
}

/// FILE_EXTENSIONS: whether a file is one of them (every file when none are given).
fn wanted(opts: &Options, path: &Path) -> bool {
    opts.extensions.is_empty()
        || path.extension().is_some_and(|e| opts.extensions.contains(&e.to_string_lossy().to_ascii_lowercase()))
}

fn out_id(out: &AtomicFile) -> Result<(u64, u64)> {
    let m = out.metadata().at("cannot stat", out.dest())?;
    Ok((m.dev(), m.ino()))
}

impl Writer<'_> {
    fn root(&mut self, root: &Root) -> Result<()> {
        let meta = match self.stat(&root.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.opts.ignore_missing => {
                self.report.warn(format!("{} does not exist: skipped (IGNORE_MISSING)", root.path.display()));
                return Ok(());
            }
            Err(e) => return Err(Error::path("include path", &root.path, e)),
        };
        self.root_dev = meta.dev();
        let mut stack = vec![(root.path.clone(), root.name.clone(), Some(meta))];
        while let Some((path, name, meta)) = stack.pop() {
            let meta = match meta.map_or_else(|| self.stat(&path), Ok) {
                Ok(m) => m,
                Err(e) => {
                    self.trouble(&path, &e, "vanished before it was read")?;
                    continue;
                }
            };
            if meta.is_dir() {
                self.dir(&path, &name, &meta, &mut stack)?;
            } else {
                self.entry(&path, &name, &meta)?;
            }
        }
        Ok(())
    }

    fn stat(&self, p: &Path) -> io::Result<Metadata> {
        let s = Short::of(p)?;
        if self.opts.follow_symlinks { std::fs::metadata(&s.path) } else { std::fs::symlink_metadata(&s.path) }
    }

    /// A file that could not be read: a warning, or fatal with STRICT.
    fn trouble(&mut self, path: &Path, e: &io::Error, vanished: &str) -> Result<()> {
        let msg = if e.kind() == io::ErrorKind::NotFound {
            format!("{}: {vanished}", path.display())
        } else if e.kind() == io::ErrorKind::PermissionDenied && ncb_core::sys::euid() != 0 {
            format!(
                "{}: cannot read: {e} (this run is not root: give it GENERAL FILES_READER, docs/PRIVILEGE.md)",
                path.display()
            )
        } else {
            format!("{}: cannot read: {e}", path.display())
        };
        self.stats.skipped += 1;
        if self.opts.strict {
            return Err(Error::runtime(format!("{msg} (STRICT)")));
        }
        self.report.warn(msg);
        Ok(())
    }

    fn excluded(&self, path: &Path) -> bool {
        excluded(self.opts, path)
    }

    fn dir(
        &mut self,
        path: &Path,
        name: &Path,
        meta: &Metadata,
        stack: &mut Vec<(PathBuf, PathBuf, Option<Metadata>)>,
    ) -> Result<()> {
        if self.excluded(path) {
            return Ok(());
        }
        if self.opts.follow_symlinks && !self.visited.insert((meta.dev(), meta.ino())) {
            self.report
                .warn(format!("{}: file system loop (a link to a folder already archived): skipped", path.display()));
            self.stats.skipped += 1;
            return Ok(());
        }
        if self.inc.is_some() {
            return self.dumpdir(path, name, meta, stack);
        }
        // The root `/` itself has no name in the archive; its children do.
        if self.opts.extensions.is_empty() && !name.as_os_str().is_empty() {
            let mut h = self.header(meta);
            h.set_entry_type(EntryType::Directory);
            h.set_size(0);
            self.pax(path, name, meta)?;
            self.tar.append_data(&mut h, name, io::empty()).at("cannot write archive entry", name)?;
            self.stats.dirs += 1;
            self.indexed(name, 'd', 0, meta.mtime(), true)?;
        }
        if self.opts.one_file_system && meta.dev() != self.root_dev {
            return Ok(());
        }
        let Some(children) = self.children(path)? else { return Ok(()) };
        // Reversed onto the stack, so entries are written in name order.
        for child in children.into_iter().rev() {
            stack.push((path.join(&child), name.join(&child), None));
        }
        Ok(())
    }

    /// The names in a folder, sorted (the order entries are written in); None when it could
    /// not be read (a warning, or fatal with STRICT).
    fn children(&mut self, path: &Path) -> Result<Option<Vec<std::ffi::OsString>>> {
        let entries = match Short::of(path).and_then(|s| std::fs::read_dir(&s.path)) {
            Ok(e) => e,
            Err(e) => return self.trouble(path, &e, "folder vanished before it was read").map(|()| None),
        };
        let mut children = Vec::new();
        for e in entries {
            match e {
                Ok(e) => children.push(e.file_name()),
                Err(err) => return self.trouble(path, &err, "folder vanished while it was read").map(|()| None),
            }
        }
        children.sort();
        Ok(Some(children))
    }

    /// A folder of an incremental archive: its dumpdir entry, listing every entry it holds
    /// (`Y` in this archive, `N` unchanged since the run before, `D` a folder), its snapshot
    /// block, and its entries that are in this archive onto the stack.
    fn dumpdir(
        &mut self,
        path: &Path,
        name: &Path,
        meta: &Metadata,
        stack: &mut Vec<(PathBuf, PathBuf, Option<Metadata>)>,
    ) -> Result<()> {
        let descend = !(self.opts.one_file_system && meta.dev() != self.root_dev);
        let children = if descend {
            let Some(c) = self.children(path)? else { return Ok(()) };
            c
        } else {
            Vec::new()
        };
        let name_bytes = name.as_os_str().as_bytes();
        let root_idx = self.root_idx;
        let old = match self.inc.as_mut().and_then(|i| i.before.as_mut()) {
            Some(r) => r.take(root_idx, name_bytes)?,
            None => None,
        };
        let mut listing = Vec::new();
        let mut records = Vec::with_capacity(children.len());
        let mut dump = Vec::new();
        for child in children {
            let cpath = path.join(&child);
            if self.excluded(&cpath) {
                continue;
            }
            let cmeta = match self.stat(&cpath) {
                Ok(m) => m,
                Err(e) => {
                    self.trouble(&cpath, &e, "vanished before it was read")?;
                    continue;
                }
            };
            if (cmeta.dev(), cmeta.ino()) == self.own {
                continue;
            }
            if cmeta.file_type().is_socket() {
                self.report.warn(format!("{}: socket ignored", cpath.display()));
                self.stats.skipped += 1;
                continue;
            }
            let cb = child.as_bytes();
            let rec = snapshot::Child::of(cb, &cmeta);
            let cname = name.join(&child);
            let code = if cmeta.is_dir() {
                b'D'
            } else {
                let failed = self
                    .inc
                    .as_ref()
                    .and_then(|i| i.before.as_ref())
                    .is_some_and(|r| r.failed(cname.as_os_str().as_bytes()));
                let same = old.as_ref().and_then(|b| b.child(cb)).is_some_and(|o| rec.unchanged_since(o));
                if same && !failed { b'N' } else { b'Y' }
            };
            listing.push(code);
            listing.extend_from_slice(cb);
            listing.push(0);
            let rec_kind = rec.kind;
            records.push(rec);
            if code == b'N' {
                self.stats.unchanged += 1;
                let kind = match rec_kind {
                    snapshot::Kind::File => 'f',
                    snapshot::Kind::Dir => 'd',
                    snapshot::Kind::Symlink => 'l',
                    snapshot::Kind::Special => 's',
                };
                self.indexed(&cname, kind, cmeta.len(), cmeta.mtime(), false)?;
            } else {
                dump.push((cpath, cname, Some(cmeta)));
            }
        }
        listing.push(0);
        // The root `/` itself has no name in the archive: its listing goes under `./`.
        let shown: PathBuf = if name.as_os_str().is_empty() { PathBuf::from(".") } else { name.to_path_buf() };
        let mut h = self.header(meta);
        h.set_entry_type(EntryType::new(b'D'));
        h.set_size(listing.len() as u64);
        self.pax(path, name, meta)?;
        self.tar.append_data(&mut h, &shown, &listing[..]).at("cannot write archive entry", name)?;
        self.stats.dirs += 1;
        if !name.as_os_str().is_empty() {
            self.indexed(name, 'd', 0, meta.mtime(), true)?;
        }
        if let Some(inc) = self.inc.as_mut() {
            inc.after.block(root_idx, name_bytes, &records)?;
        }
        for d in dump.into_iter().rev() {
            stack.push(d);
        }
        Ok(())
    }

    fn indexed(&mut self, name: &Path, kind: char, size: u64, mtime: i64, stored: bool) -> Result<()> {
        match self.index.as_mut() {
            Some(i) => i.entry(name, kind, size, mtime, stored),
            None => Ok(()),
        }
    }

    /// An entry listed as in an incremental archive that could not be read into it: the next
    /// run stores it whatever its times say.
    fn not_stored(&mut self, name: &Path) {
        if let Some(inc) = self.inc.as_mut() {
            inc.failed.push(name.to_string_lossy().into_owned());
        }
    }

    /// The PAX records of an entry (ns time, xattrs, ACLs), in an `x` header before it, as
    /// GNU tar writes them with `--xattrs --acls`; nothing when it has none.
    fn pax(&mut self, path: &Path, name: &Path, meta: &Metadata) -> Result<()> {
        let xattrs = crate::meta::read_xattrs(path);
        let records = crate::meta::pax_records((meta.mtime(), meta.mtime_nsec()), &xattrs, &self.owners);
        if records.is_empty() {
            return Ok(());
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(records.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        if let Some(u) = h.as_ustar_mut() {
            u.name[..9].copy_from_slice(b"PaxHeader");
        }
        h.set_cksum();
        self.tar.append(&h, &records[..]).at("cannot write archive entry", name)
    }

    fn header(&self, meta: &Metadata) -> Header {
        let mut h = Header::new_gnu();
        h.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
        h.set_mode(meta.mode() & 0o7777);
        if let Some(u) = self.owners.user(meta.uid()) {
            let _ = h.set_username(u);
        }
        if let Some(g) = self.owners.group(meta.gid()) {
            let _ = h.set_groupname(g);
        }
        h
    }

    fn wanted_by_extension(&self, path: &Path) -> bool {
        wanted(self.opts, path)
    }

    fn entry(&mut self, path: &Path, name: &Path, meta: &Metadata) -> Result<()> {
        if self.excluded(path) || (meta.dev(), meta.ino()) == self.own {
            return Ok(());
        }
        let ft = meta.file_type();
        if !self.opts.extensions.is_empty() && (!ft.is_file() || !self.wanted_by_extension(path)) {
            return Ok(());
        }
        if ft.is_file() {
            return self.file(path, name, meta);
        }
        let mut h = self.header(meta);
        h.set_size(0);
        if ft.is_symlink() {
            let target = match Short::of(path).and_then(|s| std::fs::read_link(&s.path)) {
                Ok(t) => t,
                Err(e) => {
                    self.not_stored(name);
                    return self.trouble(path, &e, "vanished before it was read");
                }
            };
            h.set_entry_type(EntryType::Symlink);
            self.pax(path, name, meta)?;
            self.link_entry(&mut h, name, &target)?;
            self.stats.symlinks += 1;
            self.indexed(name, 'l', 0, meta.mtime(), true)?;
        } else if ft.is_socket() {
            self.report.warn(format!("{}: socket ignored", path.display()));
            self.stats.skipped += 1;
        } else {
            if ft.is_block_device() || ft.is_char_device() {
                let rdev = meta.rdev();
                let major = u32::try_from(((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)).unwrap_or(0);
                let minor = u32::try_from(((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)).unwrap_or(0);
                h.set_device_major(major).at("cannot write archive entry", name)?;
                h.set_device_minor(minor).at("cannot write archive entry", name)?;
            }
            self.pax(path, name, meta)?;
            self.tar.append_data(&mut h, name, io::empty()).at("cannot write archive entry", name)?;
            self.stats.special += 1;
            self.indexed(name, 's', 0, meta.mtime(), true)?;
        }
        Ok(())
    }

    /// A symlink or hard-link entry whose target is stored byte for byte (tar's own
    /// `append_link` rewrites short targets such as `./x` or `a//b`).
    fn link_entry(&mut self, h: &mut Header, name: &Path, target: &Path) -> Result<()> {
        let bytes = target.as_os_str().as_bytes();
        if bytes.len() < 100 {
            h.set_link_name_literal(bytes).at("cannot write archive entry", name)?;
            self.tar.append_data(h, name, io::empty()).at("cannot write archive entry", name)
        } else {
            self.tar.append_link(h, name, target).at("cannot write archive entry", name)
        }
    }

    fn file(&mut self, path: &Path, name: &Path, meta: &Metadata) -> Result<()> {
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1
            && let Some(first) = self.links.get(&key)
        {
            let first = first.clone();
            let mut h = self.header(meta);
            h.set_entry_type(EntryType::Link);
            h.set_size(0);
            self.link_entry(&mut h, name, &first)?;
            self.stats.hardlinks += 1;
            self.indexed(name, 'h', meta.len(), meta.mtime(), true)?;
            return Ok(());
        }
        let file = match Short::of(path).and_then(|s| File::open(&s.path)) {
            Ok(f) => f,
            Err(e) => {
                self.not_stored(name);
                return self.trouble(path, &e, "vanished before it was read");
            }
        };
        if let Some(map) = sparse_map(&file, meta, name) {
            return self.sparse_file(path, name, meta, &file, &map);
        }
        let mut h = self.header(meta);
        h.set_size(meta.len());
        let mut exact = ExactReader { file: &file, left: meta.len(), short: 0, error: None };
        let reader = BufReader::with_capacity(256 << 10, &mut exact);
        self.pax(path, name, meta)?;
        self.tar.append_data(&mut h, name, reader).at("cannot write archive entry", name)?;
        if meta.nlink() > 1 {
            // Only now is the first name in the archive, for later hard links to point at.
            self.links.insert(key, name.to_path_buf());
        }
        self.stats.files += 1;
        self.stats.bytes += meta.len();
        self.indexed(name, 'f', meta.len(), meta.mtime(), true)?;
        self.bar.add(meta.len());
        if exact.error.is_some() || exact.short > 0 {
            self.not_stored(name);
        }
        let problem = if let Some(e) = exact.error {
            Some(format!("read error, rest filled with zeros: {e}"))
        } else if exact.short > 0 {
            Some(format!("file shrank by {} bytes while read; padded with zeros", exact.short))
        } else {
            match file.metadata() {
                Ok(after)
                    if after.len() != meta.len()
                        || after.mtime() != meta.mtime()
                        || after.mtime_nsec() != meta.mtime_nsec() =>
                {
                    Some("file changed as we read it".to_owned())
                }
                _ => None,
            }
        };
        if let Some(p) = problem {
            let msg = format!("{}: {p}", path.display());
            if self.opts.strict {
                return Err(Error::runtime(format!("{msg} (STRICT)")));
            }
            self.report.warn(msg);
        }
        Ok(())
    }
}

/// The data segments (offset, length) of a file with holes, found with SEEK_DATA/SEEK_HOLE;
/// None for a file without holes (the usual case: its allocated blocks cover its size), or
/// whose name does not fit the header (then it is stored whole).
fn sparse_map(file: &File, meta: &Metadata, name: &Path) -> Option<Vec<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    let size = meta.len();
    if size == 0 || meta.blocks() * 512 >= size || name.as_os_str().len() >= 100 {
        return None;
    }
    let mut map = Vec::new();
    let mut pos = 0;
    while pos < size {
        let data = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return None,
        };
        let hole = rustix::fs::seek(file, SeekFrom::Hole(data)).ok()?.min(size);
        if hole > data {
            map.push((data, hole - data));
        }
        pos = hole;
    }
    let _ = rustix::fs::seek(file, SeekFrom::Start(0));
    let stored: u64 = map.iter().map(|(_, n)| n).sum();
    (stored < size).then_some(map)
}

impl Writer<'_> {
    /// A file with holes as an old-GNU sparse entry (type `S`: the map of its data segments in
    /// the header and extension blocks, then only the data), as `tar --sparse` writes it; GNU
    /// tar and `backup-runner restore` recreate the holes.
    fn sparse_file(
        &mut self,
        path: &Path,
        name: &Path,
        meta: &Metadata,
        file: &File,
        map: &[(u64, u64)],
    ) -> Result<()> {
        use std::io::Write;
        let stored: u64 = map.iter().map(|(_, n)| n).sum();
        // The map ends with the file's end, so that a trailing hole is kept.
        let mut segments = map.to_vec();
        segments.push((meta.len(), 0));
        let mut h = self.header(meta);
        h.set_entry_type(EntryType::GNUSparse);
        h.set_size(stored);
        h.set_path(name).at("cannot write archive entry", name)?;
        let (first, rest) = segments.split_at(segments.len().min(4));
        let gnu = h.as_gnu_mut().ok_or_else(|| Error::runtime("sparse entry: not a GNU header"))?;
        for (slot, (off, len)) in gnu.sparse.iter_mut().zip(first) {
            slot.set_offset(*off);
            slot.set_length(*len);
        }
        gnu.set_is_extended(!rest.is_empty());
        gnu.set_real_size(meta.len());
        h.set_cksum();
        self.pax(path, name, meta)?;
        let out = self.tar.get_mut();
        out.write_all(h.as_bytes()).at("cannot write archive entry", name)?;
        let chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut ext = tar::GnuExtSparseHeader::new();
            for (slot, (off, len)) in ext.sparse.iter_mut().zip(chunk.iter()) {
                slot.set_offset(*off);
                slot.set_length(*len);
            }
            ext.isextended[0] = u8::from(i + 1 < chunks.len());
            out.write_all(ext.as_bytes()).at("cannot write archive entry", name)?;
        }
        let mut short = 0;
        for (off, len) in map {
            let mut f = file;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(*off)).at("cannot read", path)?;
            let mut exact = ExactReader { file, left: *len, short: 0, error: None };
            std::io::copy(&mut exact, out).at("cannot write archive entry", name)?;
            short += exact.short;
        }
        let pad = (512 - stored % 512) % 512;
        out.write_all(&vec![0u8; pad as usize]).at("cannot write archive entry", name)?;
        self.stats.files += 1;
        self.stats.bytes += stored;
        self.bar.add(stored);
        self.indexed(name, 'f', meta.len(), meta.mtime(), true)?;
        if short > 0 {
            let msg = format!("{}: file shrank while read; padded with zeros", path.display());
            if self.opts.strict {
                return Err(Error::runtime(format!("{msg} (STRICT)")));
            }
            self.report.warn(msg);
        }
        Ok(())
    }
}

/// Yields exactly `left` bytes of `file`: zeros past a premature end or a read error, so the
/// entry always matches its header and the archive stays readable.
struct ExactReader<'a> {
    file: &'a File,
    left: u64,
    short: u64,
    error: Option<io::Error>,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = if self.short > 0 || self.error.is_some() {
            0
        } else {
            loop {
                match (&mut &*self.file).read(&mut buf[..want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.error = Some(e);
                        break 0;
                    }
                }
            }
        };
        let n = if n == 0 {
            if self.error.is_none() && self.short == 0 {
                self.short = self.left;
            }
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::{ExtractOptions, extract};
    use crate::snapshot;

    fn opts() -> Options {
        Options {
            excludes: Vec::new(),
            extensions: Vec::new(),
            follow_symlinks: false,
            one_file_system: false,
            strict: false,
            ignore_missing: false,
            compression: Settings { format: crate::encoder::Format::None, level: 0, threads: 0 },
            replace_existing: false,
            skip_temporaries: false,
        }
    }

    /// One archive of `data` into `out/<n>.tar`, incremental on the snapshot at `snap` (when
    /// there is one), which it then replaces.
    fn night(data: &Path, base: &Path, n: u32) -> Stats {
        let snap = base.join("s.snap");
        let before = snap.exists().then(|| snapshot::Reader::open(&snap).unwrap().1);
        let mut inc =
            Incremental { before, after: snapshot::Writer::create(&base.join("next.snap")).unwrap(), failed: vec![] };
        let root = Root { path: data.to_path_buf(), name: PathBuf::from("data") };
        let mut report = StageReport::new("t");
        let (_, stats) =
            write_archive_with(&[root], &opts(), &base.join(format!("{n}.tar")), &mut report, Some(&mut inc), None)
                .unwrap();
        let h = snapshot::Header {
            format: "ncb-snapshot".into(),
            version: 1,
            run_id: n.to_string(),
            level: n,
            full_run: "0".into(),
            base_run: None,
            fileset: String::new(),
            created: String::new(),
            failed: inc.failed.clone(),
        };
        inc.after.finish(&h, None).unwrap();
        std::fs::rename(base.join("next.snap"), &snap).unwrap();
        stats
    }

    fn tree(dir: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let what = if m.is_dir() {
                    stack.push(p.clone());
                    "dir".to_owned()
                } else if m.file_type().is_symlink() {
                    format!("-> {}", std::fs::read_link(&p).unwrap().display())
                } else {
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
                };
                out.push((rel, what));
            }
        }
        out.sort();
        out
    }

    /// A full archive and two increments, extracted in order, rebuild each night's tree:
    /// changed, added and removed files, a file that became a folder, a folder that became a
    /// file, a symlink retargeted; unchanged files are left out of the increments.
    #[test]
    fn increments_applied_in_order_rebuild_the_tree() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        let data = b.join("data");
        let w = |rel: &str, s: &str| {
            let p = data.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w("keep.txt", "same");
        w("change.txt", "v1");
        w("gone.txt", "bye");
        w("becomes_dir", "file");
        w("becomes_file/inner.txt", "in");
        w("deep/er/x.txt", "x");
        std::os::unix::fs::symlink("keep.txt", data.join("link")).unwrap();
        let s0 = night(&data, b, 0);
        assert_eq!(s0.unchanged, 0);
        let mut states = vec![tree(&data)];

        std::fs::write(data.join("change.txt"), "v2, longer").unwrap();
        std::fs::remove_file(data.join("gone.txt")).unwrap();
        std::fs::remove_file(data.join("becomes_dir")).unwrap();
        w("becomes_dir/now.txt", "now");
        std::fs::remove_dir_all(data.join("becomes_file")).unwrap();
        w("becomes_file", "a file now");
        w("new.txt", "new");
        std::fs::remove_file(data.join("link")).unwrap();
        std::os::unix::fs::symlink("new.txt", data.join("link")).unwrap();
        let s1 = night(&data, b, 1);
        // keep.txt and deep/er/x.txt are left out.
        assert_eq!((s1.unchanged, s1.files), (2, 4), "{s1:?}");
        states.push(tree(&data));

        std::fs::remove_dir_all(data.join("deep")).unwrap();
        let s2 = night(&data, b, 2);
        assert_eq!(s2.files, 0, "{s2:?}");
        states.push(tree(&data));

        let to = b.join("restore");
        std::fs::create_dir(&to).unwrap();
        for (n, want) in states.iter().enumerate() {
            let f = std::fs::File::open(b.join(format!("{n}.tar"))).unwrap();
            extract(f, &to, ExtractOptions { same_owner: false, incremental: true }, None).unwrap();
            assert_eq!(&tree(&to.join("data")), want, "after night {n}");
        }
    }
}
