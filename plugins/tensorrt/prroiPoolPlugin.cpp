// PrRoIPool and PrRoIPoolCoordGrad TensorRT plugins, their creators and the library entry points.
#include "prroiPoolPlugin.h"

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <new>

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IExprBuilder;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace iounet
{
namespace
{

constexpr int32_t kSUCCESS = 0;
constexpr int32_t kFAILURE = 1;
constexpr int64_t kROI_COLUMNS = 5;
constexpr char kPOOLED_HEIGHT[] = "pooled_height";
constexpr char kPOOLED_WIDTH[] = "pooled_width";
constexpr char kSPATIAL_SCALE[] = "spatial_scale";

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

//! Sends a printf-style error message to TensorRT's logger if the library was given one, else to stderr.
__attribute__((format(printf, 1, 2))) void reportError(char const* format, ...) noexcept
{
    char message[512];
    va_list args;
    va_start(args, format);
    std::vsnprintf(message, sizeof(message), format, args);
    va_end(args);

    nvinfer1::ILogger* logger = nullptr;
    if (nvinfer1::ILoggerFinder* finder = gLoggerFinder.load())
    {
        try
        {
            logger = finder->findLogger();
        }
        catch (...)
        {
            logger = nullptr;
        }
    }
    if (logger != nullptr)
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, message);
    }
    else
    {
        std::fprintf(stderr, "[iounet TensorRT plugin] error: %s\n", message);
    }
}

//! Readable name of a data type for messages.
char const* typeName(DataType type) noexcept
{
    switch (type)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    default: return "an unsupported type";
    }
}

//! Dims as text, e.g. "(3, 4)", "(-1, 5)" for an unknown extent.
struct DimsText
{
    char text[200];
};

DimsText describe(Dims const& dims) noexcept
{
    DimsText out{};
    if (dims.nbDims < 0 || dims.nbDims > Dims::MAX_DIMS)
    {
        std::snprintf(out.text, sizeof(out.text), "(invalid rank %" PRId32 ")", dims.nbDims);
        return out;
    }
    size_t used = std::snprintf(out.text, sizeof(out.text), "(");
    for (int32_t i = 0; i < dims.nbDims && used < sizeof(out.text); ++i)
    {
        used += std::snprintf(out.text + used, sizeof(out.text) - used, i == 0 ? "%" PRId64 : ", %" PRId64, dims.d[i]);
    }
    if (used < sizeof(out.text))
    {
        std::snprintf(out.text + used, sizeof(out.text) - used, ")");
    }
    return out;
}

