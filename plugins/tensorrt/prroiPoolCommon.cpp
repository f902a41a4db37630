// The PrRoIPool plugins' rules, independent of the TensorRT plugin interface, and the library-wide entry points.
#include "prroiPoolCommon.h"

#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::IExprBuilder;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace iounet
{
namespace
{

constexpr int64_t kROI_COLUMNS = 5;
constexpr char kPOOLED_HEIGHT[] = "pooled_height";
constexpr char kPOOLED_WIDTH[] = "pooled_width";
constexpr char kSPATIAL_SCALE[] = "spatial_scale";

#if IOUNET_TRT_LOGGER_FINDER
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

//! TensorRT's logger, if the library was given a logger finder and it finds one.
nvinfer1::ILogger* findLogger() noexcept
{
    nvinfer1::ILoggerFinder* const finder = gLoggerFinder.load();
    if (finder == nullptr)
    {
        return nullptr;
    }
    try
    {
        return finder->findLogger();
    }
    catch (...)
    {
        return nullptr;
    }
}
#else
//! TensorRT 8.5 gives plugin libraries no logger.
nvinfer1::ILogger* findLogger() noexcept
{
    return nullptr;
}
#endif

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
        used += std::snprintf(out.text + used, sizeof(out.text) - used, i == 0 ? "%" PRId64 : ", %" PRId64,
            static_cast<int64_t>(dims.d[i]));
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

//! If the field has the given type, reads its one value, stored as a Stored, into value and returns true; else
//! returns false and leaves value as it is.
template <typename Stored, typename Value>
bool readAs(PluginField const& field, PluginFieldType type, Value& value) noexcept
{
    if (field.type != type)
    {
        return false;
    }
    Stored stored{};
    std::memcpy(&stored, field.data, sizeof(stored));
    value = static_cast<Value>(stored);
    return true;
}

//! Reads a positive int32 from a one-value kINT32 (or, from TensorRT 10, kINT64) field; returns what is wrong, or
//! nullptr.
char const* readPositive(PluginField const& field, int32_t& value) noexcept
{
    int64_t wide = 0;
#if NV_TENSORRT_MAJOR >= 10
    if (!readAs<int32_t>(field, PluginFieldType::kINT32, wide)
        && !readAs<int64_t>(field, PluginFieldType::kINT64, wide))
    {
        return "must be an INT32 or INT64 field";
    }
#else
    if (!readAs<int32_t>(field, PluginFieldType::kINT32, wide))
    {
        return "must be an INT32 field";
    }
#endif
    if (wide <= 0 || wide > std::numeric_limits<int32_t>::max())
    {
        return "must be a positive 32-bit integer";
    }
    value = static_cast<int32_t>(wide);
    return nullptr;
}

//! Reads a positive finite float from a one-value kFLOAT32 or kFLOAT64 field; returns what is wrong, or nullptr.
char const* readPositive(PluginField const& field, float& value) noexcept
{
    float narrow = 0.0F;
    if (!readAs<float>(field, PluginFieldType::kFLOAT32, narrow)
        && !readAs<double>(field, PluginFieldType::kFLOAT64, narrow))
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

//! Reads the attribute called name, one positive value (readPositive), into value; returns what is wrong, or nullptr.
template <typename Value>
char const* readAttribute(PluginFieldCollection const& fc, char const* name, Value& value) noexcept
{
    PluginField const* const field = findField(fc, name);
    if (field == nullptr)
    {
        return "is missing";
    }
    if (field->data == nullptr || field->length != 1)
    {
        return "must hold exactly one value";
    }
    return readPositive(*field, value);
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

char const* prroiPoolPluginName(PrRoIPoolKind kind) noexcept
{
    return kind == PrRoIPoolKind::kFORWARD ? "PrRoIPool" : "PrRoIPoolCoordGrad";
}

void reportError(char const* format, ...) noexcept
{
    char message[512];
    va_list args;
    va_start(args, format);
    std::vsnprintf(message, sizeof(message), format, args);
    va_end(args);

    if (nvinfer1::ILogger* const logger = findLogger())
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, message);
    }
    else
    {
        std::fprintf(stderr, "[iounet TensorRT plugin] error: %s\n", message);
    }
}

PluginFieldCollection const* prroiPoolFieldNames() noexcept
{
    static std::array<PluginField, 3> const fields{PluginField(kPOOLED_HEIGHT, nullptr, PluginFieldType::kINT32, 1),
        PluginField(kPOOLED_WIDTH, nullptr, PluginFieldType::kINT32, 1),
        PluginField(kSPATIAL_SCALE, nullptr, PluginFieldType::kFLOAT32, 1)};
    static PluginFieldCollection const collection{static_cast<int32_t>(fields.size()), fields.data()};
    return &collection;
}

std::array<PluginField, 3> prroiPoolFields(PrRoIPoolParams const& params) noexcept
{
    return {PluginField(kPOOLED_HEIGHT, &params.pooledHeight, PluginFieldType::kINT32, 1),
        PluginField(kPOOLED_WIDTH, &params.pooledWidth, PluginFieldType::kINT32, 1),
        PluginField(kSPATIAL_SCALE, &params.spatialScale, PluginFieldType::kFLOAT32, 1)};
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
    auto const read = [&](char const* attribute, auto& value) {
        if (char const* const problem = readAttribute(*fc, attribute, value))
        {
            reportError("%s node '%s': attribute '%s' %s", pluginName, node, attribute, problem);
            valid = false;
        }
    };
    read(kPOOLED_HEIGHT, params.pooledHeight);
    read(kPOOLED_WIDTH, params.pooledWidth);
    read(kSPATIAL_SCALE, params.spatialScale);
    return valid ? std::optional<PrRoIPoolParams>(params) : std::nullopt;
}

// ---------------------------------------------------------------------------------------------------------------------
// PrRoIPoolOp

PrRoIPoolOp::PrRoIPoolOp(PrRoIPoolKind kind, PrRoIPoolParams const& params) noexcept
    : mKind(kind)
    , mParams(params)
{
}

int32_t PrRoIPoolOp::inputCount() const noexcept
{
    return mKind == PrRoIPoolKind::kFORWARD ? 2 : 3;
}

int32_t PrRoIPoolOp::outputTypeSource() const noexcept
{
    return mKind == PrRoIPoolKind::kFORWARD ? 0 : 1;
}

bool PrRoIPoolOp::checkInputDims(Dims const* dims, int32_t nbInputs, int32_t nbOutputs, bool allowUnknown) const
    noexcept
{
    if (nbInputs != inputCount() || nbOutputs != 1)
    {
        reportError("%s: expects %" PRId32 " inputs and 1 output, got %" PRId32 " and %" PRId32, name(), inputCount(),
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
            reportError("%s: input %" PRId32 " has shape %s; extents must lie in [0, 2^31)", name(), i,
                describe(dims[i]).text);
            return false;
        }
    }
    if (dims[0].nbDims != 4)
    {
        reportError("%s: features must be (N, C, H, W), got %s", name(), describe(dims[0]).text);
        return false;
    }
    if (dims[1].nbDims != 2 || !extentsMatch(dims[1].d[1], kROI_COLUMNS, allowUnknown))
    {
        reportError("%s: rois must be (K, 5), got %s", name(), describe(dims[1]).text);
        return false;
    }
    return mKind == PrRoIPoolKind::kFORWARD || checkGradOutputDims(dims, allowUnknown);
}

bool PrRoIPoolOp::checkGradOutputDims(Dims const* dims, bool allowUnknown) const noexcept
{
    Dims const& features = dims[0];
    Dims const& rois = dims[1];
    Dims const& gradOutput = dims[2];
    bool const valid = gradOutput.nbDims == 4 && extentsMatch(gradOutput.d[0], rois.d[0], allowUnknown)
        && extentsMatch(gradOutput.d[1], features.d[1], allowUnknown)
        && extentsMatch(gradOutput.d[2], mParams.pooledHeight, allowUnknown)
        && extentsMatch(gradOutput.d[3], mParams.pooledWidth, allowUnknown);
    if (!valid)
    {
        reportError("%s: grad_output must be (K, C, %" PRId32 ", %" PRId32 ") with K from rois %s and C from features "
                    "%s, got %s",
            name(), mParams.pooledHeight, mParams.pooledWidth, describe(rois).text, describe(features).text,
            describe(gradOutput).text);
    }
    return valid;
}

std::optional<DataType> PrRoIPoolOp::outputType(DataType const* inputTypes, int32_t nbInputs, int32_t nbOutputs) const
    noexcept
{
    if (inputTypes == nullptr || nbInputs != inputCount() || nbOutputs != 1)
    {
        reportError("%s: expects %" PRId32 " inputs and 1 output, got %" PRId32 " and %" PRId32, name(), inputCount(),
            nbInputs, nbOutputs);
        return std::nullopt;
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
            name(), typeName(inputTypes[0]), typeName(inputTypes[1]), nbInputs > 2 ? " and grad_output" : "");
        return std::nullopt;
    }
    return inputTypes[outputTypeSource()];
}

bool PrRoIPoolOp::supportsTensor(int32_t pos, int32_t nbInputs, PluginTensorDesc const& desc, DataType features,
    DataType outputSource) const noexcept
{
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
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
        return desc.type == outputSource;
    }
    return desc.type == features;
}

