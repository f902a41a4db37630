// The IPluginV2DynamicExt PrRoIPool plugins, their creators and the creators' entry point of TensorRT 8.5 and 8.6.
#include "prroiPoolPluginV2.h"

#include <cinttypes>
#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <tuple>
#include <utility>

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IExprBuilder;
using nvinfer1::IPluginV2DynamicExt;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginTensorDesc;

namespace iounet
{
namespace
{

//! The serialized attributes: prroiPoolFields, one kINT32 or kFLOAT32 value each.
using SerializedFields = decltype(prroiPoolFields(std::declval<PrRoIPoolParams const&>()));
constexpr size_t kFIELD_BYTES = 4;
static_assert(sizeof(int32_t) == kFIELD_BYTES && sizeof(float) == kFIELD_BYTES);
constexpr size_t kSERIALIZED_BYTES = std::tuple_size_v<SerializedFields> * kFIELD_BYTES;

//! target = pluginNamespace ("" for nullptr); reports a failure to copy it.
void assignNamespace(std::string& target, char const* pluginNamespace, char const* pluginName) noexcept
{
    try
    {
        target = pluginNamespace != nullptr ? pluginNamespace : "";
    }
    catch (std::exception const& e)
    {
        reportError("%s: could not set the plugin namespace: %s", pluginName, e.what());
    }
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------------
// PrRoIPoolPluginV2

PrRoIPoolPluginV2::PrRoIPoolPluginV2(PrRoIPoolOp const& op) noexcept
    : mOp(op)
{
}

char const* PrRoIPoolPluginV2::getPluginType() const noexcept
{
    return mOp.name();
}

char const* PrRoIPoolPluginV2::getPluginVersion() const noexcept
{
    return kPRROI_POOL_PLUGIN_VERSION;
}

int32_t PrRoIPoolPluginV2::getNbOutputs() const noexcept
{
    return 1;
}

int32_t PrRoIPoolPluginV2::initialize() noexcept
{
    return 0;
}

void PrRoIPoolPluginV2::terminate() noexcept {}

size_t PrRoIPoolPluginV2::getSerializationSize() const noexcept
{
    return kSERIALIZED_BYTES;
}

void PrRoIPoolPluginV2::serialize(void* buffer) const noexcept
{
    auto* out = static_cast<char*>(buffer);
    for (PluginField const& field : prroiPoolFields(mOp.params()))
    {
        std::memcpy(out, field.data, kFIELD_BYTES);
        out += kFIELD_BYTES;
    }
}

void PrRoIPoolPluginV2::destroy() noexcept
{
    delete this;
}

void PrRoIPoolPluginV2::setPluginNamespace(char const* pluginNamespace) noexcept
{
    assignNamespace(mNamespace, pluginNamespace, mOp.name());
}

char const* PrRoIPoolPluginV2::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

DataType PrRoIPoolPluginV2::getOutputDataType(int32_t index, DataType const* inputTypes, int32_t nbInputs) const
    noexcept
{
    if (index != 0 || inputTypes == nullptr || nbInputs != mOp.inputCount())
    {
        reportError("%s: expects %" PRId32 " inputs and 1 output, asked for the type of output %" PRId32
                    " with %" PRId32 " inputs",
            mOp.name(), mOp.inputCount(), index, nbInputs);
        return DataType::kFLOAT;
    }
    DataType const type = inputTypes[mOp.outputTypeSource()];
    if (type != DataType::kFLOAT && type != DataType::kHALF)
    {
        reportError("%s: %s must be float32 or float16", mOp.name(), mOp.outputTypeSource() == 0 ? "features" : "rois");
    }
    return type;
}

IPluginV2DynamicExt* PrRoIPoolPluginV2::clone() const noexcept
{
    try
    {
        return new PrRoIPoolPluginV2(*this);
    }
    catch (std::exception const& e)
    {
        reportError("%s: could not clone the plugin: %s", mOp.name(), e.what());
        return nullptr;
    }
}

DimsExprs PrRoIPoolPluginV2::getOutputDimensions(
    int32_t outputIndex, DimsExprs const* inputs, int32_t nbInputs, IExprBuilder& exprBuilder) noexcept
{
    if (outputIndex != 0)
    {
        reportError("%s: has 1 output, asked for the shape of output %" PRId32, mOp.name(), outputIndex);
        return DimsExprs{};
    }
    DimsExprs output{};
    return mOp.outputShape(inputs, nbInputs, getNbOutputs(), output, exprBuilder) ? output : DimsExprs{};
}

bool PrRoIPoolPluginV2::supportsFormatCombination(
    int32_t pos, PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return mOp.supportsFormatCombination(pos, inOut, nbInputs, nbOutputs);
}

void PrRoIPoolPluginV2::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    mOp.checkInputs(in, nbInputs, nbOutputs, true);
}

size_t PrRoIPoolPluginV2::getWorkspaceSize(PluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    PluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

int32_t PrRoIPoolPluginV2::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    return mOp.enqueue(inputDesc, inputs, outputs, stream);
}

// ---------------------------------------------------------------------------------------------------------------------
// PrRoIPoolCreatorV2

IPluginV2DynamicExt* PrRoIPoolCreatorV2::createPlugin(char const* name, PluginFieldCollection const* fc) noexcept
{
    std::optional<PrRoIPoolOp> const op = parseOp(name, fc);
    if (!op)
    {
        return nullptr;
    }
    auto* plugin = new (std::nothrow) PrRoIPoolPluginV2(*op);
    if (plugin != nullptr)
    {
        plugin->setPluginNamespace(mNamespace.c_str());
    }
    return plugin;
}

IPluginV2DynamicExt* PrRoIPoolCreatorV2::deserializePlugin(
    char const* name, void const* serialData, size_t serialLength) noexcept
{
    if (serialData == nullptr || serialLength != kSERIALIZED_BYTES)
    {
        reportError("%s node '%s': a serialized plugin has %zu bytes, got %zu%s", getPluginName(),
            name != nullptr ? name : "", kSERIALIZED_BYTES, serialLength, serialData == nullptr ? " at nullptr" : "");
        return nullptr;
    }
    PluginFieldCollection const& names = *prroiPoolFieldNames();
    SerializedFields fields{};
    for (size_t i = 0; i < fields.size(); ++i)
    {
        fields[i] = names.fields[i];
        fields[i].data = static_cast<char const*>(serialData) + i * kFIELD_BYTES;
    }
    PluginFieldCollection const fc{static_cast<int32_t>(fields.size()), fields.data()};
    return createPlugin(name, &fc);
}

void PrRoIPoolCreatorV2::setPluginNamespace(char const* pluginNamespace) noexcept
{
    assignNamespace(mNamespace, pluginNamespace, getPluginName());
}

char const* PrRoIPoolCreatorV2::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

} // namespace iounet

extern "C" nvinfer1::IPluginCreator* const* getPluginCreators(int32_t& nbCreators)
{
    return iounet::prroiPoolCreators<iounet::PrRoIPoolCreatorV2, nvinfer1::IPluginCreator>(nbCreators);
}
