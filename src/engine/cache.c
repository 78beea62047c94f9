/*
 * DOC: The pipeline cache (placeholder until the cache lands)
 */
#include "engine/engine.h"

#include <stdlib.h>

struct mc__cache {
    int unused;
};

void mc__cache_destroy(struct mc__cache *c)
{
    free(c);
}
