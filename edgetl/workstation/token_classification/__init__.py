"""Named-entity recognition on the workstation (the torch half; edgetl.tasks.token_classification
is the rest): the model (a text encoder's token features under a per-token head), its training
(the exact probe on first-subword rows, fine-tuning), its export and how its int8 is scored.
Registers the task's workstation hooks."""

from __future__ import annotations

from typing import Any

from edgetl.workstation.task_hooks import HOOKS, TaskHooks

__all__ = ["build_model", "split_items"]


def build_model(module: Any, info: dict) -> Any:
    """The RUN's model rebuilt around a text encoder of its architecture (weights loaded after)."""
    from edgetl.tasks.token_classification.task import tags_of
    from edgetl.workstation.token_classification.model import TokenClassifier, TokenFeatures

    layers = info.get("token_layers", 1)
    return TokenClassifier(TokenFeatures(module, int(layers) if isinstance(layers, int) else 1),
                           len(tags_of(info.get("tags") or info["labels"])))


def split_items(run: Any, which: str) -> tuple[list[str], list[Any]]:
    """The texts of the RUN's ``train`` or ``val`` split and their annotations
    (:class:`edgetl.tasks.token_classification.NerExample`), read again from the training data."""
    from edgetl.errors import DataError, RunDirError
    from edgetl.tasks.token_classification.data import read_ner_data

    split = run.info.get("split") or {}
    idx = split.get(which) or []
    if not idx:
        raise RunDirError(f"{run.root}: run.json records no {which} split")
    strict = bool((run.info.get("config") or {}).get("strict", False))
    try:
        data = read_ner_data(run.info.get("data_root", ""), strict=strict)
    except DataError as exc:
        raise RunDirError(f"the training data of {run.root} cannot be read again ({exc})") from None
    if len(data.examples) != split.get("items"):
        raise RunDirError(f"{data.root}: holds {len(data.examples)} annotated texts, but {split.get('items')} were "
                          "read at training time; the data changed since 'edgetl train'")
    examples = [data.examples[int(i)] for i in idx]
    return [e.text for e in examples], examples


def _train(*args: Any, **kwargs: Any) -> Any:
    from edgetl.workstation.token_classification.train import train_token_classification

    return train_token_classification(*args, **kwargs)


def _export(*args: Any, **kwargs: Any) -> Any:
    from edgetl.workstation.token_classification.export import export_token_classification

    return export_token_classification(*args, **kwargs)


def _guard_scorer(*args: Any, **kwargs: Any) -> Any:
    from edgetl.workstation.token_classification.guard import scorer

    return scorer(*args, **kwargs)


HOOKS.register("token-classification", TaskHooks(train=_train, build_model=build_model, split_items=split_items,
                                                 export=_export, guard_scorer=_guard_scorer))
