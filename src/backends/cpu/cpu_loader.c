/*
 * DOC: CPU device: loading kernel objects
 *
 * A kernel library is a shared object held in memory (compiled here or
 * read from the pipeline archive). It is checked (an ELF object for this
 * machine, nothing outside its bytes) and loaded from a memfd, or a
 * private temporary file where there is none. Every dlopen and dlclose
 * takes one lock, loader_lock (see there why).
 */
#include "backends/cpu/cpu.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Under AddressSanitizer a kernel library stays mapped after dlclose: MSL
 * kernels are C++ with thread-local storage, and LeakSanitizer's exit-time
 * scan reads each thread's dynamic TLS blocks, which dlclose would unmap
 * under it (the scan then crashes, about one run in six). */
#if defined(__SANITIZE_ADDRESS__)
#define MC__DLOPEN_KEEP RTLD_NODELETE
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MC__DLOPEN_KEEP RTLD_NODELETE
#endif
#endif
#ifndef MC__DLOPEN_KEEP
#define MC__DLOPEN_KEEP 0
#endif

#if defined(__x86_64__)
#define NATIVE_MACHINE EM_X86_64
#elif defined(__aarch64__)
#define NATIVE_MACHINE EM_AARCH64
#elif defined(__i386__)
#define NATIVE_MACHINE EM_386
#elif defined(__arm__)
#define NATIVE_MACHINE EM_ARM
#elif defined(__riscv)
#define NATIVE_MACHINE EM_RISCV
#elif defined(__powerpc64__)
#define NATIVE_MACHINE EM_PPC64
#endif

/* Checks that an object is a shared library for this machine and that
 * everything its headers point at lies inside it: the loader maps a
 * truncated object and dies of SIGBUS on the missing pages. */
static const char *elf_problem(const void *bytes, size_t len)
{
    ElfW(Ehdr) eh;
    if (len < sizeof eh) return "too short for an ELF header";
    memcpy(&eh, bytes, sizeof eh);
    if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return "not a shared object (no ELF header)";
    if (eh.e_ident[EI_CLASS] != (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32)) return "wrong ELF class";
    if (eh.e_ident[EI_DATA] != (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB : ELFDATA2MSB))
        return "wrong byte order";
    if (eh.e_type != ET_DYN) return "not a shared object";
#ifdef NATIVE_MACHINE
    if (eh.e_machine != NATIVE_MACHINE) return "built for another machine";
#endif
    if (eh.e_phentsize != sizeof(ElfW(Phdr)) || eh.e_phoff > len ||
        (size_t)eh.e_phnum * sizeof(ElfW(Phdr)) > len - eh.e_phoff)
        return "program headers outside the object";
    if (eh.e_shoff && (eh.e_shoff > len || (size_t)eh.e_shnum * eh.e_shentsize > len - eh.e_shoff))
        return "section headers outside the object (truncated)";
    for (size_t i = 0; i < eh.e_phnum; i++) {
        ElfW(Phdr) ph;
        memcpy(&ph, (const char *)bytes + eh.e_phoff + i * sizeof ph, sizeof ph);
        if (ph.p_type != PT_NULL && (ph.p_offset > len || ph.p_filesz > len - ph.p_offset))
            return "a segment lies outside the object (truncated)";
    }
    return NULL;
}

/* Kernel libraries are opened and closed under one lock. The dynamic
 * loader serialises these calls itself, but ThreadSanitizer cannot see its
 * lock and reports the loader's own bookkeeping as a race when two devices
 * drop their last library on two threads (the notifier thread can release
 * a device). The calls are rare and slow anyway. */
static pthread_mutex_t loader_lock = PTHREAD_MUTEX_INITIALIZER;

static void *loader_open(const char *path, char **why)
{
    pthread_mutex_lock(&loader_lock);
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | MC__DLOPEN_KEEP);
    if (!dl) {
        const char *e = dlerror();
        *why = mc__strdup(e ? e : "dlopen failed");
    }
    pthread_mutex_unlock(&loader_lock);
    return dl;
}

void mc__cpu_loader_close(void *dl)
{
    pthread_mutex_lock(&loader_lock);
    dlclose(dl);
    pthread_mutex_unlock(&loader_lock);
}

/* dlopens a shared object held in memory: through a memfd where there is
 * one, else a private temporary file unlinked right after loading.
 *
 * The memfd stays open (*fd) while the object is loaded: the dynamic
 * loader knows objects by the name they were opened with, and
 * "/proc/self/fd/N" must not name a second object while the first lives,
 * or dlopen hands back the first. */
mc_status mc__cpu_load_object(const void *bytes, size_t len, void **dl, int *keep_fd, char **why)
{
    *dl = NULL;
    *keep_fd = -1;
    *why = NULL;
    const char *bad = elf_problem(bytes, len);
    if (bad) {
        *why = mc__strdup(bad);
        return MC_ERR_IO;
    }
    char path[PATH_MAX];
    bool temp_file = false;
    int fd = memfd_create("mc-kernel", MFD_CLOEXEC);
    if (fd < 0) {
        int n = snprintf(path, sizeof path, "%s/mc-kernel-XXXXXX", mc__env_str("TMPDIR", "/tmp"));
        if (n < 0 || (size_t)n >= sizeof path || (fd = mkostemp(path, O_CLOEXEC)) < 0) {
            *why = mc__asprintf("cannot create a file to load from: %s", strerror(errno));
            return MC_ERR_IO;
        }
        temp_file = true;
    } else {
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    const char *p = bytes;
    size_t left = len;
    while (left) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        p += n;
        left -= (size_t)n;
    }
    if (!left) {
        *dl = loader_open(path, why);
    } else {
        *why = mc__asprintf("cannot write the shared object: %s", strerror(errno));
    }
    if (temp_file) unlink(path); /* a random name: reuse while loaded is not a concern */
    if (*dl && !temp_file) *keep_fd = fd;
    else close(fd);
    return *dl ? MC_OK : MC_ERR_IO;
}
