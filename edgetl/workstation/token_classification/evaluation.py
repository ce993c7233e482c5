"""``edgetl evaluate RUN DATA`` for an NER RUN: its PyTorch model behind the device's
:class:`~edgetl.device.predictor.Predictor`, so that a RUN and a bundle are decoded and scored by
the same code (the task's ``evaluate``: strict IOB2 entity F1, equal to seqeval)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["evaluate_run", "TorchSession"]


class TorchSession:
    """A torch module with the Session attributes the predictor reads (batch and sequence
    dynamic): the RUN's backbone (``input_ids``, ``attention_mask`` -> token features) or head
    (rows -> tag logits)."""

    runtime = "torch"
    precision_executed = "fp32"
    input_types: tuple[str, ...]

    def __init__(self, module: Any, input_names: tuple[str, ...], features: int, outputs: int | None = None):
        self.module = module.eval()
        self.input_names = input_names
        self.input_name = input_names[0]
        self.input_types = tuple("int64" if len(input_names) > 1 else "float32" for _ in input_names)
        self.input_shape = (None, None) if len(input_names) > 1 else (None, features)
        self.output_name = "output"
        self.output_shape = (None, None, features) if len(input_names) > 1 else (None, outputs)
        self.threads = None

    def run(self, inputs: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if isinstance(inputs, np.ndarray):
                return self.module(torch.from_numpy(np.ascontiguousarray(inputs, np.float32))).numpy()
            args = [torch.from_numpy(np.asarray(inputs[name], np.int64)) for name in self.input_names]
            return self.module(*args).numpy()


def evaluate_run(run_dir: str | os.PathLike, data: Any, *, batch_size: int | None = None) -> Any:
    """Entity scores (:class:`edgetl.tasks.token_classification.task.NerEvaluation`) of the
    RUN's PyTorch model on annotated texts."""
    from edgetl.device.predictor import Predictor
    from edgetl.tasks import get_task
    from edgetl.workstation.run import load_run

    run = load_run(run_dir)
    task = get_task(run.task)
    model = run.model
    tags = task.head_labels(run.info.get("tags") or run.labels)
    backbone = TorchSession(model.backbone, ("input_ids", "attention_mask"), model.num_features)
    head = TorchSession(model.head, ("embedding",), model.num_features, len(tags))
    predictor = Predictor(backbone, head, tags, run.spec, modality=run.modality, task=run.task,
                          batch_size=batch_size or 32)
    return task.evaluate(predictor, data, batch_size=batch_size)