bool PrRoIPoolOp::outputShape(DimsExprs const* inputs, int32_t nbInputs, int32_t nbOutputs, DimsExprs& output,
    IExprBuilder& exprBuilder) const noexcept
{
    std::array<Dims, kMAX_INPUTS> dims{};
    for (int32_t i = 0; inputs != nullptr && i < std::min<int32_t>(nbInputs, kMAX_INPUTS); ++i)
    {
        dims[i] = constantDims(inputs[i]);
    }
    if (inputs == nullptr || !checkInputDims(dims.data(), nbInputs, nbOutputs, true))
    {
        return false;
    }
    if (mKind == PrRoIPoolKind::kCOORD_GRAD)
    {
        output = inputs[1];
        return true;
    }
    output.nbDims = 4;
    output.d[0] = inputs[1].d[0];
    output.d[1] = inputs[0].d[1];
    output.d[2] = exprBuilder.constant(mParams.pooledHeight);
    output.d[3] = exprBuilder.constant(mParams.pooledWidth);
    if (output.d[2] == nullptr || output.d[3] == nullptr)
    {
        reportError("%s: could not build the output shape", name());
        return false;
    }
    return true;
}

std::optional<PrRoIPoolShape> PrRoIPoolOp::kernelShape(
    PluginTensorDesc const* in, int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    if (in == nullptr || !checkInputs(in, nbInputs, nbOutputs, false))
    {
        return std::nullopt;
    }
    Dims const& features = in[0].dims;
    return PrRoIPoolShape{static_cast<int32_t>(features.d[0]), static_cast<int32_t>(features.d[1]),
        static_cast<int32_t>(features.d[2]), static_cast<int32_t>(features.d[3]), static_cast<int32_t>(in[1].dims.d[0]),
        mParams.pooledHeight, mParams.pooledWidth, mParams.spatialScale};
}

