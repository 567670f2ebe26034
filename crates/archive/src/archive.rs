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

use ncb_core::atomic::AtomicFile;
use ncb_core::hash::HashWriter;
use ncb_core::{Artifact, Error, IoContext, Result, StageReport};
use tar::{EntryType, Header};

use crate::encoder::{Compressor, Settings};
use crate::glob;
use crate::longpath::Short;
use crate::owners::Owners;

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
    bar: ncb_core::progress::Progress,
}

/// Archives `roots` into `dest` (atomically) and returns the artifact and the counts.
pub fn write_archive(
    roots: &[Root],
    opts: &Options,
    dest: &Path,
    report: &mut StageReport,
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
        bar: ncb_core::progress::Progress::new(
            format!("archive {}", dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
            0,
        ),
    };
    for root in roots {
        w.root(root)?;
    }
    w.bar.finish();
    let comp = w.tar.into_inner().at("cannot write", dest)?;
    let sink = comp.finish().at("cannot write", dest)?;
    let (out, bytes, sha256) = sink.finish();
    let path = if opts.replace_existing { out.commit()? } else { out.commit_new()? };
    Ok((Artifact { path, bytes, sha256 }, w.stats))
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
        let abs = path.as_os_str().as_bytes();
        let name = path.file_name().map_or(abs, OsStrExt::as_bytes);
        if self.opts.skip_temporaries
            && let Some(n) = path.file_name()
            && (ncb_core::atomic::is_partial(n) || ncb_core::journal::is_runner_own(&n.to_string_lossy()))
        {
            return true;
        }
        self.opts.excludes.iter().any(|x| x.hits(abs, name))
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
        // The root `/` itself has no name in the archive; its children do.
        if self.opts.extensions.is_empty() && !name.as_os_str().is_empty() {
            let mut h = self.header(meta);
            h.set_entry_type(EntryType::Directory);
            h.set_size(0);
            self.tar.append_data(&mut h, name, io::empty()).at("cannot write archive entry", name)?;
            self.stats.dirs += 1;
        }
        if self.opts.one_file_system && meta.dev() != self.root_dev {
            return Ok(());
        }
        let entries = match Short::of(path).and_then(|s| std::fs::read_dir(&s.path)) {
            Ok(e) => e,
            Err(e) => return self.trouble(path, &e, "folder vanished before it was read"),
        };
        let mut children = Vec::new();
        for e in entries {
            match e {
                Ok(e) => children.push(e.file_name()),
                Err(err) => return self.trouble(path, &err, "folder vanished while it was read"),
            }
        }
        children.sort();
        // Reversed onto the stack, so entries are written in name order.
        for child in children.into_iter().rev() {
            stack.push((path.join(&child), name.join(&child), None));
        }
        Ok(())
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
        self.opts.extensions.is_empty()
            || path.extension().is_some_and(|e| {
                let e = e.to_string_lossy().to_ascii_lowercase();
                self.opts.extensions.contains(&e)
            })
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
                Err(e) => return self.trouble(path, &e, "vanished before it was read"),
            };
            h.set_entry_type(EntryType::Symlink);
            self.link_entry(&mut h, name, &target)?;
            self.stats.symlinks += 1;
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
            self.tar.append_data(&mut h, name, io::empty()).at("cannot write archive entry", name)?;
            self.stats.special += 1;
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
            return Ok(());
        }
        let file = match Short::of(path).and_then(|s| File::open(&s.path)) {
            Ok(f) => f,
            Err(e) => return self.trouble(path, &e, "vanished before it was read"),
        };
        let mut h = self.header(meta);
        h.set_size(meta.len());
        let mut exact = ExactReader { file: &file, left: meta.len(), short: 0, error: None };
        let reader = BufReader::with_capacity(256 << 10, &mut exact);
        self.tar.append_data(&mut h, name, reader).at("cannot write archive entry", name)?;
        if meta.nlink() > 1 {
            // Only now is the first name in the archive, for later hard links to point at.
            self.links.insert(key, name.to_path_buf());
        }
        self.stats.files += 1;
        self.stats.bytes += meta.len();
        self.bar.add(meta.len());
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
