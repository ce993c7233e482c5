"""edgetl train"""

from __future__ import annotations

import argparse

from edgetl.commands._args import (batch_size, blocks, endpoint, epochs, image_size, learning_rate, loss_weight,
                                   max_length, node_count, node_rank, open_fraction, processes, seed, weight_decay,
                                   workers)

HELP = "train a classifier (or a detector, or an entity tagger) on labelled data with a pretrained backbone"
DESCRIPTION = """\
Train a classifier on DATA (one subfolder per class; the folder name is the label)
on top of a pretrained backbone, and write a RUN directory (model.pt, run.json,
history.csv, curves.png) for 'edgetl export'.

Strategies:
  linear-probe  backbone frozen; each image is embedded once, then only the head trains (fast)
  finetune      the last --unfreeze N blocks (or all) train too, at a lower learning rate
  adapt         adapt to unlabelled --target-data of another domain (--adapt):
                  feature-coral  frozen backbone; the training features recoloured to the
                                 target's covariance (Ledoit-Wolf), the head re-solved (default)
                  adabn          BatchNorm statistics recomputed on the target
                  adabn+feature-coral  both
                  dann, coral    fine-tune the last --unfreeze blocks with a DANN / Deep CORAL loss
                Prefer feature-coral with few images (hundreds): it trains only the head, solved
                exactly; dann and coral train backbone blocks and a new head from scratch, and
                with little data end near chance (measured: 0.50 on a 2-class shift of 140
                photos, where feature-coral reached 0.83).
                With --target-eval (labelled target images) the adapted model is kept only if
                it beats the source-only probe there. Without: a collapse of predictions onto
                few classes is refused; dann/coral below the source-only probe's accuracy on the
                source validation split (by more than 5 points) are not kept: the source-only
                probe is written and a warning says why (a conservative rule: pass
                --target-eval to keep an adaptation that is better on the target); when kept,
                a warning says that their target accuracy is unchecked.

Backbones: efficientnet_lite0 (built in, weights ship with edgetl[train]),
timm:NAME, torchvision:NAME (pretrained weights need a network), file:PATH.

Text: a text backbone takes DATA as a CSV/TSV/JSONL file with text and label columns
(--text-column, --label-column) or a folder of class subfolders of .txt files (one text
per file). all_minilm_l6_v2 is built in (weights ship with edgetl[train]); hf:NAME_OR_PATH
loads a local sentence-transformers/transformers folder, or a hub name (from the local
cache when offline). Texts are cut at --max-length tokens (default 128), recorded in the
RUN with the model's tokenizer.json. --unfreeze N trains the last N transformer layers.

Tasks (--task, inferred from DATA where it says so):
  classification        one label per image or text (class subfolders, a labelled table)
  detection             boxes in images: DATA is COCO JSON (images, annotations, categories),
                        a YOLO folder (images/, labels/*.txt, classes.txt) or Pascal VOC XML;
                        the backbone is cut at stride 8 and a per-location head (class and box,
                        FCOS-style) is solved on its features; images are letterboxed to
                        --image-size (default 320) and boxes come back in the image's pixels.
                        Boxes outside their image are clipped and counted; degenerate boxes,
                        unknown categories and missing images are skipped and counted (--strict
                        refuses them).
  token-classification  entities in texts (named-entity recognition) with a text backbone: DATA is a
                        CoNLL file (token per line, tag in the last column; IOB1/IOB2/BIOES) or JSONL
                        {"text", "entities": [{"start", "end", "label"}]} (an optional "group", e.g.
                        the document, keeps a group's texts on one side of the split); the head
                        tags each word's first subword (O, B-TYPE, I-TYPE), solved exactly on the
                        frozen encoder's token features; --unfreeze N fine-tunes the last N layers.

Examples:
  edgetl train photos/ --out runs/probe
  edgetl train photos/ --out runs/ft --strategy finetune --unfreeze 3 --epochs 10
  edgetl train photos/ --out runs/r18 --backbone timm:resnet18 --no-pretrained
  edgetl train photos/ --out runs/da --strategy adapt --target-data new_camera/ --adapt dann
  edgetl train reviews.csv --out runs/text --backbone all_minilm_l6_v2
  edgetl train reviews.csv --out runs/text-ft --backbone all_minilm_l6_v2 --strategy finetune --unfreeze 2
  edgetl train trees/train.json --out runs/trees --task detection --image-size 320
  edgetl train entities.jsonl --out runs/ner --backbone all_minilm_l6_v2   (task inferred: token-classification)

A linear probe embeds each image once, on ONNX Runtime (the backbone exported and checked
against PyTorch) with decoding in worker threads, and caches the embeddings on disk keyed
by the files' bytes, the weights and the preprocessing: a second run on the same data
embeds nothing (--no-cache, --cache-dir, --embed-with torch).
"""


