"""COCO mAP of a PyTorch detection model on annotated images, decoded as the device decodes
(the RUN's validation score, fine-tuning's epochs, ``edgetl evaluate RUN``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["evaluate_items"]


def evaluate_items(model, items: list, labels, spec, maps: dict[int, np.ndarray] | None = None) -> dict[str, Any]:
    """COCO mAP of the PyTorch model on annotated items (their feature maps computed here unless
    given), decoded as the device decodes (edgetl.tasks.detection.task.decode)."""
    import torch

    from edgetl.tasks.detection.metric import coco_evaluate
    from edgetl.tasks.detection.task import decode
    from edgetl.tasks.detection.rows import embed_items

    maps = dict(maps or {})
    W, b = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    Wb, bb = model.box_head.weight.detach().numpy(), model.box_head.bias.detach().numpy()
    todo = [i for i in range(len(items)) if i not in maps]
    if todo:
        with torch.no_grad():
            forward = lambda x: model.forward_features(torch.from_numpy(x["images"])).numpy()  # noqa: E731
            for k, z, _, _ in embed_items([items[i] for i in todo], spec, forward, progress="scoring images"):
                maps[todo[k]] = z
    preds = []
    for i, item in enumerate(items):
        z = maps[i]
        f, h, w = z.shape
        rows = np.moveaxis(z, 0, -1).reshape(-1, f)
        boxes, scores, classes = decode(rows @ W.T + b, rows @ Wb.T + bb, (h, w), spec.input_size,
                                        (item.width, item.height))
        preds.append({"boxes": boxes, "scores": scores, "classes": classes})
    return coco_evaluate(preds, list(items), labels)
