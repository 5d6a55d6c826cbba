"""The exported graph's speed work (train.export) leaves the shipped student's outputs alone.

``tests/data/streamqa-s.demo.npz`` holds what the shipped ``streamqa-s`` ONNX gave before
that work (sha256 in the file), stepping the bundled demo call (real speech: both parties, as
one batch of 2) at the live 1 s hop: every hop's scores and the final value of every state
output. The shipped file must reproduce them within 1e-4. When a retrained student ships, its
own outputs become the reference: ``python -m tests.test_export_speed`` rewrites the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from streamqa.model import Model, load_model

REFERENCE = Path(__file__).parent / "data" / "streamqa-s.demo.npz"
TOLERANCE = 1e-4


def demo_outputs(model: Model) -> dict[str, np.ndarray]:
    """Scores of every 1 s hop ``[hops, 2, K]`` and the final ``next_*`` states of the demo
    call's two parties stepped as one batch."""
    import soundfile as sf

    from streamqa.democall import DEMO_DIR

    parties = [sf.read(str(DEMO_DIR / f"{p}.flac"), dtype="float32")[0] for p in ("caller", "callee")]
    audio = np.stack([p[: min(map(len, parties))] for p in parties])
    hop = model.info.hop_samples
    state = model.init_state(2)
    scores = []
    for start in range(0, audio.shape[1] - hop + 1, hop):
        out, state = model.step(audio[:, start : start + hop], state)
        scores.append(out)
    return {"scores": np.stack(scores), **{f"next_{k}": v for k, v in state.items()}}


def flat_state(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """Every ``next_*`` of ``outputs`` in order, each flattened per stream, side by side:
    ``[B, N]``, the same values whatever tensors the exporter keeps a state in (one per
    conv cache, or the caches packed into one)."""
    states = [v for k, v in outputs.items() if k.startswith("next_")]
    return np.concatenate([v.reshape(len(v), -1) for v in states], axis=1)


def test_shipped_model_gives_the_reference_outputs():
    reference = np.load(REFERENCE)
    model = load_model("streamqa-s")
    outputs = demo_outputs(model)
    expected = {k: reference[k] for k in reference.files if k != "sha256"}
    for name, got, want in [("scores", outputs["scores"], expected["scores"]),
                            ("state", flat_state(outputs), flat_state(expected))]:
        assert got.shape == want.shape, name
        diff = float(np.max(np.abs(got - want)))
        assert diff <= TOLERANCE, f"{name}: max abs diff {diff:.2e} against {reference['sha256']}"


def test_flushing_negligible_weights_changes_outputs_by_rounding_only(tmp_path):
    """The Gabor weights as train.students computes them (with their taps below 1e-20) put
    back into an exported graph give the same outputs within float rounding: flushing them
    dropped nothing a score or a state can show. The 400-tap filterbank is the one with such
    taps (the shipped 192-tap window ends before its bands decay that far), so the student
    here is ``s`` at 400 taps, exported as ``train.export`` ships a student."""
    onnx = pytest.importorskip("onnx")
    import dataclasses

    import torch
    from onnx import numpy_helper

    from train.export import NEGLIGIBLE, export_onnx, flush_negligible
    from train.students import FAMILY, GABOR_KERNEL, Student, gabor_filterbank

    torch.manual_seed(0)
    cfg = dataclasses.replace(FAMILY["s"], gabor_kernel=GABOR_KERNEL)
    flushed = export_onnx(Student(cfg).eval(), tmp_path / "flushed.onnx", {"teacher": "random-init (test)"})
    proto = onnx.load(str(flushed))
    original = gabor_filterbank(cfg.n_bands, cfg.gabor_kernel)[:, :, None, :]  # the 2-D conv's [out, in, 1, taps]
    kept = original.copy()
    kept[np.abs(kept) < NEGLIGIBLE] = 0.0
    tensors = list(proto.graph.initializer) + [n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant"]
    gabor = [t for t in tensors if numpy_helper.to_array(t).shape == kept.shape]
    assert len(gabor) == 1 and np.array_equal(numpy_helper.to_array(gabor[0]), kept)
    gabor[0].CopyFrom(numpy_helper.from_array(original, gabor[0].name))
    unflushed = tmp_path / "unflushed.onnx"
    onnx.save(proto, str(unflushed))
    a, b = demo_outputs(Model(flushed)), demo_outputs(Model(unflushed))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-5, err_msg=name)
    assert flush_negligible(proto) == int(np.count_nonzero(original != kept)) > 1000


def write_reference(path: Path = REFERENCE) -> None:
    """Record the shipped model's outputs as the reference (after shipping a new student)."""
    model = load_model("streamqa-s")
    digest = hashlib.sha256(model.info.path.read_bytes()).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, sha256=np.array(digest), **demo_outputs(model))


if __name__ == "__main__":
    write_reference()
    print(REFERENCE)


def test_reexporting_an_onnx_keeps_outputs_and_window_and_updates_its_card(tmp_path, monkeypatch):
    """``python -m train.export X.onnx --out X.onnx --card``: how a bundled student gets the
    exporter's later graph work (its weights read back from the file)."""
    torch = pytest.importorskip("torch")
    import json

    import train.pipeline
    from train.export import export_onnx, main
    from train.students import FAMILY, Student

    torch.manual_seed(0)
    path = tmp_path / "tiny.onnx"
    export_onnx(Student(FAMILY["xxs"]).eval(), path, {"name": "tiny"}, window_s=3.84)
    (tmp_path / "tiny.json").write_text(json.dumps({"name": "tiny", "sha256": "old"}))
    before = demo_outputs(Model(path))
    rewritten = []
    monkeypatch.setattr(train.pipeline, "write_models_doc", lambda: rewritten.append(True))
    main([str(path), "--out", str(path), "--card"])
    model = Model(path)
    assert model.info.window_seconds == 3.84 and model.info.name == "tiny"
    for key, value in demo_outputs(model).items():
        np.testing.assert_allclose(value, before[key], atol=1e-5, err_msg=key)
    assert json.loads((tmp_path / "tiny.json").read_text())["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rewritten == [True]
