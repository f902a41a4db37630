"""pytracking's box refinement written literally (``optimize_boxes`` of ATOM/DiMP,
``optimize_boxes_relative`` of PrDiMP, with ``rect_to_rel`` / ``rel_to_rect``), by autograd: the
oracle the exported refinement is compared with."""

from __future__ import annotations

import torch


def rect_to_rel(bb, sz_norm):
    c = bb[..., :2] + 0.5 * bb[..., 2:]
    return torch.cat((c / sz_norm, torch.log(bb[..., 2:])), dim=-1)


def rel_to_rect(bb, sz_norm):
    sz = torch.exp(bb[..., 2:])
    c = bb[..., :2] * sz_norm
    return torch.cat((c - 0.5 * sz, sz), dim=-1)


def _step_length(step_length, like):
    if isinstance(step_length, (tuple, list)):
        values = [step_length[0], step_length[0], step_length[1], step_length[1]]
        return torch.tensor(values, dtype=like.dtype).view(1, 1, 4)
    return step_length


def optimize_boxes(net, modulation, iou_features, init_boxes, iterations, step_length, decay):
    output_boxes = init_boxes.view(1, -1, 4)
    step_length = _step_length(step_length, output_boxes)
    for _ in range(iterations):
        bb_init = output_boxes.clone().detach()
        bb_init.requires_grad = True
        outputs = net.predict_iou(modulation, iou_features, bb_init)
        outputs.backward(gradient=torch.ones_like(outputs))
        output_boxes = bb_init + step_length * bb_init.grad * bb_init[:, :, 2:].repeat(1, 1, 2)
        output_boxes.detach_()
        step_length *= decay
    return output_boxes.view(-1, 4), outputs.detach().view(-1)


def optimize_boxes_relative(
    net, modulation, iou_features, init_boxes, iterations, step_length, decay
):
    output_boxes = init_boxes.view(1, -1, 4)
    step_length = _step_length(step_length, output_boxes)
    sz_norm = output_boxes[:, :1, 2:].clone()
    output_boxes_rel = rect_to_rel(output_boxes, sz_norm)
    for _ in range(iterations):
        bb_init_rel = output_boxes_rel.clone().detach()
        bb_init_rel.requires_grad = True
        bb_init = rel_to_rect(bb_init_rel, sz_norm)
        outputs = net.predict_iou(modulation, iou_features, bb_init)
        outputs.backward(gradient=torch.ones_like(outputs))
        output_boxes_rel = bb_init_rel + step_length * bb_init_rel.grad
        output_boxes_rel.detach_()
        step_length *= decay
    output_boxes = rel_to_rect(output_boxes_rel, sz_norm)
    return output_boxes.view(-1, 4), outputs.detach().view(-1)
