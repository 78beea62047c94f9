/* The declarations of include/mc/*.h that the Python binding uses, in the
 * form cffi's parser takes (no macros, no includes; enums as int, which has
 * their size on every supported ABI). Kept in step with the headers by
 * tests/test_layout.py, which compares every struct's size and offsets
 * with the C compiler's. */
typedef int mc_status;
typedef int mc_device_kind;
typedef int mc_storage;
typedef int mc_language;
typedef int mc_cmdbuf_state;
typedef int mc_pass_state;
typedef int mc_cache_mode;
typedef int mc_log_level;
typedef int mc_runner_arg_kind;
typedef int mc_stream_arg_kind;

const char *mc_status_name(mc_status s);
const char *mc_status_text(mc_status s);
mc_status mc_status_from_word(const char *word, mc_status *out);
const char *mc_last_error(void);
_Bool mc_status_is_device_error(mc_status s);
void mc_free(void *p);

typedef struct mc_device mc_device;
typedef struct mc_buffer mc_buffer;
typedef struct mc_library mc_library;
typedef struct mc_pipeline mc_pipeline;
typedef struct mc_queue mc_queue;
typedef struct mc_cmdbuf mc_cmdbuf;
typedef struct mc_pass mc_pass;
typedef struct mc_event mc_event;

const char *mc_device_kind_name(mc_device_kind k);

typedef struct mc_device_info {
    mc_device_kind kind;
    int index;
    char name[128];
    char identity[128];
    uint32_t max_threads_per_threadgroup;
    uint64_t threadgroup_memory_size;
    uint32_t simd_width;
    uint32_t compute_units;
    _Bool unified_memory;
    uint64_t execution_time_limit_ns;
    uint64_t max_buffer_size;
    uint32_t features;
} mc_device_info;

typedef struct mc_device_desc {
    mc_device_kind kind;
    int index;
    int64_t time_limit_ms;
    uint32_t threads;
} mc_device_desc;

mc_status mc_device_list(mc_device_info *out, size_t cap, size_t *count);
mc_status mc_device_open(const mc_device_desc *desc, mc_device **out);
mc_status mc_device_open_name(const char *spec, mc_device **out);
mc_status mc_device_desc_from_name(const char *spec, mc_device_desc *desc);
void mc_device_retain(mc_device *d);
void mc_device_release(mc_device *d);
mc_status mc_device_get_info(const mc_device *d, mc_device_info *out);
mc_status mc_device_check(const mc_device *d);
mc_status mc_device_inject_fault(mc_device *d, mc_status kind, uint64_t nth);
mc_status mc_device_inject_faults(mc_device *d, const char *spec);
uint64_t mc_device_committed_count(const mc_device *d);
void mc_validation_set(_Bool on);
_Bool mc_validation_enabled(void);

typedef struct mc_buffer_desc {
    size_t size;
    mc_storage storage;
    const char *label;
    const void *initial_data;
} mc_buffer_desc;

mc_status mc_buffer_create(mc_device *d, const mc_buffer_desc *desc, mc_buffer **out);
void mc_buffer_retain(mc_buffer *b);
void mc_buffer_release(mc_buffer *b);
size_t mc_buffer_size(const mc_buffer *b);
void *mc_buffer_contents(mc_buffer *b);
mc_status mc_buffer_write(mc_buffer *b, size_t offset, const void *src, size_t len);
mc_status mc_buffer_read(mc_buffer *b, size_t offset, void *dst, size_t len);
typedef void (*mc_host_release_fn)(void *user, void *pointer);
typedef struct mc_host_buffer_desc {
    void *pointer;
    size_t size;
    const char *label;
    mc_host_release_fn release;
    void *user;
} mc_host_buffer_desc;
mc_status mc_buffer_create_from_host(mc_device *d, const mc_host_buffer_desc *desc, mc_buffer **out);
mc_status mc_buffer_get_device_address(mc_buffer *b, uint64_t *out);

const char *mc_language_name(mc_language l);
typedef struct mc_library_desc {
    mc_language language;
    const char *source;
    size_t source_len;
    const char *options;
    const char *label;
} mc_library_desc;
mc_status mc_library_create(mc_device *d, const mc_library_desc *desc, mc_library **out, char **log);
mc_status mc_library_create_from_file(mc_device *d, const char *path, mc_language language,
                                      const char *options, mc_library **out, char **log);
const char *mc_device_kernel_extension(mc_device_kind k);
void mc_library_release(mc_library *l);

