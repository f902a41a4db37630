// Host tests of the PrRoIPool TensorRT plugins: no GPU, no libnvinfer. The plugin objects are linked in; the two
// plugin libraries are also loaded the way TensorRT loads them, with this program playing libnvinfer's registry.
#include "prroiPoolPlugin.h"

#include <dlfcn.h>

#include <cmath>
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
#include <vector>

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IDimensionExpr;
using nvinfer1::IPluginCreatorInterface;
using nvinfer1::IPluginCreatorV3One;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;
using nvinfer1::TensorRTPhase;

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

//! Counts the errors the plugins report, so that expected errors are checked instead of printed.
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

//! True when call() returns true and reports at least one error.
bool failsWithError(std::function<bool()> const& call)
{
    int const before = gLoggerFinder.logger.errors;
    return call() && gLoggerFinder.logger.errors > before;
}

// ---------------------------------------------------------------------------------------------------------------------
// Dimension expressions: TensorRT's IExprBuilder and IDimensionExpr over test implementations of their apiv classes.

//! A constant, or a symbol whose value is unknown at build time.
class TestExpr final : public IDimensionExpr
{
public:
    TestExpr(bool constant, int64_t value)
        : mState(constant, value)
    {
        mImpl = &mState;
    }

private:
    class State final : public nvinfer1::apiv::VDimensionExpr
    {
    public:
        State(bool constant, int64_t value)
            : mConstant(constant)
            , mValue(value)
        {
        }

        bool isConstant() const override
        {
            return mConstant;
        }

        int64_t getConstantValue() const override
        {
            return mConstant ? mValue : std::numeric_limits<int64_t>::min();
        }

        bool isSizeTensor() const override
        {
            return false;
        }

    private:
        bool mConstant;
        int64_t mValue;
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
    DimsExprs exprs(std::initializer_list<int64_t> extents)
    {
        DimsExprs out{};
        for (int64_t extent : extents)
        {
            out.d[out.nbDims++] = extent >= 0 ? constant(extent) : symbol();
        }
        return out;
    }

private:
    class State final : public nvinfer1::apiv::VExprBuilder
    {
    public:
        IDimensionExpr const* constant(int64_t value) override
        {
            return make(true, value);
        }

        IDimensionExpr const* operation(nvinfer1::DimensionOperation /*op*/, IDimensionExpr const& /*first*/,
            IDimensionExpr const& /*second*/) override
        {
            return nullptr;
        }

        IDimensionExpr const* declareSizeTensor(
            int32_t /*outputIndex*/, IDimensionExpr const& /*opt*/, IDimensionExpr const& /*upper*/) override
        {
            return nullptr;
        }

        IDimensionExpr const* make(bool constant, int64_t value)
        {
            mExprs.push_back(std::make_unique<TestExpr>(constant, value));
            return mExprs.back().get();
        }

    private:
        std::vector<std::unique_ptr<TestExpr>> mExprs;
    };

    State mState;
};

bool isConstant(IDimensionExpr const* expr, int64_t value)
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
        dims.d[dims.nbDims++] = extent;
    }
    return dims;
}

PluginTensorDesc makeDesc(Dims const& dims, DataType type = DataType::kFLOAT)
{
    return PluginTensorDesc{dims, type, TensorFormat::kLINEAR, -1.0F};
}

DynamicPluginTensorDesc makeDynamicDesc(Dims const& dims, DataType type = DataType::kFLOAT)
{
    return DynamicPluginTensorDesc{makeDesc(dims, type), dims, dims, dims};
}

struct Creators
{
    IPluginCreatorV3One* forward;
    IPluginCreatorV3One* coordGrad;
};

