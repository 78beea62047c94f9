/*
 * DOC: MSL front end: the CUDA form's entry points
 *
 * After the translated source, one extern "C" __global__ function per
 * kernel whose parameters are the CUDA device's argument slots, binding
 * each of the kernel's parameters from its attribute through the header's
 * CUDA sections (src/msl/mc_msl_cpu.h). The parts of the front end are
 * listed in cpu_msl.h.
 */
#include "backends/cpu/cpu_msl.h"

/* CUDA: slot i is kernel parameter i (src/backends/cuda/cuda_be.h): a
 * pointer for a buffer, the bytes by value for `constant T&`. */
bool mc__msl_emit_cuda_entries(xlat *x)
{
    sbuf *o = &x->out;
    putf(o, "\n} /* namespace mc_user */\n#pragma clang force_cuda_host_device end\n#line 1 \"entry points\"\n");
    putf(o, "extern \"C\" __attribute__((__constant__)) mc_cpu_constants mc_function_constants = {};\n");
    for (size_t k = 0; k < x->nkern; k++) {
        const kern *kn = &x->kerns[k];
        const tok *nt = &x->L.t[kn->name_tok];
        int nl = (int)nt->len;
        const char *nm = x->s + nt->start;
        if (kn->is_template) continue;
        int cl = kn->callee ? (int)strlen(kn->callee) : nl; /* the C++ function the entry point calls */
        const char *cn = kn->callee ? kn->callee : nm;
        int32_t param_of[MC_CPU_MAX_ARGS];
        uint32_t nslots = 0;
        for (uint32_t s = 0; s < MC_CPU_MAX_ARGS; s++) param_of[s] = -1;
        for (uint32_t p = 0; p < kn->nparam; p++) {
            const param *pa = &kn->params[p];
            if (pa->kind == P_BUFFER) {
                param_of[pa->slot] = (int32_t)p;
                nslots = MC__MAX(nslots, pa->slot + 1);
            } else if (pa->kind == P_TG && pa->slot != 0) {
                return fail_at(x, nt->line,
                               "kernel '%.*s': [[threadgroup(%u)]]: the cuda device gives MSL kernels "
                               "threadgroup slot 0 only",
                               nl, nm, pa->slot);
            }
        }
        putf(o, "typedef mc::params<decltype(mc_user::%.*s)> mc_P_%.*s;\n", cl, cn, nl, nm);
        putf(o, "extern \"C\" __attribute__((__global__)) void %.*s(", nl, nm);
        for (uint32_t s = 0; s < nslots; s++) {
            if (param_of[s] >= 0)
                putf(o, "%smc::cuda_param<mc_P_%.*s::at<%d>::raw>::type s%u", s ? ", " : "", nl, nm, param_of[s], s);
            else putf(o, "%sunsigned long long s%u", s ? ", " : "", s);
        }
        putf(o, ")\n{\n    mc::ids t = mc::cuda_ids();\n    (void)t;\n    mc_user::%.*s(", cl, cn);
        for (uint32_t p = 0; p < kn->nparam; p++) {
            const param *pa = &kn->params[p];
            if (pa->kind == P_BUILTIN)
                putf(o, "%smc::attr<mc_P_%.*s::at<%u>::raw>(%s)", p ? ", " : "", nl, nm, p, pa->expr);
            else if (pa->kind == P_TG)
                putf(o, "%s(mc_P_%.*s::at<%u>::raw)mc::mc_threadgroup_memory", p ? ", " : "", nl, nm, p);
            else putf(o, "%ss%u", p ? ", " : "", pa->slot);
        }
        putf(o, ");\n}\n");
    }
    return true;
}