typedef struct mc_pipeline_desc {
    mc_library *library;
    const char *function;
    uint32_t max_total_threads_per_threadgroup;
    _Bool threadgroup_size_is_multiple_of_simd_width;
    const char *label;
    const void *constants; /* const mc_function_constant * */
    uint32_t constant_count;
} mc_pipeline_desc;
typedef struct mc_pipeline_info {
    uint32_t max_total_threads_per_threadgroup;
    uint32_t simd_width;
    uint64_t static_threadgroup_memory;
    int32_t argument_count;
} mc_pipeline_info;
mc_status mc_pipeline_create(mc_device *d, const mc_pipeline_desc *desc, mc_pipeline **out);
void mc_pipeline_retain(mc_pipeline *p);
void mc_pipeline_release(mc_pipeline *p);
mc_status mc_pipeline_get_info(const mc_pipeline *p, mc_pipeline_info *out);

typedef struct mc_size3 { uint32_t x, y, z; } mc_size3;
typedef struct mc_queue_desc { const char *label; } mc_queue_desc;
mc_status mc_queue_create(mc_device *d, const mc_queue_desc *desc, mc_queue **out);
void mc_queue_release(mc_queue *q);
mc_status mc_queue_check(const mc_queue *q);
mc_status mc_queue_wait_idle(mc_queue *q, uint64_t timeout_ns);

const char *mc_cmdbuf_state_name(mc_cmdbuf_state s);
const char *mc_pass_state_name(mc_pass_state s);
typedef struct mc_cmdbuf_desc { const char *label; uint32_t flags; } mc_cmdbuf_desc;
mc_status mc_cmdbuf_create(mc_queue *q, const mc_cmdbuf_desc *desc, mc_cmdbuf **out);
void mc_cmdbuf_release(mc_cmdbuf *cb);
mc_status mc_cmdbuf_begin_pass(mc_cmdbuf *cb, const char *label, mc_pass **out);
mc_status mc_pass_set_pipeline(mc_pass *p, mc_pipeline *pl);
mc_status mc_pass_set_buffer(mc_pass *p, uint32_t index, mc_buffer *b, size_t offset);
mc_status mc_pass_set_bytes(mc_pass *p, uint32_t index, const void *data, size_t len);
mc_status mc_pass_set_threadgroup_memory(mc_pass *p, uint32_t index, size_t len);
mc_status mc_pass_dispatch(mc_pass *p, mc_size3 threadgroups, mc_size3 threads_per_threadgroup);
mc_status mc_pass_barrier(mc_pass *p);
mc_status mc_pass_end(mc_pass *p);
mc_status mc_cmdbuf_copy_buffer(mc_cmdbuf *cb, mc_buffer *src, size_t src_offset, mc_buffer *dst,
                                size_t dst_offset, size_t len);
mc_status mc_cmdbuf_fill_buffer(mc_cmdbuf *cb, mc_buffer *b, size_t offset, size_t len, uint8_t value);
mc_status mc_cmdbuf_signal_event(mc_cmdbuf *cb, mc_event *e, uint64_t value);
mc_status mc_cmdbuf_wait_event(mc_cmdbuf *cb, mc_event *e, uint64_t value);
typedef void (*mc_cmdbuf_fn)(void *user, mc_cmdbuf *cb);
mc_status mc_cmdbuf_on_completed(mc_cmdbuf *cb, mc_cmdbuf_fn fn, void *user);
mc_status mc_cmdbuf_commit(mc_cmdbuf *cb);
mc_status mc_cmdbuf_wait(mc_cmdbuf *cb, uint64_t timeout_ns);
mc_cmdbuf_state mc_cmdbuf_get_state(const mc_cmdbuf *cb);
mc_status mc_cmdbuf_status(const mc_cmdbuf *cb, const char **message);
size_t mc_cmdbuf_pass_count(const mc_cmdbuf *cb);
typedef struct mc_pass_info {
    const char *label;
    mc_pass_state state;
    uint64_t gpu_start_ns, gpu_end_ns;
} mc_pass_info;
mc_status mc_cmdbuf_get_pass_info(const mc_cmdbuf *cb, size_t index, mc_pass_info *out);
mc_status mc_cmdbuf_get_gpu_time(const mc_cmdbuf *cb, uint64_t *start_ns, uint64_t *end_ns);

mc_status mc_event_create(mc_device *d, uint64_t initial_value, mc_event **out);
void mc_event_release(mc_event *e);
mc_status mc_event_get_value(const mc_event *e, uint64_t *out);
mc_status mc_event_signal(mc_event *e, uint64_t value);
mc_status mc_event_wait(mc_event *e, uint64_t target, uint64_t timeout_ns);
typedef void (*mc_event_fn)(void *user, mc_event *e, uint64_t value);
mc_status mc_event_notify(mc_event *e, uint64_t target, mc_event_fn fn, void *user);

