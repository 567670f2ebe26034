//! Parallel gzip: the input is cut into blocks, each compressed on its own thread into a
//! complete gzip member; members are written in order. A multi-member stream is standard
//! gzip (RFC 1952 §2.2): `gzip -d`, `tar xzf`, zlib and flate2's `MultiGzDecoder` read it.
//!
//! Each member carries its own length in an extra field (FEXTRA subfield `NC`, 4 bytes, as
//! BGZF does with `BC`), which gzip readers pass over; [`ParallelGzReader`] uses it to cut the
//! stream into members without inflating it and to inflate them on every core.
//!
//! Memory is bounded: at most `in_flight` blocks exist at once (being filled, compressed or
//! waiting to be written), each input buffer is recycled.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::Compression;
use flate2::GzBuilder;

/// Default block size: large enough that per-member overhead and the lost 32 KiB window
/// cost well under 0.5% of the output, small enough to keep both cores busy.
pub const DEFAULT_BLOCK: usize = 1 << 20;

type Job = (u64, Vec<u8>);
/// (sequence, the gzip member or why it could not be made, the input buffer to recycle)
type Done = (u64, Member, Vec<u8>);
type Member = Result<Vec<u8>, String>;

#[derive(Debug)]
pub struct ParallelGzWriter<W: Write + Send + 'static> {
    buf: Vec<u8>,
    block: usize,
    seq: u64,
    jobs: Option<SyncSender<Job>>,
    tokens: Receiver<Vec<u8>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> ParallelGzWriter<W> {
    /// `threads` compressing threads (0: one per core).
    pub fn new(inner: W, level: u32, threads: usize, block: usize) -> Self {
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(2, usize::from) } else { threads };
        let in_flight = threads * 2 + 1;
        let (job_tx, job_rx) = sync_channel::<Job>(in_flight);
        let (done_tx, done_rx) = sync_channel::<Done>(in_flight);
        let (token_tx, token_rx) = sync_channel::<Vec<u8>>(in_flight);
        for _ in 0..in_flight - 1 {
            let _ = token_tx.send(Vec::with_capacity(block));
        }
        let job_rx = Arc::new(Mutex::new(job_rx));
        let level = Compression::new(level.min(9));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&job_rx);
                let tx = done_tx.clone();
                std::thread::spawn(move || worker(&rx, &tx, level))
            })
            .collect();
        drop(done_tx);
        let writer = std::thread::spawn(move || write_in_order(inner, &done_rx, &token_tx));
        ParallelGzWriter {
            buf: Vec::with_capacity(block),
            block,
            seq: 0,
            jobs: Some(job_tx),
            tokens: token_rx,
            workers,
            writer: Some(writer),
        }
    }

    fn send_block(&mut self) -> io::Result<()> {
        let fresh = match self.tokens.recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => return Err(self.writer_error()),
        };
        let full = std::mem::replace(&mut self.buf, fresh);
        let sent = self.jobs.as_ref().is_some_and(|j| j.send((self.seq, full)).is_ok());
        if !sent {
            return Err(self.writer_error());
        }
        self.seq += 1;
        Ok(())
    }

    /// The writer thread stopped: its error, or a generic one.
    fn writer_error(&mut self) -> io::Error {
        self.jobs.take();
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("parallel gzip: output thread stopped"),
        }
    }

    /// Compresses what is left, waits for every block to be written, returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() || self.seq == 0 {
            self.send_block()?;
        }
        self.jobs.take();
        for w in self.workers.drain(..) {
            w.join().map_err(|_| io::Error::other("parallel gzip: a compression thread panicked"))?;
        }
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(io::Error::other("parallel gzip: output thread panicked")),
        }
    }
}

impl<W: Write + Send + 'static> Write for ParallelGzWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.block - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.block {
            self.send_block()?;
        }
        Ok(n)
    }
    /// Blocks are written when full; flushing mid-stream would only shrink them.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for ParallelGzWriter<W> {
    fn drop(&mut self) {
        // Dropped without finish (an error path): stop the threads, keep nothing.
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, tx: &SyncSender<Done>, level: Compression) {
    loop {
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok((seq, input)) = job else { return };
        // A failure (or a panic) becomes an error for the writer, never a silent hole.
        let member = std::panic::catch_unwind(|| {
            let mut enc =
                GzBuilder::new().extra(SIZE_FIELD.to_vec()).write(Vec::with_capacity(input.len() / 2 + 64), level);
            let mut gz = enc.write_all(&input).and_then(|()| enc.finish()).map_err(|e| e.to_string())?;
            let len = u32::try_from(gz.len()).map_err(|_| "gzip member over 4 GiB".to_owned())?;
            gz[SIZE_AT..SIZE_AT + 4].copy_from_slice(&len.to_le_bytes());
            Ok(gz)
        })
        .unwrap_or_else(|_| Err("a compression thread panicked".to_owned()));
        if tx.send((seq, member, input)).is_err() {
            return;
        }
    }
}

