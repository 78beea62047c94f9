/*
 * A step kernel for the runner's tests (CUDA C). Same kernel and slots as
 * runner_test.c; see there.
 *   [0] uint32 *x            n elements, then the work counter
 *   [1] iteration bytes      { uint64 first; uint32 count; uint32 pad }
 *   [2] control buffer       { uint32 groups[3]; uint32 stopped; uint64 stop_iteration }
 *   [3] parameter bytes      { uint32 n; uint32 spin; uint64 stop_at }
 */

struct rt_iteration {
    unsigned long long first;
    unsigned int count;
    unsigned int pad;
};

struct rt_control {
    unsigned int groups[3];
    unsigned int stopped;
    unsigned long long stop_iteration;
};

struct rt_params {
    unsigned int n;
    unsigned int spin;
    unsigned long long stop_at;
};

__device__ static unsigned int rt_mix(unsigned int v, unsigned long long it)
{
    v ^= (unsigned int)it + 0x9e3779b9u;
    v *= 0x85ebca6bu;
    v ^= v >> 13;
    return v;
}

extern "C" __global__ void rt_step(unsigned int *x, rt_iteration iter, rt_control *ctl, rt_params p)
{
    unsigned int tid = blockIdx.x * blockDim.x + threadIdx.x;
    for (unsigned int c = 0; c < iter.count; c++) {
        unsigned long long it = iter.first + c;
        if (p.stop_at && it >= p.stop_at) {
            if (tid == 0) {
                ctl->groups[0] = 0;
                ctl->stopped = 1;
                ctl->stop_iteration = it;
            }
            break;
        }
        if (tid < p.n) {
            unsigned int v = x[tid];
            for (unsigned int s = 0; s < p.spin; s++) v = rt_mix(v, it);
            x[tid] = v;
        }
        if (tid == 0) x[p.n] += 1u;
    }
}
