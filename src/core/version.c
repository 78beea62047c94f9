/*
 * DOC: Version
 *
 * The library's version at run time, compiled in from the generated
 * mc/mc_version.h (whose number comes from the build's project version), so
 * a program can tell which build of the shared library it runs against.
 */
#include "core/core.h"

const char *mc_version(void)
{
    return MC_VERSION_STRING;
}
