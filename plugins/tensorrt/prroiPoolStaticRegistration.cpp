// libiounet_trt_plugin_static: a self-registering front end of libiounet_trt_plugin for loaders that only
// dlopen a library (trtexec --staticPlugins, or --plugins before TensorRT 8.6, polygraphy --plugins, Python
// ctypes.CDLL). On load it registers the library's creators (getCreators() from TensorRT 10, getPluginCreators()
// for 8.5 and 8.6) with the plugin registry of the TensorRT already loaded in the process; it never loads TensorRT
// itself and has no link-time dependency on it.
#include "prroiPoolCommon.h"

#if IOUNET_TRT_PLUGIN_V3
#include "prroiPoolPlugin.h"
#else
#include "prroiPoolPluginV2.h"
#endif

#include <dlfcn.h>

#include <cstdio>

namespace
{

using GetPluginRegistry = nvinfer1::IPluginRegistry* (*) () noexcept;

//! TensorRT's getPluginRegistry if libnvinfer is loaded (globally, or locally as by the Python bindings).
GetPluginRegistry findGetPluginRegistry() noexcept
{
    void* symbol = dlsym(RTLD_DEFAULT, "getPluginRegistry");
    if (symbol == nullptr)
    {
        char soname[32];
        std::snprintf(soname, sizeof(soname), "libnvinfer.so.%d", NV_TENSORRT_MAJOR);
        if (void* nvinfer = dlopen(soname, RTLD_NOW | RTLD_NOLOAD))
        {
            symbol = dlsym(nvinfer, "getPluginRegistry");
            dlclose(nvinfer);
        }
    }
    return reinterpret_cast<GetPluginRegistry>(symbol);
}

//! Registers every creator of the library in the empty namespace; reports to stderr what it cannot do.
void registerCreators() noexcept
{
    GetPluginRegistry const getRegistry = findGetPluginRegistry();
    nvinfer1::IPluginRegistry* const registry = getRegistry != nullptr ? getRegistry() : nullptr;
    if (registry == nullptr)
    {
        std::fprintf(stderr,
            "[iounet TensorRT plugin] error: TensorRT is not loaded in this process, so the PrRoIPool plugins were "
            "not registered; load TensorRT first (e.g. import tensorrt) or, from TensorRT 8.6, use "
            "libiounet_trt_plugin with IPluginRegistry::loadLibrary\n");
        return;
    }
    int32_t count = 0;
#if IOUNET_TRT_PLUGIN_V3
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(count);
    using Creator = nvinfer1::IPluginCreatorV3One;
#else
    nvinfer1::IPluginCreator* const* creators = getPluginCreators(count);
    using Creator = nvinfer1::IPluginCreator;
#endif
    for (int32_t i = 0; i < count; ++i)
    {
        auto const& creator = static_cast<Creator const&>(*creators[i]);
        if (!registry->registerCreator(*creators[i], creator.getPluginNamespace()))
        {
            std::fprintf(stderr,
                "[iounet TensorRT plugin] error: could not register %s version %s (registered twice?)\n",
                creator.getPluginName(), creator.getPluginVersion());
        }
    }
}

struct StaticRegistration
{
    StaticRegistration() noexcept
    {
        registerCreators();
    }
} const gStaticRegistration;

} // namespace
