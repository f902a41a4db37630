// IoU-guided NMS on the CPU: one greedy run per label in predicted-IoU order, eliminating as it
// goes, then the kept boxes of all labels merged in that order.
#include "iou_nms_cpu.h"

#include "box_iou.h"

#include <algorithm>
#include <numeric>
#include <vector>

extern "C" int iounet_iou_nms_f64(const double* boxes, const double* scores, const double* ious, const int64_t* labels,
    int64_t n, double threshold, int64_t* keep, double* kept_scores, int64_t* num_kept)
{
    if (n < 0 || num_kept == nullptr || (n > 0 && (!boxes || !scores || !ious || !keep || !kept_scores)))
    {
        return 1;
    }
    auto label = [&](int64_t i) { return labels ? labels[i] : int64_t(0); };
    // Class-major, then decreasing predicted IoU, then index: each label is one greedy run.
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return label(a) != label(b) ? label(a) < label(b) : ious[a] > ious[b];
    });
    std::vector<char> eliminated(static_cast<size_t>(n), 0);
    std::vector<std::pair<int64_t, double>> kept;
    for (int64_t begin = 0; begin < n;)
    {
        int64_t end = begin;
        while (end < n && label(order[end]) == label(order[begin]))
        {
            ++end;
        }
        for (int64_t p = begin; p < end; ++p)
        {
            const int64_t i = order[p];
            if (eliminated[i])
            {
                continue;
            }
            double best = scores[i];
            for (int64_t q = p + 1; q < end; ++q)
            {
                const int64_t j = order[q];
                if (!eliminated[j] && iounet::boxIou(boxes + 4 * i, boxes + 4 * j) > threshold)
                {
                    eliminated[j] = 1;
                    best = std::max(best, scores[j]);
                }
            }
            kept.emplace_back(i, best);
        }
        begin = end;
    }
    // All labels together in the order the algorithm takes boxes: decreasing IoU, then index.
    std::stable_sort(kept.begin(), kept.end(), [&](const auto& a, const auto& b) {
        return ious[a.first] != ious[b.first] ? ious[a.first] > ious[b.first] : a.first < b.first;
    });
    for (size_t k = 0; k < kept.size(); ++k)
    {
        keep[k] = kept[k].first;
        kept_scores[k] = kept[k].second;
    }
    *num_kept = static_cast<int64_t>(kept.size());
    return 0;
}
