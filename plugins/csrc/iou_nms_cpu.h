/* C API of IoU-guided NMS on the CPU, part of libiounet_prroi_cpu: the algorithm of the op
 * torch.ops.iounet.iou_nms (plugins/iou_nms.py), IoUs in double (box_iou.h).
 *
 * boxes (n, 4) x0, y0, x1, y1, scores and predicted IoUs `ious` (n), labels (n) or NULL (one
 * label). Writes the kept indices in the algorithm's order to `keep`, their scores to
 * `kept_scores` (both n long at least) and their count to `num_kept`. Returns 0, or 1 for a
 * negative n or a null pointer.
 */
#ifndef IOUNET_IOU_NMS_CPU_H
#define IOUNET_IOU_NMS_CPU_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int iounet_iou_nms_f64(const double* boxes, const double* scores, const double* ious, const int64_t* labels,
    int64_t n, double threshold, int64_t* keep, double* kept_scores, int64_t* num_kept);

#ifdef __cplusplus
}
#endif

#endif /* IOUNET_IOU_NMS_CPU_H */