/* mc_cache.h */
typedef struct mc_pipeline_source_desc {
    mc_language language;
    const char *source;
    size_t source_len;
    const char *options;
    const char *function;
    uint32_t max_total_threads_per_threadgroup;
    _Bool threadgroup_size_is_multiple_of_simd_width;
    const char *label;
    const void *constants; /* const mc_function_constant * */
    uint32_t constant_count;
} mc_pipeline_source_desc;
mc_status mc_pipeline_create_from_source(mc_device *d, const mc_pipeline_source_desc *desc,
                                         mc_pipeline **out, char **log);
const char *mc_cache_mode_name(mc_cache_mode m);
mc_status mc_cache_set_mode(mc_device *d, mc_cache_mode mode);
mc_cache_mode mc_cache_get_mode(mc_device *d);
typedef struct mc_cache_stats {
    uint64_t hits_memory, hits_disk, misses, compiles, compile_ns, load_ns, writes, rejected, evictions;
    uint64_t memory_entries, disk_entries, disk_bytes, max_bytes;
    _Bool disk_enabled;
} mc_cache_stats;
mc_status mc_cache_get_stats(mc_device *d, mc_cache_stats *out);

/* mc_runner.h */
typedef struct mc_runner mc_runner;
typedef struct mc_runner_iteration { uint64_t first_iteration; uint32_t count; uint32_t pad; } mc_runner_iteration;
typedef struct mc_runner_arg {
    mc_runner_arg_kind kind;
    mc_buffer *buffer;
    size_t offset;
    const void *bytes;
    size_t len;
} mc_runner_arg;
typedef struct mc_runner_binding {
    mc_pipeline *pipeline;
    mc_buffer *state[16];
    uint32_t state_count;
    mc_runner_arg args[31];
    size_t threadgroup_memory[8];
    void *user_data;
} mc_runner_binding;
typedef mc_status (*mc_runner_setup_fn)(void *user, mc_device *dev, mc_runner_binding *bind);
typedef void (*mc_runner_teardown_fn)(void *user, mc_runner_binding *bind);
typedef struct mc_runner_progress {
    uint64_t iterations;
    uint64_t total_iterations;
    double rate;
    double eta_s;
    double elapsed_s;
    uint64_t chunks;
    uint32_t recoveries;
    _Bool done;
    uint32_t worker_restarts;
} mc_runner_progress;
typedef void (*mc_runner_progress_fn)(void *user, const mc_runner_progress *p);
typedef void (*mc_runner_checkpoint_fn)(void *user, uint64_t iteration, const void *const *state,
                                        const size_t *sizes, uint32_t count);
struct mc_isolate_desc;
typedef struct mc_runner_desc {
    mc_device *device;
    mc_runner_setup_fn setup;
    mc_runner_teardown_fn teardown;
    void *user;
    mc_size3 threadgroups;
    mc_size3 threads_per_threadgroup;
    uint32_t iterations_per_dispatch;
    uint64_t total_iterations;
    int32_t iteration_arg;
    int32_t control_arg;
    double budget_ms;
    double max_chunk_ms;
    uint32_t in_flight;
    double checkpoint_ms;
    uint32_t max_recoveries;
    double backoff_initial_ms;
    double backoff_max_ms;
    mc_runner_progress_fn progress;
    void *progress_user;
    double progress_interval_ms;
    const char *label;
    mc_runner_checkpoint_fn on_checkpoint;
    void *checkpoint_user;
    uint32_t flags;
    const struct mc_isolate_desc *isolate;
    const char *checkpoint_dir;
    const void *run_params;
    size_t run_params_len;
} mc_runner_desc;
typedef struct mc_runner_stats {
    uint64_t iterations, chunks, chunks_submitted, chunks_after_stop, dispatches;
    double chunk_ms_mean, chunk_ms_max;
    double gap_us_mean, gap_us_max;
    uint64_t checkpoints, checkpoint_iteration;
    uint32_t recoveries;
    uint32_t timeouts, page_faults, access_revoked, devices_lost, internal_errors, victims, other_errors;
    uint32_t device_reopens;
    double backoff_ms;
    double elapsed_ms;
    mc_status last_failure;
    _Bool stopped_early;
    _Bool cancelled;
    uint32_t worker_restarts;
    uint64_t checkpoints_written;
    uint64_t resumed_iteration;
} mc_runner_stats;
mc_status mc_runner_create(const mc_runner_desc *desc, mc_runner **out);
mc_status mc_runner_run(mc_runner *r);
mc_status mc_runner_cancel(mc_runner *r);
mc_status mc_runner_get_stats(const mc_runner *r, mc_runner_stats *out);
mc_status mc_runner_state_read(mc_runner *r, uint32_t index, void *dst, size_t len);
size_t mc_runner_state_size(const mc_runner *r, uint32_t index);
void mc_runner_release(mc_runner *r);

