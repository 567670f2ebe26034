//! Streaming encryption into parts, and decryption from them. Three threads each way
//! (read+hash, AES-GCM, write+hash) joined by bounded channels: memory stays at a few
//! segments whatever the file size, and both cores work.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use ncb_core::atomic::AtomicFile;
use ncb_core::hash::HashWriter;
use ncb_core::progress::Progress;
use ncb_core::{Artifact, Error, IoContext, Result};
use sha2::{Digest, Sha256};

use crate::format::{FormatError, HEADER_LEN, Header, Keys, TAG_LEN};
use crate::key::MasterKey;
use crate::manifest::{self, Manifest, Part};

const DEPTH: usize = 4;

/// A segment travelling through the pipeline.
struct Seg {
    index: u32,
    last: bool,
    buf: Vec<u8>,
    /// Where its bytes came from (decryption: the part names).
    origin: String,
}

/// The pipeline was stopped by a later stage failing; that stage's error is the real one.
fn stopped() -> Error {
    Error::runtime("pipeline stopped")
}
fn is_stop(e: &Error) -> bool {
    matches!(e, Error::Runtime(m) if m == "pipeline stopped")
}

/// Fills `buf` up to `want` bytes; fewer only at end of input.
fn read_full(r: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
    buf.clear();
    append_up_to(r, buf, want)
}

/// Appends to `buf` until it holds `want` bytes or the input ends, reading straight into
/// the buffer (no probe reads, no reallocation when the capacity suffices).
fn append_up_to(r: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
    let mut len = buf.len();
    buf.resize(want, 0);
    while len < want {
        match r.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(len);
                return Err(e);
            }
        }
    }
    buf.truncate(len);
    Ok(())
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::runtime(format!("no randomness: {e}")))?;
    Ok(b)
}

/// The outputs of one encrypted file.
#[derive(Debug)]
pub struct Encrypted {
    pub parts: Vec<Artifact>,
    pub manifest: Artifact,
    pub plaintext_size: u64,
}

/// Part file names: `NAME.enc` unsplit, else `NAME.enc.000`, `.001`… wide enough to sort.
pub fn part_names(base: &str, parts: u64, split: bool) -> Vec<String> {
    if !split {
        return vec![format!("{base}.enc")];
    }
    let width = parts.saturating_sub(1).to_string().len().max(3);
    (0..parts).map(|i| format!("{base}.enc.{i:0width$}")).collect()
}

