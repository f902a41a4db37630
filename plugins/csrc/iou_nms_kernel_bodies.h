// Bodies of the IoU-guided NMS CUDA kernels (iou_nms_cuda.cu): each kernel is a thin launch shell
// around these __host__ __device__ functions, so the host test (tests/cpp/test_iou_nms.cpp) runs them
// on the CPU with the kernels' loops. Only host-executable code belongs here: the coverage build
// checks that the host test executes every line of this header.
//
// The algorithm is the one of the op torch.ops.iounet.iou_nms (plugins/iou_nms.py). `order` lists
// the n boxes in the order it takes them (decreasing predicted IoU, ties: lower index first);
// position p in it is row p of a mask of 64-bit words: a word per (row, block of 64 columns), then
// one sequential pass over the rows.
#pragma once

#include "box_iou.h"

#include <cstdint>

namespace iounet {

//! Boxes per IoU-NMS mask word.
constexpr int kNmsWordBits = 64;

//! Number of 64-bit words of one mask row.
IOUNET_HD int64_t nmsMaskWords(int64_t n)
{
    return (n + kNmsWordBits - 1) / kNmsWordBits;
}

//! Mask word `word` of row `row`: bit b set when the box at position q = word * 64 + b comes after
//! the row's box (q > row), has its label (labels may be null: one label) and an IoU with it
//! greater than `threshold`.
template <typename S>
IOUNET_HD uint64_t iouNmsMaskWord(const S* boxes, const int64_t* labels, const int64_t* order, int64_t n,
    S threshold, int64_t row, int64_t word)
{
    const int64_t i = order[row];
    const int64_t begin = word * kNmsWordBits;
    const int64_t end = begin + kNmsWordBits < n ? begin + kNmsWordBits : n;
    uint64_t bits = 0;
    for (int64_t q = begin > row ? begin : row + 1; q < end; ++q)
    {
        const int64_t j = order[q];
        if ((labels == nullptr || labels[i] == labels[j]) && boxIou(boxes + 4 * i, boxes + 4 * j) > threshold)
        {
            bits |= uint64_t(1) << (q - begin);
        }
    }
    return bits;
}

//! The sequential pass over the n x nmsMaskWords(n) mask: a row not yet removed is kept, removes the
//! rows its mask marks, and takes the highest score among itself and the rows it removes (those not
//! removed before). Writes the kept indices (order[row]) in order to keep, their scores to
//! keptScores and the count to numKept; `removed` is nmsMaskWords(n) words of scratch.
template <typename S>
IOUNET_HD void iouNmsSequentialPass(const uint64_t* mask, const S* scores, const int64_t* order, int64_t n,
    uint64_t* removed, int64_t* keep, S* keptScores, int64_t* numKept)
{
    const int64_t words = nmsMaskWords(n);
    for (int64_t w = 0; w < words; ++w)
    {
        removed[w] = 0;
    }
    int64_t kept = 0;
    for (int64_t row = 0; row < n; ++row)
    {
        if ((removed[row / kNmsWordBits] >> (row % kNmsWordBits)) & 1)
        {
            continue;
        }
        const int64_t i = order[row];
        S best = scores[i];
        const uint64_t* bits = mask + row * words;
        for (int64_t w = row / kNmsWordBits; w < words; ++w)
        {
            uint64_t fresh = bits[w] & ~removed[w];
            removed[w] |= fresh;
            for (int64_t q = w * kNmsWordBits; fresh != 0; ++q, fresh >>= 1)
            {
                if (fresh & 1)
                {
                    const S score = scores[order[q]];
                    best = score > best ? score : best;
                }
            }
        }
        keep[kept] = i;
        keptScores[kept] = best;
        ++kept;
    }
    *numKept = kept;
}

} // namespace iounet
