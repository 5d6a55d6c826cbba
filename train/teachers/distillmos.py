"""Distill-MOS teacher: the ConvTransformer shipped in the PyPI ``distillmos`` package.

Distill-MOS (4.1 M parameters) is itself distilled from XLS-R-SQA and is cheap enough to label
tens of thousands of clips on a CPU, so it is the main teacher of the students. The package does
the segmenting (122,880-sample windows, 1 s max hop, zero padding of shorter input) and the
per-segment peak normalisation inside ``forward``; this wrapper only batches, pins threads and
loads the weights without the package's print to stdout.
"""

from __future__ import annotations

import numpy as np
import torch

from train.teachers.base import SAMPLE_RATE, mos_by_length

SEGMENT_SAMPLES = 122_880


def load_distillmos_model() -> torch.nn.Module:
    """The raw Distill-MOS ``ConvTransformerSQAModel`` with its shipped weights, in eval mode.

    Exposed on its own because the compression study prunes and factorises this exact network.
    """
    from distillmos.sqa import DEFAULT_WEIGHTS_CHKPT, ConvTransformerSQAModel

    model = ConvTransformerSQAModel(load_weights=False)
    checkpoint = torch.load(DEFAULT_WEIGHTS_CHKPT, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


class DistillMosTeacher:
    """Scores clips with Distill-MOS; output ``mos`` in [1, 5]."""

    name = "distillmos"
    outputs: tuple[str, ...] = ("mos",)
    sample_rate = SAMPLE_RATE

    def __init__(self, *, threads: int = 1) -> None:
        """``threads`` sets torch's intra-op thread count for the whole process (torch has no
        per-model setting); the default of 1 keeps several labelling shards from oversubscribing."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
        self.model = load_distillmos_model()

    def score_batch(self, clips: list[np.ndarray]) -> list[dict[str, float]]:
        """Score clips of any length; clips of equal length share one forward pass."""

        def group(batch: list[np.ndarray]) -> list[float]:
            with torch.inference_mode():
                return self.model(torch.from_numpy(np.stack(batch))).reshape(-1).tolist()

        return mos_by_length(clips, self.name, group)
