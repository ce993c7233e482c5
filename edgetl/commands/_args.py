"""Argument types shared by subcommands: each rejects a bad value with one clear line."""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Callable

# Bounds of the options that size work. The same limits as a target file's ``threads`` and
# ``batch_size`` (edgetl/core/targets.py), so the CLI can ask for nothing a target could not.
# Threads: a runtime never gains from more threads than cores, and past a few per core it
# only adds memory (a stack each) and scheduling cost; so at most 4 per core (at least 8,
# for small boards), never more than 256. `predict --threads 100000` once started 22,705.
# Batch: 4096 images of 224 px are 2.4 GB of float32 input, what a workstation can evaluate
# in one go; beyond that only the allocation grows (`--batch-size 10000000` asked for 5.4 TiB).
MAX_THREADS = 256
MAX_BATCH_SIZE = 4096
# Linux limits (NAME_MAX, PATH_MAX): a longer name fails with "File name too long" anyway;
# checked here so that the message names the option.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096


def max_threads() -> int:
    return min(MAX_THREADS, max(8, 4 * (os.cpu_count() or 1)))


def max_processes() -> int:
    """Processes per machine for ``train --nproc-per-node``: one per core (each holds a whole
    model; more only share the cores), at least 2, at most 256."""
    return min(MAX_THREADS, max(2, os.cpu_count() or 1))


# --- the numeric option type ----------------------------------------------------------------
# Every number an option takes goes through Number: it refuses NaN, the infinities and
# anything outside its bounds in one line, so no command sees `--duration inf`, `--seed -1`
# or `--lr nan`. tests/test_hostile_options.py finds every option of every command through
# the parser and tries these values on it: a new numeric option is checked by being added.

MAX_INT = 2**31 - 1  # what a C int holds: the libraries underneath take no more
MAX_SEED = 2**32 - 1  # numpy's seeds (torch takes more)
MAX_COUNT = 1_000_000  # rows, images, steps, repeats: a million is past any real use here
MAX_EPOCHS = 100_000
MAX_SECONDS = 3600.0  # one bench configuration timed for an hour is past any real use
MAX_MS = 3_600_000.0
MAX_MB = 1_000_000.0  # a terabyte
MAX_LABELS = 100_000  # the manifest's own bound (device/manifest.py)


class Number:
    """An option's number: ``kind`` (int or float) within ``[lo, hi]`` (``lo_open`` /
    ``hi_open``: the bound itself excluded; ``hi`` may be a function of the machine). NaN,
    the infinities and values out of range are refused with one line that says the range.
    ``lo``, ``hi``, ``kind`` are public: tests derive their probes from them."""

    def __init__(self, kind: type, lo: float, hi: "float | Callable[[], float]", *, lo_open: bool = False,
                 hi_open: bool = False, what: str | None = None):
        self.kind, self.lo, self._hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open
        self.what = what or ("an integer" if kind is int else "a number")
        self.__name__ = self.what  # argparse names the type by it

    @property
    def hi(self) -> float:
        return self._hi() if callable(self._hi) else self._hi

    def range_text(self) -> str:
        lo, hi = self.lo, self.hi
        if self.kind is int:
            return f"from {lo} to {hi}" if hi < 10**6 else f"from {lo:,} to {hi:,}"
        return f"in {'(' if self.lo_open else '['}{lo:g}, {hi:g}{')' if self.hi_open else ']'}"

    def __call__(self, text: str) -> int | float:
        expected = f"expected {self.what} {self.range_text()}"
        try:
            value = self.kind(text)
        except (ValueError, TypeError, OverflowError):
            raise argparse.ArgumentTypeError(f"{expected}, got {text[:40]!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{expected}, got {text[:40]!r}")
        lo_ok = value > self.lo if self.lo_open else value >= self.lo
        hi_ok = value < self.hi if self.hi_open else value <= self.hi
        if not (lo_ok and hi_ok):
            shown = f"{value:g}" if isinstance(value, float) else (str(value) if len(str(value)) <= 40
                                                                   else f"{str(value)[:20]}...")
            raise argparse.ArgumentTypeError(f"{expected}, got {shown}")
        return value