fn write_in_order<W: Write>(mut out: W, rx: &Receiver<Done>, tokens: &SyncSender<Vec<u8>>) -> io::Result<W> {
    let mut pending: BTreeMap<u64, (Member, Vec<u8>)> = BTreeMap::new();
    let mut next = 0u64;
    for (seq, member, input) in rx {
        pending.insert(seq, (member, input));
        while let Some((member, input)) = pending.remove(&next) {
            out.write_all(&member.map_err(|e| io::Error::other(format!("gzip: {e}")))?)?;
            next += 1;
            let _ = tokens.send(input);
        }
    }
    out.flush()?;
    Ok(out)
}

/// The extra field of each member: subfield `NC`, 4 bytes: the member's length (patched in).
const SIZE_FIELD: [u8; 8] = [b'N', b'C', 4, 0, 0, 0, 0, 0];
/// Where the length sits in a member: 10 header bytes, XLEN (2), SI1 SI2 LEN (4).
const SIZE_AT: usize = 16;

/// The length of a member from its first 20 bytes, when it carries one (written here).
fn member_len(head: &[u8; 20]) -> Option<usize> {
    let ours = head[..3] == [0x1f, 0x8b, 8]
        && head[3] & 4 != 0
        && u16::from_le_bytes([head[10], head[11]]) == SIZE_FIELD.len() as u16
        && head[12..16] == SIZE_FIELD[..4];
    let len = u32::from_le_bytes([head[16], head[17], head[18], head[19]]) as usize;
    (ours && len > 20).then_some(len)
}

/// Whether a stream starting with `head` was written by [`ParallelGzWriter`] (its members
/// carry their lengths).
pub fn has_member_sizes(head: &[u8]) -> bool {
    head.get(..20).and_then(|h| <&[u8; 20]>::try_from(h).ok()).is_some_and(|h| member_len(h).is_some())
}

type Inflated = (u64, io::Result<Vec<u8>>);

/// Reads a stream written by [`ParallelGzWriter`]: members are read in order by the caller,
/// inflated (and their CRC and size checked) on `threads` threads, and handed back in order.
/// At most a few members are in flight: memory stays flat.
#[derive(Debug)]
pub struct ParallelGzReader<R: io::Read> {
    inner: R,
    jobs: Option<SyncSender<(u64, Vec<u8>)>>,
    done: Receiver<Inflated>,
    workers: Vec<JoinHandle<()>>,
    limit: u64,
    submitted: u64,
    next: u64,
    pending: BTreeMap<u64, io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl<R: io::Read> ParallelGzReader<R> {
    pub fn new(inner: R, threads: usize) -> Self {
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(2, usize::from) } else { threads };
        let limit = (threads * 2 + 1) as u64;
        let (job_tx, job_rx) = sync_channel::<(u64, Vec<u8>)>(threads * 2 + 1);
        let (done_tx, done_rx) = sync_channel::<Inflated>(threads * 2 + 1);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&job_rx);
                let tx = done_tx.clone();
                std::thread::spawn(move || inflate_worker(&rx, &tx))
            })
            .collect();
        ParallelGzReader {
            inner,
            jobs: Some(job_tx),
            done: done_rx,
            workers,
            limit,
            submitted: 0,
            next: 0,
            pending: BTreeMap::new(),
            current: Vec::new(),
            pos: 0,
            eof: false,
        }
    }

    /// The next member's bytes, or None at the end of the stream.
    fn read_member(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut head = [0u8; 20];
        let mut got = 0;
        while got < head.len() {
            match self.inner.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "gzip: stream cut inside a member")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = member_len(&head).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "gzip: a member without its length (not all written by nc-backup)",
            )
        })?;
        let mut member = vec![0u8; len];
        member[..20].copy_from_slice(&head);
        io::Read::read_exact(&mut self.inner, &mut member[20..]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(io::ErrorKind::UnexpectedEof, "gzip: stream cut inside a member")
            } else {
                e
            }
        })?;
        Ok(Some(member))
    }

    fn fill(&mut self) -> io::Result<bool> {
        while !self.eof && self.submitted - self.next < self.limit {
            match self.read_member()? {
                Some(m) => {
                    let sent = self.jobs.as_ref().is_some_and(|j| j.send((self.submitted, m)).is_ok());
                    if !sent {
                        return Err(io::Error::other("parallel gunzip: a worker stopped"));
                    }
                    self.submitted += 1;
                }
                None => self.eof = true,
            }
        }
        if self.next == self.submitted {
            return Ok(false);
        }
        while !self.pending.contains_key(&self.next) {
            let (seq, out) = self.done.recv().map_err(|_| io::Error::other("parallel gunzip: a worker stopped"))?;
            self.pending.insert(seq, out);
        }
        let out = self.pending.remove(&self.next).unwrap_or_else(|| Ok(Vec::new()))?;
        self.next += 1;
        self.current = out;
        self.pos = 0;
        Ok(true)
    }
}

