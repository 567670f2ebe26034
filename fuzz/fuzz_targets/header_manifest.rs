//! Fuzzes what `encryption -d` parses from untrusted files: the stream header (then the key
//! commitment and the first segment under a fixed key) and the manifest. Nothing may panic;
//! a header that parses must round-trip byte for byte.
#![no_main]

use encryption::format::{HEADER_LEN, Header, Keys};
use encryption::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        assert_eq!(&h.to_bytes()[..], &data[..HEADER_LEN]);
        if let Ok(keys) = Keys::open(&[7u8; 32], &h) {
            let mut seg = data[HEADER_LEN..].to_vec();
            let _ = keys.open_segment(&h, &h.prefix(), 0, true, &mut seg);
        }
    }
    if let Ok(m) = Manifest::parse(data) {
        assert!(!m.parts.is_empty());
        assert_eq!(m.parts.iter().map(|p| p.size).sum::<u64>(), m.stream_size);
    }
});
