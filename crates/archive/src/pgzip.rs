//! Parallel gzip: the input is cut into blocks, each compressed on its own thread into a
//! complete gzip member; members are written in order. A multi-member stream is standard
//! gzip (RFC 1952 §2.2): `gzip -d`, `tar xzf`, zlib and flate2's `MultiGzDecoder` read it.
//!
//! Memory is bounded: at most `in_flight` blocks exist at once (being filled, compressed or
//! waiting to be written), each input buffer is recycled.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::Compression;
use flate2::write::GzEncoder;

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
            let mut enc = GzEncoder::new(Vec::with_capacity(input.len() / 2 + 64), level);
            enc.write_all(&input).and_then(|()| enc.finish()).map_err(|e| e.to_string())
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
