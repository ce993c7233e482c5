"""Training an entity tagger on a frozen text encoder (``edgetl train DATA --task token-classification``).

``linear-probe``: every training sentence through the frozen encoder once; the rows are the
features of each word's first subword with the word's IOB2 tag
(:mod:`edgetl.workstation.token_classification.rows`); the head is solved exactly as the
classification probe is (multinomial logistic regression, C chosen by the validation rows'
log-loss; :func:`edgetl.workstation.probe_solver.solve_probe`), then refit on train + validation
rows (``--no-refit`` keeps validation apart). ``finetune`` starts from that head and trains the
last ``--unfreeze`` transformer layers with it, cross-entropy over first subwords
(:mod:`.finetune`). The split is by ``group`` (the shipped reviews' movie: reviews of one movie
share names) when every example has one, else seeded. Validation is scored as ``edgetl evaluate``
scores: entity F1, strict IOB2, of the decoded spans; for the probe, of the head fitted on the
training rows alone (the refit head has seen the validation rows).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgetl.core import ui as _ui
from edgetl.errors import ConfigError, DataError

__all__ = ["train_token_classification", "split_examples", "NER_CS"]

# L2 strengths tried for the token head: half-decades from 1e-4 to 1 (scikit-learn's C), not the
# classification probe's 1e-4 to 100. Token rows are many and alike; on the reviews the chosen C
# was 0.01 (last layer: 240 and 1,198 training sentences) and 0.0032 (last four, 1,198), and the
# validation log-loss rises steadily past the optimum (last layer, 240 sentences: 0.43 at 0.01,
# 0.81 at 1, 1.78 at 100), so the four largest Cs would cost solves and never be chosen.
NER_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 0, 9))


def split_examples(examples: Sequence[Any], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(train, val, how)``: whole groups to validation (seeded order) until it holds
    ``val_fraction`` of the sentences, when every example names its group; else a seeded split
    of the sentences. Every entity type keeps a training sentence where it can."""
    n = len(examples)
    rng = np.random.default_rng(seed)
    target = int(round(val_fraction * n)) if n >= 5 else 0
    groups = [getattr(e, "group", None) for e in examples]
    if all(g is not None for g in groups) and len(set(groups)) > 1:
        names = sorted(set(groups))
        members: dict[str, list[int]] = {g: [] for g in names}
        for i, g in enumerate(groups):
            members[g].append(i)
        val_list: list[int] = []
        for k in rng.permutation(len(names)):
            if len(val_list) >= target:
                break
            val_list += members[names[k]]
        how = "group"
    else:
        val_list = list(rng.permutation(n)[:target])
        how = "seed"
    val = np.zeros(n, bool)
    val[val_list] = True
    have = {s.label for i in np.flatnonzero(~val) for s in examples[i].entities}
    for i in np.flatnonzero(val):  # a type only in validation: move that sentence (its group) to training
        types = {s.label for s in examples[i].entities}
        if types - have:
            moved = [j for j in np.flatnonzero(val) if groups[j] == groups[i]] if how == "group" else [i]
            val[moved] = False
            for j in moved:
                have |= {s.label for s in examples[j].entities}
    return np.flatnonzero(~val), np.flatnonzero(val), how


def _text_spec(backbone, cfg, out: Path):
    """The text spec (max_length) bound to the RUN's copy of the backbone's tokenizer.json."""
    from edgetl.modalities.text import TOKENIZER

    spec = backbone.preprocess if cfg.max_length is None else type(backbone.preprocess)(cfg.max_length)
    src = backbone.files.get(TOKENIZER)
    if src is None:
        raise ConfigError(f"{backbone.name}: the text backbone has no tokenizer.json")
    shutil.copyfile(src, out / "tokenizer.json")
    return replace(spec, tokenizer=str(out / "tokenizer.json")), {TOKENIZER: "tokenizer.json"}