bool isFeatureType(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

//! The rois are of the features' type, or float32 with float16 features.
bool isRoisType(DataType features, DataType rois) noexcept
{
    return isFeatureType(features) && (rois == features || (features == DataType::kHALF && rois == DataType::kFLOAT));
}

//! An extent that fits the kernels' int32 sizes; -1 (unknown) passes where allowUnknown.
bool isValidExtent(int64_t extent, bool allowUnknown) noexcept
{
    return (extent >= 0 && extent <= std::numeric_limits<int32_t>::max()) || (allowUnknown && extent == -1);
}

//! Equal extents; an unknown (-1) side matches anything where allowUnknown.
bool extentsMatch(int64_t actual, int64_t expected, bool allowUnknown) noexcept
{
    return actual == expected || (allowUnknown && (actual == -1 || expected == -1));
}

//! The constant extents of a shape expression, -1 where an extent is not a build-time constant.
Dims constantDims(DimsExprs const& exprs) noexcept
{
    Dims dims{};
    dims.nbDims = exprs.nbDims;
    for (int32_t i = 0; i < std::min(exprs.nbDims, Dims::MAX_DIMS); ++i)
    {
        dims.d[i] = exprs.d[i] != nullptr && exprs.d[i]->isConstant() ? exprs.d[i]->getConstantValue() : -1;
    }
    return dims;
}

//! Dims of the inputs: features, rois and, for the gradient, grad_output.
using InputDims = std::array<Dims, 3>;

//! The dims of up to three input descriptions, getDims(desc) each.
template <typename Desc, typename GetDims>
InputDims collectDims(Desc const* in, int32_t nbInputs, GetDims getDims) noexcept
{
    InputDims dims{};
    for (int32_t i = 0; in != nullptr && i < std::min<int32_t>(nbInputs, dims.size()); ++i)
    {
        dims[i] = getDims(in[i]);
    }
    return dims;
}

//! The field called name, or nullptr.
PluginField const* findField(PluginFieldCollection const& fc, char const* name) noexcept
{
    for (int32_t i = 0; fc.fields != nullptr && i < fc.nbFields; ++i)
    {
        if (fc.fields[i].name != nullptr && std::strcmp(fc.fields[i].name, name) == 0)
        {
            return &fc.fields[i];
        }
    }
    return nullptr;
}

//! Reads one positive int32 from a kINT32 or kINT64 field; returns what is wrong, or nullptr.
char const* readPositiveInt(PluginField const* field, int32_t& value) noexcept
{
    if (field == nullptr)
    {
        return "is missing";
    }
    if (field->data == nullptr || field->length != 1)
    {
        return "must hold exactly one value";
    }
    int64_t wide = 0;
    if (field->type == PluginFieldType::kINT32)
    {
        int32_t narrow = 0;
        std::memcpy(&narrow, field->data, sizeof(narrow));
        wide = narrow;
    }
    else if (field->type == PluginFieldType::kINT64)
    {
        std::memcpy(&wide, field->data, sizeof(wide));
    }
    else
    {
        return "must be an INT32 or INT64 field";
    }
    if (wide <= 0 || wide > std::numeric_limits<int32_t>::max())
    {
        return "must be a positive 32-bit integer";
    }
    value = static_cast<int32_t>(wide);
    return nullptr;
}

//! Reads one positive finite float from a kFLOAT32 or kFLOAT64 field; returns what is wrong, or nullptr.
char const* readPositiveFloat(PluginField const* field, float& value) noexcept
{
    if (field == nullptr)
    {
        return "is missing";
    }
    if (field->data == nullptr || field->length != 1)
    {
        return "must hold exactly one value";
    }
    float narrow = 0.0F;
    if (field->type == PluginFieldType::kFLOAT32)
    {
        std::memcpy(&narrow, field->data, sizeof(narrow));
    }
    else if (field->type == PluginFieldType::kFLOAT64)
    {
        double wide = 0.0;
        std::memcpy(&wide, field->data, sizeof(wide));
        narrow = static_cast<float>(wide);
    }
    else
    {
        return "must be a FLOAT32 or FLOAT64 field";
    }
    if (!std::isfinite(narrow) || !(narrow > 0.0F))
    {
        return "must be a finite positive float32";
    }
    value = narrow;
    return nullptr;
}

template <typename T>
struct TypeTag
{
    using type = T;
};

//! Calls launch(TypeTag<T>{}, TypeTag<R>{}) for the features and rois types of the descs; reports failures.
template <typename Launch>
int32_t launchForTypes(char const* pluginName, PluginTensorDesc const* inputDesc, Launch&& launch) noexcept
{
    DataType const features = inputDesc[0].type;
    DataType const rois = inputDesc[1].type;
    cudaError_t status = cudaSuccess;
    if (features == DataType::kFLOAT && rois == DataType::kFLOAT)
    {
        status = launch(TypeTag<float>{}, TypeTag<float>{});
    }
    else if (features == DataType::kHALF && rois == DataType::kHALF)
    {
        status = launch(TypeTag<__half>{}, TypeTag<__half>{});
    }
    else if (features == DataType::kHALF && rois == DataType::kFLOAT)
    {
        status = launch(TypeTag<__half>{}, TypeTag<float>{});
    }
    else
    {
        reportError("%s: unsupported types: features %s, rois %s", pluginName, typeName(features), typeName(rois));
        return kFAILURE;
    }
    if (status != cudaSuccess)
    {
        reportError("%s: kernel launch failed: %s", pluginName, cudaGetErrorString(status));
        return kFAILURE;
    }
    return kSUCCESS;
}

} // namespace

nvinfer1::PluginFieldCollection const* prroiPoolFieldNames() noexcept
{
    static std::array<PluginField, 3> const fields{PluginField(kPOOLED_HEIGHT, nullptr, PluginFieldType::kINT32, 1),
        PluginField(kPOOLED_WIDTH, nullptr, PluginFieldType::kINT32, 1),
        PluginField(kSPATIAL_SCALE, nullptr, PluginFieldType::kFLOAT32, 1)};
    static PluginFieldCollection const collection{static_cast<int32_t>(fields.size()), fields.data()};
    return &collection;
}