positive_int = Number(int, 1, MAX_INT, what="a positive integer")
non_negative_int = Number(int, 0, MAX_INT, what="an integer >= 0")
positive_float = Number(float, 0.0, 1e9, lo_open=True, what="a positive number")
fraction = Number(float, 0.0, 1.0, hi_open=True, what="a fraction")  # [0, 1)
open_fraction = Number(float, 0.0, 1.0, lo_open=True, hi_open=True, what="a fraction")  # (0, 1)
seed = Number(int, 0, MAX_SEED, what="a seed")
count = Number(int, 1, MAX_COUNT, what="a count")
epochs = Number(int, 1, MAX_EPOCHS, what="a positive number of epochs")
patience = Number(int, 0, MAX_EPOCHS, what="a number of epochs")
blocks = Number(int, 0, 10_000, what="a number of blocks")
seconds = Number(float, 0.0, MAX_SECONDS, lo_open=True, what="a duration in seconds")
milliseconds = Number(float, 0.0, MAX_MS, lo_open=True, what="a duration in milliseconds")
megabytes = Number(float, 0.0, MAX_MB, lo_open=True, what="a size in MB")


def _max_memory_mb() -> float:
    from edgetl.device.memory import MAX_MEMORY_MB  # imported when the option is used: numpy stays out of --help

    return MAX_MEMORY_MB


memory_mb = Number(float, 0.0, _max_memory_mb, lo_open=True, what="a replay memory size in MB")
learning_rate = Number(float, 0.0, 10.0, lo_open=True, what="a learning rate")
weight_decay = Number(float, 0.0, 10.0, what="a weight decay")
loss_weight = Number(float, 0.0, 1000.0, lo_open=True, what="a loss weight")
top_k = Number(int, 1, MAX_LABELS, what="a number of labels")
image_size = Number(int, 8, 4096, what="an image size in pixels")  # PreprocessSpec's range
max_length = Number(int, 8, 512, what="a number of tokens")  # TextSpec's range
workers = Number(int, 1, 64, what="a number of threads")  # EmbedOptions' range
folds = Number(int, 2, 100, what="a number of folds")
node_rank = Number(int, 0, 65_535, what="a machine rank")
processes = Number(int, 1, max_processes, what="a number of processes")


def _number_list(kind: Number, text: str) -> list:
    """``1,8`` -> [1, 8], each through ``kind``; an empty list is refused (it would mean the
    default, which the user did not ask for)."""
    values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.what}s, got {text[:40]!r}")
    return values


def int_list(text: str) -> list[int]:
    """``1,8`` -> [1, 8]; each a positive integer."""
    return _number_list(positive_int, text)


def str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


thread_count = Number(int, 1, max_threads, what="a thread count")  # 4 per core, at least 8, at most 256
batch_size = Number(int, 1, MAX_BATCH_SIZE, what="a batch size")


def thread_list(text: str) -> list[int]:
    return _number_list(thread_count, text)


def batch_list(text: str) -> list[int]:
    return _number_list(batch_size, text)


def node_count(text: str) -> str:
    """``--nnodes``: ``M`` or ``MIN:MAX`` machines (torchrun's form), each 1 .. 65,536."""
    parts = text.split(":")
    one = Number(int, 1, 65_536, what="a number of machines")
    if not 1 <= len(parts) <= 2:
        raise argparse.ArgumentTypeError(f"expected M or MIN:MAX machines, got {text[:40]!r}")
    values = [one(p) for p in parts]
    if len(values) == 2 and values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX with MIN <= MAX, got {text[:40]!r}")
    return ":".join(str(v) for v in values)


_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def endpoint(text: str) -> str:
    """``--rdzv-endpoint``: ``HOST:PORT`` (a host name, an IPv4 address or ``[IPv6]``; port
    1 .. 65535) or ``HOST`` alone (torchrun's default port). torch raises a bare ValueError
    for ``:::::``."""
    import ipaddress

    bad = f"expected HOST:PORT (a host name, an IPv4 address or [IPv6], port 1-65535), got {text[:60]!r}"
    host, port = text, None
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1:] if close > 0 else "?"
        if rest and not rest.startswith(":"):
            raise argparse.ArgumentTypeError(bad)
        host = text[1:close]
        port = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(bad) from None
    else:
        if text.count(":") > 1:
            raise argparse.ArgumentTypeError(bad + " (write an IPv6 address in brackets)")
        host, _, port = text.partition(":")
        port = port if ":" in text else None
        if len(host) > 253 or not _HOST.match(host):
            raise argparse.ArgumentTypeError(bad)
    if port is not None:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise argparse.ArgumentTypeError(bad)
    return text


