"""edgetl predict"""

from __future__ import annotations

import argparse
import sys

from edgetl.commands._args import (NO_VERIFY_HELP, Number, add_allow_nonconforming, add_trust, batch_size, path_arg,
                                   require_trust, thread_count, top_k)

HELP = "classify images or texts, or find the objects in images, with a bundle (torch-free)"
DESCRIPTION = """\
Classify image files with BUNDLE on its target's runtime (ONNX Runtime or OpenVINO),
with exactly the preprocessing used in training. A FILE may be a folder: every image
inside it, recursively, in sorted order. An unreadable file is reported and the others
are still classified; the exit code is then 1.

A text bundle takes texts: --text "..." (repeatable), a .txt FILE (one text per line),
a CSV/TSV/JSONL FILE (its --text-column), or - to read lines from standard input. Each
prediction names where its text came from (file:line, --text:N, <stdin>:N).

--json prints a list of {"file", "label", "score", "top_k": [{"label", "score"}], "error"}.

An entity tagger (a token-classification bundle) finds entities in each text: a table of
them, or with --json [{"text", "entities": [{"start", "end", "label", "score", "text"}],
"error", "where"}] (start and end index the original text's characters).

A detection bundle finds objects: --json prints a list of {"file", "detections": [{"label",
"score", "box": [x1, y1, x2, y2]}], "error"}, boxes in each image's own pixels, the
detections scoring at least --score-threshold (default 0.3), after per-class NMS; --draw
DIR writes each image with its boxes drawn into DIR.

Examples:
  edgetl predict bundle/ cat.jpg dog.png
  edgetl predict bundle/ photos/ --top-k 3 --json > predictions.json
  edgetl predict bundle/ cam.jpg --runtime openvino --threads 4
  edgetl predict reviews-bundle/ --text "a triumph" --text "two hours I will never get back"
  edgetl predict reviews-bundle/ reviews.txt --json
  cat reviews.txt | edgetl predict reviews-bundle/ -
  edgetl predict ner-bundle/ --text "Tom Hanks shines in Philadelphia" --json
  edgetl predict trees-bundle/ tile.png --score-threshold 0.5 --draw out/
"""