std::optional<PrRoIPoolParams> parsePrRoIPoolFields(
    char const* pluginName, char const* nodeName, PluginFieldCollection const* fc) noexcept
{
    char const* const node = nodeName != nullptr ? nodeName : "";
    if (fc == nullptr)
    {
        reportError("%s node '%s': no attributes given", pluginName, node);
        return std::nullopt;
    }
    PrRoIPoolParams params{};
    bool valid = true;
    auto const check = [&](char const* attribute, char const* problem) {
        if (problem != nullptr)
        {
            reportError("%s node '%s': attribute '%s' %s", pluginName, node, attribute, problem);
            valid = false;
        }
    };
    check(kPOOLED_HEIGHT, readPositiveInt(findField(*fc, kPOOLED_HEIGHT), params.pooledHeight));
    check(kPOOLED_WIDTH, readPositiveInt(findField(*fc, kPOOLED_WIDTH), params.pooledWidth));
    check(kSPATIAL_SCALE, readPositiveFloat(findField(*fc, kSPATIAL_SCALE), params.spatialScale));
    return valid ? std::optional<PrRoIPoolParams>(params) : std::nullopt;
}

// ---------------------------------------------------------------------------------------------------------------------
// PrRoIPoolPluginBase

PrRoIPoolPluginBase::PrRoIPoolPluginBase(PrRoIPoolParams const& params) noexcept
    : mParams(params)
{
}

PrRoIPoolPluginBase::PrRoIPoolPluginBase(PrRoIPoolPluginBase const& other) noexcept
    : PrRoIPoolPluginBase(other.mParams)
{
}

IPluginCapability* PrRoIPoolPluginBase::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

char const* PrRoIPoolPluginBase::getPluginVersion() const noexcept
{
    return kPRROI_POOL_PLUGIN_VERSION;
}

char const* PrRoIPoolPluginBase::getPluginNamespace() const noexcept
{
    return kPRROI_POOL_PLUGIN_NAMESPACE;
}

int32_t PrRoIPoolPluginBase::getNbOutputs() const noexcept
{
    return 1;
}

int32_t PrRoIPoolPluginBase::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    InputDims const dims = collectDims(in, nbInputs, [](DynamicPluginTensorDesc const& t) { return t.desc.dims; });
    return checkInputs(dims.data(), nbInputs, nbOutputs, true) ? kSUCCESS : kFAILURE;
}

bool PrRoIPoolPluginBase::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != inputCount() || nbOutputs != 1 || pos < 0 || pos > nbInputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    DataType const features = inOut[0].desc.type;
    if (pos == 0)
    {
        return isFeatureType(desc.type);
    }
    if (pos == 1)
    {
        return isRoisType(features, desc.type);
    }
    if (pos == nbInputs)
    {
        return desc.type == inOut[outputTypeSource()].desc.type;
    }
    return desc.type == features;
}

int32_t PrRoIPoolPluginBase::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbInputs != inputCount() || nbOutputs != 1)
    {
        reportError("%s: expects %" PRId32 " inputs and 1 output, got %" PRId32 " and %" PRId32, getPluginName(),
            inputCount(), nbInputs, nbOutputs);
        return kFAILURE;
    }
    bool supported = isRoisType(inputTypes[0], inputTypes[1]);
    for (int32_t i = 2; i < nbInputs; ++i)
    {
        supported = supported && inputTypes[i] == inputTypes[0];
    }
    if (!supported)
    {
        reportError("%s: unsupported input types (features %s, rois %s): features%s must be float32 or float16 "
                    "and rois of the same type or float32",
            getPluginName(), typeName(inputTypes[0]), typeName(inputTypes[1]), nbInputs > 2 ? " and grad_output" : "");
        return kFAILURE;
    }
    outputTypes[0] = inputTypes[outputTypeSource()];
    return kSUCCESS;
}

