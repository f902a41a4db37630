// What the PrRoIPool TensorRT plugins share whichever TensorRT plugin interface they implement (IPluginV3 from
// TensorRT 10, IPluginV2DynamicExt for TensorRT 8.5 and 8.6): the attributes, what the creators have in common,
// the shape rules, the type and format rules, the dispatch into the CUDA launchers of plugins/csrc/prroi_pool_cuda.h,
// error reporting and the entry points every version of the library exports.
//
// Two ops, both plugin version "1" in the empty namespace, so that ONNX nodes of these op types (including mmcv's
// PrRoIPool) find them: PrRoIPool (forward) and PrRoIPoolCoordGrad (gradient w.r.t. the boxes).
// Tensors, all LINEAR: features (N, C, H, W) of type T; rois (K, 5) of type R; grad_output (K, C, PH, PW) of
// type T. PrRoIPool outputs (K, C, PH, PW) of type T; PrRoIPoolCoordGrad outputs grad_rois (K, 5) of type R.
// T is float32 or float16; R is T, or float32 when T is float16.
// Attributes: pooled_height, pooled_width (positive ints), spatial_scale (positive finite float).
#pragma once

#include "prroi_pool_cuda.h"

#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <iterator>
#include <optional>

#if NV_TENSORRT_MAJOR < 8 || (NV_TENSORRT_MAJOR == 8 && NV_TENSORRT_MINOR < 5) || NV_TENSORRT_MAJOR == 9
#error "the PrRoIPool plugins need the headers of TensorRT 8.5, 8.6, or 10 and later"
#endif

//! 1 where the plugins implement IPluginV3 (TensorRT 10 and later), 0 where IPluginV2DynamicExt (8.5 and 8.6).
#define IOUNET_TRT_PLUGIN_V3 (NV_TENSORRT_MAJOR >= 10)

//! 1 where TensorRT gives plugin libraries a logger finder through setLoggerFinder (8.6 and later).
#define IOUNET_TRT_LOGGER_FINDER (NV_TENSORRT_MAJOR > 8 || NV_TENSORRT_MINOR >= 6)

namespace iounet
{

constexpr char const* kPRROI_POOL_PLUGIN_VERSION = "1";
constexpr char const* kPRROI_POOL_PLUGIN_NAMESPACE = "";
#ifndef IOUNET_VERSION
#error "IOUNET_VERSION is not defined: the CMake build passes it (read from iounet/version.py)"
#endif
constexpr char const* kPRROI_POOL_LIBRARY_VERSION = IOUNET_VERSION;

//! What the plugin methods that return an int32 status return.
constexpr int32_t kSUCCESS = 0;
constexpr int32_t kFAILURE = 1;

//! The two ops.
enum class PrRoIPoolKind : int32_t
{
    kFORWARD,    //!< PrRoIPool: output (K, C, PH, PW) from features and rois.
    kCOORD_GRAD, //!< PrRoIPoolCoordGrad: grad_rois (K, 5) = d(sum(PrRoIPool(features, rois) * grad_output)) / d rois.
};

//! The plugin name of an op: "PrRoIPool" or "PrRoIPoolCoordGrad".
char const* prroiPoolPluginName(PrRoIPoolKind kind) noexcept;

//! The attributes both ops take.
struct PrRoIPoolParams
{
    int32_t pooledHeight;
    int32_t pooledWidth;
    float spatialScale;
};

//! Sends a printf-style error message to TensorRT's logger if the library was given one (setLoggerFinder), else
//! to stderr.
__attribute__((format(printf, 1, 2))) void reportError(char const* format, ...) noexcept;

//! The creators' field list: pooled_height (kINT32), pooled_width (kINT32), spatial_scale (kFLOAT32).
nvinfer1::PluginFieldCollection const* prroiPoolFieldNames() noexcept;

//! The attributes as fields of the creators' field list, in its order, pointing into params.
std::array<nvinfer1::PluginField, 3> prroiPoolFields(PrRoIPoolParams const& params) noexcept;

//! Reads and validates the attributes; reports the problem and returns nothing when one is missing or invalid.
//! Ints may come as kINT32 (or kINT64 from TensorRT 10), the scale as kFLOAT32 or kFLOAT64; unknown fields are
//! ignored.
std::optional<PrRoIPoolParams> parsePrRoIPoolFields(
    char const* pluginName, char const* nodeName, nvinfer1::PluginFieldCollection const* fc) noexcept;

//! The PluginTensorDesc of a tensor description of either kind the plugin interfaces hand over.
inline nvinfer1::PluginTensorDesc const& tensorDesc(nvinfer1::PluginTensorDesc const& desc) noexcept
{
    return desc;
}

inline nvinfer1::PluginTensorDesc const& tensorDesc(nvinfer1::DynamicPluginTensorDesc const& desc) noexcept
{
    return desc.desc;
}

//! One op with its attributes: all of its rules that do not depend on the TensorRT plugin interface. Every check
//! reports the problem it finds.
class PrRoIPoolOp
{
public:
    PrRoIPoolOp(PrRoIPoolKind kind, PrRoIPoolParams const& params) noexcept;

    char const* name() const noexcept
    {
        return prroiPoolPluginName(mKind);
    }

    PrRoIPoolParams const& params() const noexcept
    {
        return mParams;
    }

    //! Number of inputs: features, rois and, for the gradient, grad_output.
    int32_t inputCount() const noexcept;

    //! Index of the input whose data type the output has: 0 (features) or 1 (rois).
    int32_t outputTypeSource() const noexcept;

