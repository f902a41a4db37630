// TensorRT IPluginV2DynamicExt plugins for PrRoIPool and PrRoIPoolCoordGrad (TensorRT 8.5 and 8.6, the last
// TensorRT of Maxwell and Pascal GPUs): one plugin class and one creator class for both ops, over the
// interface-independent rules of prroiPoolCommon.h. Serialized, a plugin is its three attributes in the creators'
// field order and types: pooled_height (int32), pooled_width (int32), spatial_scale (float32), host byte order.
#pragma once

#include "prroiPoolCommon.h"

#include <cstddef>
#include <cstdint>
#include <string>

#if IOUNET_TRT_PLUGIN_V3
#error "prroiPoolPluginV2.h is the plugin interface of TensorRT 8.5 and 8.6; later ones use prroiPoolPlugin.h"
#endif

namespace iounet
{

//! PrRoIPool or PrRoIPoolCoordGrad as an IPluginV2DynamicExt.
class PrRoIPoolPluginV2 final : public nvinfer1::IPluginV2DynamicExt
{
public:
    explicit PrRoIPoolPluginV2(PrRoIPoolOp const& op) noexcept;

    PrRoIPoolOp const& op() const noexcept
    {
        return mOp;
    }

    // IPluginV2
    char const* getPluginType() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    int32_t getNbOutputs() const noexcept override;
    int32_t initialize() noexcept override;
    void terminate() noexcept override;
    size_t getSerializationSize() const noexcept override;
    void serialize(void* buffer) const noexcept override;
    void destroy() noexcept override;
    void setPluginNamespace(char const* pluginNamespace) noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV2Ext
    //! The type of the input the output follows (features, or rois for the gradient), which must be float32 or
    //! float16. The input types of the network are only where TensorRT starts from: supportsFormatCombination
    //! settles the types the plugin runs with, so mixed types are not refused here.
    nvinfer1::DataType getOutputDataType(
        int32_t index, nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;

    // IPluginV2DynamicExt
    //! nullptr when out of memory.
    nvinfer1::IPluginV2DynamicExt* clone() const noexcept override;
    //! An empty shape (reported) when the inputs do not fit the op.
    nvinfer1::DimsExprs getOutputDimensions(int32_t outputIndex, nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    //! Checks the input shapes (reported); -1 extents pass, as in the build phase.
    void configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    //! 0: the kernels need no workspace.
    size_t getWorkspaceSize(nvinfer1::PluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

private:
    PrRoIPoolOp mOp;
    std::string mNamespace;
};

//! Creator of the plugin of one op, from the three attributes or from a serialized plugin.
class PrRoIPoolCreatorV2 final : public PrRoIPoolCreatorBase<nvinfer1::IPluginCreator>
{
public:
    using PrRoIPoolCreatorBase::PrRoIPoolCreatorBase;

    //! nullptr (reported) when an attribute is missing or invalid.
    nvinfer1::IPluginV2DynamicExt* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc) noexcept override;

    //! nullptr (reported) when the data are not a serialized plugin with valid attributes.
    nvinfer1::IPluginV2DynamicExt* deserializePlugin(
        char const* name, void const* serialData, size_t serialLength) noexcept override;

    //! The namespace of the creator and of the plugins it makes from now on ("" until set).
    void setPluginNamespace(char const* pluginNamespace) noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    std::string mNamespace{kPRROI_POOL_PLUGIN_NAMESPACE};
};

} // namespace iounet

extern "C"
{
    //! The library's creators (PrRoIPool, PrRoIPoolCoordGrad), the entry point of IPluginRegistry::loadLibrary in
    //! TensorRT 8.6.
    __attribute__((visibility("default"))) nvinfer1::IPluginCreator* const* getPluginCreators(int32_t& nbCreators);
}
