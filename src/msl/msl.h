/*
 * The MSL front end (src/backends/cpu/cpu_msl*.c), shared by the devices
 * that compile MSL with clang against src/msl/mc_msl_cpu.h: the CPU device
 * (C++ into a shared object) and the CUDA device (clang's CUDA mode into
 * PTX). It rewrites what C++ cannot take as written and appends one entry
 * point per kernel in the target's calling convention.
 */
#ifndef MC_MSL_MSL_H
#define MC_MSL_MSL_H

#include "core/core.h"

typedef enum mc__msl_target {
    MC__MSL_CPU = 0, /* entry: void name(const mc_cpu_ctx *), one call per threadgroup */
    MC__MSL_CUDA = 1 /* entry: extern "C" __global__ name(slot 0, slot 1, ...) */
} mc__msl_target;

/* The front end's revision, part of the compiler identity that keys the
 * pipeline cache: raised whenever the C++ made from the same source
 * changes, so an archive an older front end built is rebuilt rather than
 * loaded. 2: barriers behind macros are followed (cpu_msl_macros.c). */
#define MC__MSL_FRONT_END_REVISION 2

/* source -> C++ (*cpp, malloc'd, NUL-terminated), or MC_ERR_COMPILE naming
 * what is outside the compute subset and its line (also in *log). */
mc_status mc__msl_translate(const char *source, size_t len, mc__msl_target target, char **cpp, size_t *cpp_len,
                            char **log);

/* clang's CUDA mode on a translated source (kernel.cu beside the two
 * headers): PTX for sm_80 that the driver compiles for newer GPUs; libm is
 * libdevice's (linked as bitcode); PTX 7.0 for the *_sync warp intrinsics. */
#define MC__MSL_CUDA_FLAGS                                                                                       \
    "-x cuda --cuda-device-only -nocudainc -nocudalib --cuda-gpu-arch=sm_80 -Xclang -target-feature -Xclang "    \
    "+ptx70 -O3 -std=c++17 -Wno-unknown-attributes -Wno-duplicate-decl-specifier -Wno-unknown-cuda-version -I. " \
    "-include mc_msl_cpu.h -S"

/* MSL source -> PTX for the CUDA device (*ptx NUL-terminated, malloc'd):
 * translation, then $MC_MSL_CXX (clang++) with MC__MSL_CUDA_FLAGS and
 * libdevice. MC_ERR_COMPILE with the log on a bad kernel; MC_ERR_UNSUPPORTED
 * without clang's inputs. Lives with the CPU device's compiler runner. */
mc_status mc__msl_build_ptx(const char *source, size_t len, const char *options, char **ptx, size_t *ptx_len,
                            char **log);
/* The compiler identity for MSL on CUDA: clang's version line, the flags
 * and the header's digest (for the pipeline cache key). */
mc_status mc__msl_cuda_identity(char *out, size_t cap);

/* The embedded headers the translated source needs beside it. */
extern const char mc__cpu_kernel_header[];
extern const char mc__msl_cpu_header[];

#endif
