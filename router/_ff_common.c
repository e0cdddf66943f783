/* router/_ff_common.c: helpers shared by the parts of router._fastfeat (#included by _fastfeat.c):
 * the Unicode classes of re and str, UTF-8 encoding, hashing, sorting, buffer checks, and StrTable, the
 * string -> id hash table behind the word and n-gram vocabularies. Everything is static. */
/* ---- small helpers ---------------------------------------------------------------------------- */

static inline int is_alnum_lower(Py_UCS4 c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

/* _sre's \s and \w on a str pattern */
static inline int is_space(Py_UCS4 c) {
    return c < 128 ? (c == ' ' || (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x1f)) : Py_UNICODE_ISSPACE(c);
}
static inline int is_word(Py_UCS4 c) {
    return c < 128 ? ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')
                   : (Py_UNICODE_ISALNUM(c) || c == '_');
}

/* UTF-8 bytes of one code point; lone surrogates are encoded like any other code point (both sides of a
 * lookup use this encoder, so a vocabulary token with a surrogate still matches the text's). */
static inline int utf8(Py_UCS4 c, unsigned char *out) {
    if (c < 0x80) {
        out[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = 0xC0 | (c >> 6);
        out[1] = 0x80 | (c & 0x3F);
        return 2;
    }
    if (c < 0x10000) {
        out[0] = 0xE0 | (c >> 12);
        out[1] = 0x80 | ((c >> 6) & 0x3F);
        out[2] = 0x80 | (c & 0x3F);
        return 3;
    }
    out[0] = 0xF0 | (c >> 18);
    out[1] = 0x80 | ((c >> 12) & 0x3F);
    out[2] = 0x80 | ((c >> 6) & 0x3F);
    out[3] = 0x80 | (c & 0x3F);
    return 4;
}

static inline uint64_t hash_bytes(const unsigned char *s, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

static inline uint64_t hash_key(uint64_t k) {
    uint64_t h = k * 0x9E3779B97F4A7C15ULL; /* Fibonacci hashing */
    return h ^ (h >> 31);
}

static Py_ssize_t table_size(Py_ssize_t n) {
    Py_ssize_t size = 16;
    while (size < 2 * n + 1) size <<= 1; /* load factor <= 1/2: short probe sequences */
    return size;
}

/* Sorts n 32-bit keys in place (LSD radix, 8 bits a pass; a pass where every key has the same byte is
 * skipped). ~600 keys a prompt: a few microseconds, against ~25 for qsort's comparator calls. */
static void radix_sort_u32(uint32_t *a, uint32_t *tmp, Py_ssize_t n) {
    if (n < 2) return;
    for (int shift = 0; shift < 32; shift += 8) {
        Py_ssize_t count[257] = {0};
        for (Py_ssize_t i = 0; i < n; i++) count[((a[i] >> shift) & 0xFF) + 1]++;
        if (count[((a[0] >> shift) & 0xFF) + 1] == n) continue;
        for (int b = 0; b < 256; b++) count[b + 1] += count[b];
        for (Py_ssize_t i = 0; i < n; i++) tmp[count[(a[i] >> shift) & 0xFF]++] = a[i];
        memcpy(a, tmp, n * sizeof(uint32_t));
    }
}

/* (distinct values, how often each occurs) of a sorted array, as a tuple of two int64 bytes objects:
 * np.unique(a, return_counts=True). NULL with an exception set when out of memory. */
static PyObject *distinct_counts(const uint32_t *sorted, Py_ssize_t n) {
    Py_ssize_t n_uniq = 0;
    for (Py_ssize_t k = 0; k < n; k++)
        if (k == 0 || sorted[k] != sorted[k - 1]) n_uniq++;
    PyObject *idx = PyBytes_FromStringAndSize(NULL, n_uniq * 8);
    PyObject *cnt = PyBytes_FromStringAndSize(NULL, n_uniq * 8);
    PyObject *result = NULL;
    if (idx && cnt) {
        int64_t *out_idx = (int64_t *)PyBytes_AS_STRING(idx), *out_cnt = (int64_t *)PyBytes_AS_STRING(cnt);
        Py_ssize_t u = -1;
        for (Py_ssize_t k = 0; k < n; k++) {
            if (k == 0 || sorted[k] != sorted[k - 1]) {
                out_idx[++u] = sorted[k];
                out_cnt[u] = 0;
            }
            out_cnt[u]++;
        }
        result = PyTuple_Pack(2, idx, cnt);
    }
    Py_XDECREF(idx);
    Py_XDECREF(cnt);
    return result;
}

/* ---- StrTable: strings -> ids, an open-addressing hash table ------------------------------------ */

/* Slots are 8 bytes so the tables stay small (~0.5 MB for MMLU's word vocabulary): a decision looks
 * up ~800 terms, and when other work has evicted the tables each probe is a cache miss. The term
 * lookups below hash and prefetch every slot first, so those misses overlap. */
#define SLOT_EMPTY 0xFFFFFFFFu
typedef struct {
    uint32_t tag; /* high bits of the hash */
    uint32_t id;  /* SLOT_EMPTY: empty slot */
} Slot;

typedef struct {
    unsigned char *blob; /* the strings' bytes (UTF-8), back to back */
    int64_t *offset;     /* id -> start in blob; -1 for a repeated string */
    int32_t *len;
    Slot *slots;
    Py_ssize_t mask;
    Py_ssize_t n;
} StrTable;

static void strtable_free(StrTable *t) {
    PyMem_Free(t->blob);
    PyMem_Free(t->offset);
    PyMem_Free(t->len);
    PyMem_Free(t->slots);
    memset(t, 0, sizeof *t);
}

static inline int32_t strtable_find(const StrTable *t, const unsigned char *s, Py_ssize_t n, uint64_t h) {
    uint32_t tag = (uint32_t)(h >> 32);
    for (Py_ssize_t i = (Py_ssize_t)h & t->mask;; i = (i + 1) & t->mask) {
        const Slot slot = t->slots[i];
        if (slot.id == SLOT_EMPTY) return -1;
        if (slot.tag == tag && t->len[slot.id] == n && memcmp(t->blob + t->offset[slot.id], s, n) == 0)
            return (int32_t)slot.id;
    }
}

/* UTF-8 bytes of a str into ``out`` (room for 4 per code point); their count. */
static Py_ssize_t encode_str(PyObject *str, unsigned char *out) {
    int kind = PyUnicode_KIND(str);
    const void *data = PyUnicode_DATA(str);
    Py_ssize_t n = PyUnicode_GET_LENGTH(str), k = 0;
    for (Py_ssize_t i = 0; i < n; i++) k += utf8(PyUnicode_READ(kind, data, i), out + k);
    return k;
}

/* The strings of ``list`` with their positions as ids; a repeated string keeps its first id, as
 * dict.setdefault does. 0, or -1 with an exception set. */
static int strtable_init(StrTable *t, PyObject *list) {
    Py_ssize_t n = PyList_GET_SIZE(list), total = 0;
    if (n >= (Py_ssize_t)SLOT_EMPTY) {
        PyErr_SetString(PyExc_ValueError, "too many strings for the packed tables");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *str = PyList_GET_ITEM(list, i);
        if (!PyUnicode_Check(str)) {
            PyErr_SetString(PyExc_TypeError, "tokens must be str");
            return -1;
        }
        total += 4 * PyUnicode_GET_LENGTH(str);
    }
    t->n = n;
    t->mask = table_size(n) - 1;
    t->blob = PyMem_Malloc(total + 1);
    t->offset = PyMem_Malloc((n + 1) * sizeof(int64_t));
    t->len = PyMem_Malloc((n + 1) * sizeof(int32_t));
    t->slots = PyMem_Malloc((t->mask + 1) * sizeof(Slot));
    if (!t->blob || !t->offset || !t->len || !t->slots) {
        strtable_free(t);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i <= t->mask; i++) t->slots[i].id = SLOT_EMPTY;
    int64_t offset = 0;
    for (Py_ssize_t id = 0; id < n; id++) {
        unsigned char *s = t->blob + offset;
        Py_ssize_t len = encode_str(PyList_GET_ITEM(list, id), s);
        uint64_t h = hash_bytes(s, len);
        t->offset[id] = -1;
        t->len[id] = -1;
        if (strtable_find(t, s, len, h) >= 0) continue;
        t->offset[id] = offset;
        t->len[id] = (int32_t)len;
        Py_ssize_t i = (Py_ssize_t)h & t->mask;
        while (t->slots[i].id != SLOT_EMPTY) i = (i + 1) & t->mask;
        t->slots[i] = (Slot){(uint32_t)(h >> 32), (uint32_t)id};
        offset += len;
    }
    return 0;
}

/* Whether a buffer (asked for with PyBUF_FORMAT) holds items of ``type``: 'q' int64 (numpy reports
 * "q" or "l"), 'd' float64 or 'f' float32. */
static int buffer_holds(const Py_buffer *view, char type) {
    const char *f = view->format;
    if (!f || view->itemsize != (type == 'f' ? 4 : 8)) return 0;
    if (type == 'q') return strcmp(f, "q") == 0 || strcmp(f, "l") == 0;
    return f[0] == type && f[1] == '\0';
}

static int read_i64(PyObject *obj, const char *what, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (!buffer_holds(view, 'q')) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous int64 buffer", what);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}