_SCORE = Number(float, 0.0, 1.0, what="a score")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", type=path_arg, help="bundle directory (made by 'edgetl package')")
    p.add_argument("files", metavar="FILE", nargs="*", type=path_arg,
                   help="image file or folder of images; for a text bundle a .txt/.csv/.tsv/.jsonl file, or - (stdin)")
    p.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help="text bundle: a text to classify (repeatable)")
    p.add_argument("--text-column", default="text", metavar="NAME",
                   help="text bundle: the column of CSV/TSV/JSONL files holding the text (default: %(default)s)")
    p.add_argument("--top-k", type=top_k, default=1, metavar="K", help="show the K best labels (default: 1)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.add_argument("--batch-size", type=batch_size, metavar="N", help="default: the target's batch size (at most 4096)")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], help="override the target's runtime")
    p.add_argument("--threads", type=thread_count, metavar="N",
                   help="override the target's thread count (at most 4 per core, at least 8, at most 256)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help=NO_VERIFY_HELP)
    add_trust(p)
    add_allow_nonconforming(p)
    p.add_argument("--score-threshold", type=_SCORE, metavar="S",
                   help="detection bundle: report the objects scoring at least S, from 0 to 1 (default: 0.3)")
    p.add_argument("--draw", type=path_arg, metavar="DIR", help="detection bundle: write the images with their boxes here")


def run(args: argparse.Namespace) -> int:
    from edgetl.core import ui as _ui
    from edgetl.device.predictor import PredictConfig, expand_inputs, predict

    if args.json:
        _ui.quiet()
    require_trust(args, args.bundle)  # --trust: refuse an unsigned bundle before using it
    config = PredictConfig(top_k=args.top_k, batch_size=args.batch_size, runtime=args.runtime, threads=args.threads,
                           verify=args.verify, allow_nonconforming=args.allow_nonconforming,
                           score_threshold=args.score_threshold)
    texts = _texts(args)
    if texts is not None and _task(args) == "token-classification":
        return _run_entities(args, config, texts)
    if texts is not None:
        import dataclasses

        report = predict(args.bundle, [t for _, t in texts], config)
        predictions = [dataclasses.replace(p, file=where) for (where, _), p in zip(texts, report.predictions)]
        report = dataclasses.replace(report, predictions=predictions)
    else:
        if not args.files:
            from edgetl.errors import ConfigError

            raise ConfigError("give at least one FILE (or --text for a text bundle)")
        files = expand_inputs(args.files)
        report = predict(args.bundle, [str(f) for f in files], config)
    predictions, failed = report.predictions, report.failed
    detection = bool(predictions) and hasattr(predictions[0], "detections")
    if (args.draw or args.score_threshold is not None) and not detection and predictions:
        from edgetl.errors import ConfigError

        raise ConfigError("--draw and --score-threshold are for detection bundles; this one classifies")
    if args.draw:
        _draw(predictions, args.draw)
    if args.json:
        _ui.print_json([p.to_dict() for p in predictions])
    elif detection:
        _print_detections(predictions, report)
    else:
        columns = ["file", "label", "score"] + (["top-k"] if args.top_k > 1 else [])
        rows = []
        for p in predictions:
            row = [p.file, p.label if p.ok else "error", p.score]
            if args.top_k > 1:
                row.append(", ".join(f"{lab} {s:.3f}" for lab, s in p.top_k))
            rows.append(row)
        noun = "text" if texts is not None else "image"
        title = f"{len(predictions)} {noun}(s), {report.runtime} {report.precision_executed}"
        _ui.print_table(title, columns, rows)
    for p in failed:
        _ui.error_line("predict", p.error)
    return 1 if failed else 0


def _print_detections(predictions, report) -> None:
    from edgetl.core import ui as _ui

    rows = []
    for p in predictions:
        if not p.ok:
            rows.append([p.file, "error", "", ""])
            continue
        if not p.detections:
            rows.append([p.file, "(none)", "", ""])
        for d in p.detections:
            rows.append([p.file, d.label, f"{d.score:.3f}", ", ".join(f"{v:.0f}" for v in d.box)])
    found = sum(len(p.detections) for p in predictions)
    _ui.print_table(f"{found} object(s) in {len(predictions)} image(s), {report.runtime} {report.precision_executed}",
                    ["file", "label", "score", "box x1, y1, x2, y2"], rows)


def _draw(predictions, folder: str) -> None:
    """Each readable image with its boxes, as PNG into ``folder`` (names kept apart by a number)."""
    from pathlib import Path

    from edgetl.core import ui as _ui
    from edgetl.errors import ConfigError
    from edgetl.tasks.detection.draw import draw_detections

    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot make the --draw folder ({exc.strerror or exc})") from None
    written = 0
    for n, p in enumerate(predictions):
        if p.ok and p.file:
            draw_detections(p.file, [d.to_dict() for d in p.detections], out / f"{n:04d}-{Path(p.file).stem}.png")
            written += 1
    _ui.info(f"drew the boxes of {written} image(s) into {out}")


def _texts(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """``(where, text)`` for a text bundle (None for an image bundle)."""
    from edgetl.device.bundle import open_bundle
    from edgetl.errors import ConfigError, DataError

    # only the manifest's modality is read here: the bundle is verified (or warned about) once, by predict
    modality = open_bundle(args.bundle, verify=False, warn=False).modality
    if modality != "text":
        if args.text:
            raise ConfigError(f"{args.bundle}: --text needs a text bundle; this one takes {modality}s")
        return None
    from edgetl.modalities.text import read_lines_for_predict

    texts = [(f"--text:{n}", t) for n, t in enumerate(args.text, 1)]
    for f in args.files:
        texts += read_lines_for_predict(f, text_column=args.text_column)
    if not texts:
        raise DataError("no text to classify: pass --text TEXT, a .txt/.csv/.jsonl FILE, or - for standard input")
    return texts


def _task(args: argparse.Namespace) -> str:
    """The bundle's task (from its manifest, read unverified; predict verifies the bundle)."""
    from edgetl.device.bundle import open_bundle

    return open_bundle(args.bundle, verify=False, warn=False).task


def _run_entities(args: argparse.Namespace, config, texts: list[tuple[str, str]]) -> int:
    """An entity tagger's predictions: --json prints [{"text", "entities": [{"start", "end",
    "label", "score", "text"}], "error", "where"}]; else one table row per entity."""
    import dataclasses

    from edgetl.core import ui as _ui
    from edgetl.device.predictor import predict

    report = predict(args.bundle, [t for _, t in texts], config)
    predictions = [dataclasses.replace(p, where=where) for (where, _), p in zip(texts, report.predictions)]
    failed = [p for p in predictions if not p.ok]
    if args.json:
        _ui.print_json([p.to_dict() for p in predictions])
    else:
        rows = []
        for p in predictions:
            if not p.ok:
                rows.append((p.where, "(error)", "", None, ""))
            elif not p.entities:
                rows.append((p.where, "(no entity)", "", None, ""))
            for e in p.entities:
                rows.append((p.where, e.text, e.label, e.score, f"{e.start}-{e.end}"))
        n = sum(len(p.entities) for p in predictions)
        _ui.print_table(f"{n} entities in {len(predictions)} text(s), {report.runtime} {report.precision_executed}",
                        ["text", "entity", "type", "score", "characters"], rows)
    for p in failed:
        print(f"edgetl predict: {p.where}: {p.error}", file=sys.stderr)
    return 1 if failed else 0
