"""ITU-T G.107 E-model (narrowband): a network-only MOS estimate next to the listening model.

The E-model predicts conversational quality from parameters alone: codec, packet loss, loss
burstiness and delay. The monitor reports it beside the learned MOS so that an operator can
tell "the network is losing packets" from "the audio itself is bad". All terminal and
circuit parameters keep their G.107 (06/2015) Table 1 defaults, which is what lets the
default connection reach R = 93.2.

Codec parameters (``CODECS``), on the narrowband R scale:

* G.711 (PCMU/PCMA): Ie = 0; Bpl = 25.1 with packet-loss concealment, 4.3 without
  (ITU-T G.113 Appendix I, Table I.3).
* L16: uncompressed, treated like G.711 (Ie = 0, Bpl as G.711).
* G.722 and Opus: G.113 Appendix I has no narrowband entry for them (G.722 is only rated on
  the wideband scale of G.107.1 / G.113 Appendix IV, and no ITU value exists for Opus, as
  its maintainers confirm in xiph/opus issue #51). Both are at least transparent on a
  narrowband scale, so we use Ie = 0 and G.711's two Bpl values: an explicit assumption,
  not a table value.

Which Bpl applies is not a property of the codec but of the receiver: ``emodel_mos(...,
plc=...)``. The RTP source passes its decoder's ``plc`` (rtp.codecs), so the estimate
assumes concealment exactly where the monitor's decoder conceals: PCMU, PCMA and L16
(repeat with fade) and Opus through libopus (its PLC; in-band FEC is not credited, the loss
is the network's) get 25.1; G.722 through FFmpeg, and Opus when libopus is missing, fill
gaps with silence and get 4.3.
"""

from __future__ import annotations

import math

# codec -> (Ie, Bpl with PLC, Bpl without PLC); see the module docstring for the sources.
CODECS: dict[str, tuple[float, float, float]] = {
    "PCMU": (0.0, 25.1, 4.3),
    "PCMA": (0.0, 25.1, 4.3),
    "L16": (0.0, 25.1, 4.3),
    "G722": (0.0, 25.1, 4.3),
    "opus": (0.0, 25.1, 4.3),
}


def ie_eff(ie: float, ppl: float, bpl: float, burst_ratio: float = 1.0) -> float:
    """Effective equipment impairment (G.107 eq. 7-29): Ie + (95 - Ie) Ppl / (Ppl/BurstR + Bpl),
    with ``ppl`` in percent."""
    if ppl <= 0.0:
        return ie
    return ie + (95.0 - ie) * ppl / (ppl / burst_ratio + bpl)


def delay_impairment(
    *, t: float, tr: float, ta: float, ro: float, no: float, rlr: float, stmr: float, ist: float,
    telr: float, wepl: float, mt: float = 100.0, st: float = 1.0,
) -> float:
    """Id = Idte (talker echo) + Idle (listener echo) + Idd (absolute delay), G.107 7.3."""
    terv = telr - 40.0 * math.log10((1.0 + t / 10.0) / (1.0 + t / 150.0)) + 6.0 * math.exp(-0.3 * t * t)
    if stmr < 9.0:
        terv += ist / 2.0
    roe = -1.5 * (no - rlr)
    re = 80.0 + 2.5 * (terv - 14.0)
    idte = ((roe - re) / 2.0 + math.sqrt((roe - re) ** 2 / 4.0 + 100.0) - 1.0) * (1.0 - math.exp(-t))
    if stmr > 20.0:
        idte = math.sqrt(idte * idte + ist * ist)
    rle = 10.5 * (wepl + 7.0) * (tr + 1.0) ** -0.25
    idle = (ro - rle) / 2.0 + math.sqrt((ro - rle) ** 2 / 4.0 + 169.0)
    idd = 0.0
    if ta > mt:
        x = math.log10(ta / mt) / math.log10(2.0)
        e = 6.0 * st
        idd = 25.0 * ((1.0 + x**e) ** (1.0 / e) - 3.0 * (1.0 + (x / 3.0) ** e) ** (1.0 / e) + 2.0)
    return idte + idle + idd


