//! A bounded in-memory pipe between two threads: what one writes, the other reads, a few
//! chunks in flight at most. The writer says when the stream is complete ([`PipeWriter::finish`]);
//! a writer dropped without it (its side failed) makes the reader fail instead of seeing an
//! ordinary end, so a half stream is never taken for a whole one.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

enum Msg {
    Data(Vec<u8>),
    End,
}

#[derive(Debug)]
pub struct PipeWriter {
    tx: SyncSender<Msg>,
}

pub struct PipeReader {
    rx: Receiver<Msg>,
    chunk: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl std::fmt::Debug for PipeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeReader").field("ended", &self.ended).finish()
    }
}

/// A pipe holding at most `depth` chunks (each one `write` call).
pub fn pipe(depth: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(depth.max(1));
    (PipeWriter { tx }, PipeReader { rx, chunk: Vec::new(), pos: 0, ended: false })
}

impl PipeWriter {
    /// Marks the stream complete: the reader then sees its end.
    pub fn finish(self) -> io::Result<()> {
        self.tx.send(Msg::End).map_err(|_| closed())
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the reading side stopped")
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.tx.send(Msg::Data(buf.to_vec())).map_err(|_| closed())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(d)) => {
                    self.chunk = d;
                    self.pos = 0;
                }
                Ok(Msg::End) => self.ended = true,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream was cut off (its producer failed)",
                    ));
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_stream_arrives_and_a_cut_one_fails() {
        let (mut w, mut r) = pipe(2);
        let t = std::thread::spawn(move || {
            for i in 0..100u8 {
                w.write_all(&[i; 1000]).unwrap();
            }
            w.finish().unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got.len(), 100_000);
        assert_eq!(got[99_999], 99);

        let (mut w, mut r) = pipe(2);
        let t = std::thread::spawn(move || {
            w.write_all(b"half").unwrap();
            drop(w);
        });
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        t.join().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
