// Host tests of IoU-guided NMS (the op torch.ops.iounet.iou_nms, plugins/iou_nms.py): the box IoU
// (plugins/csrc/box_iou.h), the CUDA kernel bodies (plugins/csrc/iou_nms_kernel_bodies.h) run with
// the kernels' loops, and the CPU library's iounet_iou_nms_f64, against Algorithm 1 written out
// (prroi_oracle.h).
#include "iou_nms_cpu.h"
#include "iou_nms_kernel_bodies.h"
#include "prroi_oracle.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace iounet_test;

//! The two NMS kernels on the host: the mask kernel over all n * words mask words, then the pass.
template <typename S>
std::vector<std::pair<int64_t, double>> runIouNms(const Detection& d, bool useLabels, double omega)
{
    const int64_t n = static_cast<int64_t>(d.scores.size());
    const std::vector<S> boxes(d.boxes.begin(), d.boxes.end());
    const std::vector<S> scores(d.scores.begin(), d.scores.end());
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return d.ious[a] > d.ious[b]; });
    const int64_t words = iounet::nmsMaskWords(n);
    std::vector<uint64_t> mask(static_cast<size_t>(n * words) + 1, ~uint64_t(0));
    for (int64_t index = 0; index < n * words; ++index)
    {
        mask[index] = iounet::iouNmsMaskWord(boxes.data(), useLabels ? d.labels.data() : nullptr, order.data(), n,
            static_cast<S>(omega), index / words, index % words);
    }
    std::vector<uint64_t> removed(static_cast<size_t>(words) + 1, ~uint64_t(0));
    std::vector<int64_t> keep(static_cast<size_t>(n) + 1, -7);
    std::vector<S> keptScores(static_cast<size_t>(n) + 1, S(-7));
    int64_t numKept = -1;
    iounet::iouNmsSequentialPass(
        mask.data(), scores.data(), order.data(), n, removed.data(), keep.data(), keptScores.data(), &numKept);
    std::vector<std::pair<int64_t, double>> kept;
    for (int64_t t = 0; t < numKept; ++t)
    {
        kept.emplace_back(keep[t], static_cast<double>(keptScores[t]));
    }
    check(numKept >= 0 && numKept <= n && keep[numKept] == -7, "IoU-NMS pass writes num_kept entries only");
    return kept;
}

std::vector<std::pair<int64_t, double>> runCpuLibrary(const Detection& d, bool useLabels, double omega)
{
    const int64_t n = static_cast<int64_t>(d.scores.size());
    std::vector<int64_t> keep(static_cast<size_t>(n) + 1);
    std::vector<double> keptScores(static_cast<size_t>(n) + 1);
    int64_t numKept = 0;
    const int status = iounet_iou_nms_f64(d.boxes.data(), d.scores.data(), d.ious.data(),
        useLabels ? d.labels.data() : nullptr, n, omega, keep.data(), keptScores.data(), &numKept);
    check(status == 0, "CPU IoU-NMS runs");
    std::vector<std::pair<int64_t, double>> kept;
    for (int64_t t = 0; t < numKept; ++t)
    {
        kept.emplace_back(keep[t], keptScores[t]);
    }
    return kept;
}

void compareNms(const Detection& d, const std::string& name)
{
    for (double omega : {0.0, 0.3, 0.5, 1.0})
    {
        for (bool useLabels : {false, true})
        {
            const std::string what = "IoU-NMS " + name + " threshold " + std::to_string(omega)
                + (useLabels ? " per label" : " one label") + ": ";
            const auto expected = algorithm1(d, useLabels, omega);
            auto expectedFloat = expected; // the kept scores as float32 holds them
            for (auto& entry : expectedFloat)
            {
                entry.second = static_cast<float>(entry.second);
            }
            check(runIouNms<double>(d, useLabels, omega) == expected, what + "float64 bodies = Algorithm 1");
            check(runIouNms<float>(d, useLabels, omega) == expectedFloat, what + "float32 bodies = Algorithm 1");
            check(runCpuLibrary(d, useLabels, omega) == expected, what + "CPU library = Algorithm 1");
        }
    }
}

void testIouNms()
{
    compareNms(Detection{}, "no boxes");
    compareNms(Detection{{1, 1, 3, 3}, {0.5}, {0.9}, {0}}, "one box");
    // Identical boxes (IoU 1: suppressed below threshold 1 only), zero-area boxes (IoU 0 with all),
    // tied predicted IoUs (lower index first) and a score update from an eliminated box.
    compareNms(Detection{{0, 0, 4, 4, 0, 0, 4, 4, 2, 2, 2, 6, 2, 2, 2, 6, 0, 0, 4, 2, 1, 1, 1, 1, 0, 0, 4, 4},
                   {0.2, 0.9, 0.4, 0.8, 0.6, 0.7, 0.3}, {0.5, 0.5, 0.7, 0.7, 0.6, 0.9, 0.5}, {0, 0, 1, 1, 0, 0, 1}},
        "identical, zero-area and tied");
    // Half of a box's area: IoU exactly 0.5, kept at threshold 0.5 (strict >).
    compareNms(Detection{{0, 0, 4, 2, 0, 0, 4, 4, 0, 0, 4, 1}, {0.1, 0.2, 0.3}, {0.3, 0.2, 0.1}, {0, 0, 0}},
        "IoU exactly 0.5");
    for (int n : {63, 64, 65, 150})
    {
        compareNms(randomDetection(n, 3, 7, 100 + n), std::to_string(n) + " random boxes");
    }
    compareNms(randomDetection(130, 1, 1000, 7), "130 random boxes, distinct IoUs");
}

//! box_iou.h against the written-out IoU of prroi_oracle.h, in both types, on boxes whose IoUs
//! float32 holds exactly (quarter pixels below 16), and on the cases with no union.
void testBoxIou()
{
    const double a[4] = {1, 1, 3, 3};
    const double point[4] = {2, 2, 2, 2};
    const double line[4] = {0, 0, 0, 4};
    const double apart[4] = {5, 5, 6, 6};
    const double half[4] = {1, 1, 3, 2};
    check(iounet::boxIou(a, a) == 1.0, "IoU of a box with itself is 1");
    check(iounet::boxIou(point, point) == 0.0, "IoU of zero-area boxes is 0");
    check(iounet::boxIou(line, point) == 0.0, "IoU of a line and a point is 0");
    check(iounet::boxIou(a, apart) == 0.0 && iounet::boxIou(apart, a) == 0.0, "IoU of disjoint boxes is 0");
    check(iounet::boxIou(a, half) == 0.5 && iounet::boxIou(half, a) == 0.5, "IoU of a box and its half is 0.5");
    const Detection d = randomDetection(60, 1, 1, 11);
    for (size_t i = 0; i < d.scores.size(); ++i)
    {
        for (size_t j = 0; j < d.scores.size(); ++j)
        {
            const double* p = &d.boxes[4 * i];
            const double* q = &d.boxes[4 * j];
            const float pf[4] = {float(p[0]), float(p[1]), float(p[2]), float(p[3])};
            const float qf[4] = {float(q[0]), float(q[1]), float(q[2]), float(q[3])};
            const double expected = referenceIou(p, q);
            check(iounet::boxIou(p, q) == expected, "float64 IoU " + std::to_string(i) + ", " + std::to_string(j));
            check(std::abs(iounet::boxIou(pf, qf) - expected) <= 1e-6 * expected,
                "float32 IoU " + std::to_string(i) + ", " + std::to_string(j));
        }
    }
}

} // namespace

int main()
{
    testBoxIou();
    testIouNms();
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
