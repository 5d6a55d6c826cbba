"""ITU-T G.107 E-model against the Recommendation's reference points."""

import math

import pytest

from streamqa.rtp.emodel import emodel_mos, ie_eff, r_factor, r_to_mos


def test_default_connection():
    # G.107: all parameters at their Table 1 defaults give R = 93.2 (MOS about 4.41)
    r = r_factor()
    assert r == pytest.approx(93.2, abs=0.05)
    assert r_to_mos(r) == pytest.approx(4.41, abs=0.005)


@pytest.mark.parametrize("r,mos", [(50, 2.575), (70, 3.597), (80, 4.024), (90, 4.339)])
def test_r_to_mos_table_points(r, mos):
    # 1 + 0.035 R + R (R - 60)(100 - R) 7e-6 evaluated by hand
    assert r_to_mos(r) == pytest.approx(mos, abs=1e-3)


def test_r_to_mos_clamps():
    assert r_to_mos(-5) == 1.0 and r_to_mos(0) == 1.0
    assert r_to_mos(100) == 4.5 and r_to_mos(120) == 4.5
    assert r_to_mos(6.5) == pytest.approx(1.0 + 0.035 * 6.5 + 6.5 * (6.5 - 60) * 93.5 * 7e-6)


def test_ie_eff_formula():
    # Ie,eff = Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl)
    assert ie_eff(0.0, 0.0, 25.1) == 0.0
    assert ie_eff(0.0, 2.0, 25.1) == pytest.approx(95 * 2 / (2 + 25.1))
    assert ie_eff(11.0, 5.0, 19.0, 2.0) == pytest.approx(11 + 84 * 5 / (2.5 + 19.0))
    assert ie_eff(0.0, 100.0, 4.3) == pytest.approx(95 * 100 / 104.3)


def test_loss_lowers_r_by_ie_eff():
    base = r_factor()
    assert base - r_factor(ie=0.0, bpl=25.1, ppl=3.0) == pytest.approx(ie_eff(0.0, 3.0, 25.1))


@pytest.mark.parametrize("delay_ms", [50, 100, 150, 200, 250, 300])
def test_delay_impairment_against_published_fit(delay_ms):
    # Cole & Rosenbluth (ACM CCR 2001) fit of G.107's Id for the default connection:
    # Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3); within about 1.5 R up to 300 ms.
    published = 0.024 * delay_ms + 0.11 * max(0.0, delay_ms - 177.3)
    assert r_factor() - r_factor(delay_ms=delay_ms) == pytest.approx(published, abs=1.5)


def test_delay_beyond_100ms_adds_absolute_delay_impairment():
    # Idd(Ta = 200 ms) = 25 ((1 + 1)^(1/6) - 3 (1 + (1/3)^6)^(1/6) + 2) = 3.044;
    # Idd(400 ms), X = 2: 24.07. The rest of Id (echo) grows smoothly, so the step in R
    # between 150 and 400 ms is dominated by Idd.
    idd_200 = 25 * (2 ** (1 / 6) - 3 * (1 + (1 / 3) ** 6) ** (1 / 6) + 2)
    assert idd_200 == pytest.approx(3.044, abs=1e-3)
    assert r_factor(delay_ms=150) - r_factor(delay_ms=400) > 24.0


def test_emodel_mos_per_codec():
    assert emodel_mos("PCMU", 0.0) == pytest.approx(4.41, abs=0.005)
    # PLC makes G.711 far more robust than without (Bpl 25.1 vs 4.3)
    assert emodel_mos("PCMA", 5.0) > emodel_mos("PCMA", 5.0, plc=False) + 0.5
    # burstiness hurts at equal loss; monotone in loss
    assert emodel_mos("opus", 5.0, burst_ratio=3.0) < emodel_mos("opus", 5.0)
    mos = [emodel_mos("G722", p) for p in (0, 1, 2, 5, 10, 20)]
    assert all(a > b for a, b in zip(mos, mos[1:]))


def test_emodel_mos_defined_for_bad_input():
    assert emodel_mos("unknown-codec", 1.0) == emodel_mos("PCMU", 1.0)
    assert emodel_mos("PCMU", math.nan) == emodel_mos("PCMU", 0.0)
    assert emodel_mos("PCMU", math.inf) == emodel_mos("PCMU", 100.0)
    assert emodel_mos("PCMU", 250.0) == emodel_mos("PCMU", 100.0)
    assert emodel_mos("PCMU", 2.0, burst_ratio=0.2) == emodel_mos("PCMU", 2.0)
    assert emodel_mos("PCMU", 0.0, delay_ms=math.inf) == emodel_mos("PCMU", 0.0)
