//! Metadata beyond the tar header, as GNU tar writes it with `--xattrs --acls` (PAX records in
//! an `x` header before the entry): extended attributes (`SCHILY.xattr.NAME`, every namespace:
//! `user.*`, `security.capability`, `trusted.*`, and the raw POSIX ACLs
//! `system.posix_acl_access`/`_default`), the ACLs again as text (`SCHILY.acl.access`,
//! `SCHILY.acl.default`, for `tar --acls`), and the modification time to the nanosecond
//! (`mtime=SECS.NANOS`).

use std::path::Path;

use crate::owners::Owners;

pub const ACL_ACCESS: &str = "system.posix_acl_access";
pub const ACL_DEFAULT: &str = "system.posix_acl_default";

/// An entry's extended attributes, by name (empty when it has none or they cannot be read).
pub fn read_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(short) = crate::longpath::Short::of(path) else { return Vec::new() };
    let p = &short.path;
    let names = match rustix::fs::llistxattr_query(p) {
        Ok(0) | Err(_) => return Vec::new(),
        Ok(n) => {
            let mut buf = vec![0u8; n + 64];
            match rustix::fs::llistxattr(p, &mut buf[..]) {
                Ok(k) => {
                    buf.truncate(k);
                    buf
                }
                Err(_) => return Vec::new(),
            }
        }
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else { continue };
        let Ok(n) = rustix::fs::lgetxattr_query(p, name) else { continue };
        let mut value = vec![0u8; n + 64];
        if let Ok(k) = rustix::fs::lgetxattr(p, name, &mut value[..]) {
            value.truncate(k);
            out.push((name.to_owned(), value));
        }
    }
    out.sort();
    out
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting itself.
fn record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The PAX records of an entry: its ns time when it has nanoseconds, its xattrs, its ACLs as
/// text. Empty when there is nothing the tar header does not already hold.
pub fn pax_records(mtime: (i64, i64), xattrs: &[(String, Vec<u8>)], owners: &Owners) -> Vec<u8> {
    let mut out = Vec::new();
    if mtime.1 != 0 {
        let nanos = format!("{:09}", mtime.1);
        record(&mut out, "mtime", format!("{}.{}", mtime.0, nanos.trim_end_matches('0')).as_bytes());
    }
    for (name, value) in xattrs {
        let text_key = match name.as_str() {
            ACL_ACCESS => Some("SCHILY.acl.access"),
            ACL_DEFAULT => Some("SCHILY.acl.default"),
            _ => None,
        };
        if let Some(key) = text_key
            && let Some(text) = acl_text(value, owners)
        {
            record(&mut out, key, text.as_bytes());
        }
        record(&mut out, &format!("SCHILY.xattr.{name}"), value);
    }
    out
}

const TAGS: [(u16, &str); 6] =
    [(0x01, "user"), (0x02, "user"), (0x04, "group"), (0x08, "group"), (0x10, "mask"), (0x20, "other")];

/// A POSIX ACL xattr (version 2: entries of tag u16, perm u16, id u32) as GNU tar writes it:
/// `user::rw-\nuser:alice:r--\n…\n`, names where known, else ids.
pub fn acl_text(bin: &[u8], owners: &Owners) -> Option<String> {
    if bin.len() < 4 || u32::from_le_bytes(bin[..4].try_into().ok()?) != 2 || !(bin.len() - 4).is_multiple_of(8) {
        return None;
    }
    let mut text = String::new();
    for e in bin[4..].chunks(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let (_, kind) = TAGS.iter().find(|(t, _)| *t == tag)?;
        let who = match tag {
            0x02 => owners.user(id).map_or_else(|| id.to_string(), str::to_owned),
            0x08 => owners.group(id).map_or_else(|| id.to_string(), str::to_owned),
            _ => String::new(),
        };
        let p = |bit: u16, c: char| if perm & bit != 0 { c } else { '-' };
        text.push_str(&format!("{kind}:{who}:{}{}{}\n", p(4, 'r'), p(2, 'w'), p(1, 'x')));
    }
    Some(text)
}

