/* The backend registry: the one piece of global state, read-only. Best
 * device first, so "the default is the best one present". */
#include "backends/hal.h"

#ifdef MC_HAVE_METAL
extern const mc__hal mc__metal_hal;
#endif
#ifdef MC_HAVE_CUDA
extern const mc__hal mc__cuda_hal;
#endif
extern const mc__hal mc__cpu_hal;

const mc__hal *const mc__hal_registry[] = {
#ifdef MC_HAVE_METAL
    &mc__metal_hal,
#endif
#ifdef MC_HAVE_CUDA
    &mc__cuda_hal,
#endif
    &mc__cpu_hal,
    NULL,
};
