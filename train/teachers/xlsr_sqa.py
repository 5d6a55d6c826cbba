"""XLS-R-SQA teacher: a local wav2vec 2.0 XLS-R checkpoint plus the SQA head of PyPI ``xls-r-sqa``.

This is the strongest teacher (Distill-MOS was distilled from it) but needs the 300M-2B
parameter XLS-R backbone, which no package ships and nothing here may download. So this module
is the code a user with a GPU and a local XLS-R checkpoint runs; on this machine it is tested on
a tiny random backbone. It mirrors ``xls_r_sqa.e2e_model.E2EModel`` without that class's hub
download: per-utterance normalisation (``Wav2Vec2FeatureExtractor(do_normalize=True)``),
``hidden_states[layer]`` of the backbone (index 0 is the projected CNN features), a centre crop
or zero pad to 384 frames (7.68 s), then the package's ``SingleLayerModel`` (one layer) or
``FusionModel`` (two layers), whose [0, 1] output is mapped to 1 + 4 x.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
from xls_r_sqa.center_crop import CenterCrop
from xls_r_sqa.config import (
    FEAT_SEQ_LEN,
    XLSR_1B_TRANSFORMER_32DEEP_CONFIG,
    XLSR_2B_TRANSFORMER_32DEEP_CONFIG,
    XLSR_300M_TRANSFORMER_32DEEP_CONFIG,
    Config,
)
from xls_r_sqa.sqa_model import FusionModel, SingleLayerModel
from xls_r_sqa.utils import get_model_path

from train.teachers.base import SAMPLE_RATE, mos_by_length

# Backbone width -> (package head config, layer pair the shipped fusion head was trained on).
SHIPPED: dict[int, tuple[Config, tuple[int, int]]] = {
    1024: (XLSR_300M_TRANSFORMER_32DEEP_CONFIG, (5, 21)),
    1280: (XLSR_1B_TRANSFORMER_32DEEP_CONFIG, (10, 41)),
    1920: (XLSR_2B_TRANSFORMER_32DEEP_CONFIG, (10, 41)),
}


def head_config(hidden_size: int) -> Config:
    """The package's head configuration with its input width set to the backbone's.

    For the real XLS-R widths this is the package config unchanged; other widths (tiny test
    backbones) keep the head's architecture and change only the input projection.
    """
    base, _ = SHIPPED.get(hidden_size, (XLSR_300M_TRANSFORMER_32DEEP_CONFIG, (5, 21)))
    config = copy.copy(base)
    config.dim_input = hidden_size
    return config


def shipped_head_path(hidden_size: int, layers: tuple[int, ...], variant: str = "full") -> Path | None:
    """The head checkpoint the package ships for this backbone width and layer choice, if any.

    ``variant`` is the training-data variant of the package's heads: "full" or "subset".
    """
    if hidden_size not in SHIPPED:
        return None
    config, _ = SHIPPED[hidden_size]
    try:
        _, path = get_model_path(config, list(layers), variant)
    except ValueError:
        return None
    return path if path.is_file() else None


def build_head(hidden_size: int, layers: tuple[int, ...], weights: Path | None) -> torch.nn.Module:
    """The package's SQA head for ``len(layers)`` feature layers, with ``weights`` loaded
    strictly when given (a shape mismatch raises), in eval mode."""
    if len(layers) not in (1, 2):
        raise ValueError(f"the SQA head takes one or two layers, got {layers}")
    config = head_config(hidden_size)
    head = SingleLayerModel(config) if len(layers) == 1 else FusionModel(config)
    if weights is not None:
        head.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return head.eval()


class XlsrSqaTeacher:
    """Scores clips with XLS-R features + the XLS-R-SQA head; output ``mos`` in [1, 5]."""

    name = "xlsr_sqa"
    outputs: tuple[str, ...] = ("mos",)
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        layers: tuple[int, ...] | None = None,
        variant: str = "full",
        head: str | Path | None = None,
        random_head: bool = False,
        threads: int = 1,
        device: str = "cpu",
    ) -> None:
        """Load the backbone from the local directory ``checkpoint`` (a ``save_pretrained``
        folder: config.json + weights); nothing is downloaded.

        ``layers`` defaults to the layer pair of the package's fusion head for this backbone
        width (300M: 5 and 21). The head weights are ``head`` if given, else the shipped head for
        (width, layers, variant). A backbone without a matching shipped head (a tiny test model)
        needs ``random_head=True``: an untrained head is allowed only when asked for, because
        its scores mean nothing.
        """
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
        checkpoint = Path(checkpoint)
        config = Wav2Vec2Config.from_pretrained(checkpoint, local_files_only=True)
        hidden = config.hidden_size
        if layers is None:
            layers = SHIPPED[hidden][1] if hidden in SHIPPED else (config.num_hidden_layers,)
        layers = tuple(int(x) for x in layers)
        if not all(0 <= x <= config.num_hidden_layers for x in layers):
            raise ValueError(f"layers {layers} outside 0..{config.num_hidden_layers} of {checkpoint}")
        weights = Path(head) if head is not None else shipped_head_path(hidden, layers, variant)
        if weights is None and not random_head:
            raise ValueError(
                f"no shipped XLS-R-SQA head for width {hidden} and layers {layers}; pass head=PATH "
                "or random_head=True (untrained, for tests only)"
            )
        # Run only the layers needed. One layer more than the deepest requested keeps
        # hidden_states[deepest] the raw layer output: transformers applies the encoder's final
        # LayerNorm to the last hidden state only.
        config.num_hidden_layers = min(config.num_hidden_layers, max(layers) + 1)
        self.backbone = Wav2Vec2Model.from_pretrained(
            checkpoint, config=config, local_files_only=True
        ).eval()
        if weights is None:
            torch.manual_seed(0)
        self.head = build_head(hidden, layers, weights)
        self.layers = layers
        self.device = torch.device(device)
        self.backbone.to(self.device)
        self.head.to(self.device)
        self.crop = CenterCrop(FEAT_SEQ_LEN)
        self.normalizer = Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True
        )

    def score_batch(self, clips: list[np.ndarray]) -> list[dict[str, float]]:
        """Score clips of any length (only the centre 7.68 s of features is judged, as in the
        package); clips of equal length share one backbone pass."""

        def group(batch: list[np.ndarray]) -> list[float]:
            normalized = self.normalizer(batch, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_values"]
            with torch.inference_mode():
                audio = torch.from_numpy(np.asarray(normalized, dtype=np.float32)).to(self.device)
                hidden = self.backbone(audio, output_hidden_states=True).hidden_states
                features = [self.crop(hidden[layer]) for layer in self.layers]
                quality = self.head(features[0] if len(features) == 1 else tuple(features))
                return (1.0 + 4.0 * quality).reshape(-1).tolist()

        return mos_by_length(clips, self.name, group)
