"""The deployment graphs of pytracking's IoU-Net (ATOM, DiMP, PrDiMP), as modules to export.

One target per call (batch 1); the proposal count K and the map sizes are dynamic. Each class
is named after the manifest role of its graph (``Track`` where the detection model has a graph of
that role too):

* ``TrackBackboneGraph``: crop (1, 3, H, W) RGB in [0, 1] -> layer2, layer3.
* ``ModulationGraph``: reference layer2, layer3, box (1, 4) x, y, w, h -> modulation3, modulation4.
* ``IoUFeatGraph``: test layer2, layer3 -> feat3, feat4.
* ``PredictIoUGraph``: modulation3, modulation4, feat3, feat4, proposals (K, 4) -> iou (K,).
* ``TrackIoUGradGraph``: the same inputs -> iou (K,), dIoU/d(x, y, w, h) (K, 4).
* ``RefineStepAtomGraph``: ... boxes (K, 4), step (4,) -> boxes_next, iou (``atom_step``).
* ``RefineStepRelativeGraph``: ... rel (K, 4), sz_norm (2,), step (4,) -> rel_next, iou
  (``relative_step``).

The computation is the model's (``AtomIoUNet``) and the step's (``iounet.export.tracking_refine``).
"""

from __future__ import annotations

from torch import Tensor, nn

from iounet.export.refine_step import Objective
from iounet.export.tracking_refine import atom_step, relative_step
from iounet.training.tracking_model import AtomIoUNet, ResNetLayers


class TrackBackboneGraph(nn.Module):
    """crop (1, 3, H, W) RGB in [0, 1] -> (layer2, layer3)."""

    def __init__(self, backbone: ResNetLayers) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.backbone(image)


class ModulationGraph(nn.Module):
    """Reference layer2, layer3 and the target box (1, 4) -> modulation vectors (1, C3), (1, C4)."""

    def __init__(self, net: AtomIoUNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, layer2: Tensor, layer3: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
        mod3, mod4 = self.net.get_modulation((layer2, layer3), box)
        return mod3.flatten(1), mod4.flatten(1)


class IoUFeatGraph(nn.Module):
    """Test layer2, layer3 -> the IoU features feat3, feat4."""

    def __init__(self, net: AtomIoUNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, layer2: Tensor, layer3: Tensor) -> tuple[Tensor, Tensor]:
        return self.net.get_iou_feat((layer2, layer3))


class _IoUPredictorGraph(nn.Module):
    """Base of the graphs that run the IoU predictor on proposals, given the modulation vectors
    and the IoU features: predict_iou, iou_grad and the refinement steps."""

    def __init__(self, net: AtomIoUNet) -> None:
        super().__init__()
        self.net = net

    def objective(self, mod3: Tensor, mod4: Tensor, feat3: Tensor, feat4: Tensor) -> Objective:
        """boxes (K, 4) x, y, w, h -> iou (K,), dIoU/dbox (K, 4) of the predictor on these
        features."""

        def iou_and_grad(boxes: Tensor) -> tuple[Tensor, Tensor]:
            iou, grad = self.net.iou_and_box_gradient((mod3, mod4), (feat3, feat4), boxes[None])
            return iou[0], grad[0]

        return iou_and_grad


class PredictIoUGraph(_IoUPredictorGraph):
    """modulation3, modulation4, feat3, feat4, proposals (K, 4) x, y, w, h -> iou (K,)."""

    def forward(
        self, mod3: Tensor, mod4: Tensor, feat3: Tensor, feat4: Tensor, proposals: Tensor
    ) -> Tensor:
        return self.net.predict_iou((mod3, mod4), (feat3, feat4), proposals[None])[0]


class TrackIoUGradGraph(_IoUPredictorGraph):
    """As ``PredictIoUGraph`` -> iou (K,) and dIoU/d(x, y, w, h) (K, 4)."""

    def forward(
        self, mod3: Tensor, mod4: Tensor, feat3: Tensor, feat4: Tensor, proposals: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self.objective(mod3, mod4, feat3, feat4)(proposals)


class RefineStepAtomGraph(_IoUPredictorGraph):
    """One optimize_boxes iteration: boxes (K, 4), step (4,) -> boxes_next (K, 4), iou (K,)."""

    def forward(
        self, mod3: Tensor, mod4: Tensor, feat3: Tensor, feat4: Tensor, boxes: Tensor, step: Tensor
    ) -> tuple[Tensor, Tensor]:
        return atom_step(boxes, self.objective(mod3, mod4, feat3, feat4), step)


class RefineStepRelativeGraph(_IoUPredictorGraph):
    """One optimize_boxes_relative iteration: rel (K, 4), sz_norm (2,), step (4,) -> rel_next,
    iou."""

    def forward(
        self,
        mod3: Tensor,
        mod4: Tensor,
        feat3: Tensor,
        feat4: Tensor,
        rel: Tensor,
        sz_norm: Tensor,
        step: Tensor,
    ) -> tuple[Tensor, Tensor]:
        return relative_step(rel, sz_norm, self.objective(mod3, mod4, feat3, feat4), step)
