"""iounet.plugins.onnxruntime_session: model inputs, domains, and defined results for bad values."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from ort_graphs import one_node_model, session
from prroi_cases import make_features

from iounet.plugins import onnxruntime_session, prroi_pool

ROIS = np.array([[1, 1.3, 0.7, 9.6, 7.9], [0, -2.0, 1.0, 5.0, 6.5]], dtype=np.float32)


def _expected(features: np.ndarray, rois: np.ndarray) -> np.ndarray:
    return prroi_pool(torch.from_numpy(features), torch.from_numpy(rois), (2, 3), 0.5).numpy()


@pytest.mark.parametrize("form", ["proto", "bytes", "path"])
def test_model_given_as_proto_bytes_or_path(form, tmp_path):
    model = one_node_model("PrRoIPool", (2, 3), 0.5)
    if form == "bytes":
        model = model.SerializeToString()
    elif form == "path":
        path = tmp_path / "pool.onnx"
        path.write_bytes(model.SerializeToString())
        model = str(path)
    features = make_features(torch.float32, "cpu").numpy()
    out = onnxruntime_session(model).run(None, {"features": features, "rois": ROIS})[0]
    np.testing.assert_allclose(out, _expected(features, ROIS), rtol=1e-5, atol=1e-6)


def test_mmcv_node_runs_and_sessions_coexist():
    features = make_features(torch.float32, "cpu").numpy()
    mmcv = onnxruntime_session(one_node_model("PrRoIPool", (2, 3), 0.5, domain="mmcv"))
    ours = onnxruntime_session(one_node_model("PrRoIPool", (2, 3), 0.5))
    for current in (mmcv, ours, mmcv):
        out = current.run(None, {"features": features, "rois": ROIS})[0]
        np.testing.assert_allclose(out, _expected(features, ROIS), rtol=1e-5, atol=1e-6)


def test_missing_and_corrupt_models_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.onnx"):
        onnxruntime_session(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a model at all")
    with pytest.raises(ValueError, match=r"corrupt\.onnx"):
        onnxruntime_session(corrupt)
    with pytest.raises(TypeError, match="model"):
        onnxruntime_session(12)


def test_bad_roi_values_pool_to_zeros():
    features = make_features(torch.float32, "cpu").numpy()
    rois = np.array(
        [[5, 1, 1, 4, 4], [np.nan, 1, 1, 4, 4], [0, 1, np.inf, 4, 4], [0, 1, 1, 4, 4]], np.float32
    )
    out = session("PrRoIPool", (2, 3), 0.5).run(None, {"features": features, "rois": rois})[0]
    assert np.all(out[:3] == 0)
    np.testing.assert_allclose(out[3:], _expected(features, rois[3:]), rtol=1e-5, atol=1e-6)


def test_bad_shapes_give_nan_and_a_log_line(caplog):
    model = one_node_model("PrRoIPoolCoordGrad", (2, 3), 0.5)
    for dim, name in zip(model.graph.input[2].type.tensor_type.shape.dim, "KCPQ", strict=True):
        dim.dim_param = name  # let any grad_output shape reach the op
    features = make_features(torch.float32, "cpu").numpy()
    bad_grad = np.zeros((2, 3, 5, 5), np.float32)  # the node pools to (2, 3)
    with caplog.at_level(logging.ERROR, logger="iounet.plugins.onnxruntime"):
        out = onnxruntime_session(model).run(
            None, {"features": features, "rois": ROIS, "grad_output": bad_grad}
        )[0]
    assert out.shape == (2, 5)
    assert np.all(np.isnan(out))
    assert "grad_output" in caplog.text
