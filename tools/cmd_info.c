/* metal-compute info: every device with its capabilities. */
#include "cli.h"

#include <string.h>

int mc_cli_info(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf(
            "usage: metal-compute info\n\nLists every device of every compiled-in backend whose driver is "
            "present.\n");
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "metal-compute info: unexpected argument '%s'\n", argv[1]);
        return 2;
    }
    mc_device_info infos[32];
    size_t n;
    mc_status s = mc_device_list(infos, 32, &n);
    if (s != MC_OK) return mc_cli_fail("listing devices", s);
    printf("metal-compute %s: %zu device%s\n", MC_VERSION_STRING, n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n && i < 32; i++) {
        const mc_device_info *d = &infos[i];
        printf("\n%s:%d  %s\n", mc_device_kind_name(d->kind), d->index, d->name);
        printf("  identity                      %s\n", d->identity);
        printf("  max threads per threadgroup   %u\n", d->max_threads_per_threadgroup);
        printf("  threadgroup memory            %llu bytes\n", (unsigned long long)d->threadgroup_memory_size);
        printf("  SIMD width                    %u\n", d->simd_width);
        printf("  compute units                 %u\n", d->compute_units);
        printf("  unified memory                %s\n", d->unified_memory ? "yes" : "no");
        if (d->execution_time_limit_ns)
            printf("  execution-time limit          %.0f ms per command buffer\n", d->execution_time_limit_ns / 1e6);
        else printf("  execution-time limit          none\n");
        printf("  max buffer size               %llu bytes\n", (unsigned long long)d->max_buffer_size);
        printf("  features                     %s%s%s%s\n",
               d->features & MC_FEATURE_PRIVATE_STORAGE ? " private-storage" : "",
               d->features & MC_FEATURE_GPU_EVENT_WAIT ? " gpu-event-wait" : "",
               d->features & MC_FEATURE_INDIRECT_DISPATCH ? " indirect-dispatch" : "",
               d->features & MC_FEATURE_WATCHDOG ? " watchdog" : "");
        if (d->kind == MC_DEVICE_METAL) /* optional there: say which are absent, not only which are present */
            printf(
                "  optional Metal features       command-lists:%s binary-archive:%s residency-set:%s "
                "timed-event-wait:%s\n",
                d->features & MC_FEATURE_NATIVE_COMMAND_LISTS ? "yes" : "absent",
                d->features & MC_FEATURE_BINARY_ARCHIVE ? "yes" : "absent",
                d->features & MC_FEATURE_RESIDENCY_SET ? "yes" : "absent",
                d->features & MC_FEATURE_TIMED_EVENT_WAIT ? "yes" : "absent");
    }
    return 0;
}
