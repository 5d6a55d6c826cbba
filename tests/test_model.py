"""Runtime model loading: contract checks, step()/score(), parity with torch."""

from __future__ import annotations

import numpy as np
import pytest

from streamqa.model import Model, ModelError, split_state, stack_states

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")


def _audio(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    env = np.repeat(rng.uniform(0, 1, n // 1600 + 1), 1600)[:n]
    return (rng.standard_normal(n) * env * 0.1).astype(np.float32)


def test_metadata_is_read(tiny_onnx):
    m = Model(tiny_onnx)
    assert m.info.sample_rate == 16000 and m.info.frame_samples == 640
    assert m.info.outputs == ("mos", "sig", "bak", "ovrl", "speech")  # speech: the presence probability
    assert m.info.scores == ("mos", "sig", "bak", "ovrl") and m.info.presence == 4
    assert m.info.hello()["window_s"] == pytest.approx(7.68)
    assert m.info.params and m.info.macs_per_second


def test_onnx_equals_torch(tiny_student, tiny_onnx):
    m = Model(tiny_onnx)
    x = np.stack([_audio(122880, s) for s in range(3)])
    state = m.init_state(3)
    hop = 24 * 640  # 0.96 s: does not divide the clip, so the last hop is shorter
    for i in range(0, x.shape[1], hop):
        onnx_out, state = m.step(x[:, i : i + hop], state)
    with torch.no_grad():
        ref = tiny_student(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_out, ref, atol=1e-4)


def test_dilated_student_exports_with_parity(tmp_path):
    """A student with dilated blocks (longer state caches) streams in ONNX as in torch."""
    import dataclasses

    from train.export import export_onnx
    from train.students import FAMILY, Student

    torch.manual_seed(5)
    student = Student(dataclasses.replace(FAMILY["xxs"], dilations=(4,))).eval()
    m = Model(export_onnx(student, tmp_path / "dilated.onnx", {"teacher": "random-init (test)"}))
    x = np.stack([_audio(122880, s) for s in range(2)])
    state = m.init_state(2)
    for i in range(0, x.shape[1], 25 * 640):
        onnx_out, state = m.step(x[:, i : i + 25 * 640], state)
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, student(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_batched_equals_one_by_one(tiny_onnx):
    m = Model(tiny_onnx)
    xs = [_audio(32000, s) for s in range(4)]
    singles = []
    for x in xs:
        st = m.init_state(1, 4.0)
        for i in range(0, 32000 - 32000 % 6400, 6400):
            out, st = m.step(x[None, i : i + 6400], st)
        singles.append(out[0])
    states = [m.init_state(1, 4.0) for _ in xs]
    for i in range(0, 32000 - 32000 % 6400, 6400):
        out, st = m.step(np.stack([x[i : i + 6400] for x in xs]), stack_states(states))
        states = split_state(st, len(xs))
    np.testing.assert_allclose(out, np.stack(singles), atol=1e-5)


def test_step_rejects_partial_frames(tiny_onnx):
    m = Model(tiny_onnx)
    with pytest.raises(ValueError, match="640"):
        m.step(np.zeros((1, 1000), np.float32), m.init_state(1))


def _rewrite(src, dst, drop=(), set_props=None):
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props if p.key not in drop}
    props.update(set_props or {})
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize(
    "drop,props,message",
    [
        (("sample_rate",), None, "lacks sample_rate"),
        ((), {"version": "9"}, "version 9"),
        ((), {"hop_samples": "1000"}, "not a multiple"),
        ((), {"outputs": "sig,bak"}, "start with 'mos'"),
        ((), {"outputs": "mos,sig,bak,speech,speech"}, "twice"),
        ((), {"window_seconds": "nan"}, "window_seconds"),
        ((), {"sample_rate": "-3"}, "positive"),
    ],
)
def test_contract_violations_are_refused(tiny_onnx, tmp_path, drop, props, message):
    bad = _rewrite(tiny_onnx, tmp_path / "bad.onnx", drop, props)
    with pytest.raises(ModelError, match=message):
        Model(bad)


def test_signature_violations_are_refused(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["b", "n"])
    extra = helper.make_tensor_value_info("state_cache", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", 1])
    node = helper.make_node("ReduceMean", ["audio"], ["scores"], axes=[1], keepdims=1)
    dummy = helper.make_node("Identity", ["state_cache"], ["unused"])
    graph = helper.make_graph([node, dummy], "g", [x, extra], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    helper.set_model_props(
        proto,
        {"sample_rate": "16000", "hop_samples": "640", "frame_samples": "640", "window_seconds": "1", "outputs": "mos", "version": "1"},
    )
    path = tmp_path / "nostate.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="next_cache"):
        Model(path)


def test_garbage_file_is_refused(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        Model(p)
    with pytest.raises(ModelError, match="not found"):
        Model(tmp_path / "missing.onnx")


def test_bundled_model_must_match_its_card(tiny_onnx, tmp_path, monkeypatch):
    """A bundled ONNX whose bytes differ from the sha256 in its card is refused."""
    import hashlib
    import json
    import shutil

    import streamqa.model as model_mod

    shutil.copyfile(tiny_onnx, tmp_path / "tiny.onnx")
    digest = hashlib.sha256((tmp_path / "tiny.onnx").read_bytes()).hexdigest()
    card = {"name": "tiny", "file": "tiny.onnx", "sha256": digest}
    (tmp_path / "tiny.json").write_text(json.dumps(card))
    monkeypatch.setattr(model_mod, "MODELS_DIR", tmp_path)
    assert model_mod.load_model("tiny").info.outputs[0] == "mos"
    with open(tmp_path / "tiny.onnx", "ab") as f:
        f.write(b"\0")  # one byte appended: still loadable by ONNX Runtime, but not the shipped file
    with pytest.raises(ModelError, match="does not match its model card"):
        model_mod.load_model("tiny")
