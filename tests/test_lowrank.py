"""Truncated-SVD factorisation: exact at full rank, sized by ``keep``, runs in the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.compress_fixtures import synthetic_clips, tiny_distillmos_net
from train.compress.cost import count_params
from train.compress.finetune import predict
from train.lowrank import factorise, lowrank, rank_for

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Linear(12, 7), torch.randn(3, 12)),
        (nn.Conv1d(5, 6, 4, stride=2), torch.randn(2, 5, 20)),
        (nn.Conv2d(3, 8, (3, 3), stride=(2, 1), padding=(0, 1)), torch.randn(2, 3, 11, 9)),
    ],
)
def test_full_rank_factorisation_is_exact(layer: nn.Module, x: torch.Tensor) -> None:
    full = min(layer.weight.shape[0], int(np.prod(layer.weight.shape[1:])))
    with torch.no_grad():
        assert torch.allclose(factorise(layer, full)(x), layer(x), atol=1e-5)


def test_error_falls_with_rank() -> None:
    torch.manual_seed(0)
    layer, x = nn.Linear(32, 32), torch.randn(16, 32)
    with torch.no_grad():
        errors = [float((factorise(layer, r)(x) - layer(x)).norm()) for r in (2, 8, 16, 32)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-4


def test_rank_for_keeps_requested_share() -> None:
    r = rank_for(200, 200, 0.25)
    assert r == 25 and r * 400 == 0.25 * 200 * 200
    assert rank_for(1, 200, 0.01) == 1


def test_lowrank_network_is_smaller_and_runs() -> None:
    net = tiny_distillmos_net()
    before = count_params(net)
    names = lowrank(net, 0.3)
    assert names and count_params(net) < before
    assert "pool2" not in names  # a single output cannot be factorised usefully
    assert np.isfinite(predict(net, synthetic_clips(2, 16000))).all()
    with pytest.raises(ValueError):
        lowrank(net, 1.0)
