"""The CUDA library and the torch-cuda backend: what runs here without a GPU (loading, errors),
and, marked `gpu`, parity with the CPU path (make gpu-check)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tiny_model import assert_gradient_matches_differences

from iounet.plugins import cuda
from iounet.runtime.pipeline import open_backend

no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _built() -> bool:
    try:
        cuda.load_library()
    except cuda.CudaLibraryError:
        return False
    return True


needs_library = pytest.mark.skipif(not _built(), reason="CUDA library not built (no nvcc)")


@needs_library
def test_library_reports_version_and_messages():
    import iounet

    assert cuda.library_version() == iounet.__version__
    library = cuda.load_library()
    assert library.iounet_prroi_cuda_error_message(0).decode()
    assert "argument" in library.iounet_prroi_cuda_error_message(1).decode().lower()
    assert library.iounet_iou_nms_cuda_workspace_bytes(1000) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without a GPU")
def test_without_a_gpu_the_cuda_path_says_so(exported_model):
    assert not cuda.available()
    checkpoint, model = exported_model
    from iounet.export.manifest import load_manifest

    with pytest.raises(ValueError, match="CUDA device"):
        open_backend(load_manifest(model), "torch-cuda", checkpoint=checkpoint)


def _boxes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(count, 2).uniform_(1.1, 6.8, generator=generator))
    centre = torch.rand((count, 2), generator=generator) * torch.tensor([288.0, 224.0])
    rois = torch.cat([torch.zeros((count, 1)), centre - side / 2, centre + side / 2], dim=1)
    return rois, torch.randint(0, 5, (count,), generator=generator)


@pytest.fixture(scope="module")
def gpu_backends(exported_model):
    from iounet.export.manifest import load_manifest

    checkpoint, model = exported_model
    manifest = load_manifest(model)
    reference = open_backend(manifest, "torch", checkpoint=checkpoint)
    return manifest, reference, open_backend(manifest, "torch-cuda", checkpoint=checkpoint)


@pytest.mark.gpu
@no_gpu
def test_cuda_library_runs_here():
    # Without it the ops would fall back to the PyTorch kernels and the gpu tests would not test
    # our CUDA kernels at all.
    assert cuda.available(), "a CUDA device is visible but the CUDA library cannot run on it"


@pytest.mark.gpu
@no_gpu
@pytest.mark.parametrize("count", [1, 7, 300])
def test_torch_cuda_matches_the_cpu_reference(gpu_backends, count):
    _, reference, backend = gpu_backends
    image = torch.rand((1, 3, 224, 288), generator=torch.Generator().manual_seed(count))
    rois, labels = _boxes(count, count)
    expected_maps = reference.features(image)
    maps = backend.features(image)
    for got, want in zip(maps, expected_maps, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    iou = backend.iou(maps, rois, labels).cpu()
    torch.testing.assert_close(iou, reference.iou(expected_maps, rois, labels), rtol=0, atol=1e-5)
    iou_t, grad = backend.iou_and_grad(maps, rois, labels)
    want_t, want_grad = reference.iou_and_grad(expected_maps, rois, labels)
    torch.testing.assert_close(iou_t.cpu(), want_t, rtol=0, atol=1e-5)
    scale = want_grad.abs().max().clamp_min(1e-12)
    assert float((grad.cpu() - want_grad).abs().max() / scale) <= 1e-4
    assert_gradient_matches_differences(backend, maps, rois.cuda(), labels.cuda(), grad)


@pytest.mark.gpu
@no_gpu
def test_cuda_graph_refinement_equals_the_step_by_step_one(gpu_backends):
    manifest, reference, backend = gpu_backends
    image = torch.rand((1, 3, 224, 288), generator=torch.Generator().manual_seed(5))
    rois, labels = _boxes(100, 5)
    maps = backend.features(image)
    steps = []
    stepwise = backend.refine(maps, rois[:, 1:], labels, (224, 288), on_step=steps.append)
    assert steps == list(range(manifest.refinement.iterations + 1))
    for _ in range(2):  # captured on the first call, replayed on the second
        graphed = backend.refine(maps, rois[:, 1:], labels, (224, 288))
        torch.testing.assert_close(graphed[0], stepwise[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(graphed[1], stepwise[1], rtol=0, atol=1e-6)
    expected = reference.refine(reference.features(image), rois[:, 1:], labels, (224, 288))
    assert float((graphed[0].cpu() - expected[0]).abs().max()) <= 1e-3


@pytest.mark.gpu
@no_gpu
@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime_extensions") is None,
    reason="onnxruntime-extensions is not installed (the ort backend needs it)",
)
def test_torch_cuda_matches_onnxruntime(gpu_backends):
    manifest, _, backend = gpu_backends
    ort = open_backend(manifest, "ort")
    image = torch.rand((1, 3, 224, 288), generator=torch.Generator().manual_seed(9))
    rois, labels = _boxes(100, 9)
    maps, ort_maps = backend.features(image), ort.features(image)
    iou_t, grad = backend.iou_and_grad(maps, rois, labels)
    want_t, want_grad = ort.iou_and_grad(ort_maps, rois, labels)
    torch.testing.assert_close(iou_t.cpu(), want_t, rtol=0, atol=1e-5)
    assert float((grad.cpu() - want_grad).abs().max() / want_grad.abs().max()) <= 1e-4
    refined = backend.refine(maps, rois[:, 1:], labels, (224, 288))[0].cpu()
    want = ort.refine(ort_maps, rois[:, 1:], labels, (224, 288))[0]
    assert float((refined - want).abs().max()) <= 1e-3
