// CUDA launchers of IoU-guided NMS, the algorithm of the op torch.ops.iounet.iou_nms
// (plugins/iou_nms.py), with no host round trip: a parallel IoU mask over the pairs of boxes, then
// one on-device sequential pass (iou_nms_kernel_bodies.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace iounet {

//! Bytes of device workspace iouNmsCuda needs for n boxes: the n x ceil(n / 64) mask words and
//! ceil(n / 64) more (8-byte aligned).
int64_t iouNmsCudaWorkspaceBytes(int64_t n);

//! Launches on `stream` without synchronizing. `order` is a permutation of [0, n): the boxes in
//! decreasing predicted IoU, ties lower index first (a stable descending argsort of the predicted
//! IoUs, done by the caller). boxes (n, 4) x0, y0, x1, y1 and scores (n) in S (float or double;
//! IoUs in S), labels (n) int64 or null (one label). Writes the kept indices in order to keep
//! (n long), their updated scores to keptScores (n long) and the count to *numKept, all device
//! memory (n = 0 only sets *numKept to 0).
template <typename S>
cudaError_t iouNmsCuda(const S* boxes, const S* scores, const int64_t* order, const int64_t* labels, int64_t n,
    S threshold, void* workspace, int64_t* keep, S* keptScores, int64_t* numKept, cudaStream_t stream);

} // namespace iounet