def _unfreeze(text: str) -> int | None:
    if text == "all":
        return None
    try:
        return blocks(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number of blocks or 'all', got {text!r}") from None


def _task_names() -> list[str]:
    from edgetl.tasks import task_names

    return task_names()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA",
                   help="image folder, one subfolder per class; for a text backbone a CSV/TSV/JSONL file "
                        "(--text-column, --label-column) or a folder of class subfolders of .txt files")
    p.add_argument("--out", required=True, metavar="RUN", help="RUN directory to create")
    p.add_argument("--backbone", default="efficientnet_lite0", help="backbone (default: %(default)s)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="start from pretrained weights (default: yes)")
    p.add_argument("--task", choices=_task_names(), default=None,
                   help="what to learn (default: what DATA is annotated for; classification for class folders "
                        "and labelled tables)")
    p.add_argument("--strategy", choices=["linear-probe", "finetune", "adapt"], default="linear-probe")
    p.add_argument("--unfreeze", type=_unfreeze, default=2, metavar="N|all",
                   help="finetune/adapt: train the last N backbone blocks, or all (default: 2)")
    p.add_argument("--epochs", type=epochs, help="default: 30 for linear-probe, 8 otherwise")
    p.add_argument("--batch-size", type=batch_size, help="default: 64 for linear-probe, 32 otherwise")
    p.add_argument("--lr", type=learning_rate, help="head learning rate; the backbone gets 0.1x")
    p.add_argument("--weight-decay", type=weight_decay, default=1e-4, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--patience", type=epochs, default=5, help="early stopping patience in epochs")
    p.add_argument("--val-split", type=open_fraction, default=0.2, help="held-out fraction per class")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                   help="linear probe: after choosing the L2 strength on the validation split (k-fold when it is "
                        "small), refit on train + validation (default); --no-refit keeps validation apart")
    p.add_argument("--lp-ft", dest="lp_ft", action=argparse.BooleanOptionalAction, default=None,
                   help="start fine-tuning from the solved linear probe (LP-FT; default: on for finetune, "
                        "off for adapt's dann and coral, where it lowered target accuracy)")
    p.add_argument("--seed", type=seed, default=0, help="split, initialisation and batch order (default: 0)")
    p.add_argument("--image-size", type=image_size, help="input size (default: the backbone's)")
    p.add_argument("--max-length", type=max_length, metavar="TOKENS",
                   help="text: tokens per text, longer ones are cut (default: 128)")
    p.add_argument("--text-column", default="text", metavar="NAME", help="text data: the text column (default: text)")
    p.add_argument("--label-column", default="label", metavar="NAME",
                   help="text data: the label column (default: label)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="finetune: random resized crop and flip; detection (probe and finetune): mirror images, "
                        "and zoomed crops that keep their boxes for finetune (default: on)")
    p.add_argument("--batchnorm", choices=["frozen", "update"],
                   help="finetune/adapt: BatchNorm normalises with its running statistics and keeps them (frozen), "
                        "or with each batch's and updates them (update) (default: frozen for finetune, which "
                        "keeps the solved probe's features; update for adapt)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--strict", action="store_true", help="reject unreadable files instead of skipping them")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--embed-with", choices=["auto", "onnxruntime", "torch"], default="auto",
                   help="linear probe: what computes the frozen backbone's embeddings (default auto: the backbone "
                        "exported to ONNX Runtime on the CPU, checked against PyTorch; PyTorch on a GPU)")
    p.add_argument("--cache", dest="embed_cache", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse embeddings computed before for the same files, weights and preprocessing "
                        "(default: on; --no-cache computes everything)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="embedding cache folder (default: $EDGETL_CACHE_DIR or ~/.cache/edgetl/embeddings; 2 GiB at most)")
    p.add_argument("--workers", type=workers, help="image-decoding threads (default: the machine's cores)")
    p.add_argument("--target-data", metavar="DIR", help="adapt: unlabelled images of the target domain")
    p.add_argument("--adapt", choices=["feature-coral", "adabn", "adabn+feature-coral", "dann", "coral"],
                   default="feature-coral", help="adapt: method (default: %(default)s)")
    p.add_argument("--adapt-weight", type=loss_weight, default=1.0, help="adapt: weight of the alignment loss")
    p.add_argument("--target-eval", metavar="DIR", help="adapt: labelled target images; the adaptation is kept only if it beats source-only there")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    g = p.add_argument_group("more than one process or machine (torch.distributed; `torchrun -m edgetl.cli train ...` "
                             "works too)")
    g.add_argument("--nproc-per-node", type=processes, metavar="N",
                   help="train with N processes on this machine (DDP: gloo on the CPU, nccl on GPUs; at most one "
                        "per core, at least 2)")
    g.add_argument("--nnodes", type=node_count, metavar="M", help="number of machines (with --rdzv-endpoint)")
    g.add_argument("--rdzv-endpoint", type=endpoint, metavar="HOST:PORT", help="where the machines meet (the same on every one)")
    g.add_argument("--node-rank", type=node_rank, metavar="R", help="this machine's rank (optional)")


def _config_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        backbone=args.backbone, pretrained=args.pretrained, task=args.task, strategy=args.strategy,
        unfreeze=args.unfreeze,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        patience=args.patience, val_split=args.val_split, refit=args.refit, lp_ft=args.lp_ft, seed=args.seed,
        image_size=args.image_size, max_length=args.max_length, text_column=args.text_column,
        label_column=args.label_column,
        augment=args.augment, batchnorm=args.batchnorm, device=args.device, strict=args.strict, target_data=args.target_data,
        adapt_method=args.adapt, adapt_weight=args.adapt_weight, target_eval=args.target_eval,
        embed_with=args.embed_with, embed_cache=args.embed_cache, cache_dir=args.cache_dir, workers=args.workers,
    )


