"""The checkpoint a compression run writes: ``torch.save({"model": module, "meta": dict})``.

The module is pickled whole, because a pruned model's layer sizes are its own. Pickles name
classes by module path, and the compressible networks moved when ``train.compress`` was split
out of ``train/compress_common.py`` and ``train/prune.py``: :func:`load_pruned` still reads
checkpoints that name the old paths (every run made before the split, among them the
streamqa-l chain of ``train.prune_recipe``).
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from train.compress.cost import count_nonzero, count_params

# Where the classes pickled by older checkpoints live now.
MOVED_MODULES = {"train.compress_common": "train.compress.nets", "train.prune": "train.compress.nets"}


class _MovedClassUnpickler(pickle.Unpickler):
    """An unpickler that finds classes under their current module (:data:`MOVED_MODULES`)."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's signature)
        return super().find_class(MOVED_MODULES.get(module, module), name)


# torch.load takes a pickle module; this one differs from pickle only in its Unpickler.
_PICKLE = types.SimpleNamespace(__name__="pickle", Unpickler=_MovedClassUnpickler, load=pickle.load)


def save_pruned(model: nn.Module, meta: dict, out: Path, log: Callable[[str], None] = print) -> dict:
    """Write ``model`` (moved to the CPU, so any host loads it) and ``meta`` with its parameter
    counts to ``out``; returns the meta as written."""
    meta = {**meta, "params": count_params(model), "nonzero_params": count_nonzero(model)}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.cpu(), "meta": meta}, out)
    log(f"saved {out}: {meta}")
    return meta


def load_pruned(path: Path) -> tuple[nn.Module, dict]:
    """The module and meta a compression run saved, on the CPU, in eval mode. This unpickles
    code: load only files you made."""
    saved = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    return saved["model"].eval(), saved["meta"]
