// Host tests of the PrRoIPool TensorRT plugins: no GPU, no libnvinfer. They test the plugin interface the headers
// select, IPluginV3 (TensorRT 10 and later) or IPluginV2DynamicExt (8.5, 8.6), and through it the rules the two
// share (prroiPoolCommon.h); each concept is tested once, through a few adapters over the two interfaces. The plugin
// objects are linked in; the two plugin libraries are also loaded the way TensorRT loads them, with this program
// playing libnvinfer's registry. Built a second time on the host emulation of CUDA (IOUNET_TEST_CUDA_HOST), it also
// enqueues both plugins with data.
#include "prroiPoolCommon.h"

#if IOUNET_TRT_PLUGIN_V3
#include "prroiPoolPlugin.h"
#else
#include "prroiPoolPluginV2.h"
#endif

#if IOUNET_TEST_CUDA_HOST
#include "prroi_oracle.h"
#endif

#include <dlfcn.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IDimensionExpr;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace
{

int gPassed = 0;
int gFailed = 0;

#define CHECK(condition) check((condition), #condition, __LINE__)

void check(bool ok, char const* what, int line)
{
    if (ok)
    {
        ++gPassed;
        return;
    }
    ++gFailed;
    std::printf("FAILED line %d: %s\n", line, what);
}

// ---------------------------------------------------------------------------------------------------------------------
// The errors the plugins report, counted so that expected errors are checked instead of printed.

#if IOUNET_TRT_LOGGER_FINDER
class CountingLogger final : public nvinfer1::ILogger
{
public:
    void log(Severity severity, char const* /*msg*/) noexcept override
    {
        errors += severity <= Severity::kERROR ? 1 : 0;
    }

    int errors{0};
};

class TestLoggerFinder final : public nvinfer1::ILoggerFinder
{
public:
    nvinfer1::ILogger* findLogger() override
    {
        return &logger;
    }

    CountingLogger logger;
};

TestLoggerFinder gLoggerFinder;

//! Number of errors the plugins report while call runs: the ones logged to the logger given with setLoggerFinder.
int errorsDuring(std::function<void()> const& call)
{
    int const before = gLoggerFinder.logger.errors;
    call();
    return gLoggerFinder.logger.errors - before;
}
#else
//! Errors read from stderr so far, by every capture including nested ones.
int gCapturedErrors = 0;

//! Number of errors the plugins report while call runs: TensorRT 8.5 gives plugins no logger, so they print their
//! errors to stderr, which is captured meanwhile.
int errorsDuring(std::function<void()> const& call)
{
    static char const prefix[] = "[iounet TensorRT plugin] error: ";
    int const before = gCapturedErrors;
    std::fflush(stderr);
    std::FILE* capture = std::tmpfile();
    int const saved = dup(STDERR_FILENO);
    if (capture == nullptr || saved < 0 || dup2(fileno(capture), STDERR_FILENO) < 0)
    {
        std::printf("could not capture stderr\n");
        std::abort();
    }
    call();
    std::fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    std::rewind(capture);
    char line[1024];
    while (std::fgets(line, sizeof(line), capture) != nullptr)
    {
        gCapturedErrors += std::strncmp(line, prefix, sizeof(prefix) - 1) == 0 ? 1 : 0;
    }
    std::fclose(capture);
    return gCapturedErrors - before;
}
#endif

//! True when call() returns true and reports at least one error.
bool failsWithError(std::function<bool()> const& call)
{
    bool failed = false;
    int const errors = errorsDuring([&] { failed = call(); });
    return failed && errors > 0;
}

// ---------------------------------------------------------------------------------------------------------------------
// Dimension expressions: TensorRT's IExprBuilder and IDimensionExpr over test implementations of their apiv classes.

//! The type of extents: int32_t up to TensorRT 8.6, int64_t from 10.
using Extent = std::decay_t<decltype(std::declval<Dims&>().d[0])>;

//! A constant, or a symbol whose value is unknown at build time.
class TestExpr final : public IDimensionExpr
{
public:
    TestExpr(bool constant, Extent value)
        : mState(constant, value)
    {
        mImpl = &mState;
    }

private:
    class State final : public nvinfer1::apiv::VDimensionExpr
    {
    public:
        State(bool constant, Extent value)
            : mConstant(constant)
            , mValue(value)
        {
        }

        bool isConstant() const override
        {
            return mConstant;
        }

        Extent getConstantValue() const override
        {
            return mConstant ? mValue : std::numeric_limits<Extent>::min();
        }

#if NV_TENSORRT_MAJOR >= 10
        bool isSizeTensor() const override
        {
            return false;
        }
#endif

    private:
        bool mConstant;
        Extent mValue;
    };

    State mState;
};

//! Builds constants and symbols; operations are not needed by these plugins and return nullptr.
class TestExprBuilder final : public nvinfer1::IExprBuilder
{
public:
    TestExprBuilder()
    {
        mImpl = &mState;
    }

    IDimensionExpr const* symbol()
    {
        return mState.make(false, 0);
    }

    //! Shape expressions: a number >= 0 is a constant, -1 a fresh symbol.
    DimsExprs exprs(std::initializer_list<Extent> extents)
    {
        DimsExprs out{};
        for (Extent extent : extents)
        {
            out.d[out.nbDims++] = extent >= 0 ? constant(extent) : symbol();
        }
        return out;
    }

private:
    class State final : public nvinfer1::apiv::VExprBuilder
    {
    public:
        IDimensionExpr const* constant(Extent value) override
        {
            return make(true, value);
        }

        IDimensionExpr const* operation(nvinfer1::DimensionOperation /*op*/, IDimensionExpr const& /*first*/,
            IDimensionExpr const& /*second*/) override
        {
            return nullptr;
        }

#if NV_TENSORRT_MAJOR >= 10
        IDimensionExpr const* declareSizeTensor(
            int32_t /*outputIndex*/, IDimensionExpr const& /*opt*/, IDimensionExpr const& /*upper*/) override
        {
            return nullptr;
        }
#endif

        IDimensionExpr const* make(bool constant, Extent value)
        {
            mExprs.push_back(std::make_unique<TestExpr>(constant, value));
            return mExprs.back().get();
        }

    private:
        std::vector<std::unique_ptr<TestExpr>> mExprs;
    };

    State mState;
};

bool isConstant(IDimensionExpr const* expr, Extent value)
{
    return expr != nullptr && expr->isConstant() && expr->getConstantValue() == value;
}

// ---------------------------------------------------------------------------------------------------------------------
// Helpers

Dims makeDims(std::initializer_list<int64_t> extents)
{
    Dims dims{};
    for (int64_t extent : extents)
    {
        dims.d[dims.nbDims++] = static_cast<Extent>(extent);
    }
    return dims;
}

PluginTensorDesc makeDesc(Dims const& dims, DataType type = DataType::kFLOAT)
{
    return PluginTensorDesc{dims, type, TensorFormat::kLINEAR, -1.0F};
}

DynamicPluginTensorDesc makeDynamicDesc(Dims const& dims, DataType type = DataType::kFLOAT)
{
    DynamicPluginTensorDesc desc{};
    desc.desc = makeDesc(dims, type);
    desc.min = dims;
    desc.max = dims;
    return desc;
}

//! Attribute fields over values owned by this object.
struct Attributes
{
    int32_t pooledHeight{7};
    int32_t pooledWidth{5};
    float spatialScale{0.25F};
    std::vector<PluginField> fields{PluginField("pooled_height", &pooledHeight, PluginFieldType::kINT32, 1),
        PluginField("pooled_width", &pooledWidth, PluginFieldType::kINT32, 1),
        PluginField("spatial_scale", &spatialScale, PluginFieldType::kFLOAT32, 1)};

    Attributes() = default;
    Attributes(Attributes const&) = delete;

    PluginFieldCollection collection() const
    {
        return PluginFieldCollection{static_cast<int32_t>(fields.size()), fields.data()};
    }

    PluginField& field(char const* name)
    {
        for (PluginField& f : fields)
        {
            if (std::strcmp(f.name, name) == 0)
            {
                return f;
            }
        }
        std::abort();
    }
};

bool sameParams(iounet::PrRoIPoolParams const& a, iounet::PrRoIPoolParams const& b)
{
    return a.pooledHeight == b.pooledHeight && a.pooledWidth == b.pooledWidth && a.spatialScale == b.spatialScale;
}

// ---------------------------------------------------------------------------------------------------------------------
// The two interfaces, as the tests below use them.

#if IOUNET_TRT_PLUGIN_V3
using Creator = nvinfer1::IPluginCreatorV3One;
using Plugin = iounet::PrRoIPoolPlugin;

//! Tensor descriptions as supportsFormatCombination gets them.
using FormatDesc = DynamicPluginTensorDesc;

FormatDesc makeFormatDesc(DataType type, TensorFormat format)
{
    FormatDesc desc = makeDynamicDesc(makeDims({1}), type);
    desc.desc.format = format;
    return desc;
}

//! The library's creators entry point, and the one of the other interface, which the library must not export.
using CreatorsEntry = nvinfer1::IPluginCreatorInterface* const* (*) (int32_t&);
constexpr char kCREATORS_ENTRY[] = "getCreators";
constexpr char kOTHER_CREATORS_ENTRY[] = "getPluginCreators";
CreatorsEntry const kLINKED_CREATORS_ENTRY = getCreators;

struct PluginDeleter
{
    void operator()(Plugin* plugin) const
    {
        delete plugin;
    }
};

//! A plugin from creator in the build phase, or nullptr.
Plugin* createPlugin(Creator* creator, PluginFieldCollection const* fc)
{
    return dynamic_cast<Plugin*>(creator->createPlugin("node", fc, nvinfer1::TensorRTPhase::kBUILD));
}

char const* pluginName(Plugin const& plugin)
{
    return plugin.getPluginName();
}

//! The output type for the input types with nbOutputs outputs, or nothing where the plugin refuses them.
std::optional<DataType> outputType(Plugin& plugin, std::vector<DataType> const& inputTypes, int32_t nbOutputs = 1)
{
    DataType out = DataType::kINT8;
    int32_t const status = plugin.getOutputDataTypes(
        &out, nbOutputs, inputTypes.data(), static_cast<int32_t>(inputTypes.size()));
    return status == 0 ? std::optional<DataType>(out) : std::nullopt;
}

//! The output shape of the inputs; false where the plugin refuses them.
bool outputShape(Plugin& plugin, std::vector<DimsExprs> const& inputs, DimsExprs& out, TestExprBuilder& builder)
{
    return plugin.getOutputShapes(inputs.data(), static_cast<int32_t>(inputs.size()), nullptr, 0, &out, 1, builder)
        == 0;
}

//! configurePlugin; false where the plugin refuses the descs.
bool configure(Plugin& plugin, std::vector<DynamicPluginTensorDesc> const& in, DynamicPluginTensorDesc const& out,
    int32_t nbOutputs = 1)
{
    return plugin.configurePlugin(in.data(), static_cast<int32_t>(in.size()), &out, nbOutputs) == 0;
}

//! Whether the plugin accepts concrete input shapes when they change (onShapeChange).
bool acceptsShapes(Plugin& plugin, std::vector<PluginTensorDesc> const& in, PluginTensorDesc const& out,
    int32_t nbOutputs = 1)
{
    return plugin.onShapeChange(in.data(), static_cast<int32_t>(in.size()), &out, nbOutputs) == 0;
}

//! Whether the output type is refused for float types no kernel takes together (float32 features, float16 rois).
constexpr bool kREFUSES_MIXED_TYPES = true;
#else
using Creator = nvinfer1::IPluginCreator;
using Plugin = iounet::PrRoIPoolPluginV2;

//! Tensor descriptions as supportsFormatCombination gets them.
using FormatDesc = PluginTensorDesc;

FormatDesc makeFormatDesc(DataType type, TensorFormat format)
{
    FormatDesc desc = makeDesc(makeDims({1}), type);
    desc.format = format;
    return desc;
}

//! The library's creators entry point, and the one of the other interface, which the library must not export.
using CreatorsEntry = nvinfer1::IPluginCreator* const* (*) (int32_t&);
constexpr char kCREATORS_ENTRY[] = "getPluginCreators";
constexpr char kOTHER_CREATORS_ENTRY[] = "getCreators";
CreatorsEntry const kLINKED_CREATORS_ENTRY = getPluginCreators;

struct PluginDeleter
{
    void operator()(Plugin* plugin) const
    {
        plugin->destroy();
    }
};

//! A plugin from creator, or nullptr.
Plugin* createPlugin(Creator* creator, PluginFieldCollection const* fc)
{
    return dynamic_cast<Plugin*>(creator->createPlugin("node", fc));
}

char const* pluginName(Plugin const& plugin)
{
    return plugin.getPluginType();
}

//! The type of the last of nbOutputs outputs for the input types, or nothing where the plugin reports an error.
std::optional<DataType> outputType(Plugin& plugin, std::vector<DataType> const& inputTypes, int32_t nbOutputs = 1)
{
    DataType out = DataType::kINT8;
    int const errors = errorsDuring([&] {
        out = plugin.getOutputDataType(nbOutputs - 1, inputTypes.data(), static_cast<int32_t>(inputTypes.size()));
    });
    return errors == 0 ? std::optional<DataType>(out) : std::nullopt;
}

//! The output shape of the inputs; false where the plugin reports an error, after which the shape must be empty.
bool outputShape(Plugin& plugin, std::vector<DimsExprs> const& inputs, DimsExprs& out, TestExprBuilder& builder)
{
    int const errors = errorsDuring(
        [&] { out = plugin.getOutputDimensions(0, inputs.data(), static_cast<int32_t>(inputs.size()), builder); });
    CHECK(errors == 0 || out.nbDims == 0);
    return errors == 0;
}

//! configurePlugin; false where the plugin reports an error.
bool configure(Plugin& plugin, std::vector<DynamicPluginTensorDesc> const& in, DynamicPluginTensorDesc const& out,
    int32_t nbOutputs = 1)
{
    return errorsDuring([&] { plugin.configurePlugin(in.data(), static_cast<int32_t>(in.size()), &out, nbOutputs); })
        == 0;
}

//! Whether the plugin accepts concrete input shapes: IPluginV2DynamicExt has no call for them, enqueue checks them
//! with the op's kernelShape.
bool acceptsShapes(Plugin& plugin, std::vector<PluginTensorDesc> const& in, PluginTensorDesc const& /*out*/,
    int32_t nbOutputs = 1)
{
    return plugin.op().kernelShape(in.data(), static_cast<int32_t>(in.size()), nbOutputs).has_value();
}

//! Whether the output type is refused for float types no kernel takes together (float32 features, float16 rois):
//! IPluginV2DynamicExt leaves them to supportsFormatCombination, which picks the types the plugin runs with.
constexpr bool kREFUSES_MIXED_TYPES = false;
#endif

using PluginPtr = std::unique_ptr<Plugin, PluginDeleter>;

//! The creators a creators entry point lists, as the interface's creator type.
template <typename Listed>
std::vector<Creator*> listCreators(Listed* const* list, int32_t count)
{
    std::vector<Creator*> out;
    for (int32_t i = 0; list != nullptr && i < count; ++i)
    {
        out.push_back(static_cast<Creator*>(list[i]));
    }
    return out;
}

struct Creators
{
    Creator* forward;
    Creator* coordGrad;
};

Creators creators()
{
    int32_t count = 0;
    auto const* const listed = kLINKED_CREATORS_ENTRY(count);
    std::vector<Creator*> const list = listCreators(listed, count);
    return Creators{list.at(0), list.at(1)};
}

PluginPtr create(Creator* creator, PluginFieldCollection const* fc)
{
    return PluginPtr(createPlugin(creator, fc));
}

PluginPtr create(Creator* creator)
{
    Attributes const attributes;
    PluginFieldCollection const fc = attributes.collection();
    return create(creator, &fc);
}

// ---------------------------------------------------------------------------------------------------------------------
// Tests of both interfaces

void testCreators()
{
    int32_t count = -1;
    auto const* const listed = kLINKED_CREATORS_ENTRY(count);
    std::vector<Creator*> const list = listCreators(listed, count);
    CHECK(count == 2 && list.size() == 2);
    char const* const names[] = {"PrRoIPool", "PrRoIPoolCoordGrad"};
    for (size_t i = 0; i < list.size() && i < 2; ++i)
    {
        Creator* creator = list[i];
#if IOUNET_TRT_PLUGIN_V3
        CHECK(std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
#endif
        CHECK(std::strcmp(creator->getPluginName(), names[i]) == 0);
        CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
        CHECK(std::strcmp(creator->getPluginNamespace(), "") == 0);

        PluginFieldCollection const* fc = creator->getFieldNames();
        CHECK(fc != nullptr && fc->nbFields == 3);
        char const* const fieldNames[] = {"pooled_height", "pooled_width", "spatial_scale"};
        PluginFieldType const fieldTypes[]
            = {PluginFieldType::kINT32, PluginFieldType::kINT32, PluginFieldType::kFLOAT32};
        for (int32_t f = 0; fc != nullptr && f < fc->nbFields && f < 3; ++f)
        {
            CHECK(std::strcmp(fc->fields[f].name, fieldNames[f]) == 0);
            CHECK(fc->fields[f].type == fieldTypes[f]);
            CHECK(fc->fields[f].length == 1);
        }
    }
    CHECK(std::strcmp(iounetPluginLibraryVersion(), IOUNET_VERSION) == 0);
}

void testValidAttributes()
{
    for (Creator* creator : {creators().forward, creators().coordGrad})
    {
        Attributes attributes;
        PluginFieldCollection fc = attributes.collection();
        auto plugin = create(creator, &fc);
        CHECK(plugin != nullptr);
        CHECK(plugin && sameParams(plugin->op().params(), iounet::PrRoIPoolParams{7, 5, 0.25F}));
        CHECK(plugin && std::strcmp(pluginName(*plugin), creator->getPluginName()) == 0);
        CHECK(plugin && std::strcmp(plugin->getPluginVersion(), "1") == 0);
        CHECK(plugin && std::strcmp(plugin->getPluginNamespace(), "") == 0);
        CHECK(plugin && plugin->getNbOutputs() == 1);

        // What some ONNX parser versions hand over: doubles and, from TensorRT 10, 64-bit ints; unknown fields are
        // ignored.
        double const scale = 0.125;
        int32_t const extra = 1;
        attributes.field("spatial_scale") = PluginField("spatial_scale", &scale, PluginFieldType::kFLOAT64, 1);
        attributes.fields.emplace_back("plugin_version", &extra, PluginFieldType::kINT32, 1);
#if NV_TENSORRT_MAJOR >= 10
        int64_t const height = 3;
        int64_t const width = 2;
        attributes.field("pooled_height") = PluginField("pooled_height", &height, PluginFieldType::kINT64, 1);
        attributes.field("pooled_width") = PluginField("pooled_width", &width, PluginFieldType::kINT64, 1);
        iounet::PrRoIPoolParams const expected{3, 2, 0.125F};
#else
        iounet::PrRoIPoolParams const expected{7, 5, 0.125F};
#endif
        fc = attributes.collection();
        plugin = create(creator, &fc);
        CHECK(plugin && sameParams(plugin->op().params(), expected));
    }
}

//! How the tests make a plugin from attributes.
using CreateFunction = PluginPtr (*)(Creator* creator, PluginFieldCollection const* fc);

void testInvalidAttributes(CreateFunction create)
{
    int32_t const zero = 0;
    int32_t const negative = -2;
    int32_t const pair[] = {7, 7};
    float const zeroScale = 0.0F;
    float const negativeScale = -0.5F;
    float const nanScale = std::nanf("");
    float const infScale = std::numeric_limits<float>::infinity();
    double const underflowScale = 1e-60;
    double const overflowScale = 1e300;
    char const text[] = "7";

    using Edit = std::function<void(Attributes&)>;
    std::vector<Edit> const edits{
        [](Attributes& a) { a.fields.erase(a.fields.begin()); },
        [](Attributes& a) { a.fields.erase(a.fields.begin() + 1); },
        [](Attributes& a) { a.fields.pop_back(); },
        [](Attributes& a) { a.fields.clear(); },
        [&](Attributes& a) { a.field("pooled_height").data = &zero; },
        [&](Attributes& a) { a.field("pooled_width").data = &negative; },
        [&](Attributes& a) {
            a.field("pooled_height") = PluginField("pooled_height", pair, PluginFieldType::kINT32, 2);
        },
        [&](Attributes& a) { a.field("pooled_width") = PluginField("pooled_width", text, PluginFieldType::kCHAR, 1); },
        [&](Attributes& a) { a.field("pooled_width").type = PluginFieldType::kFLOAT32; },
        [&](Attributes& a) { a.field("pooled_height").data = nullptr; },
        [&](Attributes& a) { a.field("spatial_scale").data = &zeroScale; },
        [&](Attributes& a) { a.field("spatial_scale").data = &negativeScale; },
        [&](Attributes& a) { a.field("spatial_scale").data = &nanScale; },
        [&](Attributes& a) { a.field("spatial_scale").data = &infScale; },
        [&](Attributes& a) { a.field("spatial_scale").type = PluginFieldType::kINT32; },
        [&](Attributes& a) { a.field("spatial_scale").length = 0; },
        [&](Attributes& a) {
            a.field("spatial_scale") = PluginField("spatial_scale", &underflowScale, PluginFieldType::kFLOAT64, 1);
        },
        [&](Attributes& a) {
            a.field("spatial_scale") = PluginField("spatial_scale", &overflowScale, PluginFieldType::kFLOAT64, 1);
        },
    };
#if NV_TENSORRT_MAJOR >= 10
    int64_t const tooWide = int64_t{1} << 31;
    std::vector<Edit> const wideEdits{[&](Attributes& a) {
        a.field("pooled_height") = PluginField("pooled_height", &tooWide, PluginFieldType::kINT64, 1);
    }};
#else
    int16_t const narrow = 7;
    std::vector<Edit> const wideEdits{[&](Attributes& a) {
        a.field("pooled_height") = PluginField("pooled_height", &narrow, PluginFieldType::kINT16, 1);
    }};
#endif
    for (Creator* creator : {creators().forward, creators().coordGrad})
    {
        for (std::vector<Edit> const* list : {&edits, &wideEdits})
        {
            for (Edit const& edit : *list)
            {
                Attributes attributes;
                edit(attributes);
                PluginFieldCollection const fc = attributes.collection();
                CHECK(failsWithError([&] { return create(creator, &fc) == nullptr; }));
            }
        }
        CHECK(failsWithError([&] { return create(creator, nullptr) == nullptr; }));
        PluginFieldCollection const nullFields{3, nullptr};
        CHECK(failsWithError([&] { return create(creator, &nullFields) == nullptr; }));
    }
}

void testOutputDataTypes()
{
    auto forward = create(creators().forward);
    auto coordGrad = create(creators().coordGrad);
    DataType const f32 = DataType::kFLOAT;
    DataType const f16 = DataType::kHALF;
    DataType const i32 = DataType::kINT32;

    auto forwardType = [&](DataType features, DataType rois) { return outputType(*forward, {features, rois}); };
    CHECK(forwardType(f32, f32) == f32);
    CHECK(forwardType(f16, f16) == f16);
    CHECK(forwardType(f16, f32) == f16);
    CHECK(failsWithError([&] { return !forwardType(i32, i32); }));
    CHECK(failsWithError([&] { return !forwardType(DataType::kINT8, f32); }));
#if NV_TENSORRT_MAJOR >= 10
    CHECK(failsWithError([&] { return !forwardType(DataType::kBF16, DataType::kBF16); }));
#endif

    auto gradType = [&](DataType features, DataType rois, DataType gradOutput) {
        return outputType(*coordGrad, {features, rois, gradOutput});
    };
    CHECK(gradType(f32, f32, f32) == f32);
    CHECK(gradType(f16, f16, f16) == f16);
    CHECK(gradType(f16, f32, f16) == f32);
    CHECK(failsWithError([&] { return !gradType(f32, i32, f32); }));

    // Types no kernel takes together, each with the type of the input the output follows.
    std::vector<std::pair<std::function<std::optional<DataType>()>, DataType>> const mixed{
        {[&] { return forwardType(f32, f16); }, f32},
        {[&] { return gradType(f16, f32, f32); }, f32},
        {[&] { return gradType(f32, f32, f16); }, f32},
        {[&] { return gradType(f32, f16, f32); }, f16},
    };
    for (auto const& [call, lenient] : mixed)
    {
        CHECK(kREFUSES_MIXED_TYPES ? failsWithError([&] { return !call(); }) : call() == lenient);
    }

    CHECK(failsWithError([&] { return !outputType(*coordGrad, {f32, f32}); }));
    CHECK(failsWithError([&] { return !outputType(*forward, {f32, f32}, 2); }));
}

void testOutputShapes()
{
    auto forward = create(creators().forward);
    auto coordGrad = create(creators().coordGrad);
    TestExprBuilder builder;

    // Dynamic N, H, W and K; C constant.
    DimsExprs const features = builder.exprs({-1, 256, -1, -1});
    DimsExprs const rois = builder.exprs({-1, 5});
    DimsExprs out{};
    CHECK(outputShape(*forward, {features, rois}, out, builder));
    CHECK(out.nbDims == 4);
    CHECK(out.d[0] == rois.d[0] && !out.d[0]->isConstant());
    CHECK(out.d[1] == features.d[1] && isConstant(out.d[1], 256));
    CHECK(isConstant(out.d[2], 7) && isConstant(out.d[3], 5));

    DimsExprs const gradOutput = {4, {rois.d[0], features.d[1], builder.constant(7), builder.constant(5)}};
    out = DimsExprs{};
    CHECK(outputShape(*coordGrad, {features, rois, gradOutput}, out, builder));
    CHECK(out.nbDims == 2 && out.d[0] == rois.d[0] && isConstant(out.d[1], 5));

    // Symbolic grad_output extents cannot be proven wrong at build time.
    CHECK(outputShape(*coordGrad, {features, rois, builder.exprs({-1, -1, -1, -1})}, out, builder));

    auto forwardFails = [&](DimsExprs const& f, DimsExprs const& r) {
        return failsWithError([&] { return !outputShape(*forward, {f, r}, out, builder); });
    };
    CHECK(forwardFails(builder.exprs({-1, 256, -1}), rois));
    CHECK(forwardFails(features, builder.exprs({-1, 4})));
    CHECK(forwardFails(features, builder.exprs({-1, 5, 1})));
    CHECK(forwardFails(features, builder.exprs({-1})));

    auto gradFails = [&](DimsExprs const& g) {
        return failsWithError([&] { return !outputShape(*coordGrad, {features, rois, g}, out, builder); });
    };
    CHECK(gradFails(builder.exprs({-1, 256, 5, 7})));
    CHECK(gradFails(builder.exprs({-1, 128, 7, 5})));
    CHECK(gradFails(builder.exprs({-1, 256, 7})));
    CHECK(failsWithError([&] { return !outputShape(*coordGrad, {features, rois}, out, builder); }));
}

//! Every (type, format) assignment of the plugin's tensors, asked the way TensorRT asks: position by position,
//! with only the positions before the asked one set (later ones hold garbage). Returns the accepted assignments.
std::vector<std::vector<DataType>> acceptedCombinations(Plugin& plugin, int32_t nbInputs)
{
    std::vector<DataType> const types{DataType::kFLOAT, DataType::kHALF, DataType::kINT8, DataType::kINT32,
        DataType::kBOOL,
#if NV_TENSORRT_MAJOR >= 10
        DataType::kBF16, DataType::kINT64
#endif
    };
    TensorFormat const formats[] = {TensorFormat::kLINEAR, TensorFormat::kHWC8, TensorFormat::kCHW32};
    int32_t const nbTypes = static_cast<int32_t>(types.size());
    int32_t const nbChoices = nbTypes * static_cast<int32_t>(std::size(formats));
    int32_t const nbTensors = nbInputs + 1;
    int64_t total = 1;
    for (int32_t i = 0; i < nbTensors; ++i)
    {
        total *= nbChoices;
    }

    std::vector<std::vector<DataType>> accepted;
    std::vector<FormatDesc> inOut(nbTensors);
    std::vector<FormatDesc> asked(nbTensors);
    for (int64_t index = 0; index < total; ++index)
    {
        bool linear = true;
        std::vector<DataType> combination;
        int64_t rest = index;
        for (int32_t pos = 0; pos < nbTensors; ++pos, rest /= nbChoices)
        {
            int32_t const choice = static_cast<int32_t>(rest % nbChoices);
            inOut[pos] = makeFormatDesc(types[choice % nbTypes], formats[choice / nbTypes]);
            linear = linear && choice / nbTypes == 0;
            combination.push_back(types[choice % nbTypes]);
        }
        bool supported = true;
        for (int32_t pos = 0; pos < nbTensors && supported; ++pos)
        {
            for (int32_t i = 0; i < nbTensors; ++i)
            {
                asked[i] = i <= pos ? inOut[i] : makeFormatDesc(DataType::kBOOL, TensorFormat::kCHW32);
            }
            supported = plugin.supportsFormatCombination(pos, asked.data(), nbInputs, 1);
        }
        if (supported)
        {
            CHECK(linear);
            accepted.push_back(combination);
        }
    }
    return accepted;
}

void testSupportsFormatCombination()
{
    DataType const f32 = DataType::kFLOAT;
    DataType const f16 = DataType::kHALF;
    auto forward = create(creators().forward);
    auto coordGrad = create(creators().coordGrad);

    // Order of the enumeration: position 0 varies fastest.
    std::vector<std::vector<DataType>> const forwardExpected{{f32, f32, f32}, {f16, f32, f16}, {f16, f16, f16}};
    CHECK(acceptedCombinations(*forward, 2) == forwardExpected);
    std::vector<std::vector<DataType>> const gradExpected{
        {f32, f32, f32, f32}, {f16, f32, f16, f32}, {f16, f16, f16, f16}};
    CHECK(acceptedCombinations(*coordGrad, 3) == gradExpected);

    std::vector<FormatDesc> const three(3, makeFormatDesc(f32, TensorFormat::kLINEAR));
    CHECK(!forward->supportsFormatCombination(3, three.data(), 2, 1));
    CHECK(!forward->supportsFormatCombination(-1, three.data(), 2, 1));
    CHECK(!coordGrad->supportsFormatCombination(0, three.data(), 2, 1));
    CHECK(!forward->supportsFormatCombination(0, nullptr, 2, 1));
}

void testShapeChecks()
{
    auto forward = create(creators().forward);
    auto coordGrad = create(creators().coordGrad);
    Dims const features = makeDims({2, 16, 32, 48});
    Dims const rois = makeDims({10, 5});
    Dims const gradOutput = makeDims({10, 16, 7, 5});
    PluginTensorDesc const out = makeDesc(makeDims({10, 16, 7, 5}));

    // Concrete shapes.
    auto forwardShape = [&](Dims const& f, Dims const& r) {
        return acceptsShapes(*forward, {makeDesc(f), makeDesc(r)}, out);
    };
    CHECK(forwardShape(features, rois));
    CHECK(forwardShape(features, makeDims({0, 5})));
    CHECK(failsWithError([&] { return !forwardShape(makeDims({16, 32, 48}), rois); }));
    CHECK(failsWithError([&] { return !forwardShape(makeDims({1, 2, 16, 32, 48}), rois); }));
    CHECK(failsWithError([&] { return !forwardShape(features, makeDims({10, 4})); }));
    CHECK(failsWithError([&] { return !forwardShape(features, makeDims({50})); }));
    CHECK(failsWithError([&] { return !forwardShape(features, makeDims({10, 5, 1})); }));
    CHECK(failsWithError([&] { return !forwardShape(features, makeDims({-1, 5})); }));
#if NV_TENSORRT_MAJOR >= 10
    CHECK(failsWithError([&] { return !forwardShape(makeDims({2, 16, int64_t{1} << 31, 48}), rois); }));
#endif

    auto gradShape = [&](Dims const& g) {
        return acceptsShapes(*coordGrad, {makeDesc(features), makeDesc(rois), makeDesc(g)}, out);
    };
    CHECK(gradShape(gradOutput));
    CHECK(failsWithError([&] { return !gradShape(makeDims({9, 16, 7, 5})); }));
    CHECK(failsWithError([&] { return !gradShape(makeDims({10, 8, 7, 5})); }));
    CHECK(failsWithError([&] { return !gradShape(makeDims({10, 16, 5, 7})); }));
    CHECK(failsWithError([&] { return !gradShape(makeDims({10, 16, 35})); }));

    std::vector<PluginTensorDesc> const twoInputs{makeDesc(features), makeDesc(rois)};
    CHECK(failsWithError([&] { return !acceptsShapes(*coordGrad, twoInputs, out); }));
    CHECK(failsWithError([&] { return !acceptsShapes(*forward, twoInputs, out, 2); }));

    PluginTensorDesc const gradInputs[] = {makeDesc(features), makeDesc(rois), makeDesc(gradOutput)};
    std::optional<iounet::PrRoIPoolShape> const shape = coordGrad->op().kernelShape(gradInputs, 3, 1);
    CHECK(shape && shape->batch == 2 && shape->channels == 16 && shape->height == 32 && shape->width == 48);
    CHECK(shape && shape->numRois == 10 && shape->pooledHeight == 7 && shape->pooledWidth == 5);
    CHECK(shape && shape->spatialScale == 0.25F);

    // configurePlugin sees -1 for dynamic extents.
    auto forwardConfigure = [&](Dims const& f, Dims const& r) {
        return configure(*forward, {makeDynamicDesc(f), makeDynamicDesc(r)}, makeDynamicDesc(makeDims({-1, 16, 7, 5})));
    };
    CHECK(forwardConfigure(makeDims({-1, 16, -1, -1}), makeDims({-1, 5})));
    CHECK(forwardConfigure(makeDims({-1, 16, -1, -1}), makeDims({-1, -1})));
    CHECK(failsWithError([&] { return !forwardConfigure(makeDims({-1, -1, -1}), makeDims({-1, 5})); }));
    CHECK(failsWithError([&] { return !forwardConfigure(makeDims({-1, 16, -1, -1}), makeDims({-1, 6})); }));
    CHECK(failsWithError([&] { return !forwardConfigure(makeDims({-1, 16, -1, -1}), makeDims({-1})); }));

    auto gradConfigure = [&](Dims const& g, int32_t nbOutputs) {
        return configure(*coordGrad,
            {makeDynamicDesc(makeDims({-1, 16, -1, -1})), makeDynamicDesc(makeDims({-1, 5})), makeDynamicDesc(g)},
            makeDynamicDesc(makeDims({-1, 5})), nbOutputs);
    };
    CHECK(gradConfigure(makeDims({-1, 16, 7, 5}), 1));
    CHECK(gradConfigure(makeDims({-1, -1, -1, -1}), 1));
    CHECK(failsWithError([&] { return !gradConfigure(makeDims({-1, 16, 7, 4}), 1); }));
    CHECK(failsWithError([&] { return !gradConfigure(makeDims({-1, 32, 7, 5}), 1); }));
    CHECK(failsWithError([&] { return !gradConfigure(makeDims({-1, 16, 7}), 1); }));
    CHECK(failsWithError([&] { return !gradConfigure(makeDims({-1, 16, 7, 5}), 2); }));
}

//! enqueue paths that need no device: bad descs fail before any launch; an empty batch (K = 0) dispatches every
//! supported type pair to a launcher that returns at once.
void testEnqueueWithoutDevice()
{
    auto forward = create(creators().forward);
    auto coordGrad = create(creators().coordGrad);
    void const* inputs[] = {nullptr, nullptr, nullptr};
    void* outputs[] = {nullptr};
    Dims const features = makeDims({1, 4, 8, 8});
    Dims const noRois = makeDims({0, 5});
    Dims const noGradOutput = makeDims({0, 4, 7, 5});
    DataType const f32 = DataType::kFLOAT;
    DataType const f16 = DataType::kHALF;

    DataType const pairs[][2] = {{f32, f32}, {f16, f16}, {f16, f32}};
    for (auto const& pair : pairs)
    {
        PluginTensorDesc const in[] = {makeDesc(features, pair[0]), makeDesc(noRois, pair[1]),
            makeDesc(noGradOutput, pair[0])};
        PluginTensorDesc const forwardOut = makeDesc(makeDims({0, 4, 7, 5}), pair[0]);
        PluginTensorDesc const gradOut = makeDesc(noRois, pair[1]);
        CHECK(forward->enqueue(in, &forwardOut, inputs, outputs, nullptr, nullptr) == 0);
        CHECK(coordGrad->enqueue(in, &gradOut, inputs, outputs, nullptr, nullptr) == 0);
    }

    PluginTensorDesc const wrongTypes[] = {makeDesc(features, f32), makeDesc(noRois, f16)};
    CHECK(failsWithError(
        [&] { return forward->enqueue(wrongTypes, nullptr, inputs, outputs, nullptr, nullptr) != 0; }));
    PluginTensorDesc const intTypes[] = {makeDesc(features, DataType::kINT32), makeDesc(noRois, DataType::kINT32)};
    CHECK(failsWithError([&] { return forward->enqueue(intTypes, nullptr, inputs, outputs, nullptr, nullptr) != 0; }));
    PluginTensorDesc const wrongDims[] = {makeDesc(makeDims({4, 8, 8})), makeDesc(noRois)};
    CHECK(failsWithError([&] { return forward->enqueue(wrongDims, nullptr, inputs, outputs, nullptr, nullptr) != 0; }));
    PluginTensorDesc const wrongGradDims[]
        = {makeDesc(features), makeDesc(noRois), makeDesc(makeDims({0, 4, 5, 7}))};
    CHECK(failsWithError(
        [&] { return coordGrad->enqueue(wrongGradDims, nullptr, inputs, outputs, nullptr, nullptr) != 0; }));
}

#if IOUNET_TEST_CUDA_HOST
// ---------------------------------------------------------------------------------------------------------------------
// enqueue with data, on the host emulation of CUDA (plugins/cuda_host): the plugins' type dispatch and launches over
// the edge-case table of prroi_oracle.h, against its float64 references. Buffers come from the emulation's
// cudaMalloc, filled with 0xFF bytes (NaN) until written.

template <typename T>
constexpr DataType kDATA_TYPE = std::is_same_v<T, float> ? DataType::kFLOAT : DataType::kHALF;

//! A cudaMalloc'd copy of values; freed by the caller.
template <typename T>
T* toDevice(std::vector<T> const& values, size_t count)
{
    void* memory = nullptr;
    CHECK(cudaMalloc(&memory, std::max<size_t>(count, 1) * sizeof(T)) == cudaSuccess);
    cudaMemcpy(memory, values.data(), values.size() * sizeof(T), cudaMemcpyHostToDevice);
    return static_cast<T*>(memory);
}

template <typename T>
std::vector<T> fromDevice(T* memory, size_t count)
{
    std::vector<T> values(count);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    cudaMemcpy(values.data(), memory, count * sizeof(T), cudaMemcpyDeviceToHost);
    cudaFree(memory);
    return values;
}

//! The plugins as iounet_test::checkPrRoIPool's kernels: each call makes a plugin with the shape's attributes and
//! enqueues it as TensorRT would (no workspace: both plugins ask for none).
struct EnqueueKernels
{
    template <typename T, typename R>
    std::vector<T> forward(std::vector<T> const& f, std::vector<R> const& rois, iounet::PrRoIPoolShape const& s)
    {
        size_t const count = size_t(s.numRois) * s.channels * s.pooledHeight * s.pooledWidth;
        PluginTensorDesc const in[] = {makeDesc(makeDims({s.batch, s.channels, s.height, s.width}), kDATA_TYPE<T>),
            makeDesc(makeDims({s.numRois, 5}), kDATA_TYPE<R>)};
        PluginTensorDesc const out
            = makeDesc(makeDims({s.numRois, s.channels, s.pooledHeight, s.pooledWidth}), kDATA_TYPE<T>);
        T* features = toDevice(f, f.size());
        R* boxes = toDevice(rois, rois.size());
        T* output = toDevice(std::vector<T>(), count);
        void const* inputs[] = {features, boxes};
        void* outputs[] = {output};
        CHECK(plugin(creators().forward, s)->enqueue(in, &out, inputs, outputs, nullptr, nullptr) == 0);
        cudaFree(features);
        cudaFree(boxes);
        return fromDevice(output, count);
    }

    template <typename T, typename R>
    std::vector<R> coordGrad(std::vector<T> const& f, std::vector<R> const& rois, std::vector<T> const& gradOutput,
        iounet::PrRoIPoolShape const& s)
    {
        Dims const pooled = makeDims({s.numRois, s.channels, s.pooledHeight, s.pooledWidth});
        PluginTensorDesc const in[] = {makeDesc(makeDims({s.batch, s.channels, s.height, s.width}), kDATA_TYPE<T>),
            makeDesc(makeDims({s.numRois, 5}), kDATA_TYPE<R>), makeDesc(pooled, kDATA_TYPE<T>)};
        PluginTensorDesc const out = makeDesc(makeDims({s.numRois, 5}), kDATA_TYPE<R>);
        T* features = toDevice(f, f.size());
        R* boxes = toDevice(rois, rois.size());
        T* grad = toDevice(gradOutput, gradOutput.size());
        R* gradRois = toDevice(std::vector<R>(), rois.size());
        void const* inputs[] = {features, boxes, grad};
        void* outputs[] = {gradRois};
        CHECK(plugin(creators().coordGrad, s)->enqueue(in, &out, inputs, outputs, nullptr, nullptr) == 0);
        cudaFree(features);
        cudaFree(boxes);
        cudaFree(grad);
        return fromDevice(gradRois, rois.size());
    }

    template <typename T, typename R>
    std::vector<T> featureGrad(std::vector<R> const&, std::vector<T> const&, iounet::PrRoIPoolShape const&, size_t,
        std::string const&)
    {
        std::abort(); // no plugin computes the feature gradient
    }

private:
    static PluginPtr plugin(Creator* creator, iounet::PrRoIPoolShape const& s)
    {
        Attributes attributes;
        attributes.pooledHeight = s.pooledHeight;
        attributes.pooledWidth = s.pooledWidth;
        attributes.spatialScale = s.spatialScale;
        PluginFieldCollection const fc = attributes.collection();
        PluginPtr made = create(creator, &fc);
        CHECK(made != nullptr);
        return made;
    }
};

void testEnqueueOnHostEmulation()
{
    EnqueueKernels kernels;
    using Half = __half;
    iounet_test::checkPrRoIPool<float, float>(
        "enqueue float32", iounet_test::Tolerance{2e-5, 2e-5}, iounet_test::Tolerance{1e-4, 1e-4}, false, kernels);
    iounet_test::checkPrRoIPool<Half, float>("enqueue float16/float32 rois", iounet_test::Tolerance{6e-4, 3e-5},
        iounet_test::Tolerance{1e-4, 1e-4}, false, kernels);
    iounet_test::checkPrRoIPool<Half, Half>("enqueue float16/float16 rois", iounet_test::Tolerance{6e-4, 3e-5},
        iounet_test::Tolerance{6e-4, 2e-4}, false, kernels);
    std::printf("enqueue on the CUDA host emulation: %d checks passed, %d failed\n", iounet_test::gPassed,
        iounet_test::gFailed);
    CHECK(iounet_test::gFailed == 0);
}
#endif

// ---------------------------------------------------------------------------------------------------------------------
// Tests of one interface

#if IOUNET_TRT_PLUGIN_V3
//! A plugin made in the runtime phase, as when an engine is deserialized.
PluginPtr createAtRuntime(Creator* creator, PluginFieldCollection const* fc)
{
    return PluginPtr(dynamic_cast<Plugin*>(creator->createPlugin("node", fc, nvinfer1::TensorRTPhase::kRUNTIME)));
}

void testCloneAndSerialization()
{
    for (Creator* creator : {creators().forward, creators().coordGrad})
    {
        auto plugin = create(creator);
        CHECK(plugin != nullptr);
        if (!plugin)
        {
            continue;
        }
        std::unique_ptr<nvinfer1::IPluginV3> clone(plugin->clone());
        auto const* cloned = dynamic_cast<Plugin const*>(clone.get());
        CHECK(cloned != nullptr && sameParams(cloned->op().params(), plugin->op().params()));
        CHECK(cloned != nullptr && std::strcmp(cloned->getPluginName(), plugin->getPluginName()) == 0);

        std::unique_ptr<nvinfer1::IPluginV3> attached(plugin->attachToContext(nullptr));
        auto const* attachedPlugin = dynamic_cast<Plugin const*>(attached.get());
        CHECK(attachedPlugin != nullptr && attachedPlugin != plugin.get());
        CHECK(attachedPlugin != nullptr && sameParams(attachedPlugin->op().params(), plugin->op().params()));

        // The serialized fields of a clone must not point into the (deleted) original.
        PluginPtr copy(dynamic_cast<Plugin*>(plugin->clone()));
        plugin.reset();
        PluginFieldCollection const* serialized = copy->getFieldsToSerialize();
        CHECK(serialized != nullptr && serialized->nbFields == 3);
        CHECK(serialized->fields[0].type == PluginFieldType::kINT32
            && serialized->fields[1].type == PluginFieldType::kINT32
            && serialized->fields[2].type == PluginFieldType::kFLOAT32);
        PluginPtr restored = createAtRuntime(creator, serialized);
        CHECK(restored != nullptr && sameParams(restored->op().params(), copy->op().params()));
        CHECK(restored != nullptr && sameParams(restored->op().params(), iounet::PrRoIPoolParams{7, 5, 0.25F}));
    }
}

void testInterfaceSpecifics()
{
    using nvinfer1::PluginCapabilityType;
    auto plugin = create(creators().forward);
    char const* const kinds[] = {"PLUGIN_V3ONE_CORE", "PLUGIN_V3ONE_BUILD", "PLUGIN_V3ONE_RUNTIME"};
    PluginCapabilityType const types[]
        = {PluginCapabilityType::kCORE, PluginCapabilityType::kBUILD, PluginCapabilityType::kRUNTIME};
    for (int i = 0; i < 3; ++i)
    {
        nvinfer1::IPluginCapability* capability = plugin->getCapabilityInterface(types[i]);
        CHECK(capability != nullptr && std::strcmp(capability->getInterfaceInfo().kind, kinds[i]) == 0);
    }
    CHECK(plugin->getCapabilityInterface(static_cast<PluginCapabilityType>(7)) == nullptr);
    nvinfer1::IPluginV3* asV3 = plugin.get();
    CHECK(std::strcmp(asV3->getInterfaceInfo().kind, "PLUGIN") == 0);

    // The runtime phase validates the attributes as the build phase does.
    testInvalidAttributes(createAtRuntime);
}
#else
//! The bytes of a serialized plugin: pooled_height, pooled_width (int32), spatial_scale (float32).
std::vector<char> serializedBytes(int32_t pooledHeight, int32_t pooledWidth, float spatialScale)
{
    std::vector<char> bytes(12);
    std::memcpy(bytes.data(), &pooledHeight, 4);
    std::memcpy(bytes.data() + 4, &pooledWidth, 4);
    std::memcpy(bytes.data() + 8, &spatialScale, 4);
    return bytes;
}

PluginPtr deserialize(Creator* creator, std::vector<char> const& bytes)
{
    return PluginPtr(dynamic_cast<Plugin*>(creator->deserializePlugin("node", bytes.data(), bytes.size())));
}

void testCloneAndSerialization()
{
    for (Creator* creator : {creators().forward, creators().coordGrad})
    {
        auto plugin = create(creator);
        CHECK(plugin != nullptr);
        if (!plugin)
        {
            continue;
        }
        plugin->setPluginNamespace("ns");
        PluginPtr clone(dynamic_cast<Plugin*>(plugin->clone()));
        CHECK(clone != nullptr && clone.get() != plugin.get());
        CHECK(clone != nullptr && sameParams(clone->op().params(), plugin->op().params()));
        CHECK(clone != nullptr && std::strcmp(clone->getPluginType(), plugin->getPluginType()) == 0);
        CHECK(clone != nullptr && std::strcmp(clone->getPluginNamespace(), "ns") == 0);

        // A clone serializes on its own once the original is gone.
        plugin.reset();
        CHECK(clone->getSerializationSize() == 12);
        std::vector<char> bytes(clone->getSerializationSize());
        clone->serialize(bytes.data());
        CHECK(bytes == serializedBytes(7, 5, 0.25F));
        auto restored = deserialize(creator, bytes);
        CHECK(restored != nullptr && sameParams(restored->op().params(), iounet::PrRoIPoolParams{7, 5, 0.25F}));
        CHECK(restored != nullptr && std::strcmp(restored->getPluginType(), creator->getPluginName()) == 0);
        CHECK(restored != nullptr && std::strcmp(restored->getPluginNamespace(), "") == 0);

        std::vector<std::vector<char>> const invalid{std::vector<char>(bytes.begin(), bytes.end() - 1),
            [&] {
                std::vector<char> longer = bytes;
                longer.push_back(0);
                return longer;
            }(),
            {}, serializedBytes(0, 5, 0.25F), serializedBytes(7, -1, 0.25F), serializedBytes(7, 5, 0.0F),
            serializedBytes(7, 5, std::nanf(""))};
        for (std::vector<char> const& data : invalid)
        {
            CHECK(failsWithError([&] { return deserialize(creator, data) == nullptr; }));
        }
        CHECK(failsWithError([&] { return creator->deserializePlugin("node", nullptr, 12) == nullptr; }));
    }
}

void testInterfaceSpecifics()
{
    Creator* creator = creators().forward;
    auto plugin = create(creator);
    CHECK(plugin->initialize() == 0);
    plugin->terminate();
    PluginTensorDesc const in[] = {makeDesc(makeDims({2, 16, 32, 48})), makeDesc(makeDims({10, 5}))};
    PluginTensorDesc const out = makeDesc(makeDims({10, 16, 7, 5}));
    CHECK(plugin->getWorkspaceSize(in, 2, &out, 1) == 0);

    // Plugins take the namespace of their creator when they are made.
    plugin->setPluginNamespace("plugin");
    CHECK(std::strcmp(plugin->getPluginNamespace(), "plugin") == 0);
    plugin->setPluginNamespace(nullptr);
    CHECK(std::strcmp(plugin->getPluginNamespace(), "") == 0);
    creator->setPluginNamespace("creator");
    CHECK(std::strcmp(creator->getPluginNamespace(), "creator") == 0);
    auto named = create(creator);
    CHECK(named != nullptr && std::strcmp(named->getPluginNamespace(), "creator") == 0);
    auto deserialized = deserialize(creator, serializedBytes(7, 5, 0.25F));
    CHECK(deserialized != nullptr && std::strcmp(deserialized->getPluginNamespace(), "creator") == 0);
    creator->setPluginNamespace("");
    CHECK(std::strcmp(creator->getPluginNamespace(), "") == 0);

    // One output: asking for another one is an error.
    DataType const types[] = {DataType::kFLOAT, DataType::kFLOAT};
    CHECK(failsWithError([&] { return plugin->getOutputDataType(-1, types, 2) == DataType::kFLOAT; }));
    TestExprBuilder builder;
    DimsExprs const inputs[] = {builder.exprs({-1, 16, -1, -1}), builder.exprs({-1, 5})};
    CHECK(failsWithError([&] { return plugin->getOutputDimensions(1, inputs, 2, builder).nbDims == 0; }));
    CHECK(plugin->getOutputDimensions(0, inputs, 2, builder).nbDims == 4);
}
#endif

// ---------------------------------------------------------------------------------------------------------------------
// Loading the libraries as TensorRT does, with this program standing in for libnvinfer's plugin registry.

#if IOUNET_TRT_PLUGIN_V3
using RegisteredCreator = nvinfer1::IPluginCreatorInterface;
#else
using RegisteredCreator = nvinfer1::IPluginCreator;
#endif

//! Records registrations; the rest of the registry, which differs between TensorRT versions, is not used by the
//! plugin libraries.
class TestRegistry final : public nvinfer1::IPluginRegistry
{
public:
    struct Entry
    {
        RegisteredCreator* creator;
        std::string pluginNamespace;
    };

    std::vector<Entry> entries;

    bool registerCreator(RegisteredCreator& creator, char const* const pluginNamespace) noexcept override
    {
        entries.push_back(Entry{&creator, pluginNamespace});
        return true;
    }

    void setErrorRecorder(nvinfer1::IErrorRecorder* const /*recorder*/) noexcept override {}
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
#if NV_TENSORRT_MAJOR < 11
    // The IPluginCreator methods: the only ones up to TensorRT 8.6, deprecated in 10 but still to be overridden.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#if NV_TENSORRT_MAJOR == 10
    bool registerCreator(nvinfer1::IPluginCreator& /*creator*/, char const* const /*pluginNamespace*/) noexcept override
    {
        return false;
    }
#endif
    nvinfer1::IPluginCreator* const* getPluginCreatorList(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    nvinfer1::IPluginCreator* getPluginCreator(char const* const /*pluginName*/, char const* const /*pluginVersion*/,
        char const* const /*pluginNamespace*/) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(nvinfer1::IPluginCreator const& /*creator*/) noexcept override
    {
        return false;
    }
#pragma GCC diagnostic pop
#endif
#if NV_TENSORRT_MAJOR > 8 || NV_TENSORRT_MINOR >= 6
    // From TensorRT 8.6: plugin libraries and parent registries.
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const /*enabled*/) override {}
    PluginLibraryHandle loadLibrary(char const* /*pluginPath*/) noexcept override
    {
        return nullptr;
    }
    void deregisterLibrary(PluginLibraryHandle /*handle*/) noexcept override {}
#endif
#if NV_TENSORRT_MAJOR >= 10
    // From TensorRT 10: creators of every interface, plugin resources.
    nvinfer1::IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    nvinfer1::IPluginCreatorInterface* getCreator(char const* const /*pluginName*/,
        char const* const /*pluginVersion*/, char const* const /*pluginNamespace*/) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(nvinfer1::IPluginCreatorInterface const& /*creator*/) noexcept override
    {
        return false;
    }
    nvinfer1::IPluginResource* acquirePluginResource(
        char const* /*key*/, nvinfer1::IPluginResource* /*resource*/) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(char const* /*key*/) noexcept override
    {
        return 0;
    }
    nvinfer1::IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
#endif
};

TestRegistry gRegistry;

} // namespace

//! libnvinfer's entry point, found by libiounet_trt_plugin_static with dlsym.
extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &gRegistry;
}