/* mc_isolate.h */
typedef struct mc_isolate_desc {
    const char *device;
    int64_t time_limit_ms;
    uint32_t threads;
    double deadline_ms;
    double start_timeout_ms;
    uint32_t max_restarts;
    const char *inject_faults;
} mc_isolate_desc;
typedef struct mc_isolate_stats {
    uint32_t workers;
    uint32_t restarts;
    uint32_t device_errors;
    uint32_t deaths;
    uint32_t hangs;
    int last_signal;
    mc_status last_cause;
    char last_cause_text[256];
    double start_ms;
    double restart_ms_last, restart_ms_mean, restart_ms_max;
    double reap_ms_last, ready_ms_last, resume_ms_last;
    double outage_ms_last;
    uint64_t restored_iteration;
    mc_device_info device;
    int worker_pid;
} mc_isolate_stats;
mc_status mc_runner_get_isolate_stats(const mc_runner *r, mc_isolate_stats *out);

/* mc_stream.h */
typedef struct mc_stream mc_stream;
typedef struct mc_stream_arg {
    mc_stream_arg_kind kind;
    mc_buffer *buffer;
    size_t offset;
    const void *bytes;
    size_t len;
} mc_stream_arg;
typedef struct mc_stream_pass {
    mc_pipeline *pipeline;
    mc_size3 threadgroups;
    mc_size3 threads_per_threadgroup;
    mc_stream_arg args[31];
    size_t threadgroup_memory[8];
    const char *label;
} mc_stream_pass;
typedef struct mc_stream_binding {
    mc_stream_pass passes[8];
    uint32_t pass_count;
    void *user_data;
} mc_stream_binding;
typedef mc_status (*mc_stream_setup_fn)(void *user, mc_device *dev, mc_stream_binding *bind);
typedef void (*mc_stream_teardown_fn)(void *user, mc_stream_binding *bind);
typedef struct mc_stream_result {
    uint64_t sequence;
    uint64_t tag;
    mc_status status;
    const char *message;
    const void *output;
    size_t output_size;
    const void *input;
    uint32_t attempts;
    uint32_t slot;
} mc_stream_result;
typedef void (*mc_stream_result_fn)(void *user, const mc_stream_result *r);
typedef struct mc_stream_desc {
    mc_device *device;
    mc_stream_setup_fn setup;
    mc_stream_teardown_fn teardown;
    void *user;
    size_t item_size;
    size_t result_size;
    uint32_t slots;
    mc_stream_result_fn on_result;
    void *result_user;
    uint32_t max_retries;
    const char *label;
    uint32_t flags;
    const struct mc_isolate_desc *isolate;
    uint32_t lanes;
} mc_stream_desc;
typedef struct mc_stream_slot { uint32_t index; void *input; size_t size; } mc_stream_slot;
typedef struct mc_stream_stats {
    uint64_t submitted, delivered, failed, cancelled, commits, replays;
    uint32_t recoveries, device_reopens, slots, slots_in_use, max_in_flight;
    mc_status last_failure;
    uint32_t worker_restarts;
    uint64_t list_commits;
} mc_stream_stats;
mc_status mc_stream_create(const mc_stream_desc *desc, mc_stream **out);
mc_status mc_stream_acquire(mc_stream *s, uint64_t timeout_ns, mc_stream_slot *out);
mc_status mc_stream_submit(mc_stream *s, uint32_t slot, uint64_t tag);
mc_status mc_stream_discard(mc_stream *s, uint32_t slot);
mc_status mc_stream_pull(mc_stream *s, uint64_t timeout_ns, mc_stream_result *out);
mc_status mc_stream_release_result(mc_stream *s, const mc_stream_result *r);
mc_status mc_stream_close(mc_stream *s, _Bool drain);
mc_status mc_stream_get_stats(const mc_stream *s, mc_stream_stats *out);
void mc_stream_release(mc_stream *s);
mc_status mc_stream_get_isolate_stats(const mc_stream *s, mc_isolate_stats *out);