    //! Checks the tensor counts and the input dims; extents of -1 are unknown and pass where allowUnknown.
    bool checkInputDims(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs, bool allowUnknown) const
        noexcept;

    //! checkInputDims on the dims of input descriptions (PluginTensorDesc or DynamicPluginTensorDesc).
    template <typename Desc>
    bool checkInputs(Desc const* in, int32_t nbInputs, int32_t nbOutputs, bool allowUnknown) const noexcept
    {
        std::array<nvinfer1::Dims, kMAX_INPUTS> dims{};
        for (int32_t i = 0; in != nullptr && i < std::min<int32_t>(nbInputs, kMAX_INPUTS); ++i)
        {
            dims[i] = tensorDesc(in[i]).dims;
        }
        return checkInputDims(dims.data(), nbInputs, nbOutputs, allowUnknown);
    }

    //! The output type when the input types form a supported combination, else nothing.
    std::optional<nvinfer1::DataType> outputType(
        nvinfer1::DataType const* inputTypes, int32_t nbInputs, int32_t nbOutputs) const noexcept;

    //! Whether the tensor at pos (the inputs, then the output) may have its type and format given those of the
    //! tensors before it, which are set to supported values (TensorRT's supportsFormatCombination). Desc is
    //! PluginTensorDesc or DynamicPluginTensorDesc. Answers without reporting.
    template <typename Desc>
    bool supportsFormatCombination(int32_t pos, Desc const* inOut, int32_t nbInputs, int32_t nbOutputs) const noexcept
    {
        if (inOut == nullptr || nbInputs != inputCount() || nbOutputs != 1 || pos < 0 || pos > nbInputs)
        {
            return false;
        }
        nvinfer1::DataType const outputSource
            = pos == nbInputs ? tensorDesc(inOut[outputTypeSource()]).type : nvinfer1::DataType::kFLOAT;
        return supportsTensor(pos, nbInputs, tensorDesc(inOut[pos]), tensorDesc(inOut[0]).type, outputSource);
    }

    //! Writes the output shape expressions for the inputs' after checking the inputs' constant extents; false on
    //! a problem.
    bool outputShape(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, int32_t nbOutputs,
        nvinfer1::DimsExprs& output, nvinfer1::IExprBuilder& exprBuilder) const noexcept;

    //! The kernel shape of concrete input descs, or nothing if they do not fit the op.
    std::optional<PrRoIPoolShape> kernelShape(
        nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, int32_t nbOutputs) const noexcept;

    //! Launches the op's kernel on stream for the types of inputDesc; 0 on success, 1 on a problem.
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs,
        cudaStream_t stream) const noexcept;

private:
    static constexpr int32_t kMAX_INPUTS = 3;

    //! The rule of supportsFormatCombination for the tensor desc at pos, given the features' type and, for the
    //! output, the type of the input it follows.
    bool supportsTensor(int32_t pos, int32_t nbInputs, nvinfer1::PluginTensorDesc const& desc,
        nvinfer1::DataType features, nvinfer1::DataType outputSource) const noexcept;

    //! Checks grad_output (K, C, PH, PW) against features and rois.
    bool checkGradOutputDims(nvinfer1::Dims const* dims, bool allowUnknown) const noexcept;

    PrRoIPoolKind mKind;
    PrRoIPoolParams mParams;
};

//! The part of the creator of one op that does not depend on the plugin interface: its name, version and field list.
//! Base is the creator interface: IPluginCreatorV3One (TensorRT 10 and later) or IPluginCreator (8.5, 8.6).
template <typename Base>
class PrRoIPoolCreatorBase : public Base
{
public:
    explicit PrRoIPoolCreatorBase(PrRoIPoolKind kind) noexcept
        : mKind(kind)
    {
    }

    char const* getPluginName() const noexcept override
    {
        return prroiPoolPluginName(mKind);
    }

    char const* getPluginVersion() const noexcept override
    {
        return kPRROI_POOL_PLUGIN_VERSION;
    }

    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return prroiPoolFieldNames();
    }

protected:
    //! The op with the attributes of fc, or nothing (reported) when one is missing or invalid.
    std::optional<PrRoIPoolOp> parseOp(char const* name, nvinfer1::PluginFieldCollection const* fc) const noexcept
    {
        std::optional<PrRoIPoolParams> const params = parsePrRoIPoolFields(getPluginName(), name, fc);
        return params ? std::optional<PrRoIPoolOp>(PrRoIPoolOp(mKind, *params)) : std::nullopt;
    }

private:
    PrRoIPoolKind mKind;
};

//! The library's creators, one Creator (a PrRoIPoolCreatorBase) per op, as the Interface pointers of its entry point
//! (getCreators or getPluginCreators); sets nbCreators to their count.
template <typename Creator, typename Interface>
Interface* const* prroiPoolCreators(int32_t& nbCreators) noexcept
{
    static Creator forward(PrRoIPoolKind::kFORWARD);
    static Creator coordGrad(PrRoIPoolKind::kCOORD_GRAD);
    static Interface* const creators[] = {&forward, &coordGrad};
    nbCreators = static_cast<int32_t>(std::size(creators));
    return creators;
}

} // namespace iounet

extern "C"
{
#if IOUNET_TRT_LOGGER_FINDER
    //! Gives the library TensorRT's logger finder; plugin errors go to its logger, to stderr before that.
    __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
#endif

    //! Version of this plugin library: the iounet package version (IOUNET_VERSION at build time).
    __attribute__((visibility("default"))) char const* iounetPluginLibraryVersion();
}
