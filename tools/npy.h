/* NumPy .npy arrays for `metal-compute run FILE`: the state a user's kernel
 * starts from and ends with. Little-endian numeric dtypes in C order, the
 * format's versions 1.0 to 3.0 read, 1.0 written (atomically). */
#ifndef MC_TOOLS_NPY_H
#define MC_TOOLS_NPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MC_NPY_MAX_DIMS 3

typedef enum mc_npy_dtype {
    MC_NPY_NONE = 0,
    MC_NPY_F32,
    MC_NPY_F64,
    MC_NPY_I8,
    MC_NPY_U8,
    MC_NPY_I16,
    MC_NPY_U16,
    MC_NPY_I32,
    MC_NPY_U32,
    MC_NPY_I64,
    MC_NPY_U64
} mc_npy_dtype;

typedef struct mc_npy {
    mc_npy_dtype dtype;
    uint32_t ndim;                   /* 1 .. MC_NPY_MAX_DIMS */
    uint64_t shape[MC_NPY_MAX_DIMS]; /* slowest axis first, as NumPy writes it */
    void *data;                      /* C order; malloc'd */
    size_t bytes;
} mc_npy;

/* "float32", "uint8", ...; NULL for NONE. */
const char *mc_npy_dtype_name(mc_npy_dtype t);
/* Accepts the names above and NumPy's short codes (f4, <f4, u1, ...). */
mc_npy_dtype mc_npy_dtype_parse(const char *s);
size_t mc_npy_dtype_size(mc_npy_dtype t);
/* Elements of the shape; 0 on overflow past SIZE_MAX bytes. */
size_t mc_npy_count(const mc_npy *a);

/* Reads path. On failure returns false with the reason in why. */
bool mc_npy_read(const char *path, mc_npy *out, char *why, size_t why_cap);
/* Parses a whole .npy file held in memory (data is copied). */
bool mc_npy_parse(const void *file, size_t len, mc_npy *out, char *why, size_t why_cap);
/* Writes a (version 1.0) through a temporary file, fsync and rename. */
bool mc_npy_write(const char *path, const mc_npy *a, char *why, size_t why_cap);
void mc_npy_free(mc_npy *a);

#endif
