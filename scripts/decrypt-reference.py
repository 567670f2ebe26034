#!/usr/bin/env python3
"""Reference decryptor for docs/FORMAT.md, written from the document alone.

    decrypt-reference.py KEY_FILE PART [PART...] > plaintext

It holds the whole stream in memory: it exists to show the format is fully specified (the
tests check it against the Rust implementation), not for large restores.
"""
import hashlib
import hmac
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

key = bytes.fromhex(open(sys.argv[1]).read().strip())
stream = b"".join(open(p, "rb").read() for p in sys.argv[2:])
h = stream[:96]
if h[:8] != b"NCBENC\r\n":
    sys.exit("not an nc-backup encrypted stream")
if hashlib.sha256(h[:88]).digest()[:8] != h[88:96]:
    sys.exit("header corrupted")
if h[8:12] != b"\x01\x01\x01\x00" or h[55] != 0:
    sys.exit("unsupported version or algorithm")
seg = int.from_bytes(h[12:16], "little")
salt, prefix7 = h[16:48], h[48:55]
okm = HKDF(hashes.SHA256(), 64, salt, b"ncb-enc v1").derive(key)
if not hmac.compare_digest(hmac.new(okm[32:], h[:56], "sha256").digest(), h[56:88]):
    sys.exit("wrong key")
aes, body, out = AESGCM(okm[:32]), stream[96:], []
chunks = [body[i:i + seg + 16] for i in range(0, len(body), seg + 16)] or [b""]
for i, c in enumerate(chunks):
    last = b"\x01" if i == len(chunks) - 1 else b"\x00"
    out.append(aes.decrypt(prefix7 + i.to_bytes(4, "big") + last, c, h[:56]))
sys.stdout.buffer.write(b"".join(out))
