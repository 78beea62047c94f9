/*
 * DOC: Status codes and error detail
 *
 * The names and texts come from the one MC_STATUS_MAP list so they never
 * drift. Detail for the last failing call lives in thread-local storage.
 */
#include "core/core.h"

#include <stdio.h>
#include <string.h>

/* Room for a nested error (an isolated worker's detail inside the
 * supervisor's) without cutting it mid-sentence. */
static _Thread_local char last_error[2048];

const char *mc_status_name(mc_status s)
{
    switch (s) {
#define MC__NAME(name, value, text) \
    case MC_##name: return "MC_" #name;
        MC_STATUS_MAP(MC__NAME)
#undef MC__NAME
    }
    return "MC_UNKNOWN";
}

const char *mc_status_text(mc_status s)
{
    switch (s) {
#define MC__TEXT(name, value, text) \
    case MC_##name: return text;
        MC_STATUS_MAP(MC__TEXT)
#undef MC__TEXT
    }
    return "unknown status";
}

static const struct {
    const char *word;
    mc_status status;
} fault_words[] = {
    {"internal", MC_ERR_INTERNAL},
    {"timeout", MC_ERR_TIMEOUT},
    {"page-fault", MC_ERR_PAGE_FAULT},
    {"access-revoked", MC_ERR_ACCESS_REVOKED},
    {"not-permitted", MC_ERR_NOT_PERMITTED},
    {"out-of-memory", MC_ERR_OUT_OF_MEMORY},
    {"invalid-resource", MC_ERR_INVALID_RESOURCE},
    {"device-lost", MC_ERR_DEVICE_LOST},
};

mc_status mc_status_from_word(const char *word, mc_status *out)
{
    if (!word || !out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_status_from_word: NULL argument");
    for (size_t i = 0; i < MC__ARRAY_LEN(fault_words); i++) {
        if (!strcmp(word, fault_words[i].word)) {
            *out = fault_words[i].status;
            return MC_OK;
        }
    }
    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                    "unknown fault kind '%s' (expected timeout, page-fault, access-revoked, device-lost, internal, "
                    "not-permitted, out-of-memory or invalid-resource)",
                    word);
}

const char *mc__status_word(mc_status s);
const char *mc__status_word(mc_status s)
{
    for (size_t i = 0; i < MC__ARRAY_LEN(fault_words); i++)
        if (fault_words[i].status == s) return fault_words[i].word;
    return NULL;
}

bool mc_status_is_device_error(mc_status s)
{
    return s > MC_OK && s < MC_ERR_INVALID_ARGUMENT;
}

const char *mc_last_error(void)
{
    return last_error;
}

void mc__clear_error(void)
{
    last_error[0] = '\0';
}

mc_status mc__fail(mc_status s, const char *fmt, ...)
{
    /* Formatted aside first: callers wrap the previous detail
     * (mc__fail(s, "MC_DEVICE: %s", mc_last_error())), and vsnprintf into
     * the buffer an argument points at is undefined behaviour. */
    char text[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    memcpy(last_error, text, strlen(text) + 1);
    return s;
}