_LAUNCH = ("--nproc-per-node", "--nnodes", "--rdzv-endpoint", "--node-rank")


def _without_launch_options(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _LAUNCH:
            skip = True
        elif not a.startswith(tuple(o + "=" for o in _LAUNCH)):
            out.append(a)
    return out


def run(args: argparse.Namespace) -> int:
    import os

    from edgetl.core import ui as _ui
    from edgetl.workstation.training import TrainConfig, train

    if (args.nproc_per_node or args.rdzv_endpoint) and "LOCAL_RANK" not in os.environ:
        from edgetl.workstation.training.distributed import launch

        TrainConfig(**_config_kwargs(args))  # a wrong option fails here, once, not in every worker
        return launch(_without_launch_options(args._argv), args.nproc_per_node or 1, args.nnodes,
                      args.rdzv_endpoint, args.node_rank)
    if args.json or int(os.environ.get("RANK", "0")) != 0:
        _ui.quiet()  # under torchrun only rank 0 prints
    cfg = TrainConfig(**_config_kwargs(args))
    result = train(args.data, args.out, cfg, overwrite=args.force)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.json:
        _ui.print_json({"run": str(result.run_dir), **result.metrics})
        return 0
    if "val_map50" in result.metrics or "val_f1" in result.metrics:  # a detector's mAP, a tagger's F1: printed
        _ui.info(f"wrote {result.run_dir}")
        return 0
    probe = result.metrics.get("probe")
    first = ("C", "C") if probe else ("epoch", "epoch")
    rows = [(h[first[0]], h["train_loss"], h["train_acc"], h["val_loss"], h["val_acc"]) for h in result.history]
    _ui.print_table(f"{cfg.backbone} · {cfg.strategy.value if hasattr(cfg.strategy, 'value') else cfg.strategy}",
                    [first[1], "train loss", "train acc", "val loss", "val acc"], rows)
    emb = result.metrics.get("embedding")
    if emb:
        _ui.info(f"embeddings: {emb['computed']} computed with {emb['engine']} ({emb['why']}), {emb['cached']} from "
                 f"the cache, {emb['images_per_s']} images/s")
    if probe:
        _ui.info(f"linear probe solved exactly: C = {probe['C']:.3g} chosen by {probe['selection']} log-loss "
                 f"(held-out accuracy {result.val_accuracy:.4f}), {'refit on train + validation' if probe['refit'] else 'fit on train'}; "
                 f"wrote {result.run_dir}")
    else:
        _ui.info(f"best validation loss at epoch {result.best_epoch} (accuracy {result.val_accuracy:.4f}); "
                 f"wrote {result.run_dir}")
    return 0
