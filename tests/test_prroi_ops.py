"""The registered ops torch.ops.iounet.*: opcheck, the deployed contract (mixed dtypes, rows of
other levels), autocast, and the ONNX translation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEVICES
from prroi_cases import BOX_CASES, DEGENERATE_CASES, make_features, make_rois
from prroi_oracle import coord_grad_reference, prroi_pool_reference

from iounet.plugins import prroi_pool

OPS = torch.ops.iounet
ALL_CASES = {**BOX_CASES, **DEGENERATE_CASES, "no_boxes": []}


def _rois(rows: list, dtype: torch.dtype, device: str) -> torch.Tensor:
    return make_rois(rows, dtype, device).reshape(-1, 5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_opcheck(case, device, kernel):
    features = make_features(torch.float64, device).requires_grad_()
    rois = _rois(ALL_CASES[case], torch.float64, device).requires_grad_()
    grad = torch.randn((len(rois), 3, 2, 3), dtype=torch.float64, device=device)
    torch.library.opcheck(OPS.prroi_pool.default, (features, rois, 2, 3, 0.75))
    plain = (features.detach(), rois.detach(), grad, 2, 3, 0.75)
    torch.library.opcheck(OPS.prroi_pool_coord_grad.default, plain)
    torch.library.opcheck(OPS.prroi_pool_feature_grad.default, plain)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_of_other_images_pool_to_zero_with_zero_gradient(device, kernel):
    # Batch index -1 (the graphs' "another FPN level"), past the last image, NaN: defined zeros.
    features = make_features(torch.float64, device).requires_grad_()
    good = [0.0, 1.3, 0.7, 4.6, 3.9]
    rows = [good, [-1.0, *good[1:]], [2.0, *good[1:]], [float("nan"), *good[1:]]]
    rois = torch.tensor(rows, dtype=torch.float64, device=device).requires_grad_()
    out = OPS.prroi_pool(features, rois, 2, 2, 1.0)
    expected = prroi_pool_reference(features.detach().cpu().numpy(), np.array([good]), (2, 2))
    np.testing.assert_allclose(out[:1].detach().cpu().numpy(), expected, rtol=1e-10)
    assert torch.all(out[1:] == 0)
    out.sum().backward()
    assert torch.all(rois.grad[1:] == 0) and torch.all(rois.grad[:, 0] == 0)
    alone = features.detach().clone().requires_grad_()
    OPS.prroi_pool(alone, rois.detach()[:1], 2, 2, 1.0).sum().backward()
    torch.testing.assert_close(features.grad, alone.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_maps_with_float32_boxes(dtype, device, kernel):
    # The contract of the ONNX nodes and the TensorRT plugins: computed in float32, output in the
    # maps' dtype, the box gradient in the boxes' dtype.
    rows = BOX_CASES["partly_outside"] + BOX_CASES["inside"]
    maps = make_features(torch.float64, device).to(dtype)
    rois = make_rois(rows, torch.float32, device)
    grad = torch.randn((len(rows), 3, 2, 2), device=device).to(dtype)
    exact_maps = maps.double().cpu().numpy()  # the oracle sees the rounded maps
    out = prroi_pool(maps, rois, 2)
    assert out.dtype == dtype
    expected = prroi_pool_reference(exact_maps, np.array(rows), (2, 2))
    np.testing.assert_allclose(out.double().cpu().numpy(), expected, rtol=1e-2, atol=1e-2)
    coord = OPS.prroi_pool_coord_grad(maps, rois, grad, 2, 2, 1.0)
    assert coord.dtype == torch.float32
    expected_coord = coord_grad_reference(
        exact_maps, np.array(rows), grad.double().cpu().numpy(), (2, 2), 1.0
    )
    np.testing.assert_allclose(coord.cpu().numpy(), expected_coord, rtol=1e-3, atol=1e-3)
    assert OPS.prroi_pool_feature_grad(maps, rois, grad, 2, 2, 1.0).dtype == dtype


def test_autocast_bfloat16_maps_with_float32_rois(kernel):
    features = torch.randn(1, 8, 16, 16)
    rois = torch.tensor([[0, 1.0, 1.0, 9.0, 9.0]])
    conv = torch.nn.Conv2d(8, 8, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = prroi_pool(conv(features), rois, 7)
    assert pooled.dtype == torch.bfloat16 and pooled.shape == (1, 8, 7, 7)
    exact = prroi_pool(conv(features).detach(), rois, 7)
    torch.testing.assert_close(pooled.float(), exact, rtol=3e-2, atol=3e-2)


def test_autocast_training_step_matches_float32(kernel):
    """One SGD step of a conv + PrRoIPool + linear head under CPU bfloat16 autocast lands within
    bfloat16 rounding of the float32 step."""

    def model() -> torch.nn.ModuleDict:
        torch.manual_seed(0)
        return torch.nn.ModuleDict(
            {"conv": torch.nn.Conv2d(4, 8, 3, padding=1), "fc": torch.nn.Linear(8 * 3 * 3, 1)}
        )

    def train_step(autocast: bool) -> tuple[float, torch.Tensor]:
        net = model()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        images = torch.randn(2, 4, 20, 24, generator=torch.Generator().manual_seed(1))
        rois = torch.tensor([[0, 2.0, 3.0, 15.0, 12.0], [1, 0.0, 0.0, 23.0, 19.0]])
        target = torch.tensor([0.5, -0.25])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            pooled = prroi_pool(net["conv"](images), rois, 3)
            prediction = net["fc"](pooled.flatten(1)).squeeze(1)
        loss = torch.nn.functional.smooth_l1_loss(prediction.float(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss), net["conv"].weight.detach().clone()

    loss32, weights32 = train_step(False)
    loss16, weights16 = train_step(True)
    assert loss16 == pytest.approx(loss32, rel=2e-2, abs=1e-3)
    initial = model()["conv"].weight.detach()
    step32, step16 = weights32 - initial, weights16 - initial
    assert float(step32.abs().max()) > 1e-3  # the step moved the weights: the check has teeth
    torch.testing.assert_close(step16, step32, rtol=5e-2, atol=float(step32.abs().max()) * 5e-2)


def test_torch_export_and_compile_trace_the_op(kernel):
    features = make_features(torch.float32, "cpu")
    rois = make_rois(BOX_CASES["partly_outside"], torch.float32, "cpu")
    eager = _Pool()(features, rois)
    boxes = torch.export.Dim("K", min=1, max=64)
    program = torch.export.export(_Pool(), (features, rois), dynamic_shapes=({}, {0: boxes}))
    torch.testing.assert_close(program.module()(features, rois), eager)
    compiled = torch.compile(_Pool(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(features, rois), eager)


class _Pool(torch.nn.Module):
    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return torch.ops.iounet.prroi_pool(features, rois, 2, 3, 0.5) * 2


def test_dynamo_export_emits_the_custom_nodes_and_onnxruntime_runs_them(tmp_path):
    pytest.importorskip("onnxruntime_extensions")
    import onnx

    from iounet.plugins import onnxruntime_session
    from iounet.plugins.onnx_translation import TRANSLATION_TABLE

    class Graph(torch.nn.Module):
        def forward(self, features, rois, grad):
            pooled = torch.ops.iounet.prroi_pool(features, rois, 3, 2, 0.5)
            coord = torch.ops.iounet.prroi_pool_coord_grad(features, rois, grad, 3, 2, 0.5)
            return pooled, coord

    features = make_features(torch.float32, "cpu", shape=(1, 4, 12, 14))
    rois = make_rois([[0, 1.0, 2.0, 17.0, 20.0], [-1, 3.0, 3.0, 9.0, 9.0]], torch.float32, "cpu")
    grad = torch.randn(2, 4, 3, 2)
    boxes = torch.export.Dim("K", min=1, max=100)
    program = torch.onnx.export(
        Graph().eval(),
        (features, rois, grad),
        dynamo=True,
        dynamic_shapes=({}, {0: boxes}, {0: boxes}),
        custom_translation_table=TRANSLATION_TABLE,
    )
    model = program.model_proto
    custom = [(n.domain, n.op_type) for n in model.graph.node if n.domain == "iounet"]
    assert custom == [("iounet", "PrRoIPool"), ("iounet", "PrRoIPoolCoordGrad")]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attributes == {"pooled_height": 3, "pooled_width": 2, "spatial_scale": 0.5}
    onnx.checker.check_model(model, full_check=True)
    pooled, coord = onnxruntime_session(model).run(
        None, {"features": features.numpy(), "rois": rois.numpy(), "grad": grad.numpy()}
    )
    expected = Graph()(features, rois, grad)
    np.testing.assert_allclose(pooled, expected[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(coord, expected[1].numpy(), rtol=1e-5, atol=1e-6)


def test_cpu_kernel_is_the_native_library_unless_reference_is_asked(monkeypatch):
    from iounet.plugins import native, reference_kernels

    if not native.available():
        pytest.skip("the native CPU library is not built (make native)")
    calls = []
    call = native._call
    monkeypatch.setattr(native, "_call", lambda *a, **k: calls.append(a[0]) or call(*a, **k))
    features = make_features(torch.float32, "cpu")
    rois = make_rois(BOX_CASES["inside"], torch.float32, "cpu")
    OPS.prroi_pool(features, rois, 2, 2, 1.0)
    assert calls == ["forward"]
    with reference_kernels():
        OPS.prroi_pool(features, rois, 2, 2, 1.0)
    assert calls == ["forward"]
