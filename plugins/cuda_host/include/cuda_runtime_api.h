// Stands in for the CUDA toolkit's cuda_runtime_api.h in the host emulation (../cuda_host.h).
#pragma once

#include "../cuda_host.h"
