"""DLPack export of buffers (Buffer.__dlpack__): a capsule over the
buffer's memory, CPU memory (kDLCPU) or CUDA device memory (kDLCUDA),
that keeps the buffer alive until its consumer lets it go. A consumer that
asks for DLPack 1.x (max_version) gets a versioned, writable tensor; older
ones the "dltensor" capsule (which NumPy 2 reads as read-only).

NumPy makes capsules only over host arrays, so the DLManagedTensor is
built here: its memory (and the shape it points to) is kept in _live under
a token until the consumer calls the deleter, or, for a capsule nobody
consumed, until the capsule's destructor does (the DLPack protocol: a
capsule still named "dltensor" when it dies was not consumed).
"""
import ctypes
import itertools
import threading

from cffi import FFI

# DLPack's own structs (dlpack.h, ABI version 0.x "dltensor" capsules),
# apart from the library's declarations.
ffi = FFI()
ffi.cdef("""
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} DLTensor;
typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;
typedef struct { uint32_t major; uint32_t minor; } DLPackVersion;
typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;
""")

KDL_CPU = 1
KDL_CUDA = 2
KDL_UINT = 1

_NAME = b"dltensor"
_NAME_V1 = b"dltensor_versioned"
_live = {}
_lock = threading.Lock()
_tokens = itertools.count(1)


def _forget(m):
    token = int(ffi.cast("uintptr_t", m.manager_ctx))
    with _lock:
        entry = _live.pop(token, None)
    del entry  # the buffer may be released here


@ffi.callback("void(DLManagedTensor *)")
def _deleter(m):
    _forget(m)


@ffi.callback("void(DLManagedTensorVersioned *)")
def _deleter_v1(m):
    _forget(m)


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_is_valid.restype = ctypes.c_int
_capsule_is_valid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]


# The capsule is passed as a plain address: as a py_object ctypes would take
# a new reference to an object being destroyed and destroy it again.
@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _capsule_destructor(capsule):
    # Never consumed (a consumer renames it "used_..."): the producer cleans up.
    if _capsule_is_valid(capsule, _NAME):
        _forget(ffi.cast("DLManagedTensor *", _capsule_pointer(capsule, _NAME)))
    elif _capsule_is_valid(capsule, _NAME_V1):
        _forget(ffi.cast("DLManagedTensorVersioned *", _capsule_pointer(capsule, _NAME_V1)))


_DESTRUCTOR = ctypes.cast(_capsule_destructor, ctypes.c_void_p)


def live_count():
    """Capsules made and not yet let go of (tests)."""
    with _lock:
        return len(_live)


def export(owner, address, nbytes, device_type, device_id, versioned=False):
    """A capsule over nbytes uint8 at address on (device_type, device_id):
    "dltensor_versioned" (DLPack 1.0, writable) when versioned, else
    "dltensor"; owner stays referenced until the consumer is done."""
    token = next(_tokens)
    if versioned:
        m = ffi.new("DLManagedTensorVersioned *")
        m.version.major, m.version.minor = 1, 0
        m.flags = 0  # writable, not a copy
        m.deleter = _deleter_v1
        name = _NAME_V1
    else:
        m = ffi.new("DLManagedTensor *")
        m.deleter = _deleter
        name = _NAME
    shape = ffi.new("int64_t[1]", [nbytes])
    t = m.dl_tensor
    t.data = ffi.cast("void *", address)
    t.device.device_type = device_type
    t.device.device_id = device_id
    t.ndim = 1
    t.dtype.code = KDL_UINT
    t.dtype.bits = 8
    t.dtype.lanes = 1
    t.shape = shape
    t.strides = ffi.NULL  # compact
    t.byte_offset = 0
    m.manager_ctx = ffi.cast("void *", token)
    with _lock:
        _live[token] = (m, shape, owner)
    try:
        return _capsule_new(int(ffi.cast("uintptr_t", m)), name, _DESTRUCTOR)
    except BaseException:
        with _lock:
            _live.pop(token, None)
        raise


def device_for(kind, index, host_visible, unified_memory):
    """(DLPack device type, device id) of a buffer, or the reason it has
    none. CUDA memory, device-private or shared (pinned and mapped), is
    exported as kDLCUDA on the device's index, through the address kernels
    use; host memory (the CPU device's shared buffers, Metal's on unified
    memory) as kDLCPU."""
    if kind == "cuda":
        return (KDL_CUDA, index)
    if not host_visible:
        return "private storage has no host address and this device exports no device address: use read()"
    if kind == "cpu" or unified_memory:
        return (KDL_CPU, 0)
    return "this device's shared buffers are not plain host memory: use read()"
