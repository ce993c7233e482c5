"""A loaded RUN directory: its run.json and the rebuilt torch model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.core.run import read_run_json
from edgetl.errors import RunDirError
from edgetl.modalities import DEFAULT_MODALITY, get_modality
from edgetl.modalities.image import PreprocessSpec

__all__ = ["Run", "load_run"]


@dataclass
class Run:
    """A loaded RUN directory: its run.json and the rebuilt model (eval mode)."""

    root: Path
    info: dict[str, Any]
    model: Any  # edgetl.workstation.model.EdgeModel

    @property
    def labels(self) -> list[str]:
        return list(self.info["labels"])

    @property
    def modality(self) -> str:
        return str(self.info.get("modality") or DEFAULT_MODALITY)

    @property
    def task(self) -> str:
        """What a prediction is (``classification`` for RUNs made before tasks)."""
        from edgetl.tasks import DEFAULT_TASK

        return str(self.info.get("task") or DEFAULT_TASK)

    @property
    def spec(self) -> Any:
        """The modality's spec (for images, the :class:`PreprocessSpec`)."""
        modality = get_modality(self.modality)
        return modality.bind(modality.spec_from_dict(self.info["preprocess"]), self.artifact)

    @property
    def weight_files(self) -> list[Path]:
        """The files the model's weights come from: model.pt, and for a head-only RUN the
        installed built-in's weights file it names."""
        files = [self.root / "model.pt"]
        ref = self.info.get("backbone_weights")
        if ref is not None:
            from edgetl.workstation.backbones.timm_source import lite_file

            files.append(Path(lite_file(ref["builtin"])))
        return files

    def artifact(self, name: str) -> Path | None:
        """The RUN's file recorded as ``run.json["artifacts"][name]`` (a tokenizer, say), or None."""
        rel = (self.info.get("artifacts") or {}).get(name)
        if not rel:
            return None
        path = self.root / rel
        if not path.is_file():
            raise RunDirError(f"{path}: the RUN's {name} file is missing; re-run 'edgetl train'")
        return path

    def split_items(self, which: str) -> tuple[list[Any], list[Any]]:
        """Items of the ``train`` or ``val`` split (image paths, or texts) with their targets
        (class indices; a task's own annotations for other tasks)."""
        from edgetl.workstation.task_hooks import hooks

        task_hooks = hooks(self.task)
        if task_hooks is not None:
            return task_hooks.split_items(self, which)
        if self.modality == "image":
            return self.split_paths(which)
        split = self.info.get("split", {})
        idx = split.get(which, [])
        if not idx:
            raise RunDirError(f"{self.root}: run.json records no {which} split")
        data = self._data()
        if len(data.items) != split.get("items"):
            raise RunDirError(f"{data.root}: holds {len(data.items)} usable examples, but {split.get('items')} were "
                              "read at training time; the data changed since 'edgetl train'")
        index = {name: i for i, name in enumerate(self.labels)}
        return [data.items[i] for i in idx], [index[data.labels[data.targets[i]]] for i in idx]

    def _data(self):
        """The training data, read again as at training time (texts are not copied into run.json)."""
        if getattr(self, "_cached_data", None) is None:
            from edgetl.errors import DataError

            cfg = self.info.get("config") or {}
            try:
                self._cached_data = get_modality(self.modality).scan(
                    self.info.get("data_root", ""), text_column=cfg.get("text_column", "text"),
                    label_column=cfg.get("label_column", "label"))
            except DataError as exc:
                raise RunDirError(f"the training data of {self.root} cannot be read again ({exc})") from None
        return self._cached_data

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.info["preprocess"])

    def split_paths(self, which: str) -> tuple[list[Path], list[int]]:
        """Files of the ``train`` or ``val`` split with class indices, as recorded at training."""
        split = self.info.get("split", {})
        root = Path(self.info.get("data_root", ""))
        items = split.get(which, [])
        if not items:
            raise RunDirError(f"{self.root}: run.json records no {which} split")
        index = {name: i for i, name in enumerate(self.labels)}
        paths = [root / rel for rel in items]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise RunDirError(
                f"{missing[0]}: the {which} images recorded at training time are gone; pass the data folder explicitly"
            )
        return paths, [index[Path(rel).parts[0]] for rel in items]


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read run.json and rebuild the trained model from model.pt (weights only). A RUN whose
    model.pt holds the head alone names its backbone (``backbone_weights``): the installed
    built-in, whose weights must be the very ones it was trained on."""
    import torch

    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.model import EdgeModel

    run_dir = Path(run_dir)
    info = read_run_json(run_dir)
    weights = run_dir / "model.pt"
    if not weights.is_file():
        raise RunDirError(f"{run_dir}: model.pt is missing; re-run 'edgetl train'")
    ref = info.get("backbone_weights")
    if ref is not None:
        backbone = create_backbone(ref["builtin"], pretrained=True)
        if backbone.reference != ref:
            raise RunDirError(f"{run_dir}: trained on {ref['builtin']} weights {ref['sha256'][:12]}, but the installed "
                              f"ones are {backbone.weights_id[:12]}; install the edgetl that trained it, or re-run "
                              "'edgetl train'")
    else:
        backbone = create_backbone(info.get("arch", info["backbone"]), pretrained=False)
    from edgetl.workstation.task_hooks import hooks

    task_hooks = hooks(str(info.get("task") or "classification"))
    if task_hooks is not None:
        model = task_hooks.build_model(backbone.module, info)
    else:
        model = EdgeModel(backbone.module, int(info["num_features"]), len(info["labels"]))
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if ref is not None:  # the head alone; the backbone is the installed built-in's
            if not isinstance(state, dict) or set(state) != {"head.weight", "head.bias"}:
                raise KeyError("expected the head's weights alone")
            model.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()})
        else:
            model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - corrupt or mismatched file
        raise RunDirError(f"{weights}: cannot load the trained weights ({exc.__class__.__name__}); re-run 'edgetl train'") from None
    model.eval()
    return Run(run_dir, info, model)