int32_t PrRoIPoolPluginBase::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    InputDims const dims = collectDims(inputs, nbInputs, constantDims);
    if (inputs == nullptr || outputs == nullptr || !checkInputs(dims.data(), nbInputs, nbOutputs, true))
    {
        return kFAILURE;
    }
    if (!outputShape(inputs, outputs[0], exprBuilder))
    {
        reportError("%s: could not build the output shape", getPluginName());
        return kFAILURE;
    }
    return kSUCCESS;
}

int32_t PrRoIPoolPluginBase::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    InputDims const dims = collectDims(in, nbInputs, [](PluginTensorDesc const& t) { return t.dims; });
    return checkInputs(dims.data(), nbInputs, nbOutputs, false) ? kSUCCESS : kFAILURE;
}

IPluginV3* PrRoIPoolPluginBase::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* PrRoIPoolPluginBase::getFieldsToSerialize() noexcept
{
    mSerializedFields = {PluginField(kPOOLED_HEIGHT, &mParams.pooledHeight, PluginFieldType::kINT32, 1),
        PluginField(kPOOLED_WIDTH, &mParams.pooledWidth, PluginFieldType::kINT32, 1),
        PluginField(kSPATIAL_SCALE, &mParams.spatialScale, PluginFieldType::kFLOAT32, 1)};
    mSerialized.nbFields = static_cast<int32_t>(mSerializedFields.size());
    mSerialized.fields = mSerializedFields.data();
    return &mSerialized;
}

bool PrRoIPoolPluginBase::checkExtraInputDims(Dims const* /*dims*/, bool /*allowUnknown*/) const noexcept
{
    return true;
}

std::optional<PrRoIPoolShape> PrRoIPoolPluginBase::kernelShape(
    PluginTensorDesc const* in, int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    InputDims const dims = collectDims(in, nbInputs, [](PluginTensorDesc const& t) { return t.dims; });
    if (in == nullptr || !checkInputs(dims.data(), nbInputs, nbOutputs, false))
    {
        return std::nullopt;
    }
    Dims const& features = dims[0];
    return PrRoIPoolShape{static_cast<int32_t>(features.d[0]), static_cast<int32_t>(features.d[1]),
        static_cast<int32_t>(features.d[2]), static_cast<int32_t>(features.d[3]), static_cast<int32_t>(dims[1].d[0]),
        mParams.pooledHeight, mParams.pooledWidth, mParams.spatialScale};
}

bool PrRoIPoolPluginBase::checkInputs(Dims const* dims, int32_t nbInputs, int32_t nbOutputs, bool allowUnknown) const
    noexcept
{
    char const* const name = getPluginName();
    if (nbInputs != inputCount() || nbOutputs != 1)
    {
        reportError("%s: expects %" PRId32 " inputs and 1 output, got %" PRId32 " and %" PRId32, name, inputCount(),
            nbInputs, nbOutputs);
        return false;
    }
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        bool valid = dims[i].nbDims >= 0 && dims[i].nbDims <= Dims::MAX_DIMS;
        for (int32_t j = 0; valid && j < dims[i].nbDims; ++j)
        {
            valid = isValidExtent(dims[i].d[j], allowUnknown);
        }
        if (!valid)
        {
            reportError("%s: input %" PRId32 " has shape %s; extents must lie in [0, 2^31)", name, i,
                describe(dims[i]).text);
            return false;
        }
    }
    if (dims[0].nbDims != 4)
    {
        reportError("%s: features must be (N, C, H, W), got %s", name, describe(dims[0]).text);
        return false;
    }
    if (dims[1].nbDims != 2 || !extentsMatch(dims[1].d[1], kROI_COLUMNS, allowUnknown))
    {
        reportError("%s: rois must be (K, 5), got %s", name, describe(dims[1]).text);
        return false;
    }
    return checkExtraInputDims(dims, allowUnknown);
}

// ---------------------------------------------------------------------------------------------------------------------
// PrRoIPoolPlugin

char const* PrRoIPoolPlugin::getPluginName() const noexcept
{
    return kNAME;
}

IPluginV3* PrRoIPoolPlugin::clone() noexcept
{
    return new (std::nothrow) PrRoIPoolPlugin(*this);
}

