/*
 * DOC: The runtime layer's view of the engine
 *
 * src/runtime (the pipeline cache, the runner and its checkpoint files,
 * streams, isolated workers) is built mostly on the public API. What it
 * needs beyond that comes from this header. It still includes engine.h
 * while the layer is being narrowed; the goal is that runtime code reaches
 * the engine only through the declarations below (docs/ARCHITECTURE.md).
 */
#ifndef MC_RUNTIME_RUNTIME_H
#define MC_RUNTIME_RUNTIME_H

#include "engine/engine.h"

#endif
