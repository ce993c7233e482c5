"""The front door cannot drift: every `edgetl ...` command shown in a code block of the README
or a docs/ page parses with the real argument parser, every file of the repository they name
exists, every relative link resolves, every `make` target named exists, and every page in docs/
is linked from the README. Fast (no command runs): parsing only."""

from __future__ import annotations

import contextlib
import glob
import io
import re
import shlex
from pathlib import Path

import pytest

from edgetl.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
RESULTS = REPO / "benchmarks" / "results"
DOCUMENTS = [README, *PAGES, RESULTS / "README.md"]
# Files a page names that do not exist on purpose: the "say, TFLite" examples of the recipes.
HYPOTHETICAL = {"edgetl/runtimes/tflite.py", "edgetl/modalities/audio.py"}

# Top-level folders whose paths, when a page names them, must exist.
CHECKED_ROOTS = ("benchmarks", "docs", "edgetl", "scripts", "targets", "tests", ".ci")
_PATH = re.compile(r"(?<![\w./~$-])((?:%s)/[\w.*/-]*[\w*])" % "|".join(re.escape(r) for r in CHECKED_ROOTS))
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```")
_SEPARATORS = {"&&", "||", "|", ";"}


def _rel(doc: Path) -> str:
    return str(doc.relative_to(REPO))


def code_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside a fenced code block, continuation lines joined."""
    lines, inside, joined, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.strip()):
            inside = not inside
            continue
        if not inside:
            continue
        if not joined:
            start = number
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        lines.append((start, joined + line))
        joined = ""
    return lines


def edgetl_commands(line: str) -> list[list[str]]:
    """The argument lists of every edgetl invocation on a shell line: `edgetl ...`,
    `$ edgetl ...`, `~/venv/bin/edgetl ...`, `python -m edgetl.cli ...`, chained with && or |."""
    line = line.strip()
    if line.startswith("$ "):
        line = line[2:]
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return []  # not shell (an output table, C code): nothing to parse
    commands, current = [], []
    for token in tokens + [";"]:
        if token in _SEPARATORS:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    found = []
    for words in commands:
        for i, word in enumerate(words):
            if (word == "edgetl" or word.endswith("/bin/edgetl")) and i == _first_word(words):
                found.append(words[i + 1:])
                break
            if word == "-m" and i + 1 < len(words) and words[i + 1] == "edgetl.cli":
                found.append(words[i + 2:])
                break
    return found


def _first_word(words: list[str]) -> int:
    """Index of the program in a command (after `sudo` and VAR=value assignments)."""
    i = 0
    while i < len(words) and (words[i] == "sudo" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[i])):
        i += 1
    return i


def _shown_commands() -> list[tuple[str, int, list[str]]]:
    found = []
    for doc in DOCUMENTS:
        for number, line in code_blocks(doc.read_text(encoding="utf-8")):
            for argv in edgetl_commands(line):
                found.append((_rel(doc), number, argv))
    return found


COMMANDS = _shown_commands()


def test_readme_shows_commands():
    readme = [c for c in COMMANDS if c[0] == "README.md"]
    assert len(readme) >= 10, "the README's quickstarts show fewer edgetl commands than expected"
    shown = {argv[0] for _, _, argv in readme if argv}
    assert {"train", "export", "quantize", "package", "predict", "retrain", "build", "doctor"} <= shown, shown


@pytest.mark.parametrize("doc,line,argv", COMMANDS, ids=[f"{d}:{n}" for d, n, _ in COMMANDS])
def test_command_parses(doc, line, argv):
    """Placeholders (DATA, RUN, BUNDLE, photo.jpg) are fine: argparse checks the command, its
    options, their values and choices, not that the files exist."""
    assert argv, f"{doc}:{line}: 'edgetl' with no command"
    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        # --help and --version exit 0 and are fine to show; a usage error exits 2
        assert exc.code == 0, f"{doc}:{line}: `edgetl {shlex.join(argv)}` does not parse: {err.getvalue().strip()}"


def _paths(doc: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        for match in _PATH.finditer(line):
            found.append((number, match.group(1).rstrip(".")))
    return found


def _exists(path: str) -> bool:
    if any(c in path for c in "*?["):
        return bool(glob.glob(str(REPO / path)))
    return (REPO / path).exists()


@pytest.mark.parametrize("doc", DOCUMENTS, ids=_rel)
def test_named_files_exist(doc):
    missing = [f"{_rel(doc)}:{n}: {p}" for n, p in _paths(doc) if not _exists(p) and p not in HYPOTHETICAL]
    assert not missing, "files named but not in the repository:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=_rel)
def test_links_resolve(doc):
    broken = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        for target in _LINK.findall(line):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            path = target.split("#", 1)[0]
            if path and not (doc.parent / path).exists():
                broken.append(f"{_rel(doc)}:{number}: {target}")
    assert not broken, "links to files that do not exist:\n  " + "\n  ".join(broken)


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


@pytest.mark.parametrize("doc", DOCUMENTS, ids=_rel)
def test_make_targets_exist(doc):
    targets = _make_targets()
    named = set()
    for _, line in code_blocks(doc.read_text(encoding="utf-8")):
        named |= set(re.findall(r"(?:^|\s|&&\s*)(?:sudo\s+)?make\s+([a-z][\w-]*)", line))
    for span in re.findall(r"`(?:sudo )?make ([a-z][\w-]*)`", doc.read_text(encoding="utf-8")):
        named.add(span)
    assert named <= targets, f"{_rel(doc)} names make targets the Makefile lacks: {sorted(named - targets)}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / t.split("#", 1)[0]).resolve() for t in _LINK.findall(README.read_text(encoding="utf-8"))
              if not re.match(r"[a-z]+:", t)}
    unlinked = [_rel(p) for p in PAGES if p.resolve() not in linked]
    assert not unlinked, f"pages in docs/ the README does not link to: {unlinked}"


def test_every_result_file_is_in_the_results_index():
    """benchmarks/results/README.md lists each raw result file under the machine that made it."""
    index = (RESULTS / "README.md").read_text(encoding="utf-8")
    unlisted = [p.name for p in sorted(RESULTS.iterdir()) if p.is_file() and p.name != "README.md"
                and f"`{p.name}`" not in index]
    assert not unlisted, f"result files missing from benchmarks/results/README.md: {unlisted}"


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move the detail into a page under docs/"


def test_the_checks_catch_drift():
    """The parsers above, on lines that must fail or must be found."""
    assert edgetl_commands("edgetl export runs/text && edgetl quantize runs/text  # comment") == [
        ["export", "runs/text"], ["quantize", "runs/text"]]
    assert edgetl_commands("$ ~/venv/bin/edgetl targets") == [["targets"]]
    assert edgetl_commands("torchrun --nproc-per-node 2 -m edgetl.cli train DATA --out RUN") == [
        ["train", "DATA", "--out", "RUN"]]
    assert edgetl_commands("efficientnet_lite0 224  0.916 0.872") == []
    assert code_blocks("```\nedgetl train DATA \\\n  --out RUN\n```\n") == [(2, "edgetl train DATA    --out RUN")]
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["train", "DATA", "--strategy", "no-such-strategy"])
    assert [p for _, p in _paths_in("see scripts/nope.sh and ~/.cache/edgetl/x and `edgetl/core/isa.py`.")] == [
        "scripts/nope.sh", "edgetl/core/isa.py"]


def _paths_in(text: str) -> list[tuple[int, str]]:
    return [(0, m.group(1).rstrip(".")) for m in _PATH.finditer(text)]
