// TensorRT IPluginV3 plugins for PrRoIPool (forward) and PrRoIPoolCoordGrad (gradient w.r.t. the boxes),
// both version "1" in the empty namespace, so that ONNX nodes of these op types (including mmcv's PrRoIPool)
// find them. They share one base class and one creator template; the kernels are the launchers of
// plugins/csrc/prroi_pool_cuda.h.
//
// Tensors, all LINEAR: features (N, C, H, W) of type T; rois (K, 5) of type R; grad_output (K, C, PH, PW) of
// type T. PrRoIPool outputs (K, C, PH, PW) of type T; PrRoIPoolCoordGrad outputs grad_rois (K, 5) of type R.
// T is float32 or float16; R is T, or float32 when T is float16.
// Attributes: pooled_height, pooled_width (positive ints), spatial_scale (positive finite float).
#pragma once

#include "prroi_pool_cuda.h"

#include <NvInferRuntime.h>

#include <array>
#include <cstdint>
#include <new>
#include <optional>

namespace iounet
{

constexpr char const* kPRROI_POOL_PLUGIN_VERSION = "1";
constexpr char const* kPRROI_POOL_PLUGIN_NAMESPACE = "";
#ifndef IOUNET_VERSION
#error "IOUNET_VERSION is not defined: the CMake build passes it (read from iounet/_version.py)"
#endif
constexpr char const* kPRROI_POOL_LIBRARY_VERSION = IOUNET_VERSION;

//! The attributes both plugins take.
struct PrRoIPoolParams
{
    int32_t pooledHeight;
    int32_t pooledWidth;
    float spatialScale;
};

//! The creator's field list: pooled_height (kINT32), pooled_width (kINT32), spatial_scale (kFLOAT32).
nvinfer1::PluginFieldCollection const* prroiPoolFieldNames() noexcept;

//! Reads and validates the attributes; reports the problem and returns nothing when one is missing or invalid.
//! Ints may come as kINT32 or kINT64, the scale as kFLOAT32 or kFLOAT64; unknown fields are ignored.
std::optional<PrRoIPoolParams> parsePrRoIPoolFields(
    char const* pluginName, char const* nodeName, nvinfer1::PluginFieldCollection const* fc) noexcept;

//! Everything the two plugins share: capabilities, types and formats, shape checks, serialization.
class PrRoIPoolPluginBase : public nvinfer1::IPluginV3,
                            public nvinfer1::IPluginV3OneCore,
                            public nvinfer1::IPluginV3OneBuild,
                            public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit PrRoIPoolPluginBase(PrRoIPoolParams const& params) noexcept;
    //! Copies the attributes only.
    PrRoIPoolPluginBase(PrRoIPoolPluginBase const& other) noexcept;
    PrRoIPoolPluginBase& operator=(PrRoIPoolPluginBase const&) = delete;

    PrRoIPoolParams const& params() const noexcept
    {
        return mParams;
    }

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    int32_t getNbOutputs() const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;

    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    //! The kernel shape of concrete input descs, or nothing (reported) if they do not fit the op.
    std::optional<PrRoIPoolShape> kernelShape(
        nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, int32_t nbOutputs) const noexcept;

protected:
    //! Number of inputs: features, rois and, for the gradient, grad_output.
    virtual int32_t inputCount() const noexcept = 0;

    //! Index of the input whose data type the output has: 0 (features) or 1 (rois).
    virtual int32_t outputTypeSource() const noexcept = 0;

    //! Checks the inputs after features and rois; extents of -1 are unknown and pass where allowUnknown.
    virtual bool checkExtraInputDims(nvinfer1::Dims const* dims, bool allowUnknown) const noexcept;

    //! Writes the output shape expression; false if the builder failed.
    virtual bool outputShape(nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs& output,
        nvinfer1::IExprBuilder& exprBuilder) const noexcept = 0;

private:
    //! Checks the tensor counts and input dims; reports and returns false on the first problem.
    bool checkInputs(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs, bool allowUnknown) const noexcept;

    PrRoIPoolParams mParams;
    std::array<nvinfer1::PluginField, 3> mSerializedFields{};
    nvinfer1::PluginFieldCollection mSerialized{};
};

//! PrRoIPool: output (K, C, PH, PW) from features and rois.
class PrRoIPoolPlugin final : public PrRoIPoolPluginBase
{
public:
    static constexpr char const* kNAME = "PrRoIPool";

    using PrRoIPoolPluginBase::PrRoIPoolPluginBase;

    char const* getPluginName() const noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

private:
    int32_t inputCount() const noexcept override;
    int32_t outputTypeSource() const noexcept override;
    bool outputShape(nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs& output,
        nvinfer1::IExprBuilder& exprBuilder) const noexcept override;
};

//! PrRoIPoolCoordGrad: grad_rois (K, 5) = d(sum(PrRoIPool(features, rois) * grad_output)) / d rois.
class PrRoIPoolCoordGradPlugin final : public PrRoIPoolPluginBase
{
public:
    static constexpr char const* kNAME = "PrRoIPoolCoordGrad";

    using PrRoIPoolPluginBase::PrRoIPoolPluginBase;

    char const* getPluginName() const noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

private:
    int32_t inputCount() const noexcept override;
    int32_t outputTypeSource() const noexcept override;
    bool checkExtraInputDims(nvinfer1::Dims const* dims, bool allowUnknown) const noexcept override;
    bool outputShape(nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs& output,
        nvinfer1::IExprBuilder& exprBuilder) const noexcept override;
};

//! Creator of Plugin (PrRoIPoolPlugin or PrRoIPoolCoordGradPlugin) from the three attributes.
template <typename Plugin>
class PrRoIPoolCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    char const* getPluginName() const noexcept override
    {
        return Plugin::kNAME;
    }

    char const* getPluginVersion() const noexcept override
    {
        return kPRROI_POOL_PLUGIN_VERSION;
    }

    char const* getPluginNamespace() const noexcept override
    {
        return kPRROI_POOL_PLUGIN_NAMESPACE;
    }

    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return prroiPoolFieldNames();
    }

    //! Same fields in both phases; nullptr (reported) when an attribute is missing or invalid.
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase /*phase*/) noexcept override
    {
        std::optional<PrRoIPoolParams> const params = parsePrRoIPoolFields(Plugin::kNAME, name, fc);
        return params ? new (std::nothrow) Plugin(*params) : nullptr;
    }
};

using PrRoIPoolPluginCreator = PrRoIPoolCreator<PrRoIPoolPlugin>;
using PrRoIPoolCoordGradPluginCreator = PrRoIPoolCreator<PrRoIPoolCoordGradPlugin>;

} // namespace iounet

extern "C"
{
    //! The library's creators (PrRoIPool, PrRoIPoolCoordGrad), the entry point of IPluginRegistry::loadLibrary.
    __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

    //! Gives the library TensorRT's logger finder; plugin errors go to its logger, to stderr before that.
    __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

    //! Version of this plugin library: the iounet package version (IOUNET_VERSION at build time).
    __attribute__((visibility("default"))) char const* iounetPluginLibraryVersion();
}
