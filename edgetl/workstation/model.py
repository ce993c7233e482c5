"""The trained model: a backbone (image -> embedding) under a Linear head (embedding -> logits).

The contract follows timm's: ``forward_features``, ``forward_head``, ``reset_classifier``,
``num_features``. The head is a single Linear layer because it is what the device
retrains with ONNX Runtime training artifacts.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EdgeModel"]


class EdgeModel(nn.Module):
    """``backbone`` None: the head alone (a linear probe whose RUN names its built-in
    backbone's weights instead of copying them; ``load_run`` puts the two together)."""

    def __init__(self, backbone: nn.Module | None, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(num_features, num_classes)

    def forward_features(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs (images [N,3,H,W]; or token ids and attention mask) -> embeddings [N,F]."""
        return self.backbone(*inputs)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """Embeddings [N,F] -> logits [N,C]."""
        return self.head(self.dropout(z))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(*inputs))

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes)
