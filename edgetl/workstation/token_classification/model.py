"""The NER model: a text encoder's token embeddings under a per-token linear head (Hugging Face's
``AutoModelForTokenClassification`` with the encoder frozen): the head is the same kind of
layer the device already trains (a Linear over rows; here a row is a token).

:class:`TokenFeatures` returns the transformer's hidden states per token, ``[N, T, F]``: the last
layer (``layers=1``, F = 384 for all-MiniLM-L6-v2) or the last ``layers`` layers concatenated
(F = 384 x layers), as the BERT paper's feature-based NER did (CoNLL-2003 dev F1 96.1 for the last
four concatenated, 94.9 for the last layer alone). Measured here on the shipped silver reviews
(benchmarks/ner_bench.py, benchmarks/results/ner.json; agreement with en_core_web_sm): the probe
solved exactly on 1,198 training sentences (302 for validation), scored on 1,000 sentences of
other movies -- last layer entity F1 0.488 (validation 0.475), last four 0.567 (validation
0.565): +8 points, so the last four are the default. The price is in training: 4x the features
(1,536), and the exact solve on 34k token rows took 912 s instead of 126 s on the loaded 2-core
EPYC (AVX2, no VNNI); the deployed backbone's cost is the same encoder run either way.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetl.errors import BackboneError

__all__ = ["TokenFeatures", "TokenClassifier", "DEFAULT_LAYERS", "MAX_LAYERS"]

# Which hidden states make a token's features: the last four, concatenated (held-out F1 0.567
# against 0.488 for the last layer; see the module docstring). The RUN records its own choice
# (run.json "token_layers").
DEFAULT_LAYERS = 4
MAX_LAYERS = 4


class TokenFeatures(nn.Module):
    """``(input_ids, attention_mask) -> [N, T, F]`` token features: a transformer's hidden states
    (the last ``layers`` layers, concatenated). ``encoder``: a SentenceEncoder (its transformer is
    taken; its pooling is not used) or a Hugging Face encoder model."""

    def __init__(self, encoder: nn.Module, layers: int = DEFAULT_LAYERS):
        super().__init__()
        model = getattr(encoder, "model", encoder)
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "hidden_size"):
            raise BackboneError(f"token classification needs a transformer text encoder; {type(encoder).__name__} "
                                "is not one (use all_minilm_l6_v2 or hf:NAME_OR_PATH)")
        depth = int(getattr(config, "num_hidden_layers", 0) or 0)
        if not isinstance(layers, int) or not 1 <= layers <= min(MAX_LAYERS, max(depth, 1)):
            raise BackboneError(f"token features from the last {layers!r} layers: choose 1 to "
                                f"{min(MAX_LAYERS, max(depth, 1))} for this {depth}-layer encoder")
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused here; dropping it keeps every parameter used
        self.model, self.layers = model, layers
        self.hidden_size = int(config.hidden_size)
        self.num_features = self.hidden_size * layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # token_type_ids explicit: the device feeds two inputs, and BERT's default comes from a
        # fixed-size buffer sliced by sequence length (as the sentence encoder does)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=torch.zeros_like(input_ids), output_hidden_states=self.layers > 1)
        if self.layers == 1:
            return out.last_hidden_state
        return torch.cat(tuple(out.hidden_states[-self.layers:]), dim=-1)

    def blocks(self) -> list[nn.Module]:
        """The transformer layers, first to last (what ``--unfreeze N`` counts from the end)."""
        from edgetl.workstation.text_encoder import transformer_blocks

        return list(transformer_blocks(self.model))


class TokenClassifier(nn.Module):
    """Token features under a per-token Linear head over the tags (O, B-T, I-T, ...)."""

    def __init__(self, backbone: TokenFeatures, num_tags: int):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.num_features
        self.head = nn.Linear(self.num_features, num_tags)

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """token ids and mask [N, T] -> token features [N, T, F]."""
        return self.backbone(input_ids, attention_mask)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """token features [N, T, F] -> tag logits [N, T, K]."""
        return self.head(z)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(input_ids, attention_mask))