namespace
{

bool hasNames(std::vector<Creator*> const& list)
{
    return list.size() == 2 && std::strcmp(list[0]->getPluginName(), "PrRoIPool") == 0
        && std::strcmp(list[1]->getPluginName(), "PrRoIPoolCoordGrad") == 0;
}

void testLoadLibrary()
{
    // IPluginRegistry::loadLibrary: dlopen, then the entry points; loading alone registers nothing.
    void* library = dlopen(IOUNET_TRT_PLUGIN_PATH, RTLD_NOW | RTLD_LOCAL);
    CHECK(library != nullptr);
    if (library == nullptr)
    {
        std::printf("dlopen: %s\n", dlerror());
        return;
    }
    CHECK(gRegistry.entries.empty());
    using Version = char const* (*) ();
    auto const creatorsEntry = reinterpret_cast<CreatorsEntry>(dlsym(library, kCREATORS_ENTRY));
    auto const version = reinterpret_cast<Version>(dlsym(library, "iounetPluginLibraryVersion"));
    CHECK(creatorsEntry != nullptr && version != nullptr);
    if (creatorsEntry != nullptr && version != nullptr)
    {
        int32_t count = 0;
        auto const* const listed = creatorsEntry(count);
        CHECK(hasNames(listCreators(listed, count)));
        CHECK(std::strcmp(version(), IOUNET_VERSION) == 0);
    }
#if IOUNET_TRT_LOGGER_FINDER
    using SetLoggerFinder = void (*)(nvinfer1::ILoggerFinder*);
    auto const setLoggerFinderEntry = reinterpret_cast<SetLoggerFinder>(dlsym(library, "setLoggerFinder"));
    CHECK(setLoggerFinderEntry != nullptr);
    if (setLoggerFinderEntry != nullptr)
    {
        setLoggerFinderEntry(&gLoggerFinder);
    }
#else
    CHECK(dlsym(library, "setLoggerFinder") == nullptr);
#endif
    // The other interface's entry point and internal symbols stay out.
    CHECK(dlsym(library, kOTHER_CREATORS_ENTRY) == nullptr);
    CHECK(dlsym(library, "_ZN6iounet19prroiPoolFieldNamesEv") == nullptr);
}

void testStaticRegistration()
{
    void* library = dlopen(IOUNET_TRT_PLUGIN_STATIC_PATH, RTLD_NOW | RTLD_LOCAL);
    CHECK(library != nullptr);
    if (library == nullptr)
    {
        std::printf("dlopen: %s\n", dlerror());
        return;
    }
    std::vector<RegisteredCreator*> list;
    for (TestRegistry::Entry const& entry : gRegistry.entries)
    {
        list.push_back(entry.creator);
        CHECK(entry.pluginNamespace.empty());
    }
    CHECK(hasNames(listCreators(list.data(), static_cast<int32_t>(list.size()))));
}

} // namespace

int main()
{
#if IOUNET_TRT_LOGGER_FINDER
    setLoggerFinder(&gLoggerFinder);
#endif
    testCreators();
    testValidAttributes();
    testInvalidAttributes(create);
    testOutputDataTypes();
    testOutputShapes();
    testSupportsFormatCombination();
    testShapeChecks();
    testEnqueueWithoutDevice();
#if IOUNET_TEST_CUDA_HOST
    testEnqueueOnHostEmulation();
#endif
    testCloneAndSerialization();
    testInterfaceSpecifics();
    testLoadLibrary();
    testStaticRegistration();
    std::printf("%d passed, %d failed (%s, TensorRT %d.%d headers)\n", gPassed, gFailed,
        IOUNET_TRT_PLUGIN_V3 ? "IPluginV3" : "IPluginV2DynamicExt", NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR);
    return gFailed == 0 ? 0 : 1;
}
