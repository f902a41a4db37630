// TensorRT IPluginV3 plugins for PrRoIPool and PrRoIPoolCoordGrad (TensorRT 10 and later): one plugin class and one
// creator class for both ops, over the interface-independent rules of prroiPoolCommon.h.
#pragma once

#include "prroiPoolCommon.h"

#include <array>
#include <cstdint>

#if !IOUNET_TRT_PLUGIN_V3
#error "prroiPoolPlugin.h is the IPluginV3 interface of TensorRT 10 and later; 8.5 and 8.6 use prroiPoolPluginV2.h"
#endif

namespace iounet
{

//! PrRoIPool or PrRoIPoolCoordGrad as an IPluginV3 with the core, build and runtime capabilities.
class PrRoIPoolPlugin final : public nvinfer1::IPluginV3,
                              public nvinfer1::IPluginV3OneCore,
                              public nvinfer1::IPluginV3OneBuild,
                              public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit PrRoIPoolPlugin(PrRoIPoolOp const& op) noexcept;
    //! Copies the op only.
    PrRoIPoolPlugin(PrRoIPoolPlugin const& other) noexcept;
    PrRoIPoolPlugin& operator=(PrRoIPoolPlugin const&) = delete;

    PrRoIPoolOp const& op() const noexcept
    {
        return mOp;
    }

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    char const* getPluginName() const noexcept override;
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
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    PrRoIPoolOp mOp;
    std::array<nvinfer1::PluginField, 3> mSerializedFields{};
    nvinfer1::PluginFieldCollection mSerialized{};
};

//! Creator of the plugin of one op from the three attributes.
class PrRoIPoolCreator final : public PrRoIPoolCreatorBase<nvinfer1::IPluginCreatorV3One>
{
public:
    using PrRoIPoolCreatorBase::PrRoIPoolCreatorBase;

    char const* getPluginNamespace() const noexcept override;

    //! Same fields in both phases; nullptr (reported) when an attribute is missing or invalid.
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
};

} // namespace iounet

extern "C"
{
    //! The library's creators (PrRoIPool, PrRoIPoolCoordGrad), the entry point of IPluginRegistry::loadLibrary.
    __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
}