def train_token_classification(data, out: Path, cfg, backbone, device, overwrite: bool, dist, *,
                               layers: int | None = None, Cs: Sequence[float] | None = None) -> Any:
    """Write an NER RUN (model.pt, run.json, tokenizer.json) trained on annotated texts ``data``
    (a CoNLL file or JSONL with character spans). ``layers``: token features from the last
    ``layers`` hidden layers, concatenated (default :data:`~.model.DEFAULT_LAYERS`)."""
    import torch

    from edgetl.core.run import RUN_FORMAT, package_versions, write_run_json
    from edgetl.modalities import get_modality
    from edgetl.tasks.token_classification.data import read_ner_data
    from edgetl.tasks.token_classification.tags import tag_set
    from edgetl.workstation.probe_solver import fit_logreg, solve_probe
    from edgetl.workstation.token_classification.model import DEFAULT_LAYERS, TokenClassifier, TokenFeatures
    from edgetl.workstation.token_classification.rows import encode_examples, val_scores, word_rows
    from edgetl.workstation.training.config import Strategy, TrainReport
    from edgetl.workstation.training.outputs import prepare_out

    if backbone.modality != "text":
        raise ConfigError(f"token classification takes texts; {backbone.name} is an {backbone.modality} backbone "
                          "(use all_minilm_l6_v2 or hf:NAME_OR_PATH)")
    if cfg.strategy is Strategy.ADAPT:
        raise ConfigError("strategy 'adapt' is for images; token classification trains with linear-probe or finetune")
    if cfg.image_size is not None:
        raise ConfigError(f"--image-size is for image backbones; {backbone.name} takes text")
    if dist.active:
        raise ConfigError("token classification trains in one process; run it without --nproc-per-node")
    found = read_ner_data(data, strict=cfg.strict)
    if not found.types:
        raise DataError(f"{data}: no entities to learn from (every text is all O); annotate some entities")
    layers = DEFAULT_LAYERS if layers is None else layers
    model = TokenClassifier(TokenFeatures(backbone.module, layers), len(found.types) * 2 + 1).eval()
    prepare_out(out, overwrite)
    spec, artifacts = _text_spec(backbone, cfg, out)
    tags = tag_set(found.types)
    tag_index = {t: i for i, t in enumerate(tags)}
    examples = found.examples
    train_idx, val_idx, how = split_examples(examples, cfg.val_split, cfg.seed)
    tr = [examples[i] for i in train_idx]
    va = [examples[i] for i in val_idx]
    _ui.info(f"{len(found.types)} entity type(s) ({', '.join(found.types)}), {len(tr)} training and {len(va)} "
             f"validation sentences (split by {how}), {sum(found.counts.values())} entities"
             + (f"; {len(found.skipped)} skipped" if found.skipped else ""))
    tokenizer = get_modality("text").tokenizer(spec)
    t0 = time.perf_counter()
    enc_tr, enc_va = encode_examples(tr, tokenizer, spec.max_length), encode_examples(va, tokenizer, spec.max_length)
    cut = sum(e.words_cut for e in enc_tr + enc_va)
    if cut:
        _ui.warn(f"{cut} word(s) past --max-length {spec.max_length} tokens get no label; raise --max-length")

    @torch.no_grad()
    def forward(x: dict) -> np.ndarray:
        return model.forward_features(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"])).numpy()

    rows_tr = word_rows(tr, enc_tr, tag_index, forward, progress="embedding training sentences")
    rows_va = word_rows(va, enc_va, tag_index, forward, progress="embedding validation sentences")
    embed_seconds = time.perf_counter() - t0
    X, y = rows_tr.arrays()
    Xv, yv = rows_va.arrays()
    if len(np.unique(y)) < 2:
        raise DataError(f"{data}: the training sentences hold no entity; add annotated entities")
    t1 = time.perf_counter()
    grid = NER_CS if Cs is None else tuple(Cs)
    solution = solve_probe(X, y, Xv.reshape(-1, X.shape[1]), yv, len(tags), Cs=grid, refit=False, seed=cfg.seed)
    W, b = solution.W, solution.b
    val = val_scores(rows_va, W, b, va, tags) if va else None
    refit = bool(cfg.refit and len(yv))
    if refit:
        W, b = fit_logreg(np.concatenate([X, Xv]), np.concatenate([y, yv]), len(tags), solution.C)
    solve_seconds = time.perf_counter() - t1
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(np.asarray(W, np.float32)))
        model.head.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)))
    history: list[dict] = [{"C": C, "val_loss": loss, "val_acc": acc} for C, loss, acc in solution.table]
    extra: dict[str, Any] = {"probe": {"C": solution.C, "selection": solution.selection, "refit": refit,
                                       "rows": int(len(y)), "val_rows": int(len(yv)), "grid": list(grid),
                                       "val_token_loss": solution.val_loss, "val_token_accuracy": solution.val_accuracy,
                                       "solve_seconds": solve_seconds}}
    if cfg.strategy is Strategy.FINETUNE:
        from edgetl.workstation.token_classification.finetune import finetune

        history, extra["finetune"], val = finetune(model, tr, enc_tr, va, enc_va, tags, cfg, device)
    seconds = time.perf_counter() - t0
    torch.save(model.state_dict(), out / "model.pt")
    vd = val.to_dict() if val is not None else {"f1": None, "precision": None, "recall": None, "per_type": {}}
    metrics = {"val_f1": vd["f1"], "val_precision": vd["precision"], "val_recall": vd["recall"],
               "val_per_type": vd["per_type"], "n_train": len(tr), "n_val": len(va), "train_seconds": seconds,
               "embed_seconds": embed_seconds, "words_cut": cut, "skipped": len(found.skipped),
               "data": found.summary(), "history": history, **extra}
    info = {
        "format": RUN_FORMAT, "task": "token-classification", "labels": list(found.types), "tags": list(tags),
        "backbone": backbone.name, "arch": backbone.arch, "pretrained": backbone.pretrained, "modality": "text",
        "preprocess": spec.to_dict(), "num_features": model.num_features, "token_layers": layers,
        "strategy": cfg.strategy.value, "config": cfg.to_dict(), "data_root": str(Path(found.root).resolve()),
        "split": {"train": train_idx.tolist(), "val": val_idx.tolist(), "items": len(examples), "format": found.format,
                  "by": how, "val_fraction": cfg.val_split, "seed": cfg.seed},
        "metrics": metrics, "artifacts": artifacts,
        "versions": package_versions("edgetl", "torch", "transformers", "tokenizers", "numpy"),
    }
    write_run_json(out, info)
    if val is not None:
        _ui.info(f"validation entity F1 {100 * val.f1:.1f}% (precision {100 * val.precision:.1f}%, recall "
                 f"{100 * val.recall:.1f}%) on {len(va)} sentence(s)")
    return TrainReport(out, vd["f1"] if vd["f1"] is not None else float("nan"), 0, history, metrics)
