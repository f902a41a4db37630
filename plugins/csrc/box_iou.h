// The IoU of two boxes, shared by the CPU and CUDA IoU-guided NMS (iou_nms_cpu.cpp, iou_nms_cuda.cu).
#pragma once

#include "host_device.h"

namespace iounet {

//! IoU of boxes a, b (x0, y0, x1, y1) as torchvision computes it: inter / (area_a + area_b - inter),
//! in S; 0 when there is no union (two boxes of zero area).
template <typename S>
IOUNET_HD S boxIou(const S* a, const S* b)
{
    const S left = a[0] > b[0] ? a[0] : b[0];
    const S right = a[2] < b[2] ? a[2] : b[2];
    const S top = a[1] > b[1] ? a[1] : b[1];
    const S bottom = a[3] < b[3] ? a[3] : b[3];
    const S w = right - left;
    const S h = bottom - top;
    const S inter = (w > S(0) ? w : S(0)) * (h > S(0) ? h : S(0));
    const S unite = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    return unite > S(0) ? inter / unite : S(0);
}

} // namespace iounet
