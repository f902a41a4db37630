// The IPluginV3 PrRoIPool plugins, their creators and the loadLibrary entry point of TensorRT 10 and later.
#include "prroiPoolPlugin.h"

#include <new>
#include <optional>

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IExprBuilder;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginTensorDesc;

namespace iounet
{

// ---------------------------------------------------------------------------------------------------------------------
// PrRoIPoolPlugin

PrRoIPoolPlugin::PrRoIPoolPlugin(PrRoIPoolOp const& op) noexcept
    : mOp(op)
{
}

PrRoIPoolPlugin::PrRoIPoolPlugin(PrRoIPoolPlugin const& other) noexcept
    : PrRoIPoolPlugin(other.mOp)
{
}

IPluginCapability* PrRoIPoolPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* PrRoIPoolPlugin::clone() noexcept
{
    return new (std::nothrow) PrRoIPoolPlugin(*this);
}

char const* PrRoIPoolPlugin::getPluginName() const noexcept
{
    return mOp.name();
}

char const* PrRoIPoolPlugin::getPluginVersion() const noexcept
{
    return kPRROI_POOL_PLUGIN_VERSION;
}

char const* PrRoIPoolPlugin::getPluginNamespace() const noexcept
{
    return kPRROI_POOL_PLUGIN_NAMESPACE;
}

int32_t PrRoIPoolPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t PrRoIPoolPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    return mOp.checkInputs(in, nbInputs, nbOutputs, true) ? kSUCCESS : kFAILURE;
}

bool PrRoIPoolPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return mOp.supportsFormatCombination(pos, inOut, nbInputs, nbOutputs);
}

int32_t PrRoIPoolPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    std::optional<DataType> const type = mOp.outputType(inputTypes, nbInputs, nbOutputs);
    if (!type || outputTypes == nullptr)
    {
        return kFAILURE;
    }
    outputTypes[0] = *type;
    return kSUCCESS;
}

int32_t PrRoIPoolPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    return outputs != nullptr && mOp.outputShape(inputs, nbInputs, nbOutputs, outputs[0], exprBuilder) ? kSUCCESS
                                                                                                       : kFAILURE;
}

int32_t PrRoIPoolPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    return mOp.checkInputs(in, nbInputs, nbOutputs, false) ? kSUCCESS : kFAILURE;
}

int32_t PrRoIPoolPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    return mOp.enqueue(inputDesc, inputs, outputs, stream);
}

IPluginV3* PrRoIPoolPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* PrRoIPoolPlugin::getFieldsToSerialize() noexcept
{
    mSerializedFields = prroiPoolFields(mOp.params());
    mSerialized.nbFields = static_cast<int32_t>(mSerializedFields.size());
    mSerialized.fields = mSerializedFields.data();
    return &mSerialized;
}

// ---------------------------------------------------------------------------------------------------------------------
// PrRoIPoolCreator

char const* PrRoIPoolCreator::getPluginNamespace() const noexcept
{
    return kPRROI_POOL_PLUGIN_NAMESPACE;
}

IPluginV3* PrRoIPoolCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    std::optional<PrRoIPoolOp> const op = parseOp(name, fc);
    return op ? new (std::nothrow) PrRoIPoolPlugin(*op) : nullptr;
}

} // namespace iounet

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    return iounet::prroiPoolCreators<iounet::PrRoIPoolCreator, nvinfer1::IPluginCreatorInterface>(nbCreators);
}