impl<R: io::Read> io::Read for ParallelGzReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if !self.fill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<R: io::Read> Drop for ParallelGzReader<R> {
    fn drop(&mut self) {
        self.jobs.take();
        // Workers blocked on a full result queue stop once it is gone.
        let (_, dead) = sync_channel::<Inflated>(0);
        drop(std::mem::replace(&mut self.done, dead));
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn inflate_worker(rx: &Mutex<Receiver<(u64, Vec<u8>)>>, tx: &SyncSender<Inflated>) {
    loop {
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok((seq, member)) = job else { return };
        let out = std::panic::catch_unwind(|| {
            let mut dec = flate2::read::GzDecoder::new(&member[..]);
            let mut out = Vec::with_capacity(DEFAULT_BLOCK);
            io::Read::read_to_end(&mut dec, &mut out)?;
            // The whole member, not a gzip stream that ends inside it.
            if !dec.into_inner().is_empty() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "gzip: bytes after the end of a member"));
            }
            Ok(out)
        })
        .unwrap_or_else(|_| Err(io::Error::other("parallel gunzip: a thread panicked")));
        if tx.send((seq, out)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    fn roundtrip(data: &[u8], block: usize) -> Vec<u8> {
        let mut w = ParallelGzWriter::new(Vec::new(), 6, 2, block);
        for chunk in data.chunks(7777) {
            w.write_all(chunk).unwrap();
        }
        let gz = w.finish().unwrap();
        let mut out = Vec::new();
        MultiGzDecoder::new(&gz[..]).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn sizes_around_the_block() {
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for n in [0, 1, 4095, 4096, 4097, 3 * 4096, data.len()] {
            assert_eq!(roundtrip(&data[..n], 4096), &data[..n], "size {n}");
        }
    }

    /// Members carry their lengths: the parallel reader gives the same bytes as gzip's own
    /// reading; a damaged or cut stream is an error, never short data.
    #[test]
    fn parallel_reader_reads_what_the_writer_wrote() {
        let data: Vec<u8> = (0..900_000u32).flat_map(|i| ((i % 251) ^ (i / 7919)).to_le_bytes()).collect();
        let mut w = ParallelGzWriter::new(Vec::new(), 6, 2, 64 << 10);
        w.write_all(&data).unwrap();
        let gz = w.finish().unwrap();
        assert!(has_member_sizes(&gz));
        let mut out = Vec::new();
        ParallelGzReader::new(&gz[..], 2).read_to_end(&mut out).unwrap();
        assert!(out == data);
        // GNU gzip's view of the same stream (the extra field is standard).
        let mut plain = Vec::new();
        MultiGzDecoder::new(&gz[..]).read_to_end(&mut plain).unwrap();
        assert!(plain == data);
        let mut bad = gz.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        assert!(ParallelGzReader::new(&bad[..], 2).read_to_end(&mut Vec::new()).is_err());
        assert!(ParallelGzReader::new(&gz[..gz.len() - 3], 2).read_to_end(&mut Vec::new()).is_err());
        assert!(!has_member_sizes(&{
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
            e.write_all(b"x").unwrap();
            e.finish().unwrap()
        }));
    }

    #[test]
    fn output_error_is_reported() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(28))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = ParallelGzWriter::new(Full, 1, 2, 1024);
        let data = vec![7u8; 1 << 20];
        let err = match w.write_all(&data) {
            Err(e) => e,
            Ok(()) => w.finish().map(|_| ()).unwrap_err(),
        };
        assert_eq!(err.raw_os_error(), Some(28));
    }
}
