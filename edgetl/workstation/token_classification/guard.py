"""How the quantization guard scores an NER model's int8 backbone: its token features through the
RUN's fp32 head, decoded as the device decodes (softmax, Viterbi over valid IOB2, spans), scored
with strict entity F1 (= seqeval) on the held-out sentences (``accuracy`` in the guard's record is
that F1, ``drop`` its fall from the fp32 backbone's), and ``agreement`` the share of the fp32
backbone's entities the int8 backbone finds again (same start, end and type), averaged with the
same share the other way round: 1.0 when int8 finds exactly the same entities."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

__all__ = ["scorer", "NerScorer", "entity_agreement"]


def entity_agreement(a: Sequence[Sequence[dict]], b: Sequence[Sequence[dict]]) -> float:
    """Symmetric share of entities found again, exactly (see the module docstring)."""
    def key(found) -> set[tuple[int, int, str]]:
        return {(int(e["start"]), int(e["end"]), str(e["label"])) for e in found}

    hit_ab = hit_ba = total_a = total_b = 0
    for x, y in zip(a, b):
        kx, ky = key(x), key(y)
        both = len(kx & ky)
        hit_ab, total_a = hit_ab + both, total_a + len(kx)
        hit_ba, total_b = hit_ba + both, total_b + len(ky)
    shares = [h / t for h, t in ((hit_ab, total_a), (hit_ba, total_b)) if t]
    return float(np.mean(shares)) if shares else 1.0


class NerScorer:
    def __init__(self, ctx: Any, z_fp32: np.ndarray):
        from edgetl.modalities import get_modality
        from edgetl.tasks.token_classification.align import encode_batch
        from edgetl.tasks.token_classification.task import tags_of
        from edgetl.workstation.quantization import ort_qdq as qort
        from edgetl.workstation.run import Run

        info = json.loads((ctx.root / "run.json").read_text())
        run = Run(ctx.root, info, None)
        spec = run.spec
        self.examples = list(ctx.y_val)
        self.tags = tags_of(info.get("tags") or info["labels"])
        self.head = ctx.head
        self._run = qort.run_batched
        tokenizer = get_modality("text").tokenizer(spec)
        self.encodings = encode_batch([e.text for e in self.examples], tokenizer, spec.max_length)
        lengths = ctx.xv["attention_mask"].sum(1)
        if len(lengths) != len(self.encodings) or any(len(e) != int(n) for e, n in zip(self.encodings, lengths)):
            from edgetl.errors import QuantizationError

            raise QuantizationError("the guard's held-out sentences do not match their model inputs; this is a bug in "
                                    "edgetl, please report it")
        self.fp32 = self._decode(z_fp32)
        self.fp32_accuracy = self._f1(self.fp32)

    def _decode(self, z: np.ndarray) -> list[list[dict]]:
        from edgetl.tasks.token_classification.task import decode_texts, tag_probabilities

        n, t, f = z.shape
        rows = np.ascontiguousarray(z.reshape(-1, f))
        probs = tag_probabilities(self._run(self.head, rows, batch=4096)).reshape(n, t, -1)
        return decode_texts(self.encodings, list(probs), self.tags)

    def _f1(self, found: list[list[dict]]) -> float:
        from edgetl.tasks.token_classification.metric import score_spans

        return score_spans([e.text for e in self.examples], [e.entities for e in self.examples],
                           [[(s["start"], s["end"], s["label"]) for s in f] for f in found]).f1

    def __call__(self, z: np.ndarray) -> dict[str, float]:
        found = self._decode(z)
        score = self._f1(found)
        return {"accuracy": score, "drop": self.fp32_accuracy - score, "agreement": entity_agreement(self.fp32, found)}


def scorer(ctx: Any, z_fp32: np.ndarray) -> NerScorer:
    return NerScorer(ctx, z_fp32)
