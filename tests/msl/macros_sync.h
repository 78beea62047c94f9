// A user header for tests/test_msl_macros.c: a barrier behind a macro
// defined where the MSL front end does not read (an #include found
// through the library's -I option).
#define HEADER_SYNC() threadgroup_barrier(mem_flags::mem_threadgroup)
