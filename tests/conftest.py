"""Shared fixtures: a tiny random student exported to ONNX (model tests need no training)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_student():
    torch = pytest.importorskip("torch")
    from train.students import FAMILY, Student

    torch.manual_seed(0)
    return Student(FAMILY["xxs"]).eval()


@pytest.fixture(scope="session")
def tiny_onnx(tiny_student, tmp_path_factory) -> Path:
    from train.export import export_onnx

    out = tmp_path_factory.mktemp("model") / "tiny.onnx"
    return export_onnx(tiny_student, out, {"teacher": "random-init (test fixture)"})
