"""The student's one code path: chunked == whole, batched == one-by-one, ONNX == torch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train.students import FAMILY, FRAME_SAMPLES, Student, count_params, macs_per_second  # noqa: E402


def _speechlike(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    env = np.repeat(rng.uniform(0, 1, n // 1600 + 1), 1600)[:n]
    return torch.from_numpy((rng.standard_normal(n) * env * 0.1).astype(np.float32))


DILATED = dataclasses.replace(FAMILY["xs"], name="xs-dilated", dilations=(2, 4))
# A 16 ms Gabor window with 32 bands: the audio cache is 96 samples, not 240.
SHORT_WINDOW = dataclasses.replace(FAMILY["xs"], name="xs-k256", n_bands=32, gabor_kernel=256)


@pytest.mark.parametrize("cfg", [FAMILY["xs"], DILATED, FAMILY["s50"], SHORT_WINDOW],
                         ids=["xs", "dilated", "20ms-front-end", "16ms-gabor-window"])
@pytest.mark.parametrize("hop_frames", [1, 5, 25, 48])
def test_chunked_equals_whole(hop_frames, cfg):
    torch.manual_seed(1)
    m = Student(cfg).eval()
    x = torch.stack([_speechlike(192 * FRAME_SAMPLES, s) for s in range(2)])
    with torch.no_grad():
        whole = m(x)
        state = m.init_state(2, 192)
        hop = hop_frames * FRAME_SAMPLES
        for i in range(0, x.shape[1], hop):
            out, state = m.step(x[:, i : i + hop], state)
    torch.testing.assert_close(out, whole, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["xs", "s50"])
def test_features_path_equals_audio_path(name):
    torch.manual_seed(2)
    m = Student(FAMILY[name]).eval()
    x = _speechlike(96 * FRAME_SAMPLES)[None]
    with torch.no_grad():
        logmel = m.clip_energies(x)
        torch.testing.assert_close(m.presence_probability(m.forward_features(logmel)), m(x), atol=1e-5, rtol=1e-5)


def test_speech_presence_is_a_probability_in_the_graph_and_a_logit_in_training():
    from train.students import PRESENCE

    torch.manual_seed(4)
    m = Student(FAMILY["xxs"]).eval()
    k = m.cfg.outputs.index(PRESENCE)
    with torch.no_grad():
        m.out_bias[k] = 6.0  # a logit far from 0: the two paths differ visibly
        x = _speechlike(50 * FRAME_SAMPLES)[None]
        logit = m.forward_features(m.log_energies(x, torch.zeros(1, 240))[0])[0, k]
        prob = m(x)[0, k]
    assert 0.0 < prob < 1.0 and logit > 1.0
    assert prob.item() == pytest.approx(torch.sigmoid(logit).item(), abs=1e-5)
    legacy = Student(dataclasses.replace(FAMILY["xxs"], outputs=("mos", "sig", "bak", "ovrl"))).eval()
    with torch.no_grad():
        assert legacy(x).shape == (1, 4)


def test_window_is_the_ring_length():
    """Audio older than the window cannot change the score: the ring forgot it."""
    torch.manual_seed(3)
    m = Student(FAMILY["xs"]).eval()
    tail = _speechlike(50 * FRAME_SAMPLES, 7)[None]
    scores = []
    with torch.no_grad():
        for seed in (1, 2):
            state = m.init_state(1, 10)
            _, state = m.step(_speechlike(100 * FRAME_SAMPLES, seed)[None], state)
            scores.append(m.step(tail, state)[0])
    # Conv caches (a few frames) carry over, the ring does not: scores agree closely.
    assert torch.allclose(scores[0], scores[1], atol=1e-3)


def test_family_spans_orders_of_magnitude():
    sizes = {n: count_params(Student(c)) for n, c in FAMILY.items()}
    assert max(sizes.values()) / min(sizes.values()) >= 10**2.5
    for name in ("s", "sm"):  # the members within the shipping budget
        assert sizes[name] <= 250_000 and macs_per_second(FAMILY[name]) <= 20e6


@pytest.mark.parametrize("cfg", [*(FAMILY[n] for n in ("xxs", "s", "sm", "m", "s50")),
                                 dataclasses.replace(FAMILY["s"], name="s-k256", gabor_kernel=256)],
                         ids=lambda cfg: cfg.name)
def test_macs_counter_matches_torch_flop_counter(cfg):
    from torch.utils.flop_counter import FlopCounterMode

    m = Student(cfg).eval()
    x = torch.zeros(1, 16000)
    state = m.init_state(1, 192)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m.step(x, state)
    measured = fc.get_total_flops() / 2  # one MAC = two FLOPs
    analytical = macs_per_second(cfg, 192)
    # The counter skips elementwise work (norms, activations); convs and matmuls must agree.
    assert abs(measured - analytical) / analytical < 0.05, (measured, analytical)


def test_the_presence_head_costs_what_the_counter_says():
    """Its few thousand MACs a hop vanish in the 5 % above, so the difference is checked."""
    import dataclasses

    from torch.utils.flop_counter import FlopCounterMode

    def measured(cfg) -> float:
        torch.manual_seed(0)
        m = Student(cfg).eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m.step(torch.zeros(1, 16000), m.init_state(1, 192))
        return fc.get_total_flops() / 2

    plain, headed = FAMILY["xxs"], dataclasses.replace(FAMILY["xxs"], presence_hidden=8)
    assert measured(headed) - measured(plain) == macs_per_second(headed) - macs_per_second(plain) == 2 * 16 * 8 + 8
    assert count_params(Student(headed)) - count_params(Student(plain)) == (2 * plain.embed + 1) * 8 + 8 + 1


def test_dropout_trains_noisy_but_evaluates_and_reloads_as_before():
    """Dropout is training-only: eval output is deterministic and equals the same weights
    without dropout, and a config saved before the field existed still loads."""
    import json

    from train.students import StudentConfig

    torch.manual_seed(4)
    cfg = dataclasses.replace(FAMILY["xs"], dropout=0.3)
    m = Student(cfg)
    plain = Student(FAMILY["xs"])
    plain.load_state_dict(m.state_dict())
    x = _speechlike(48 * FRAME_SAMPLES)[None].repeat(2, 1)
    with torch.no_grad():
        m.train()
        assert not torch.allclose(m(x)[0], m(x)[1])  # two draws of the mask differ
        m.eval()
        torch.testing.assert_close(m(x), plain.eval()(x))
    old = json.loads(cfg.to_json())
    del old["dropout"], old["dilations"]
    loaded = StudentConfig.from_json(json.dumps(old))
    assert loaded.dropout == 0.0 and loaded.dilations == ()
    assert StudentConfig.from_json(DILATED.to_json()) == DILATED


def test_dilation_widens_the_state_not_the_macs():
    """A dilated block keeps (kernel - 1) * dilation frames and costs what an undilated one does."""
    shapes = Student(DILATED).state_shapes(192)
    assert shapes["s2b0"] == (32, 4 * 2) and shapes["s2b1"] == (32, 4 * 4)
    assert macs_per_second(DILATED) == macs_per_second(FAMILY["xs"])
    with pytest.raises(ValueError, match="one per block"):
        Student(dataclasses.replace(FAMILY["xs"], dilations=(2,)))


def test_a_front_end_hop_that_does_not_end_at_40_ms_frames_is_refused():
    with pytest.raises(ValueError, match="feature_hop 320 with 3 stages"):
        dataclasses.replace(FAMILY["s"], feature_hop=320, gabor_kernel=400)


def test_the_gabor_window_sets_the_audio_cache_and_must_outlast_a_hop():
    m = Student(SHORT_WINDOW)
    assert m.state_shapes(192)["audio"] == (256 - 160,)
    assert m.gabor.shape == (64, 1, 256)
    with pytest.raises(ValueError, match="gabor_kernel 160 must be longer than feature_hop 160"):
        dataclasses.replace(FAMILY["s"], gabor_kernel=160)
