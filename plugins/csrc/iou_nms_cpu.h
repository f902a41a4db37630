/* C API of IoU-guided NMS (IoU-Net, Algorithm 1) on the CPU, part of libiounet_prroi_cpu.
 *
 * Boxes (n, 4) x0, y0, x1, y1 are taken in decreasing order of predicted IoU `ious` (ties: lower
 * index first); a box not yet eliminated is kept, eliminates every remaining box of its label
 * (labels may be NULL: one label) whose IoU with it is greater than `threshold`, and takes the
 * highest score among itself and the boxes it eliminated. IoUs are computed in double as
 * inter / (area_a + area_b - inter); a pair with no union has IoU 0. Writes the kept indices in
 * that order to `keep`, their scores to `kept_scores` (both n long at least) and their count
 * to `num_kept`. Returns 0, or 1 for a negative n or a null pointer.
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