Creators creators()
{
    int32_t count = 0;
    IPluginCreatorInterface* const* list = getCreators(count);
    return Creators{static_cast<IPluginCreatorV3One*>(list[0]), static_cast<IPluginCreatorV3One*>(list[1])};
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

//! A plugin made by creator, owned.
std::unique_ptr<iounet::PrRoIPoolPluginBase> create(IPluginCreatorV3One* creator, PluginFieldCollection const* fc,
    TensorRTPhase phase = TensorRTPhase::kBUILD)
{
    return std::unique_ptr<iounet::PrRoIPoolPluginBase>(
        dynamic_cast<iounet::PrRoIPoolPluginBase*>(creator->createPlugin("node", fc, phase)));
}

std::unique_ptr<iounet::PrRoIPoolPluginBase> create(IPluginCreatorV3One* creator)
{
    Attributes const attributes;
    PluginFieldCollection const fc = attributes.collection();
    return create(creator, &fc);
}

bool sameParams(iounet::PrRoIPoolParams const& a, iounet::PrRoIPoolParams const& b)
{
    return a.pooledHeight == b.pooledHeight && a.pooledWidth == b.pooledWidth && a.spatialScale == b.spatialScale;
}

// ---------------------------------------------------------------------------------------------------------------------
// Tests

void testCreators()
{
    int32_t count = -1;
    IPluginCreatorInterface* const* list = getCreators(count);
    CHECK(count == 2 && list != nullptr);
    char const* const names[] = {"PrRoIPool", "PrRoIPoolCoordGrad"};
    for (int32_t i = 0; i < count && i < 2; ++i)
    {
        CHECK(std::strcmp(list[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
        auto* creator = static_cast<IPluginCreatorV3One*>(list[i]);
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
    for (IPluginCreatorV3One* creator : {creators().forward, creators().coordGrad})
    {
        Attributes attributes;
        PluginFieldCollection fc = attributes.collection();
        auto plugin = create(creator, &fc);
        CHECK(plugin != nullptr);
        CHECK(plugin && sameParams(plugin->params(), iounet::PrRoIPoolParams{7, 5, 0.25F}));
        CHECK(plugin && std::strcmp(plugin->getPluginName(), creator->getPluginName()) == 0);
        CHECK(plugin && std::strcmp(plugin->getPluginVersion(), "1") == 0);
        CHECK(plugin && std::strcmp(plugin->getPluginNamespace(), "") == 0);

        // What some ONNX parser versions hand over: 64-bit ints and doubles; unknown fields are ignored.
        int64_t const height = 3;
        int64_t const width = 2;
        double const scale = 0.125;
        int32_t const extra = 1;
        attributes.field("pooled_height") = PluginField("pooled_height", &height, PluginFieldType::kINT64, 1);
        attributes.field("pooled_width") = PluginField("pooled_width", &width, PluginFieldType::kINT64, 1);
        attributes.field("spatial_scale") = PluginField("spatial_scale", &scale, PluginFieldType::kFLOAT64, 1);
        attributes.fields.emplace_back("plugin_version", &extra, PluginFieldType::kINT32, 1);
        fc = attributes.collection();
        plugin = create(creator, &fc);
        CHECK(plugin && sameParams(plugin->params(), iounet::PrRoIPoolParams{3, 2, 0.125F}));
    }
}

void testInvalidAttributes()
{
    int32_t const zero = 0;
    int32_t const negative = -2;
    int32_t const pair[] = {7, 7};
    int64_t const tooWide = int64_t{1} << 31;
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
        [&](Attributes& a) {
            a.field("pooled_height") = PluginField("pooled_height", &tooWide, PluginFieldType::kINT64, 1);
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
    for (IPluginCreatorV3One* creator : {creators().forward, creators().coordGrad})
    {
        for (TensorRTPhase phase : {TensorRTPhase::kBUILD, TensorRTPhase::kRUNTIME})
        {
            for (Edit const& edit : edits)
            {
                Attributes attributes;
                edit(attributes);
                PluginFieldCollection const fc = attributes.collection();
                CHECK(failsWithError([&] { return creator->createPlugin("node", &fc, phase) == nullptr; }));
            }
            CHECK(failsWithError([&] { return creator->createPlugin("node", nullptr, phase) == nullptr; }));
            PluginFieldCollection const nullFields{3, nullptr};
            CHECK(failsWithError([&] { return creator->createPlugin(nullptr, &nullFields, phase) == nullptr; }));
        }
    }
}

void testCloneAndSerialization()
{
    for (IPluginCreatorV3One* creator : {creators().forward, creators().coordGrad})
    {
        auto plugin = create(creator);
        CHECK(plugin != nullptr);
        if (!plugin)
        {
            continue;
        }
        std::unique_ptr<IPluginV3> clone(plugin->clone());
        auto const* cloned = dynamic_cast<iounet::PrRoIPoolPluginBase const*>(clone.get());
        CHECK(cloned != nullptr && sameParams(cloned->params(), plugin->params()));
        CHECK(cloned != nullptr && std::strcmp(cloned->getPluginName(), plugin->getPluginName()) == 0);

        std::unique_ptr<IPluginV3> attached(plugin->attachToContext(nullptr));
        auto const* attachedPlugin = dynamic_cast<iounet::PrRoIPoolPluginBase const*>(attached.get());
        CHECK(attachedPlugin != nullptr && attachedPlugin != plugin.get());
        CHECK(attachedPlugin != nullptr && sameParams(attachedPlugin->params(), plugin->params()));

        // The serialized fields of a clone must not point into the (deleted) original.
        auto copy = std::unique_ptr<iounet::PrRoIPoolPluginBase>(
            dynamic_cast<iounet::PrRoIPoolPluginBase*>(plugin->clone()));
        plugin.reset();
        PluginFieldCollection const* serialized = copy->getFieldsToSerialize();
        CHECK(serialized != nullptr && serialized->nbFields == 3);
        CHECK(serialized->fields[0].type == PluginFieldType::kINT32
            && serialized->fields[1].type == PluginFieldType::kINT32
            && serialized->fields[2].type == PluginFieldType::kFLOAT32);
        auto restored = create(creator, serialized, TensorRTPhase::kRUNTIME);
        CHECK(restored != nullptr && sameParams(restored->params(), copy->params()));
        CHECK(restored != nullptr && sameParams(restored->params(), iounet::PrRoIPoolParams{7, 5, 0.25F}));
    }
}

void testCapabilities()
{
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
    IPluginV3* asV3 = plugin.get();
    CHECK(std::strcmp(asV3->getInterfaceInfo().kind, "PLUGIN") == 0);
    CHECK(plugin->getNbOutputs() == 1);
}

void testOutputDataTypes()
{
    auto forward = create(creators().forward);
    auto coordGrad = create(creators().coordGrad);
    DataType const f32 = DataType::kFLOAT;
    DataType const f16 = DataType::kHALF;
    DataType out = DataType::kINT8;

    auto forwardType = [&](DataType features, DataType rois) {
        DataType const in[] = {features, rois};
        out = DataType::kINT8;
        return forward->getOutputDataTypes(&out, 1, in, 2);
    };
    CHECK(forwardType(f32, f32) == 0 && out == f32);
    CHECK(forwardType(f16, f16) == 0 && out == f16);
    CHECK(forwardType(f16, f32) == 0 && out == f16);
    CHECK(failsWithError([&] { return forwardType(f32, f16) != 0; }));
    CHECK(failsWithError([&] { return forwardType(DataType::kBF16, DataType::kBF16) != 0; }));
    CHECK(failsWithError([&] { return forwardType(DataType::kINT32, DataType::kINT32) != 0; }));

    auto gradType = [&](DataType features, DataType rois, DataType gradOutput) {
        DataType const in[] = {features, rois, gradOutput};
        out = DataType::kINT8;
        return coordGrad->getOutputDataTypes(&out, 1, in, 3);
    };
    CHECK(gradType(f32, f32, f32) == 0 && out == f32);
    CHECK(gradType(f16, f16, f16) == 0 && out == f16);
    CHECK(gradType(f16, f32, f16) == 0 && out == f32);
    CHECK(failsWithError([&] { return gradType(f16, f32, f32) != 0; }));
    CHECK(failsWithError([&] { return gradType(f32, f32, f16) != 0; }));
    CHECK(failsWithError([&] { return gradType(f32, f16, f32) != 0; }));

    DataType const two[] = {f32, f32};
    CHECK(failsWithError([&] { return coordGrad->getOutputDataTypes(&out, 1, two, 2) != 0; }));
    CHECK(failsWithError([&] { return forward->getOutputDataTypes(&out, 2, two, 2) != 0; }));
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
    DimsExprs forwardInputs[] = {features, rois};
    CHECK(forward->getOutputShapes(forwardInputs, 2, nullptr, 0, &out, 1, builder) == 0);
    CHECK(out.nbDims == 4);
    CHECK(out.d[0] == rois.d[0] && !out.d[0]->isConstant());
    CHECK(out.d[1] == features.d[1] && isConstant(out.d[1], 256));
    CHECK(isConstant(out.d[2], 7) && isConstant(out.d[3], 5));

    DimsExprs const gradOutput = {4, {rois.d[0], features.d[1], builder.constant(7), builder.constant(5)}};
    DimsExprs gradInputs[] = {features, rois, gradOutput};
    out = DimsExprs{};
    CHECK(coordGrad->getOutputShapes(gradInputs, 3, nullptr, 0, &out, 1, builder) == 0);
    CHECK(out.nbDims == 2 && out.d[0] == rois.d[0] && isConstant(out.d[1], 5));

    // Symbolic grad_output extents cannot be proven wrong at build time.
    DimsExprs symbolicGradInputs[] = {features, rois, builder.exprs({-1, -1, -1, -1})};
    CHECK(coordGrad->getOutputShapes(symbolicGradInputs, 3, nullptr, 0, &out, 1, builder) == 0);

    auto forwardFails = [&](DimsExprs const& f, DimsExprs const& r) {
        DimsExprs inputs[] = {f, r};
        return failsWithError([&] { return forward->getOutputShapes(inputs, 2, nullptr, 0, &out, 1, builder) != 0; });
    };
    CHECK(forwardFails(builder.exprs({-1, 256, -1}), rois));
    CHECK(forwardFails(features, builder.exprs({-1, 4})));
    CHECK(forwardFails(features, builder.exprs({-1, 5, 1})));
    CHECK(forwardFails(features, builder.exprs({-1})));

    auto gradFails = [&](DimsExprs const& g) {
        DimsExprs inputs[] = {features, rois, g};
        return failsWithError([&] { return coordGrad->getOutputShapes(inputs, 3, nullptr, 0, &out, 1, builder) != 0; });
    };
    CHECK(gradFails(builder.exprs({-1, 256, 5, 7})));
    CHECK(gradFails(builder.exprs({-1, 128, 7, 5})));
    CHECK(gradFails(builder.exprs({-1, 256, 7})));
    CHECK(failsWithError(
        [&] { return coordGrad->getOutputShapes(forwardInputs, 2, nullptr, 0, &out, 1, builder) != 0; }));
}

//! Every (type, format) assignment of the plugin's tensors, asked the way TensorRT asks: position by position,
//! with only the positions before the asked one set (later ones hold garbage). Returns the accepted assignments.
std::vector<std::vector<DataType>> acceptedCombinations(iounet::PrRoIPoolPluginBase& plugin, int32_t nbInputs)
{
    DataType const types[] = {DataType::kFLOAT, DataType::kHALF, DataType::kBF16, DataType::kINT8, DataType::kINT32,
        DataType::kINT64, DataType::kBOOL};
    TensorFormat const formats[] = {TensorFormat::kLINEAR, TensorFormat::kHWC8, TensorFormat::kCHW32};
    int32_t const nbTypes = std::size(types);
    int32_t const nbChoices = nbTypes * std::size(formats);
    int32_t const nbTensors = nbInputs + 1;
    int64_t total = 1;
    for (int32_t i = 0; i < nbTensors; ++i)
    {
        total *= nbChoices;
    }

    std::vector<std::vector<DataType>> accepted;
    std::vector<DynamicPluginTensorDesc> inOut(nbTensors);
    std::vector<DynamicPluginTensorDesc> asked(nbTensors);
    for (int64_t index = 0; index < total; ++index)
    {
        bool linear = true;
        int64_t rest = index;
        for (int32_t pos = 0; pos < nbTensors; ++pos, rest /= nbChoices)
        {
            int32_t const choice = rest % nbChoices;
            inOut[pos] = makeDynamicDesc(makeDims({1}), types[choice % nbTypes]);
            inOut[pos].desc.format = formats[choice / nbTypes];
            linear = linear && inOut[pos].desc.format == TensorFormat::kLINEAR;
        }
        bool supported = true;
        for (int32_t pos = 0; pos < nbTensors && supported; ++pos)
        {
            for (int32_t i = 0; i < nbTensors; ++i)
            {
                asked[i] = i <= pos ? inOut[i] : makeDynamicDesc(makeDims({}), DataType::kFP8);
            }
            supported = plugin.supportsFormatCombination(pos, asked.data(), nbInputs, 1);
        }
        if (supported)
        {
            CHECK(linear);
            std::vector<DataType> combination;
            for (DynamicPluginTensorDesc const& desc : inOut)
            {
                combination.push_back(desc.desc.type);
            }
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

    std::vector<DynamicPluginTensorDesc> const three(3, makeDynamicDesc(makeDims({1})));
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
    PluginTensorDesc out = makeDesc(makeDims({10, 16, 7, 5}));

    auto forwardShape = [&](Dims const& f, Dims const& r) {
        PluginTensorDesc const in[] = {makeDesc(f), makeDesc(r)};
        return forward->onShapeChange(in, 2, &out, 1);
    };
    CHECK(forwardShape(features, rois) == 0);
    CHECK(forwardShape(features, makeDims({0, 5})) == 0);
    CHECK(failsWithError([&] { return forwardShape(makeDims({16, 32, 48}), rois) != 0; }));
    CHECK(failsWithError([&] { return forwardShape(makeDims({1, 2, 16, 32, 48}), rois) != 0; }));
    CHECK(failsWithError([&] { return forwardShape(features, makeDims({10, 4})) != 0; }));
    CHECK(failsWithError([&] { return forwardShape(features, makeDims({50})) != 0; }));
    CHECK(failsWithError([&] { return forwardShape(features, makeDims({10, 5, 1})) != 0; }));
    CHECK(failsWithError([&] { return forwardShape(makeDims({2, 16, int64_t{1} << 31, 48}), rois) != 0; }));
    CHECK(failsWithError([&] { return forwardShape(features, makeDims({-1, 5})) != 0; }));

    auto gradShape = [&](Dims const& g) {
        PluginTensorDesc const in[] = {makeDesc(features), makeDesc(rois), makeDesc(g)};
        return coordGrad->onShapeChange(in, 3, &out, 1);
    };
    CHECK(gradShape(gradOutput) == 0);
    CHECK(failsWithError([&] { return gradShape(makeDims({9, 16, 7, 5})) != 0; }));
    CHECK(failsWithError([&] { return gradShape(makeDims({10, 8, 7, 5})) != 0; }));
    CHECK(failsWithError([&] { return gradShape(makeDims({10, 16, 5, 7})) != 0; }));
    CHECK(failsWithError([&] { return gradShape(makeDims({10, 16, 35})) != 0; }));

    PluginTensorDesc const gradInputs[] = {makeDesc(features), makeDesc(rois), makeDesc(gradOutput)};
    std::optional<iounet::PrRoIPoolShape> const shape = coordGrad->kernelShape(gradInputs, 3, 1);
    CHECK(shape && shape->batch == 2 && shape->channels == 16 && shape->height == 32 && shape->width == 48);
    CHECK(shape && shape->numRois == 10 && shape->pooledHeight == 7 && shape->pooledWidth == 5);
    CHECK(shape && shape->spatialScale == 0.25F);

    PluginTensorDesc const twoInputs[] = {makeDesc(features), makeDesc(rois)};
    CHECK(failsWithError([&] { return coordGrad->onShapeChange(twoInputs, 2, &out, 1) != 0; }));
    CHECK(failsWithError([&] { return forward->onShapeChange(twoInputs, 2, &out, 2) != 0; }));

    // configurePlugin sees -1 for dynamic extents.
    auto forwardConfigure = [&](Dims const& f, Dims const& r) {
        DynamicPluginTensorDesc const in[] = {makeDynamicDesc(f), makeDynamicDesc(r)};
        DynamicPluginTensorDesc const dynamicOut = makeDynamicDesc(makeDims({-1, 16, 7, 5}));
        return forward->configurePlugin(in, 2, &dynamicOut, 1);
    };
    CHECK(forwardConfigure(makeDims({-1, 16, -1, -1}), makeDims({-1, 5})) == 0);
    CHECK(forwardConfigure(makeDims({-1, 16, -1, -1}), makeDims({-1, -1})) == 0);
    CHECK(failsWithError([&] { return forwardConfigure(makeDims({-1, -1, -1}), makeDims({-1, 5})) != 0; }));
    CHECK(failsWithError([&] { return forwardConfigure(makeDims({-1, 16, -1, -1}), makeDims({-1, 6})) != 0; }));
    CHECK(failsWithError([&] { return forwardConfigure(makeDims({-1, 16, -1, -1}), makeDims({-1})) != 0; }));

    auto gradConfigure = [&](Dims const& g) {
        DynamicPluginTensorDesc const in[]
            = {makeDynamicDesc(makeDims({-1, 16, -1, -1})), makeDynamicDesc(makeDims({-1, 5})), makeDynamicDesc(g)};
        DynamicPluginTensorDesc const dynamicOut = makeDynamicDesc(makeDims({-1, 5}));
        return coordGrad->configurePlugin(in, 3, &dynamicOut, 1);
    };
    CHECK(gradConfigure(makeDims({-1, 16, 7, 5})) == 0);
    CHECK(gradConfigure(makeDims({-1, -1, -1, -1})) == 0);
    CHECK(failsWithError([&] { return gradConfigure(makeDims({-1, 16, 7, 4})) != 0; }));
    CHECK(failsWithError([&] { return gradConfigure(makeDims({-1, 32, 7, 5})) != 0; }));
    CHECK(failsWithError([&] { return gradConfigure(makeDims({-1, 16, 7})) != 0; }));
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

// ---------------------------------------------------------------------------------------------------------------------
// Loading the libraries as TensorRT does, with this program standing in for libnvinfer's plugin registry.

//! Records registrations; the rest of the registry is not used by the plugin libraries.
class TestRegistry final : public nvinfer1::IPluginRegistry
{
public:
    struct Entry
    {
        IPluginCreatorInterface* creator;
        std::string pluginNamespace;
    };

    std::vector<Entry> entries;

    bool registerCreator(IPluginCreatorInterface& creator, char const* const pluginNamespace) noexcept override
    {
        entries.push_back(Entry{&creator, pluginNamespace});
        return true;
    }

    void setErrorRecorder(nvinfer1::IErrorRecorder* const /*recorder*/) noexcept override {}
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
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
    IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    IPluginCreatorInterface* getCreator(char const* const /*pluginName*/, char const* const /*pluginVersion*/,
        char const* const /*pluginNamespace*/) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const& /*creator*/) noexcept override
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
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
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

bool hasNames(IPluginCreatorInterface* const* list, int32_t count)
{
    return count == 2 && std::strcmp(static_cast<IPluginCreatorV3One*>(list[0])->getPluginName(), "PrRoIPool") == 0
        && std::strcmp(static_cast<IPluginCreatorV3One*>(list[1])->getPluginName(), "PrRoIPoolCoordGrad") == 0;
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
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(nvinfer1::ILoggerFinder*);
    using Version = char const* (*) ();
    auto const getCreatorsEntry = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
    auto const setLoggerFinderEntry = reinterpret_cast<SetLoggerFinder>(dlsym(library, "setLoggerFinder"));
    auto const version = reinterpret_cast<Version>(dlsym(library, "iounetPluginLibraryVersion"));
    CHECK(getCreatorsEntry != nullptr && setLoggerFinderEntry != nullptr && version != nullptr);
    if (getCreatorsEntry != nullptr && setLoggerFinderEntry != nullptr && version != nullptr)
    {
        setLoggerFinderEntry(&gLoggerFinder);
        int32_t count = 0;
        IPluginCreatorInterface* const* list = getCreatorsEntry(count);
        CHECK(hasNames(list, count));
        CHECK(std::strcmp(version(), IOUNET_VERSION) == 0);
    }
    // Internal symbols stay hidden.
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
    std::vector<IPluginCreatorInterface*> list;
    for (TestRegistry::Entry const& entry : gRegistry.entries)
    {
        list.push_back(entry.creator);
        CHECK(entry.pluginNamespace.empty());
    }
    CHECK(hasNames(list.data(), static_cast<int32_t>(list.size())));
}

} // namespace

int main()
{
    setLoggerFinder(&gLoggerFinder);
    testCreators();
    testValidAttributes();
    testInvalidAttributes();
    testCloneAndSerialization();
    testCapabilities();
    testOutputDataTypes();
    testOutputShapes();
    testSupportsFormatCombination();
    testShapeChecks();
    testEnqueueWithoutDevice();
    testLoadLibrary();
    testStaticRegistration();
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
