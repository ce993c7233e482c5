"""Argument types shared by subcommands: each rejects a bad value with one clear line."""

from __future__ import annotations

import argparse
import os

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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {value}")
    return value


def int_list(text: str) -> list[int]:
    """``1,8`` -> [1, 8]; each a positive integer."""
    return [positive_int(part) for part in text.split(",") if part.strip()]


def str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _bounded(text: str, what: str, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what} from 1 to {hi}, got {text!r}") from None
    if not 1 <= value <= hi:
        raise argparse.ArgumentTypeError(f"expected {what} from 1 to {hi}, got {value}")
    return value


def thread_count(text: str) -> int:
    """1 .. :func:`max_threads` (4 per core, at least 8, at most 256)."""
    return _bounded(text, "a thread count", max_threads())


def batch_size(text: str) -> int:
    """1 .. ``MAX_BATCH_SIZE``."""
    return _bounded(text, "a batch size", MAX_BATCH_SIZE)


def thread_list(text: str) -> list[int]:
    return [thread_count(part) for part in text.split(",") if part.strip()]


def batch_list(text: str) -> list[int]:
    return [batch_size(part) for part in text.split(",") if part.strip()]


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
    command uses it."""
    if getattr(args, "trust", None):
        from edgetl.device.bundle import open_bundle

        open_bundle(bundle, verify=getattr(args, "verify", True), trust=args.trust)


def check_sign_key(args: argparse.Namespace) -> None:
    """With ``--sign``: load the key now, so that a bad one fails before any work is done."""
    if getattr(args, "sign", None):
        from edgetl.core.signing import load_signing_key

        load_signing_key(args.sign)


def add_memory_options(p: argparse.ArgumentParser, *, retrain: bool) -> None:
    """The replay-memory budget and selection options of ``package`` (the first memory) and
    ``retrain`` (the merged one); ``package`` also chooses the precision."""
    what = "memory kept per class" if retrain else "memory for on-device retraining: K embeddings per class"
    p.add_argument("--memory-per-class", type=positive_int, metavar="K",
                   help=f"replay {what} (default: the bytes of 20 float32 rows, in the memory's precision: "
                        "39 float16 rows of 1,280 features)")
    p.add_argument("--memory-mb", type=positive_float, metavar="F",
                   help="replay memory budget in MB (10^6 bytes), split evenly over the classes"
                        f"{', the new ones included' if retrain else ''}; overrides --memory-per-class")
    p.add_argument("--memory-selection", choices=["herding", "random"], default="herding",
                   help="which rows the memory keeps: those whose mean is closest to the class mean (herding, "
                        "iCaRL) or a uniform sample of all seen (random) (default: %(default)s)")
    if not retrain:
        p.add_argument("--memory-precision", choices=["float16", "float32"], default="float16",
                       help="how the memory stores embeddings: float16 (offsets from the class-wide centre) "
                            "halves a row, so a budget holds twice the exemplars (default: %(default)s)")