/// GNU tar's ACL text (entries separated by newlines or commas) as the xattr the kernel takes;
/// None when an entry cannot be read (an unknown name).
pub fn acl_binary(text: &str, owners: &Owners) -> Option<Vec<u8>> {
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut entries = Vec::new();
    for e in text.split(['\n', ',']).map(str::trim).filter(|e| !e.is_empty()) {
        let mut f = e.splitn(3, ':');
        let (kind, who, perm) = (f.next()?, f.next()?, f.next()?);
        let named = !who.is_empty();
        let (tag, id) = match (kind, named) {
            ("user" | "u", false) => (0x01u16, u32::MAX),
            ("user" | "u", true) => (0x02, who.parse().ok().or_else(|| owners.user_id(who))?),
            ("group" | "g", false) => (0x04, u32::MAX),
            ("group" | "g", true) => (0x08, who.parse().ok().or_else(|| owners.group_id(who))?),
            ("mask" | "m", _) => (0x10, u32::MAX),
            ("other" | "o", _) => (0x20, u32::MAX),
            _ => return None,
        };
        let perm = perm.split('#').next()?.trim();
        let bits = perm.chars().fold(0u16, |b, c| match c {
            'r' => b | 4,
            'w' => b | 2,
            'x' => b | 1,
            _ => b,
        });
        entries.push((tag, id, bits));
    }
    // The kernel wants them ordered by tag, then id.
    entries.sort_by_key(|(t, id, _)| (*t, *id));
    for (tag, id, bits) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Some(out)
}

/// What an entry's PAX records say beyond its header.
#[derive(Debug, Default, Clone)]
pub struct Extra {
    /// Nanoseconds of the modification time (the seconds are in the header).
    pub mtime_nanos: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// A PAX 1.0 sparse file (GNU tar `--sparse` with PAX headers): its real name and size;
    /// its data starts with the map of its segments.
    pub sparse: Option<(Vec<u8>, u64)>,
}

impl Extra {
    /// From an entry's PAX records: `SCHILY.xattr.*` as they are; `SCHILY.acl.*` text only when
    /// the raw ACL xattr is not there too.
    pub fn from_pax<'a>(records: impl Iterator<Item = (&'a str, &'a [u8])>, owners: &Owners) -> Extra {
        let mut x = Extra::default();
        let mut texts = Vec::new();
        let (mut major, mut minor, mut name, mut size) = (None, None, None, None);
        for (key, value) in records {
            let num = || String::from_utf8_lossy(value).trim().parse::<u64>().ok();
            match key {
                "GNU.sparse.major" => major = num(),
                "GNU.sparse.minor" => minor = num(),
                "GNU.sparse.name" => name = Some(value.to_vec()),
                "GNU.sparse.realsize" => size = num(),
                _ => {}
            }
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                x.xattrs.push((name.to_owned(), value.to_vec()));
            } else if key == "mtime" {
                let v = String::from_utf8_lossy(value);
                if let Some((_, frac)) = v.split_once('.') {
                    let digits: String = frac.chars().take(9).collect();
                    x.mtime_nanos = format!("{digits:0<9}").parse().unwrap_or(0);
                }
            } else if key == "SCHILY.acl.access" {
                texts.push((ACL_ACCESS, String::from_utf8_lossy(value).into_owned()));
            } else if key == "SCHILY.acl.default" {
                texts.push((ACL_DEFAULT, String::from_utf8_lossy(value).into_owned()));
            }
        }
        if let (Some(1), Some(0), Some(name), Some(size)) = (major, minor, name, size) {
            x.sparse = Some((name, size));
        }
        for (name, text) in texts {
            if !x.xattrs.iter().any(|(n, _)| n == name)
                && let Some(bin) = acl_binary(&text, owners)
            {
                x.xattrs.push((name.to_owned(), bin));
            }
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acls_go_to_text_and_back() {
        let owners = Owners::load();
        // user::rw-, user:0:r--, group::r--, mask::r--, other::---
        let mut bin = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in
            [(1u16, 6u16, u32::MAX), (2, 4, 0), (4, 4, u32::MAX), (0x10, 4, u32::MAX), (0x20, 0, u32::MAX)]
        {
            bin.extend_from_slice(&tag.to_le_bytes());
            bin.extend_from_slice(&perm.to_le_bytes());
            bin.extend_from_slice(&id.to_le_bytes());
        }
        let text = acl_text(&bin, &owners).unwrap();
        assert_eq!(text, "user::rw-\nuser:root:r--\ngroup::r--\nmask::r--\nother::---\n");
        assert_eq!(acl_binary(&text, &owners).unwrap(), bin);
        assert_eq!(acl_binary("user::rw-,user:0:r--,group::r--,mask::r--,other::---", &owners).unwrap(), bin);
        assert_eq!(acl_binary("user:nosuchuser-xyz:r--", &owners), None);
    }

    #[test]
    fn records_count_their_own_length() {
        let mut out = Vec::new();
        record(&mut out, "mtime", b"1577836800.123456789");
        assert_eq!(out, b"30 mtime=1577836800.123456789\n");
        let mut out = Vec::new();
        record(&mut out, "k", &[b'x'; 94]);
        assert_eq!(&out[..4], b"101 ");
        assert_eq!(out.len(), 101);
        let x = Extra::from_pax([("mtime", b"1577836800.1234".as_slice())].into_iter(), &Owners::default());
        assert_eq!(x.mtime_nanos, 123_400_000);
    }
}