/// What a file is encrypted with: a key file's master key, or a fresh file key sealed for
/// recipients (public keys; see [`crate::pke`]).
#[derive(Debug, Clone, Copy)]
pub enum Sealing<'a> {
    Key(&'a MasterKey),
    Recipients(&'a [crate::pke::Recipient]),
}

/// What decrypts: a key file's master key, identities (private keys), or whichever of the
/// two a file needs (restores of runs made with either).
#[derive(Debug, Clone, Copy)]
pub enum Opening<'a> {
    Key(&'a MasterKey),
    Identities(&'a [crate::pke::Identity]),
    Either(Option<&'a MasterKey>, &'a [crate::pke::Identity]),
}

/// Encrypts `input` into `dest_dir`, in parts of `part_size` bytes (None: one part).
pub fn encrypt_file(
    master: &MasterKey,
    input: &Path,
    dest_dir: &Path,
    part_size: Option<u64>,
    segment: u32,
) -> Result<Encrypted> {
    encrypt_file_with(Sealing::Key(master), input, dest_dir, part_size, segment)
}

/// [`encrypt_file`] with a key file or for recipients.
pub fn encrypt_file_with(
    sealing: Sealing<'_>,
    input: &Path,
    dest_dir: &Path,
    part_size: Option<u64>,
    segment: u32,
) -> Result<Encrypted> {
    let (file_key, pk_header) = match sealing {
        Sealing::Key(_) => (None, Vec::new()),
        Sealing::Recipients(r) => {
            let (k, h) = crate::pke::seal(r)?;
            (Some(MasterKey::from_bytes(k.to_vec())), h)
        }
    };
    let master = match (&sealing, &file_key) {
        (Sealing::Key(m), _) => *m,
        (_, Some(k)) => k,
        (_, None) => return Err(Error::runtime("no key to encrypt with")),
    };
    let base = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::usage(format!("{} has no file name", input.display())))?;
    // Never write over (or, on failure, delete) an earlier encryption of the same name.
    let earlier = format!("{base}.enc");
    if let Ok(entries) = std::fs::read_dir(dest_dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == earlier || n.starts_with(&format!("{earlier}.")) {
                return Err(Error::runtime(format!(
                    "{} already holds {n} from an earlier encryption of {base}: move it away, or give each run its own DESTINATION (e.g. with {{RUN_ID}})",
                    dest_dir.display()
                )));
            }
        }
    }
    let file = File::open(input).at("cannot open", input)?;
    let size = file.metadata().at("cannot stat", input)?.len();
    let bar = Progress::new(format!("encrypt {base}"), size);
    let header = Header::new(segment, random()?, random()?, master.bytes());
    let keys = Keys::open(master.bytes(), &header).map_err(|e| Error::runtime(e.to_string()))?;
    let stream_len = pk_header.len() as u64 + header.stream_len(size);
    let count = part_size.map_or(1, |p| stream_len.div_ceil(p).max(1));
    let names = part_names(&base, count, part_size.is_some());
    let mut out = PartWriter {
        dir: dest_dir.to_path_buf(),
        names,
        part_size: part_size.unwrap_or(u64::MAX),
        current: None,
        done: Vec::new(),
    };

    let result = std::thread::scope(|s| -> Result<(u64, String)> {
        let (plain_tx, plain_rx) = sync_channel::<Seg>(DEPTH);
        let (sealed_tx, sealed_rx) = sync_channel::<Seg>(DEPTH);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(2 * DEPTH + 2);
        let bar = &bar;
        let reader = s.spawn(move || read_plain(file, segment, &plain_tx, &free_rx, bar));
        let aad = header.prefix();
        let (k, h) = (&keys, &header);
        let sealer = s.spawn(move || {
            for mut seg in plain_rx {
                // On failure the sealer stops: the writer then sees the stream end early.
                if k.seal(h, &aad, seg.index, seg.last, &mut seg.buf).is_err() || sealed_tx.send(seg).is_err() {
                    return;
                }
            }
        });
        let written = out.write(&pk_header).and_then(|()| write_sealed(&mut out, &header, &sealed_rx, input, &free_tx));
        drop(sealed_rx);
        let _ = sealer.join();
        let read = reader.join().map_err(|_| Error::runtime("reader thread panicked"))?;
        match (read, written) {
            (Err(e), _) if !is_stop(&e) => Err(e.into_input_error(input)),
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Ok(r), Ok(())) => Ok(r),
        }
    });
    bar.finish();
    let (plaintext_size, plaintext_sha256) = match result {
        Ok(r) => r,
        Err(e) => {
            out.abandon();
            return Err(e);
        }
    };
    if plaintext_size != size {
        out.abandon();
        return Err(Error::runtime(format!(
            "{} changed size while it was encrypted ({size} -> {plaintext_size} bytes)",
            input.display()
        )));
    }
    let parts = out.done.clone();
    let m = Manifest {
        format: manifest::FORMAT.into(),
        version: crate::format::VERSION,
        file: base.clone(),
        plaintext_size,
        plaintext_sha256,
        stream_size: stream_len,
        segment_size: segment,
        salt: hex::encode(header.salt),
        recipients: crate::pke::recipients_of(&pk_header),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        parts: parts
            .iter()
            .map(|a| Part { name: file_name(&a.path), size: a.bytes, sha256: a.sha256.clone() })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::runtime(format!("manifest: {e}")))?;
    let mpath = dest_dir.join(format!("{base}.enc{}", manifest::SUFFIX));
    if let Err(e) = ncb_core::atomic::write_new_file(&mpath, &json, 0o600) {
        out.abandon();
        return Err(e);
    }
    let manifest = Artifact { path: mpath, bytes: json.len() as u64, sha256: hex::encode(Sha256::digest(&json)) };
    Ok(Encrypted { parts, manifest, plaintext_size })
}