int32_t PrRoIPoolOp::enqueue(PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs,
    cudaStream_t stream) const noexcept
{
    std::optional<PrRoIPoolShape> const shape = kernelShape(inputDesc, inputCount(), 1);
    if (!shape || inputs == nullptr || outputs == nullptr)
    {
        return kFAILURE;
    }
    if (mKind == PrRoIPoolKind::kFORWARD)
    {
        return launchForTypes(name(), inputDesc, [&](auto featureTag, auto roisTag) {
            using T = typename decltype(featureTag)::type;
            using R = typename decltype(roisTag)::type;
            return prroiPoolForwardCuda<T, R>(static_cast<T const*>(inputs[0]), static_cast<R const*>(inputs[1]),
                static_cast<T*>(outputs[0]), *shape, stream);
        });
    }
    return launchForTypes(name(), inputDesc, [&](auto featureTag, auto roisTag) {
        using T = typename decltype(featureTag)::type;
        using R = typename decltype(roisTag)::type;
        return prroiPoolCoordGradCuda<T, R>(static_cast<T const*>(inputs[0]), static_cast<R const*>(inputs[1]),
            static_cast<T const*>(inputs[2]), static_cast<R*>(outputs[0]), *shape, stream);
    });
}

} // namespace iounet

#if IOUNET_TRT_LOGGER_FINDER
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    nvinfer1::ILoggerFinder* none = nullptr;
    iounet::gLoggerFinder.compare_exchange_strong(none, finder);
}
#endif

extern "C" char const* iounetPluginLibraryVersion()
{
    return iounet::kPRROI_POOL_LIBRARY_VERSION;
}