/// The PAX records of a `x` header's data, parsed by their lengths (values may hold newlines:
/// ACL text, binary xattrs); a malformed record ends the list.
pub fn parse_pax(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|b| *b == b' ') else { break };
        let Some(len) = std::str::from_utf8(&rest[..sp]).ok().and_then(|l| l.parse::<usize>().ok()) else { break };
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            break;
        }
        let kv = &rest[sp + 1..len - 1];
        if let Some(eq) = kv.iter().position(|b| *b == b'=') {
            out.push((String::from_utf8_lossy(&kv[..eq]).into_owned(), kv[eq + 1..].to_vec()));
        }
        rest = &rest[len..];
    }
    out
}

/// Watches a tar stream as the tar reader consumes it and keeps, for each entry (numbered as
/// the reader yields them: every header but `x`, `L` and `K`), the raw data of the PAX `x`
/// header before it. The tar crate splits PAX records at newlines, which loses values that
/// hold one (ACL text, binary xattrs); this reads them by their lengths instead.
#[derive(Debug)]
pub struct PaxTap<R> {
    inner: R,
    state: std::rc::Rc<std::cell::RefCell<TapState>>,
}

#[derive(Debug, Default)]
pub struct TapState {
    header: Vec<u8>,
    /// Bytes of data (with padding) still to pass over, or to capture for an `x` header.
    skip: u64,
    capture: Option<(Vec<u8>, u64)>,
    /// Extension blocks of an old-GNU sparse header still to come.
    sparse_ext: bool,
    /// Data length of the sparse entry whose extension blocks are being read.
    after_ext: u64,
    pending: Option<Vec<u8>>,
    entries: u64,
    found: std::collections::HashMap<u64, Vec<u8>>,
}

impl TapState {
    /// The PAX data of entry `n` (0-based, in the order the reader yields entries).
    pub fn take(&mut self, n: u64) -> Option<Vec<u8>> {
        self.found.remove(&n)
    }
}

impl<R: std::io::Read> PaxTap<R> {
    pub fn new(inner: R) -> (Self, std::rc::Rc<std::cell::RefCell<TapState>>) {
        let state = std::rc::Rc::new(std::cell::RefCell::new(TapState::default()));
        (PaxTap { inner, state: state.clone() }, state)
    }
}

fn padded(n: u64) -> u64 {
    n.div_ceil(512) * 512
}

/// A numeric header field: octal, or base-256 when its first byte has the high bit.
fn number(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return field[1..].iter().fold(0u64, |n, b| n.wrapping_shl(8) | u64::from(*b));
    }
    let t: String = field.iter().take_while(|b| **b != 0).map(|b| *b as char).collect();
    u64::from_str_radix(t.trim(), 8).unwrap_or(0)
}

impl TapState {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if let Some((buf, left)) = &mut self.capture {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                buf.extend_from_slice(&data[..n]);
                *left -= n as u64;
                data = &data[n..];
                if *left == 0 {
                    let (buf, _) = self.capture.take().unwrap_or_default();
                    let size = buf.len() as u64;
                    let pad = padded(size) - size;
                    self.pending = Some(buf);
                    self.skip = pad;
                }
                continue;
            }
            if self.skip > 0 {
                let n = usize::try_from(self.skip).unwrap_or(usize::MAX).min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (512 - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() == 512 {
                let h = std::mem::take(&mut self.header);
                self.block(&h);
            }
        }
    }

    fn block(&mut self, h: &[u8]) {
        if self.sparse_ext {
            self.sparse_ext = h[504] != 0;
            if !self.sparse_ext {
                self.skip = padded(self.after_ext);
            }
            return;
        }
        if h.iter().all(|b| *b == 0) {
            return;
        }
        let pax_size = self.pending.as_ref().and_then(|p| {
            parse_pax(p)
                .into_iter()
                .find(|(k, _)| k == "size")
                .and_then(|(_, v)| String::from_utf8(v).ok()?.parse().ok())
        });
        let size = number(&h[124..136]);
        match h[156] {
            b'x' => self.capture = Some((Vec::new(), size)).filter(|_| size > 0),
            b'L' | b'K' => self.skip = padded(size),
            kind => {
                let size = pax_size.unwrap_or(size);
                if let Some(p) = self.pending.take() {
                    self.found.insert(self.entries, p);
                }
                self.entries += 1;
                if kind == b'S' && h[482] != 0 {
                    self.sparse_ext = true;
                    self.after_ext = size;
                } else {
                    self.skip = padded(size);
                }
            }
        }
    }
}

impl<R: std::io::Read> std::io::Read for PaxTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.state.borrow_mut().feed(&buf[..n]);
        Ok(n)
    }
}
