"""Ed25519 signatures over JSON documents (a bundle's manifest): keys, signing, checking.

The bytes signed are ``DOMAIN + canonical_json(document)``: keys sorted, no spaces, ASCII,
so the signature covers what the reader parsed, whatever the file's layout. ``cryptography``
is imported only here and only when a key is used; without it, signing and ``--trust`` fail
with one line that says what to install. Torch-free.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Iterable, Mapping

from edgetl.core.reading import file_kind, read_regular
from edgetl.errors import BundleError, ConfigError

__all__ = ["ALGORITHM", "canonical_json", "document_digest", "generate_key", "load_signing_key", "sign", "verify",
           "public_key_id"]

ALGORITHM = "ed25519"
DOMAIN = b"edgetl-manifest-v1\n"  # a signature over a manifest can never be replayed as anything else
MAX_KEY_BYTES = 64 << 10
PUBLIC_SUFFIX = ".pub"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ConfigError("signed bundles need the 'cryptography' package: pip install 'cryptography>=41'") from None
    return serialization, ed25519


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def document_digest(obj: Any) -> str:
    """SHA-256 (hex) of the canonical bytes: which document a signature entry is for."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def _raw_public(public_key: Any) -> bytes:
    serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_id(public_key: Any) -> str:
    """16 hex digits naming a public key (recorded with each signature and in the history)."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def _read_key_file(path: Path, what: str) -> bytes:
    """The bytes of a key file: a regular file of at most ``MAX_KEY_BYTES`` (a PEM key is a
    few hundred bytes). ``/dev/zero`` reports size 0 and never ends, a FIFO blocks its
    reader: both are refused in one line by the shared reader, before anything is read."""
    return read_regular(path, MAX_KEY_BYTES, f"{what} key file", ConfigError,
                        "make one with 'edgetl keygen --out KEY'")


def _replaceable(path: Path, overwrite: bool) -> None:
    """Refuse to write a key over anything but a regular file, and over that without --force.
    ``os.replace`` would swap a device node, a FIFO or a symbolic link for our file (run as
    root, ``--out /dev/null --force`` replaced the system's /dev/null)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{path}: cannot check the key file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: is {file_kind(st.st_mode)}; a key is written only to a new or regular file, "
                          "even with --force (choose another --out)")
    if not overwrite:
        raise ConfigError(f"{path}: already exists; pass --force to replace it, or choose another --out")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """``data`` into ``path`` by a temporary file beside it, renamed over it; the temporary
    file is removed on any failure (a full disk, a signal)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                 mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask must not widen or narrow it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _replaceable(path, True)  # checked again just before the rename
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_key(out: str | os.PathLike, *, overwrite: bool = False) -> tuple[Path, Path, str]:
    """Write a new private key to ``out`` (PEM, PKCS#8, unencrypted, mode 0600) and its public
    key to ``out.pub`` (PEM). Returns ``(private, public, key id)``. An existing file is
    replaced only with ``overwrite`` and only if it is a regular file (not a device, FIFO,
    socket, folder or symbolic link); nothing is left behind on failure."""
    serialization, ed25519 = _crypto()
    private_path = Path(out)
    public_path = private_path.with_name(private_path.name + PUBLIC_SUFFIX)
    for path in (private_path, public_path):
        _replaceable(path, overwrite)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    written: list[Path] = []
    try:
        for path, data, mode in ((private_path, pem, 0o600), (public_path, pub, 0o644)):
            _write_new(path, data, mode)
            written.append(path)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise ConfigError(f"{exc.filename or private_path}: cannot write the key ({exc.strerror or exc})") from None
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return private_path, public_path, public_key_id(key.public_key())


def load_signing_key(path: str | os.PathLike) -> tuple[Any, str]:
    """``(private key, key id)`` from a PEM file written by :func:`generate_key`."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    data = _read_key_file(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key (make one with 'edgetl keygen --out KEY')")
    return key, public_key_id(key.public_key())


def _load_public(path: Path) -> Any:
    serialization, ed25519 = _crypto()
    data = _read_key_file(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, Exception) as exc:  # noqa: BLE001 - the backend raises several kinds
        raise ConfigError(f"{path}: not a PEM public key ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key (use the KEY.pub that 'edgetl keygen' wrote)")
    return key


def sign(document: Any, key: Any, key_id: str) -> dict[str, str]:
    """A signature entry for ``document``: ``{"document_sha256", "alg", "key_id", "signature"}``."""
    signature = key.sign(DOMAIN + canonical_json(document))
    return {"document_sha256": document_digest(document), "alg": ALGORITHM, "key_id": key_id,
            "signature": base64.b64encode(signature).decode("ascii")}


def verify(document: Any, entries: Iterable[Mapping[str, Any]], trusted: Iterable[str | os.PathLike],
           source: str) -> str:
    """The id of a trusted key whose valid signature over ``document`` is among ``entries``;
    raises :class:`BundleError` naming ``source`` otherwise."""
    _crypto()
    from cryptography.exceptions import InvalidSignature

    keys = {}
    for path in trusted:
        key = _load_public(Path(path))
        keys[public_key_id(key)] = key
    digest = document_digest(document)
    data = DOMAIN + canonical_json(document)
    entries = list(entries)
    mine = [e for e in entries if e.get("document_sha256") == digest and e.get("alg") == ALGORITHM]
    if not mine:
        why = "it was modified after signing, or never signed" if entries else "the bundle is not signed"
        raise BundleError(f"{source}: no signature covers this manifest ({why}); refusing it under --trust")
    forged = []
    for entry in mine:
        key = keys.get(entry.get("key_id"))
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(str(entry.get("signature", "")), validate=True), data)
            return str(entry["key_id"])
        except (InvalidSignature, ValueError):
            forged.append(str(entry["key_id"]))
    if forged:
        raise BundleError(f"{source}: the signature by key {forged[0]} does not verify (the manifest was modified "
                          "after signing); refusing it under --trust")
    signers = ", ".join(sorted({str(e.get("key_id")) for e in mine}))
    raise BundleError(f"{source}: signed by key {signers}, which --trust does not name; refusing it")