trait InputError {
    fn into_input_error(self, input: &Path) -> Error;
}
impl InputError for Error {
    fn into_input_error(self, input: &Path) -> Error {
        match self {
            Error::Io { source, .. } => Error::path("cannot read", input, source),
            e => e,
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Reads segments with one of lookahead (to flag the last), hashing the plaintext.
fn read_plain(
    mut file: File,
    segment: u32,
    tx: &SyncSender<Seg>,
    free: &Receiver<Vec<u8>>,
    bar: &Progress,
) -> Result<(u64, String)> {
    let seg = segment as usize;
    let fresh = || free.try_recv().unwrap_or_else(|_| Vec::with_capacity(seg + TAG_LEN));
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut cur = fresh();
    read_full(&mut file, &mut cur, seg).map_err(|e| Error::io("read", e))?;
    let mut index = 0u32;
    loop {
        hash.update(&cur);
        total += cur.len() as u64;
        bar.add(cur.len() as u64);
        let mut next = fresh();
        if cur.len() == seg {
            read_full(&mut file, &mut next, seg).map_err(|e| Error::io("read", e))?;
        } else {
            next.clear();
        }
        let last = next.is_empty();
        tx.send(Seg { index, last, buf: cur, origin: String::new() }).map_err(|_| stopped())?;
        if last {
            return Ok((total, hex::encode(hash.finalize())));
        }
        index = index.checked_add(1).ok_or_else(|| Error::runtime("too many segments"))?;
        cur = next;
    }
}

fn write_sealed(
    out: &mut PartWriter,
    header: &Header,
    rx: &Receiver<Seg>,
    input: &Path,
    free: &SyncSender<Vec<u8>>,
) -> Result<()> {
    out.write(&header.to_bytes())?;
    for seg in rx {
        out.write(&seg.buf)?;
        if seg.last {
            return out.finish();
        }
        let _ = free.try_send(seg.buf);
    }
    Err(Error::runtime(format!("encryption of {} stopped early", input.display())))
}

/// Writes the stream as consecutive parts, each atomic and hashed while written.
struct PartWriter {
    dir: PathBuf,
    names: Vec<String>,
    part_size: u64,
    current: Option<HashWriter<AtomicFile>>,
    done: Vec<Artifact>,
}

impl PartWriter {
    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.current.is_none() {
                let Some(name) = self.names.get(self.done.len()) else {
                    return Err(Error::runtime("the input grew while it was encrypted"));
                };
                self.current = Some(HashWriter::new(AtomicFile::create(&self.dir.join(name))?));
            }
            let Some(cur) = self.current.as_mut() else {
                continue;
            };
            let room = usize::try_from(self.part_size - cur.bytes()).unwrap_or(usize::MAX);
            let n = room.min(data.len());
            cur.write_all(&data[..n]).ctx(|| format!("cannot write {}", self.dir.display()))?;
            data = &data[n..];
            if cur.bytes() == self.part_size {
                self.close()?;
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some(cur) = self.current.take() {
            let (file, bytes, sha256) = cur.finish();
            let path = file.commit_new()?;
            self.done.push(Artifact { path, bytes, sha256 });
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.close()
    }

    /// A failed encryption leaves no part behind.
    fn abandon(&mut self) {
        self.current.take();
        for a in self.done.drain(..) {
            let _ = std::fs::remove_file(&a.path);
        }
    }
}

/// Where the parts of one encrypted file are, and what the manifest says of them.
#[derive(Debug)]
pub struct Located {
    pub parts: Vec<PathBuf>,
    pub manifest: Option<Manifest>,
}

/// Finds the parts for a prefix: every file starting with it, as nc-backup-py did.
pub fn locate(prefix: &Path, require_manifest: bool) -> Result<Located> {
    // A folder as prefix means every file in it.
    let (dir, start) = if prefix.is_dir() {
        (prefix, String::new())
    } else {
        let dir = prefix.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        (dir, prefix.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
    };
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .at("cannot list", dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) && !ncb_core::atomic::is_partial(&e.file_name()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&start))
        .collect();
    files.sort();
    let (manifests, parts): (Vec<String>, Vec<String>) = files.into_iter().partition(|n| n.ends_with(manifest::SUFFIX));
    match manifests.as_slice() {
        [] if require_manifest => Err(Error::runtime(format!(
            "no manifest ({}*{}) found: the encryption did not finish, or the manifest was lost; to decrypt from the parts alone (still fully authenticated) add --REQUIRE_MANIFEST False",
            prefix.display(),
            manifest::SUFFIX
        ))),
        [] if parts.is_empty() => Err(Error::runtime(format!("no file starts with {}", prefix.display()))),
        [] => Ok(Located { parts: parts.iter().map(|p| dir.join(p)).collect(), manifest: None }),
        [one] => {
            let path = dir.join(one);
            let meta = std::fs::metadata(&path).at("cannot stat", &path)?;
            if meta.len() > manifest::MAX_LEN {
                return Err(Error::runtime(format!("manifest {} is too large to be one", path.display())));
            }
            let bytes = std::fs::read(&path).at("cannot read", &path)?;
            let m = Manifest::parse(&bytes).map_err(|e| Error::runtime(format!("manifest {}: {e}", path.display())))?;
            for p in &parts {
                if !m.parts.iter().any(|mp| &mp.name == p) {
                    return Err(Error::runtime(format!(
                        "part {p} matches the prefix but is not in the manifest (a duplicated or foreign part?)"
                    )));
                }
            }
            let mut located = Vec::new();
            for mp in &m.parts {
                let path = dir.join(&mp.name);
                let size = std::fs::metadata(&path)
                    .map(|m| m.len())
                    .map_err(|_| Error::runtime(format!("part {} is missing", mp.name)))?;
                if size != mp.size {
                    return Err(Error::runtime(format!(
                        "part {} has {size} bytes, the manifest says {} (truncated or damaged)",
                        mp.name, mp.size
                    )));
                }
                located.push(path);
            }
            Ok(Located { parts: located, manifest: Some(m) })
        }
        many => Err(Error::usage(format!(
            "prefix {} matches several backups ({}): give a longer prefix",
            prefix.display(),
            many.join(", ")
        ))),
    }
}

/// Opens part `i` of a stream for reading: a file here, or an object in a destination.
pub type PartOpener<'a> = dyn Fn(usize) -> Result<Box<dyn Read + Send + 'a>> + Sync + 'a;

/// Reads the parts as one stream, checking each part's SHA-256 against the manifest at its end.
struct PartsReader<'a, 'o> {
    names: &'a [String],
    open: &'a PartOpener<'o>,
    expect: Option<&'a Manifest>,
    index: usize,
    file: Option<Box<dyn Read + Send + 'o>>,
    hash: Sha256,
}

impl PartsReader<'_, '_> {
    fn name(&self, i: usize) -> String {
        self.names.get(i).cloned().unwrap_or_default()
    }

    /// Reads up to `want` bytes across part boundaries; the range of parts it touched.
    fn read_chunk(&mut self, buf: &mut Vec<u8>, want: usize) -> Result<(usize, usize)> {
        buf.clear();
        let first = self.index;
        while buf.len() < want && self.index < self.names.len() {
            if self.file.is_none() {
                self.file = Some((self.open)(self.index)?);
            }
            let Some(f) = self.file.as_mut() else {
                continue;
            };
            let before = buf.len();
            append_up_to(f, buf, want)
                .map_err(|e| Error::io(format!("cannot read part {}", self.names[self.index]), e))?;
            self.hash.update(&buf[before..]);
            if buf.len() < want {
                self.end_part()?;
            }
        }
        Ok((first, self.index.min(self.names.len().saturating_sub(1))))
    }

    fn end_part(&mut self) -> Result<()> {
        let digest = hex::encode(std::mem::take(&mut self.hash).finalize());
        if let Some(m) = self.expect
            && let Some(p) = m.parts.get(self.index)
            && p.sha256 != digest
        {
            return Err(Error::runtime(format!(
                "part {}: SHA-256 differs from the manifest (corrupted or replaced)",
                p.name
            )));
        }
        self.file = None;
        self.index += 1;
        Ok(())
    }
}

/// Joins and decrypts the located parts into `dest`, written atomically.
pub fn decrypt(master: &MasterKey, located: &Located, dest: &Path) -> Result<Artifact> {
    decrypt_with(Opening::Key(master), located, dest)
}

/// [`decrypt`] with a key file or identities.
pub fn decrypt_with(opening: Opening<'_>, located: &Located, dest: &Path) -> Result<Artifact> {
    let out = AtomicFile::create(dest)?;
    let names: Vec<String> = located.parts.iter().map(|p| file_name(p)).collect();
    let open = |i: usize| -> Result<Box<dyn Read + Send>> {
        let p = &located.parts[i];
        Ok(Box::new(File::open(p).at("cannot open part", p)?))
    };
    let (file, bytes, sha256) = decrypt_stream_with(opening, &names, located.manifest.as_ref(), &open, out, dest)?;
    let path = file.commit()?;
    Ok(Artifact { path, bytes, sha256 })
}

/// Joins and decrypts the located parts into `sink` (`dest` names it in messages); the sink,
/// the plaintext's size and SHA-256, checked against the manifest when there is one.
pub fn decrypt_into<W: Write>(master: &MasterKey, located: &Located, sink: W, dest: &Path) -> Result<(W, u64, String)> {
    let names: Vec<String> = located.parts.iter().map(|p| file_name(p)).collect();
    let open = |i: usize| -> Result<Box<dyn Read + Send>> {
        let p = &located.parts[i];
        Ok(Box::new(File::open(p).at("cannot open part", p)?))
    };
    decrypt_stream(master, &names, located.manifest.as_ref(), &open, sink, dest)
}

/// Joins and decrypts the parts `names` (in order, each opened by `open`) into `sink`; with a
/// manifest, every part's SHA-256 and the plaintext's size and SHA-256 are checked against it.
/// The sink, the plaintext's size and SHA-256.
pub fn decrypt_stream<W: Write>(
    master: &MasterKey,
    names: &[String],
    manifest: Option<&Manifest>,
    open: &PartOpener<'_>,
    sink: W,
    dest: &Path,
) -> Result<(W, u64, String)> {
    decrypt_stream_with(Opening::Key(master), names, manifest, open, sink, dest)
}

/// [`decrypt_stream`] with a key file or identities: a public-key file's header is opened
/// with the identities, whose file key then decrypts the stream.
pub fn decrypt_stream_with<W: Write>(
    opening: Opening<'_>,
    names: &[String],
    manifest: Option<&Manifest>,
    open: &PartOpener<'_>,
    sink: W,
    dest: &Path,
) -> Result<(W, u64, String)> {
    if names.is_empty() {
        return Err(Error::runtime("no part to decrypt"));
    }
    let mut reader = PartsReader { names, open, expect: manifest, index: 0, file: None, hash: Sha256::new() };
    let first = reader.name(0);
    let mut head = Vec::new();
    reader.read_chunk(&mut head, 12)?;
    let file_key;
    let master: &MasterKey = if head.starts_with(crate::pke::MAGIC) {
        let n = crate::pke::count(&head).map_err(|e| Error::runtime(format!("part {first}: {e}")))?;
        let mut rest = Vec::new();
        reader.read_chunk(&mut rest, crate::pke::header_len(n) - 12)?;
        head.extend_from_slice(&rest);
        let ids = match opening {
            Opening::Identities(ids) | Opening::Either(_, ids) if !ids.is_empty() => ids,
            _ => {
                return Err(Error::runtime(format!(
                    "part {first} is encrypted for recipients {}: decrypt it with their identity (--IDENTITY / --identity), not a key file",
                    crate::pke::recipients_of(&head).join(", ")
                )));
            }
        };
        let k = crate::pke::open(&head, ids).map_err(|e| Error::runtime(format!("part {first}: {e}")))?;
        file_key = MasterKey::from_bytes(k.to_vec());
        head.clear();
        &file_key
    } else {
        match opening {
            Opening::Key(m) | Opening::Either(Some(m), _) => m,
            Opening::Identities(_) | Opening::Either(None, _) => {
                return Err(Error::runtime(format!(
                    "part {first} is encrypted with a key file, not for recipients: give its KEY_FILE"
                )));
            }
        }
    };
    let mut rest = Vec::new();
    reader.read_chunk(&mut rest, HEADER_LEN - head.len())?;
    head.extend_from_slice(&rest);
    let header = Header::parse(&head).map_err(|e| Error::runtime(format!("part {first}: {e}")))?;
    if let Some(m) = manifest
        && m.salt != hex::encode(header.salt)
    {
        return Err(Error::runtime(format!("the manifest belongs to another backup than part {first}")));
    }
    let keys = Keys::open(master.bytes(), &header).map_err(|e| match e {
        FormatError::WrongKey => Error::runtime(format!("part {first}: {e}")),
        e => Error::runtime(format!("part {first}: {e}")),
    })?;
    let mut out = HashWriter::new(sink);
    let result = std::thread::scope(|s| -> Result<()> {
        let (ct_tx, ct_rx) = sync_channel::<Seg>(DEPTH);
        let (pt_tx, pt_rx) = sync_channel::<Seg>(DEPTH);
        let seg_len = header.segment_size as usize + TAG_LEN;
        let r = &mut reader;
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(2 * DEPTH + 2);
        let read = s.spawn(move || read_cipher(r, seg_len, &ct_tx, &free_rx));
        let (k, h) = (&keys, &header);
        let open = s.spawn(move || -> Result<()> {
            let aad = h.prefix();
            for mut seg in ct_rx {
                if k.open_segment(h, &aad, seg.index, seg.last, &mut seg.buf) {
                    pt_tx.send(seg).map_err(|_| stopped())?;
                    continue;
                }
                let mut again = seg.buf.clone();
                let msg = if seg.last && k.open_segment(h, &aad, seg.index, false, &mut again) {
                    format!("the stream ends early after {}: its last part(s) are missing", seg.origin)
                } else if seg.last {
                    format!(
                        "authentication failed at the end of the stream, in {} (segment {}): the stream ends early (a last part missing or truncated) or is corrupted",
                        seg.origin, seg.index
                    )
                } else {
                    format!(
                        "authentication failed in {} (segment {}): corrupted, reordered, missing or from another backup",
                        seg.origin, seg.index
                    )
                };
                return Err(Error::runtime(msg));
            }
            Ok(())
        });
        let mut got_last = false;
        let mut write_err = None;
        for seg in pt_rx {
            if let Err(e) = out.write_all(&seg.buf) {
                write_err = Some(Error::path("cannot write", dest, e));
                break;
            }
            got_last = seg.last;
            let _ = free_tx.try_send(seg.buf);
        }
        let opened = open.join().map_err(|_| Error::runtime("decryption thread panicked"))?;
        let read = read.join().map_err(|_| Error::runtime("reader thread panicked"))?;
        for r in [read, opened] {
            if let Err(e) = r
                && !is_stop(&e)
            {
                return Err(e);
            }
        }
        if let Some(e) = write_err {
            return Err(e);
        }
        if !got_last {
            return Err(Error::runtime("the stream ends without its final segment"));
        }
        Ok(())
    });
    result?;
    let (file, bytes, sha256) = out.finish();
    if let Some(m) = manifest
        && (m.plaintext_size != bytes || m.plaintext_sha256 != sha256)
    {
        return Err(Error::runtime(format!(
            "decrypted {bytes} bytes with SHA-256 {sha256}, the manifest says {} bytes with {}",
            m.plaintext_size, m.plaintext_sha256
        )));
    }
    Ok((file, bytes, sha256))
}

fn read_cipher(
    r: &mut PartsReader<'_, '_>,
    seg_len: usize,
    tx: &SyncSender<Seg>,
    free: &Receiver<Vec<u8>>,
) -> Result<()> {
    let fresh = || free.try_recv().unwrap_or_else(|_| Vec::with_capacity(seg_len));
    let mut cur = fresh();
    let mut span = r.read_chunk(&mut cur, seg_len)?;
    let mut index = 0u32;
    loop {
        let mut next = Vec::with_capacity(seg_len);
        let next_span = if cur.len() == seg_len { r.read_chunk(&mut next, seg_len)? } else { span };
        let last = next.is_empty();
        let origin = if span.0 == span.1 {
            format!("part {}", r.name(span.0))
        } else {
            format!("parts {} to {}", r.name(span.0), r.name(span.1))
        };
        if cur.len() < TAG_LEN {
            return Err(Error::runtime(format!("{origin}: the stream ends inside a segment (truncated)")));
        }
        tx.send(Seg { index, last, buf: cur, origin }).map_err(|_| stopped())?;
        if last {
            return Ok(());
        }
        index = index.checked_add(1).ok_or_else(|| Error::runtime("too many segments"))?;
        cur = next;
        span = next_span;
    }
}