int32_t PrRoIPoolPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    std::optional<PrRoIPoolShape> const shape = kernelShape(inputDesc, inputCount(), 1);
    if (!shape || inputs == nullptr || outputs == nullptr)
    {
        return kFAILURE;
    }
    return launchForTypes(kNAME, inputDesc, [&](auto featureTag, auto roisTag) {
        using T = typename decltype(featureTag)::type;
        using R = typename decltype(roisTag)::type;
        return prroiPoolForwardCuda<T, R>(static_cast<T const*>(inputs[0]), static_cast<R const*>(inputs[1]),
            static_cast<T*>(outputs[0]), *shape, stream);
    });
}

int32_t PrRoIPoolPlugin::inputCount() const noexcept
{
    return 2;
}

int32_t PrRoIPoolPlugin::outputTypeSource() const noexcept
{
    return 0;
}

bool PrRoIPoolPlugin::outputShape(DimsExprs const* inputs, DimsExprs& output, IExprBuilder& exprBuilder) const noexcept
{
    output.nbDims = 4;
    output.d[0] = inputs[1].d[0];
    output.d[1] = inputs[0].d[1];
    output.d[2] = exprBuilder.constant(params().pooledHeight);
    output.d[3] = exprBuilder.constant(params().pooledWidth);
    return output.d[2] != nullptr && output.d[3] != nullptr;
}

// ---------------------------------------------------------------------------------------------------------------------
// PrRoIPoolCoordGradPlugin

char const* PrRoIPoolCoordGradPlugin::getPluginName() const noexcept
{
    return kNAME;
}

IPluginV3* PrRoIPoolCoordGradPlugin::clone() noexcept
{
    return new (std::nothrow) PrRoIPoolCoordGradPlugin(*this);
}

int32_t PrRoIPoolCoordGradPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    std::optional<PrRoIPoolShape> const shape = kernelShape(inputDesc, inputCount(), 1);
    if (!shape || inputs == nullptr || outputs == nullptr)
    {
        return kFAILURE;
    }
    return launchForTypes(kNAME, inputDesc, [&](auto featureTag, auto roisTag) {
        using T = typename decltype(featureTag)::type;
        using R = typename decltype(roisTag)::type;
        return prroiPoolCoordGradCuda<T, R>(static_cast<T const*>(inputs[0]), static_cast<R const*>(inputs[1]),
            static_cast<T const*>(inputs[2]), static_cast<R*>(outputs[0]), *shape, stream);
    });
}

int32_t PrRoIPoolCoordGradPlugin::inputCount() const noexcept
{
    return 3;
}

int32_t PrRoIPoolCoordGradPlugin::outputTypeSource() const noexcept
{
    return 1;
}

bool PrRoIPoolCoordGradPlugin::checkExtraInputDims(Dims const* dims, bool allowUnknown) const noexcept
{
    Dims const& features = dims[0];
    Dims const& rois = dims[1];
    Dims const& gradOutput = dims[2];
    bool const valid = gradOutput.nbDims == 4 && extentsMatch(gradOutput.d[0], rois.d[0], allowUnknown)
        && extentsMatch(gradOutput.d[1], features.d[1], allowUnknown)
        && extentsMatch(gradOutput.d[2], params().pooledHeight, allowUnknown)
        && extentsMatch(gradOutput.d[3], params().pooledWidth, allowUnknown);
    if (!valid)
    {
        reportError("%s: grad_output must be (K, C, %" PRId32 ", %" PRId32 ") with K from rois %s and C from features "
                    "%s, got %s",
            kNAME, params().pooledHeight, params().pooledWidth, describe(rois).text, describe(features).text,
            describe(gradOutput).text);
    }
    return valid;
}

bool PrRoIPoolCoordGradPlugin::outputShape(
    DimsExprs const* inputs, DimsExprs& output, IExprBuilder& /*exprBuilder*/) const noexcept
{
    output = inputs[1];
    return true;
}

} // namespace iounet

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static iounet::PrRoIPoolPluginCreator forward;
    static iounet::PrRoIPoolCoordGradPluginCreator coordGrad;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&forward, &coordGrad};
    nbCreators = static_cast<int32_t>(std::size(creators));
    return creators;
}

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    nvinfer1::ILoggerFinder* none = nullptr;
    iounet::gLoggerFinder.compare_exchange_strong(none, finder);
}

extern "C" char const* iounetPluginLibraryVersion()
{
    return iounet::kPRROI_POOL_LIBRARY_VERSION;
}