def r_factor(
    *,
    ie: float = 0.0,
    bpl: float = 4.3,
    ppl: float = 0.0,
    burst_ratio: float = 1.0,
    delay_ms: float = 0.0,
    slr: float = 8.0,
    rlr: float = 2.0,
    stmr: float = 15.0,
    lstr: float = 18.0,
    ds: float = 3.0,
    telr: float = 65.0,
    wepl: float = 110.0,
    qdu: float = 1.0,
    nc: float = -70.0,
    nfor: float = -64.0,
    ps: float = 35.0,
    pr: float = 35.0,
    advantage: float = 0.0,
) -> float:
    """Transmission rating R = Ro - Is - Id - Ie,eff + A (G.107 eq. 7-1).

    ``ppl`` is the packet-loss percentage, ``delay_ms`` the mean one-way delay, used as
    T (echo path) and Ta (absolute), with the round trip Tr = 2 T. Keyword defaults are the
    G.107 Table 1 defaults (SLR, RLR, STMR, LSTR, Ds = Dr, TELR, WEPL, qdu, Nc, Nfor, Ps, Pr, A).
    """
    t = ta = max(0.0, delay_ms)
    tr = 2.0 * t
    olr = slr + rlr
    # Basic signal-to-noise ratio Ro (7.1).
    nfo = nfor + rlr
    pre = pr + 10.0 * math.log10(1.0 + 10.0 ** ((10.0 - lstr) / 10.0))
    nor = rlr - 121.0 + pre + 0.008 * (pre - 35.0) ** 2
    nos = ps - slr - ds - 100.0 + 0.004 * (ps - olr - ds - 14.0) ** 2
    no = 10.0 * math.log10(10.0 ** (nc / 10.0) + 10.0 ** (nos / 10.0) + 10.0 ** (nor / 10.0) + 10.0 ** (nfo / 10.0))
    ro = 15.0 - 1.5 * (slr + no)
    # Simultaneous impairment Is (7.2).
    xolr = olr + 0.2 * (64.0 + no - rlr)
    iolr = 20.0 * ((1.0 + (xolr / 8.0) ** 8) ** 0.125 - xolr / 8.0)
    stmro = -10.0 * math.log10(10.0 ** (-stmr / 10.0) + math.exp(-t / 4.0) * 10.0 ** (-telr / 10.0))
    ist = (
        12.0 * (1.0 + ((stmro - 13.0) / 6.0) ** 8) ** (1.0 / 8.0)
        - 28.0 * (1.0 + ((stmro + 1.0) / 19.4) ** 35) ** (1.0 / 35.0)
        - 13.0 * (1.0 + ((stmro - 3.0) / 33.0) ** 13) ** (1.0 / 13.0)
        + 29.0
    )
    q = 37.0 - 15.0 * math.log10(qdu)
    g = 1.07 + 0.258 * q + 0.0602 * q * q
    y = (ro - 100.0) / 15.0 + 46.0 / 8.4 - g / 9.0
    z = 46.0 / 30.0 - g / 40.0
    iq = 15.0 * math.log10(1.0 + 10.0**y + 10.0**z)
    is_ = iolr + ist + iq
    id_ = delay_impairment(
        t=t, tr=tr, ta=ta, ro=ro, no=no, rlr=rlr, stmr=stmr, ist=ist, telr=telr, wepl=wepl
    )
    return ro - is_ - id_ - ie_eff(ie, ppl, bpl, burst_ratio) + advantage


def r_to_mos(r: float) -> float:
    """G.107 Annex B: MOS_CQE = 1 + 0.035 R + R (R - 60)(100 - R) 7e-6, 1 below 0, 4.5 above 100."""
    if r <= 0.0:
        return 1.0
    if r >= 100.0:
        return 4.5
    return 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6


def emodel_mos(codec: str, loss_pct: float, burst_ratio: float = 1.0, delay_ms: float = 0.0, *, plc: bool = True) -> float:
    """E-model MOS of a connection with ``codec`` (a CODECS key, case-insensitive), ``loss_pct``
    percent packet loss, loss ``burst_ratio`` (clamped to >= 1: G.107 defines BurstR for
    random or bursty loss, not for loss more regular than random) and one-way ``delay_ms``.
    Unknown codecs are rated like G.711 (Ie = 0 would be optimistic only for low-bit-rate
    codecs, which this monitor cannot decode anyway). NaN or infinite inputs mean "not
    measured" and count as no impairment, except loss, which is clamped to 0-100 %."""
    key = {k.lower(): k for k in CODECS}.get(codec.lower(), "PCMU")
    ie, bpl_plc, bpl_raw = CODECS[key]
    loss = min(max(loss_pct, 0.0), 100.0) if not math.isnan(loss_pct) else 0.0
    burst = max(burst_ratio, 1.0) if math.isfinite(burst_ratio) else 1.0
    delay = delay_ms if math.isfinite(delay_ms) else 0.0
    r = r_factor(ie=ie, bpl=bpl_plc if plc else bpl_raw, ppl=loss, burst_ratio=burst, delay_ms=delay)
    return r_to_mos(r)
