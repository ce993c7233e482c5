"""Hostile numbers on the command line: every numeric option of every command, found by
walking the argument parser, tried with negative, zero, NaN, infinite and huge values.

Nothing here lists the options: a new command or a new numeric option is covered by being
added to the parser. An option is numeric when its ``type`` turns "1", "2" or "0.5" into a
number (or a list of them). Each hostile value must end in one line on stderr naming the
option and exit code 2, before any work starts; zero is either refused the same way or
within the type's bounds. Issue 29's cases (--seed -1, --duration inf, --nproc-per-node
unbounded, --rdzv-endpoint ':::::', weight decay/lr/adapt-weight/holdout) are named below.
"""

from __future__ import annotations

import argparse
import functools
import math

import pytest

from edgetl.cli import build_parser
from edgetl.commands import _args
from edgetl.errors import ConfigError

# negative, NaN, infinite, huge (past any bound and past what the parsers take), malformed
HOSTILE = ["-1", "-0.5", "nan", "-nan", "NaN", "inf", "-inf", "Infinity", "1e309", "1e30", "9" * 30,
           "9" * 5000, "0x10", "1_0e5000", "", " ", "\x1b[31m1"]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _numbers(value) -> list:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _is_numeric(kind) -> bool:
    for probe in ("1", "2", "0.5"):
        try:
            if _numbers(kind(probe)):
                return True
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
    return False


def _is_list(kind) -> bool:
    try:
        return isinstance(kind("1"), (list, tuple))
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False


def _base_argv(sub: argparse.ArgumentParser, command: str, skip: argparse.Action) -> list[str]:
    """The command with its positionals and required options filled with placeholders."""
    argv = [command]
    for action in sub._actions:
        if action is skip or isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings and action.nargs not in ("*", "?"):
            argv.append("placeholder")
        elif action.option_strings and action.required:
            argv += [action.option_strings[0], "placeholder"]
    return argv


def numeric_options() -> list[tuple[str, str, argparse.Action, argparse.ArgumentParser]]:
    out = []
    for command, sub in _subparsers().items():
        for action in sub._actions:
            if action.option_strings and action.type is not None and _is_numeric(action.type):
                out.append((command, max(action.option_strings, key=len), action, sub))
    return out


OPTIONS = numeric_options()
IDS = [f"{c} {o}" for c, o, _, _ in OPTIONS]


def test_the_parser_walk_finds_the_numeric_options():
    """A guard on the walk itself: it must find options of many commands, the ones of the
    issue among them (or the tests below would pass by testing nothing)."""
    found = {(c, o) for c, o, _, _ in OPTIONS}
    assert len(found) >= 40 and len({c for c, _ in found}) >= 8, sorted(found)
    for known in [("train", "--seed"), ("retrain", "--seed"), ("bench", "--duration"), ("train", "--nproc-per-node"),
                  ("train", "--weight-decay"), ("train", "--lr"), ("train", "--adapt-weight"),
                  ("retrain", "--holdout"), ("predict", "--threads"), ("bench", "--batch"), ("train", "--unfreeze"),
                  ("adapt", "--shrinkage"), ("select", "--sweep-unfreeze"), ("package", "--memory-mb")]:
        assert known in found, known


@functools.lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    return build_parser()  # parsing does not change it


def _parse(capsys, argv: list[str]) -> tuple[int, list[str], argparse.Namespace | None]:
    try:
        ns = _parser().parse_args(argv)
        code = 0
    except SystemExit as exc:
        code, ns = exc.code, None
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()], ns


@pytest.mark.parametrize("command, option, action, sub", OPTIONS, ids=IDS)
def test_hostile_numbers_are_one_line_before_any_work(capsys, command, option, action, sub):
    base = _base_argv(sub, command, action)
    values = HOSTILE + ([f"1,{v}" for v in HOSTILE if v.strip()] if _is_list(action.type) else [])
    for value in values:
        code, lines, _ = _parse(capsys, [*base, option, value])
        assert code == 2 and len(lines) == 1, (option, value, lines)
        assert lines[0].startswith(f"edgetl {command}: error: argument {option}"), (option, value, lines)
        assert "\x1b" not in lines[0]  # what the user typed comes back escaped


@pytest.mark.parametrize("command, option, action, sub", OPTIONS, ids=IDS)
def test_zero_is_refused_or_within_bounds(capsys, command, option, action, sub):
    code, lines, ns = _parse(capsys, [*_base_argv(sub, command, action), option, "0"])
    if code:
        assert code == 2 and len(lines) == 1 and option in lines[0], lines
        return
    values = _numbers(getattr(ns, action.dest))
    assert values and all(math.isfinite(v) and v == 0 for v in values)
    kind = action.type
    if isinstance(kind, _args.Number):
        assert kind.lo <= 0 and not kind.lo_open


