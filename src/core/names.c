/*
 * DOC: Names of device kinds and kernel languages
 *
 * Public, and used by every layer (the backends' messages included), so
 * they live at the bottom: a backend never calls up into the engine for a
 * word.
 */
#include "core/core.h"

const char *mc_device_kind_name(mc_device_kind k)
{
    switch (k) {
    case MC_DEVICE_CPU: return "cpu";
    case MC_DEVICE_CUDA: return "cuda";
    case MC_DEVICE_METAL: return "metal";
    case MC_DEVICE_ANY: return "any";
    }
    return "unknown";
}

const char *mc_language_name(mc_language l)
{
    switch (l) {
    case MC_LANG_C: return "c";
    case MC_LANG_CUDA: return "cuda";
    case MC_LANG_MSL: return "msl";
    case MC_LANG_UNSET: return "unset";
    }
    return "unknown";
}
