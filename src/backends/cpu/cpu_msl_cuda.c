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
 * pointer for a pointer, a pointer and the bytes by value for a reference
 * (mc::cuda_param), with a table mc_slots_NAME that tells the CUDA device
 * which slot is which. A kernel
 * with a [[threadgroup(n)]] slot above 0 has parameter 31 too, the sizes
 * of the threadgroup slots the pass set (mc::tg_sizes), to place each slot
 * at its offset in the one dynamic shared block; slot 0 is at its start. */
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
        bool tg_sizes = false; /* a threadgroup slot above 0: parameter 31 */
        for (uint32_t s = 0; s < MC_CPU_MAX_ARGS; s++) param_of[s] = -1;
        for (uint32_t p = 0; p < kn->nparam; p++) {
            const param *pa = &kn->params[p];
            if (pa->kind == P_BUFFER) {
                param_of[pa->slot] = (int32_t)p;
                nslots = MC__MAX(nslots, pa->slot + 1);
            } else if (pa->kind == P_TG && pa->slot != 0) {
                tg_sizes = true;
            }
        }
        putf(o, "typedef mc::params<decltype(mc_user::%.*s)> mc_P_%.*s;\n", cl, cn, nl, nm);
        /* How the CUDA device fills each slot (mc::cuda_param::slot) */
        putf(o, "extern \"C\" __attribute__((__constant__)) unsigned mc_slots_%.*s[%u] = {", nl, nm, MC_CPU_MAX_ARGS);
        for (uint32_t s = 0; s < nslots; s++) {
            if (param_of[s] >= 0)
                putf(o, "%smc::cuda_param<mc_P_%.*s::at<%d>::raw>::slot", s ? ", " : "", nl, nm, param_of[s]);
            else putf(o, "%s0", s ? ", " : "");
        }
        putf(o, "};\n");
        putf(o, "extern \"C\" __attribute__((__global__)) void %.*s(", nl, nm);
        for (uint32_t s = 0; s < nslots; s++) {
            if (param_of[s] >= 0)
                putf(o, "%smc::cuda_param<mc_P_%.*s::at<%d>::raw>::type s%u", s ? ", " : "", nl, nm, param_of[s], s);
            else putf(o, "%sunsigned long long s%u", s ? ", " : "", s);
        }
        for (uint32_t s = nslots; tg_sizes && s < MC_CPU_MAX_ARGS; s++)
            putf(o, "%sunsigned long long s%u", s ? ", " : "", s);
        if (tg_sizes) putf(o, ", mc::tg_sizes mc_tg");
        putf(o, ")\n{\n    mc::ids t = mc::cuda_ids();\n    (void)t;\n    mc_user::%.*s(", cl, cn);
        for (uint32_t p = 0; p < kn->nparam; p++) {
            const param *pa = &kn->params[p];
            if (pa->kind == P_BUILTIN)
                putf(o, "%smc::attr<mc_P_%.*s::at<%u>::raw>(%s)", p ? ", " : "", nl, nm, p, pa->expr);
            else if (pa->kind == P_TG && tg_sizes)
                putf(o, "%s(mc_P_%.*s::at<%u>::raw)mc::tg_slot(mc_tg, %u)", p ? ", " : "", nl, nm, p, pa->slot);
            else if (pa->kind == P_TG)
                putf(o, "%s(mc_P_%.*s::at<%u>::raw)mc::mc_threadgroup_memory", p ? ", " : "", nl, nm, p);
            else putf(o, "%smc::cuda_param<mc_P_%.*s::at<%u>::raw>::get(s%u)", p ? ", " : "", nl, nm, p, pa->slot);
        }
        putf(o, ");\n}\n");
    }
    return true;
}