NUMBERS = sorted({(name, obj) for name, obj in vars(_args).items() if isinstance(obj, _args.Number)},
                 key=lambda item: item[0])


@pytest.mark.parametrize("name, kind", NUMBERS, ids=[n for n, _ in NUMBERS])
def test_each_bound_is_where_it_says(name, kind):
    """The shared validator's bounds: finite, the ends accepted unless open, just past them refused."""
    lo, hi = kind.lo, kind.hi
    assert math.isfinite(lo) and math.isfinite(hi) and lo < hi and hi < 1e12
    step = 1 if kind.kind is int else max(abs(hi), 1.0) * 1e-6
    for end, is_open, outside in ((lo, kind.lo_open, lo - step), (hi, kind.hi_open, hi + step)):
        text = str(end) if kind.kind is int else repr(float(end))
        if is_open:
            with pytest.raises(argparse.ArgumentTypeError):
                kind(text)
        else:
            assert kind(text) == end
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            kind(str(outside) if kind.kind is int else repr(float(outside)))


# --- the issue's cases, by name -------------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["train", "D", "--out", "R", "--seed", "-1"], "--seed"),  # #9: numpy's ValueError before
    (["train", "D", "--out", "R", "--seed", "99999999999"], "--seed"),
    (["retrain", "B", "D", "--seed", "-1"], "--seed"),
    (["build", "D", "--target", "T", "--out", "B", "--seed", "4294967296"], "--seed"),
    (["bench", "B", "--duration", "inf"], "--duration"),  # #6: ran forever
    (["train", "D", "--out", "R", "--nproc-per-node", "100000"], "--nproc-per-node"),  # #6: unbounded
    (["train", "D", "--out", "R", "--rdzv-endpoint", ":::::"], "--rdzv-endpoint"),  # #10: torch's ValueError
    (["train", "D", "--out", "R", "--rdzv-endpoint", "host:99999"], "--rdzv-endpoint"),
    (["train", "D", "--out", "R", "--rdzv-endpoint", "[::1"], "--rdzv-endpoint"),
    (["train", "D", "--out", "R", "--nnodes", "2:1"], "--nnodes"),
    (["train", "D", "--out", "R", "--weight-decay", "-1"], "--weight-decay"),  # #11
    (["train", "D", "--out", "R", "--weight-decay", "nan"], "--weight-decay"),
    (["train", "D", "--out", "R", "--weight-decay", "inf"], "--weight-decay"),
    (["train", "D", "--out", "R", "--lr", "inf"], "--lr"),
    (["train", "D", "--out", "R", "--adapt-weight", "inf"], "--adapt-weight"),
    (["retrain", "B", "D", "--holdout", "0"], "--holdout"),
])
def test_issue_options_are_refused(capsys, argv, needle):
    code, lines, _ = _parse(capsys, argv)
    assert code == 2 and len(lines) == 1 and f"argument {needle}" in lines[0], lines


def test_processes_are_bounded_by_the_machine(capsys, monkeypatch):
    monkeypatch.setattr(_args.os, "cpu_count", lambda: 4)
    assert _args.processes("4") == 4
    with pytest.raises(argparse.ArgumentTypeError, match="from 1 to 4"):
        _args.processes("5")
    monkeypatch.setattr(_args.os, "cpu_count", lambda: 1)
    assert _args.processes("2") == 2  # two processes still run (and test) on one core


@pytest.mark.parametrize("text", ["localhost:29500", "10.0.0.7:1", "node-3.cluster.example:65535", "[::1]:29400",
                                  "[fe80::1]", "head"])
def test_rendezvous_endpoints_that_torchrun_takes_pass(text):
    assert _args.endpoint(text) == text


def test_the_python_api_refuses_the_same_values():
    """The configs the CLI builds refuse these too: a script gets one ConfigError, not numpy's
    ValueError mid-run or a head trained with NaN decay."""
    from edgetl.device.retraining import RetrainConfig
    from edgetl.workstation.training import TrainConfig

    for kwargs in (dict(seed=-1), dict(seed=2**32), dict(seed=1.5), dict(weight_decay=-1.0),
                   dict(weight_decay=float("nan")), dict(weight_decay=float("inf")), dict(lr=float("inf")),
                   dict(lr=float("nan")), dict(adapt_weight=float("inf")), dict(val_split=float("nan"))):
        with pytest.raises(ConfigError):
            TrainConfig(**kwargs)
    for kwargs in (dict(holdout=0), dict(holdout=0.0), dict(holdout=float("nan")), dict(seed=-1), dict(seed=2**40)):
        with pytest.raises(ConfigError):
            RetrainConfig(**kwargs)
    assert TrainConfig(seed=2**32 - 1, weight_decay=0.0).seed == 2**32 - 1
