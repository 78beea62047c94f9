/*
 * Files written for the user: checked before the work, written beside the
 * target under a temporary name, flushed to the disk and renamed over it.
 * A full disk, a killed process or a bad path then leaves either the old
 * file or the new one, never a truncated mix, and a typo in an output path
 * is reported before hours of compute rather than after.
 */
#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The folder part of path ("." when there is none), in a fresh string. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return mc__strdup(".");
    if (slash == path) return mc__strdup("/");
    return mc__asprintf("%.*s", (int)(slash - path), path);
}

/* An existing symbolic link is written through, so that replacing the file
 * does not turn the user's link into a plain file. */
static char *resolve_target(const char *path)
{
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
        char *real = realpath(path, NULL);
        if (real) {
            char *copy = mc__strdup(real);
            free(real);
            return copy;
        }
    }
    return mc__strdup(path);
}

mc_status mc__outfile_check(const char *path)
{
    if (!path) return mc__fail(MC_ERR_INVALID_ARGUMENT, "output path is NULL");
    if (!*path) return mc__fail(MC_ERR_INVALID_ARGUMENT, "output path is empty");
    size_t len = strlen(path);
    if (path[len - 1] == '/') return mc__fail(MC_ERR_INVALID_ARGUMENT, "output path '%s' names a folder", path);
    if (len >= PATH_MAX) return mc__fail(MC_ERR_INVALID_ARGUMENT, "output path is too long (%zu bytes)", len);
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "output path '%s' is a folder", path);
        if (!S_ISREG(st.st_mode))
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "output path '%s' exists and is not a regular file", path);
    }
    /* Creating a file in the folder is the only reliable test (access()
     * ignores read-only mounts and answers for the real user id). */
    mc__outfile probe;
    mc_status s = mc__outfile_open(path, &probe);
    if (s != MC_OK) return s;
    mc__outfile_abort(&probe);
    return MC_OK;
}

mc_status mc__outfile_open(const char *path, mc__outfile *o)
{
    if (!o) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc__outfile_open: NULL handle");
    memset(o, 0, sizeof *o);
    if (!path || !*path) return mc__fail(MC_ERR_INVALID_ARGUMENT, "output path is empty");
    o->path = resolve_target(path);
    char *dir = o->path ? dir_of(o->path) : NULL;
    const char *base = o->path ? strrchr(o->path, '/') : NULL;
    base = base ? base + 1 : o->path;
    o->tmp = dir ? mc__asprintf("%s/.%s.tmp-XXXXXX", dir, base) : NULL;
    free(dir);
    if (!o->tmp) {
        mc__outfile_abort(o);
        return mc__fail(MC_ERR_NO_MEMORY, "output path '%s': out of memory", path);
    }
    int fd = mkstemp(o->tmp);
    if (fd < 0) {
        int e = errno;
        free(o->tmp);
        o->tmp = NULL; /* nothing was created: nothing to remove */
        mc__outfile_abort(o);
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "cannot create a file beside '%s': %s", path, strerror(e));
    }
    /* mkstemp makes 0600; the user's umask decides, as for any new file. */
    mode_t mask = umask(0);
    umask(mask);
    (void)fchmod(fd, 0666 & ~mask);
    o->f = fdopen(fd, "wb");
    if (!o->f) {
        close(fd);
        mc__outfile_abort(o);
        return mc__fail(MC_ERR_NO_MEMORY, "cannot open a stream for '%s'", path);
    }
    return MC_OK;
}

mc_status mc__outfile_commit(mc__outfile *o)
{
    if (!o || !o->f) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc__outfile_commit: no open file");
    int e = 0;
    if (fflush(o->f) != 0 || ferror(o->f)) e = errno ? errno : EIO;
    if (!e && fsync(fileno(o->f)) != 0) e = errno;
    if (fclose(o->f) != 0 && !e) e = errno;
    o->f = NULL;
    if (!e && rename(o->tmp, o->path) != 0) e = errno;
    if (e) {
        char *path = o->path;
        o->path = NULL;
        mc__outfile_abort(o);
        mc_status s = mc__fail(MC_ERR_INVALID_ARGUMENT, "writing '%s' failed: %s", path ? path : "?", strerror(e));
        free(path);
        return s;
    }
    /* The rename itself reaches the disk with the folder. */
    char *dir = dir_of(o->path);
    int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY) : -1;
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    free(dir);
    free(o->tmp);
    free(o->path);
    memset(o, 0, sizeof *o);
    return MC_OK;
}

void mc__outfile_abort(mc__outfile *o)
{
    if (!o) return;
    if (o->f) fclose(o->f);
    if (o->tmp) unlink(o->tmp);
    free(o->tmp);
    free(o->path);
    memset(o, 0, sizeof *o);
}

mc_status mc__outfile_write(const char *path, const void *data, size_t len)
{
    if (!data && len) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc__outfile_write: NULL data");
    mc__outfile o;
    mc_status s = mc__outfile_open(path, &o);
    if (s != MC_OK) return s;
    if (len && fwrite(data, 1, len, o.f) != len) {
        int e = errno;
        char *p = mc__strdup(path);
        mc__outfile_abort(&o);
        s = mc__fail(MC_ERR_INVALID_ARGUMENT, "writing '%s' failed: %s", p ? p : "?", strerror(e));
        free(p);
        return s;
    }
    return mc__outfile_commit(&o);
}
