#!/usr/bin/env python3
"""Reference decryptor for docs/FORMAT.md, written from the document alone.

    decrypt-reference.py KEY_FILE PART [PART...] > plaintext
    decrypt-reference.py IDENTITY_FILE PART [PART...] > plaintext   (public-key files)

It holds the whole stream in memory: it exists to show the format is fully specified (the
tests check it against the Rust implementation), not for large restores.
"""
import hashlib
import hmac
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

key_text = [l.strip() for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
stream = b"".join(open(p, "rb").read() for p in sys.argv[2:])
if stream[:8] == b"NCBPKE\r\n":
    # Public-key file: open the file key with the identity, then read the stream after it.
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    if len(key_text) != 1 or not key_text[0].startswith("ncb-identity-v1:"):
        sys.exit("a public-key file needs an identity file")
    secret = X25519PrivateKey.from_private_bytes(bytes.fromhex(key_text[0][len("ncb-identity-v1:"):]))
    public = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if stream[8:10] != b"\x01\x01" or stream[11] != 0:
        sys.exit("unsupported public-key version")
    n = stream[10]
    hlen = 12 + 88 * n + 32
    pk, stream = stream[:hlen], stream[hlen:]
    kid = hashlib.sha256(b"ncb-pke key id" + public).digest()[:8]
    key = None
    for i in range(n):
        st = pk[12 + 88 * i:12 + 88 * (i + 1)]
        if st[:8] != kid:
            continue
        eph = st[8:40]
        shared = secret.exchange(X25519PublicKey.from_public_bytes(eph))
        wrap = HKDF(hashes.SHA256(), 32, eph + public, b"ncb-pke v1 wrap").derive(shared)
        key = AESGCM(wrap).decrypt(b"\x00" * 12, st[40:], st[:40])
    if key is None:
        sys.exit("not sealed for this identity")
    hk = HKDF(hashes.SHA256(), 32, b"", b"ncb-pke v1 header").derive(key)
    if not hmac.compare_digest(hmac.new(hk, pk[:-32], "sha256").digest(), pk[-32:]):
        sys.exit("public-key header altered")
else:
    key = bytes.fromhex(key_text[0])
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