def path_arg(text: str) -> str:
    """A file or folder path: not empty (``""`` would mean the current folder), no NUL byte,
    no name longer than the system takes. Existence is the command's to check."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"expected a path, got one with a NUL byte: {text[:60]!r}")
    raw = os.fsencode(text)
    if len(raw) > MAX_PATH_BYTES:
        raise argparse.ArgumentTypeError(f"path of {len(raw):,} bytes is longer than {MAX_PATH_BYTES:,} "
                                         f"(File name too long): {text[:40]!r}...")
    for part in raw.split(b"/"):
        if len(part) > MAX_NAME_BYTES:
            name = os.fsdecode(part)
            raise argparse.ArgumentTypeError(f"name of {len(part)} bytes is longer than {MAX_NAME_BYTES} "
                                             f"(File name too long): {name[:40]!r}...")
    return text


def output_file(text: str) -> str:
    """A file to write: a :func:`path_arg` whose folder exists."""
    path_arg(text)
    folder = os.path.dirname(text) or "."
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{folder}: no such folder to write {os.path.basename(text)!r} in")
    return text


NO_VERIFY_HELP = ("skip hashing the bundle's files (faster start); their sizes, and the hashes of files up to "
                  "1 MiB (the head, the adapter), are still checked, with a warning naming the files that differ")
TRUST_HELP = ("refuse the bundle unless its manifest carries a valid signature by this public key "
              "(KEY.pub from 'edgetl keygen'); repeat to trust several keys")
SIGN_HELP = "sign the new version's manifest with this private key (from 'edgetl keygen')"


def add_trust(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", action="append", type=path_arg, metavar="PUBKEY", help=TRUST_HELP)


ALLOW_NONCONFORMING_HELP = (
    "run the bundle even if it fails its conformance check on this CPU (its backbone then computes other answers "
    "here than it was validated with, e.g. int8 that saturates on a CPU without VNNI); a warning says so")


def add_allow_nonconforming(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-nonconforming", action="store_true", help=ALLOW_NONCONFORMING_HELP)


def require_trust(args: argparse.Namespace, bundle: str) -> None:
    """With ``--trust``: refuse an unsigned or wrongly signed ``bundle`` (one line), before the
    command uses it. ``--no-verify`` with ``--trust`` is refused: a signature covers the
    manifest, and only hashing every file holds the files to it (a flipped byte in a
    model passed under ``--trust --no-verify`` once)."""
    if getattr(args, "trust", None):
        from edgetl.device.bundle import open_bundle
        from edgetl.errors import ConfigError

        if not getattr(args, "verify", True):
            raise ConfigError("--trust checks every file against the signed manifest, so it cannot be combined with "
                              "--no-verify; drop --no-verify")
        open_bundle(bundle, verify=True, trust=args.trust)


def check_sign_key(args: argparse.Namespace) -> None:
    """With ``--sign``: load the key now, so that a bad one fails before any work is done."""
    if getattr(args, "sign", None):
        from edgetl.core.signing import load_signing_key

        load_signing_key(args.sign)


def add_memory_options(p: argparse.ArgumentParser, *, retrain: bool) -> None:
    """The replay-memory budget and selection options of ``package`` (the first memory) and
    ``retrain`` (the merged one); ``package`` also chooses the precision."""
    what = "memory kept per class" if retrain else "memory for on-device retraining: K embeddings per class"
    p.add_argument("--memory-per-class", type=count, metavar="K",
                   help=f"replay {what} (default: the bytes of 20 float32 rows, in the memory's precision: "
                        "39 float16 rows of 1,280 features)")
    p.add_argument("--memory-mb", type=memory_mb, metavar="F",
                   help="replay memory budget in MB (10^6 bytes), split evenly over the classes"
                        f"{', the new ones included' if retrain else ''}; overrides --memory-per-class")
    p.add_argument("--memory-selection", choices=["herding", "random"], default="herding",
                   help="which rows the memory keeps: those whose mean is closest to the class mean (herding, "
                        "iCaRL) or a uniform sample of all seen (random) (default: %(default)s)")
    if not retrain:
        p.add_argument("--memory-precision", choices=["float16", "float32"], default="float16",
                       help="how the memory stores embeddings: float16 (offsets from the class-wide centre) "
                            "halves a row, so a budget holds twice the exemplars (default: %(default)s)")
