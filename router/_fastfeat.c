/* router._fastfeat: the learned router's prompt featurisation, in C.
 *
 * Why: on the 2-core box the Python featuriser (router/features.py) costs ~400 us on a 1,600-character
 * prompt when decisions interleave with other work: a regex tokeniser that makes a str per token, a
 * dict lookup per token, a dozen numpy calls, ~35 C-level string scans for the structure features.
 * Acceptance 6 of issue 3 asks for a 1 ms p99 for the whole decision. Here each of those is one pass
 * over the text with no Python object per token.
 *
 * Every function is an exact replacement of a Python reference (tests/router_learning/test_fastfeat.py
 * checks equality on every prompt of the shared data and on generated strings). The callers lower-case
 * the text with str.lower first, so Unicode case mapping stays Python's:
 *
 *   TermTable(tokens, uni_col, bi_key, bi_col).counts(low)  == np.unique(_TermIndex.columns(text),
 *                                                              return_counts=True)
 *   word_counts(text[:max_chars].lower())                   == Counter(re.findall(r"\w+", ...))
 *   dense_features(text, low)                               == features.dense_features(text), or None
 *                                                              where it leaves a text to Python: non-ASCII
 *                                                              text without low = text.lower(), Unicode
 *                                                              digits, 'İ' (_ff_dense.c)
 *
 * The extension is optional: without a C compiler the package installs and runs on the Python path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_ff_dense.c"

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

static int sort_cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
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

/* ---- TermTable: the word vocabulary: tokens and bigrams ---------------------------------------- */

#define BIGRAM_EMPTY UINT64_MAX
#define COL_BITS 24 /* a bigram slot is key << 24 | column */

typedef struct {
    PyObject_HEAD
    StrTable tokens;
    int64_t *uni_col; /* token id -> unigram column, -1 when only its bigrams are in the vocabulary */
    uint64_t *bigrams;
    Py_ssize_t bigram_mask;
} TermTable;

static void TermTable_dealloc(TermTable *self) {
    strtable_free(&self->tokens);
    PyMem_Free(self->uni_col);
    PyMem_Free(self->bigrams);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int64_t bigram_col(const TermTable *t, uint64_t key) {
    for (Py_ssize_t i = (Py_ssize_t)hash_key(key) & t->bigram_mask;; i = (i + 1) & t->bigram_mask) {
        uint64_t slot = t->bigrams[i];
        if (slot == BIGRAM_EMPTY) return -1;
        if ((slot >> COL_BITS) == key) return (int64_t)(slot & ((1u << COL_BITS) - 1));
    }
}

static int read_i64(PyObject *obj, const char *what, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (view->itemsize != 8 || (view->format && strcmp(view->format, "q") && strcmp(view->format, "l"))) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous int64 buffer", what);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* TermTable(tokens: list[str], uni_col, bi_key, bi_col): ids are positions in ``tokens``. Raises
 * ValueError when the vocabulary does not fit the packed slots (the caller then keeps the Python path). */
static int TermTable_init(TermTable *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tokens", "uni_col", "bi_key", "bi_col", NULL};
    PyObject *tokens, *uni_obj, *key_obj, *col_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOO", kwlist, &PyList_Type, &tokens, &uni_obj, &key_obj,
                                     &col_obj))
        return -1;
    if (self->tokens.blob) {
        PyErr_SetString(PyExc_RuntimeError, "TermTable is already initialised");
        return -1;
    }
    Py_buffer uni, key, col;
    if (read_i64(uni_obj, "uni_col", &uni) < 0) return -1;
    if (read_i64(key_obj, "bi_key", &key) < 0) {
        PyBuffer_Release(&uni);
        return -1;
    }
    if (read_i64(col_obj, "bi_col", &col) < 0) {
        PyBuffer_Release(&uni);
        PyBuffer_Release(&key);
        return -1;
    }
    int ok = -1;
    Py_ssize_t n_tok = PyList_GET_SIZE(tokens), n_bi = key.len / 8;
    if (uni.len / 8 != n_tok || col.len / 8 != n_bi) {
        PyErr_SetString(PyExc_ValueError, "uni_col must have one entry per token and bi_col one per bi_key");
        goto done;
    }
    if ((uint64_t)n_tok * (uint64_t)n_tok >= (1ULL << (64 - COL_BITS))) {
        PyErr_SetString(PyExc_ValueError, "too many tokens for the packed tables");
        goto done;
    }
    self->bigram_mask = table_size(n_bi) - 1;
    self->uni_col = PyMem_Malloc((n_tok + 1) * sizeof(int64_t));
    self->bigrams = PyMem_Malloc((self->bigram_mask + 1) * sizeof(uint64_t));
    if (!self->uni_col || !self->bigrams) {
        PyErr_NoMemory();
        goto done;
    }
    if (strtable_init(&self->tokens, tokens) < 0) goto done;
    memcpy(self->uni_col, uni.buf, n_tok * sizeof(int64_t));
    for (Py_ssize_t i = 0; i <= self->bigram_mask; i++) self->bigrams[i] = BIGRAM_EMPTY;
    const int64_t *keys = key.buf, *cols = col.buf;
    for (Py_ssize_t b = 0; b < n_bi; b++) {
        if (keys[b] < 0 || (uint64_t)keys[b] >= (uint64_t)n_tok * (uint64_t)n_tok || cols[b] < 0 ||
            cols[b] >= (1 << COL_BITS)) {
            PyErr_SetString(PyExc_ValueError, "bigram key or column out of range for the packed tables");
            goto done;
        }
        Py_ssize_t i = (Py_ssize_t)hash_key((uint64_t)keys[b]) & self->bigram_mask;
        while (self->bigrams[i] != BIGRAM_EMPTY && (self->bigrams[i] >> COL_BITS) != (uint64_t)keys[b])
            i = (i + 1) & self->bigram_mask;
        if (self->bigrams[i] == BIGRAM_EMPTY) self->bigrams[i] = ((uint64_t)keys[b] << COL_BITS) | (uint64_t)cols[b];
    }
    for (Py_ssize_t id = 0; id < n_tok; id++) {
        if (self->uni_col[id] >= (1 << COL_BITS)) {
            PyErr_SetString(PyExc_ValueError, "unigram column out of range for the packed tables");
            goto done;
        }
    }
    ok = 0;
done:
    PyBuffer_Release(&uni);
    PyBuffer_Release(&key);
    PyBuffer_Release(&col);
    return ok;
}

/* counts(low) -> (columns: bytes of int64, sorted and distinct; counts: bytes of int64).
 *
 * ``low`` is the lower-cased prompt (str.lower, done by the caller: its full case mapping is the
 * reference's). The same multiset of columns as the Python reference: ``low`` is cut into tokens
 * ``[a-z0-9]+|[^\sa-z0-9]``; a token's unigram column and the column of every bigram of two known
 * consecutive tokens are counted. */
static PyObject *TermTable_counts(TermTable *self, PyObject *low) {
    if (!PyUnicode_Check(low)) {
        PyErr_SetString(PyExc_TypeError, "text must be str");
        return NULL;
    }
    if (!self->tokens.blob) {
        PyErr_SetString(PyExc_RuntimeError, "TermTable is not initialised");
        return NULL;
    }
    int kind = PyUnicode_KIND(low);
    const void *data = PyUnicode_DATA(low);
    Py_ssize_t n = PyUnicode_GET_LENGTH(low);
    /* per token: its bytes (start, length in ``bytes``) and hash; then its id. At most one token per
     * code point, 4 bytes each. */
    unsigned char *bytes = PyMem_Malloc(4 * n + 1);
    Py_ssize_t *start = PyMem_Malloc((n + 1) * sizeof(Py_ssize_t));
    uint64_t *hash = PyMem_Malloc((n + 1) * sizeof(uint64_t));
    int64_t *id = PyMem_Malloc((n + 1) * sizeof(int64_t));
    uint32_t *cols = PyMem_Malloc((2 * n + 1) * sizeof(uint32_t));
    uint32_t *tmp = PyMem_Malloc((2 * n + 1) * sizeof(uint32_t));
    PyObject *idx = NULL, *cnt = NULL, *result = NULL;
    if (!bytes || !start || !hash || !id || !cols || !tmp) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n_tok = 0, n_bytes = 0;
    for (Py_ssize_t i = 0; i < n;) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (is_space(c)) {
            i++;
            continue;
        }
        start[n_tok] = n_bytes;
        if (is_alnum_lower(c)) {
            while (i < n && is_alnum_lower(c = PyUnicode_READ(kind, data, i))) {
                bytes[n_bytes++] = (unsigned char)c;
                i++;
            }
        } else {
            n_bytes += utf8(c, bytes + n_bytes);
            i++;
        }
        hash[n_tok] = hash_bytes(bytes + start[n_tok], n_bytes - start[n_tok]);
        __builtin_prefetch(&self->tokens.slots[(Py_ssize_t)hash[n_tok] & self->tokens.mask]);
        n_tok++;
    }
    start[n_tok] = n_bytes;
    for (Py_ssize_t k = 0; k < n_tok; k++) {
        id[k] = strtable_find(&self->tokens, bytes + start[k], start[k + 1] - start[k], hash[k]);
        if (k && id[k] >= 0 && id[k - 1] >= 0) /* the bigram's slot, fetched while the loop goes on */
            __builtin_prefetch(&self->bigrams[(Py_ssize_t)hash_key((uint64_t)(id[k - 1] * self->tokens.n + id[k])) &
                                              self->bigram_mask]);
    }
    Py_ssize_t n_cols = 0;
    for (Py_ssize_t k = 0; k < n_tok; k++) {
        if (id[k] < 0) continue;
        if (self->uni_col[id[k]] >= 0) cols[n_cols++] = (uint32_t)self->uni_col[id[k]];
        if (k && id[k - 1] >= 0) {
            int64_t col = bigram_col(self, (uint64_t)(id[k - 1] * self->tokens.n + id[k]));
            if (col >= 0) cols[n_cols++] = (uint32_t)col;
        }
    }
    radix_sort_u32(cols, tmp, n_cols);
    Py_ssize_t n_uniq = 0;
    for (Py_ssize_t k = 0; k < n_cols; k++)
        if (k == 0 || cols[k] != cols[k - 1]) n_uniq++;
    idx = PyBytes_FromStringAndSize(NULL, n_uniq * 8);
    cnt = PyBytes_FromStringAndSize(NULL, n_uniq * 8);
    if (!idx || !cnt) goto done;
    int64_t *out_idx = (int64_t *)PyBytes_AS_STRING(idx), *out_cnt = (int64_t *)PyBytes_AS_STRING(cnt);
    Py_ssize_t u = -1;
    for (Py_ssize_t k = 0; k < n_cols; k++) {
        if (k == 0 || cols[k] != cols[k - 1]) {
            out_idx[++u] = cols[k];
            out_cnt[u] = 0;
        }
        out_cnt[u]++;
    }
    result = PyTuple_Pack(2, idx, cnt);
done:
    Py_XDECREF(idx);
    Py_XDECREF(cnt);
    PyMem_Free(bytes);
    PyMem_Free(start);
    PyMem_Free(hash);
    PyMem_Free(id);
    PyMem_Free(cols);
    PyMem_Free(tmp);
    return result;
}

static PyMethodDef TermTable_methods[] = {
    {"counts", (PyCFunction)TermTable_counts, METH_O,
     "counts(lowered_text) -> (columns, counts) as int64 bytes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TermTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "router._fastfeat.TermTable",
    .tp_basicsize = sizeof(TermTable),
    .tp_dealloc = (destructor)TermTable_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The word vocabulary of router.features._TermIndex as C hash tables.",
    .tp_methods = TermTable_methods,
    .tp_init = (initproc)TermTable_init,
    .tp_new = PyType_GenericNew,
};

/* ---- NgramTable: the character block's n-gram vocabulary --------------------------------------- */

typedef struct {
    PyObject_HEAD
    StrTable ngrams;
    int n_min, n_max;
} NgramTable;

static void NgramTable_dealloc(NgramTable *self) {
    strtable_free(&self->ngrams);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* NgramTable(ngrams: list[str], n_min, n_max): ids are positions in ``ngrams``. */
static int NgramTable_init(NgramTable *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"ngrams", "n_min", "n_max", NULL};
    PyObject *ngrams;
    int n_min, n_max;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!ii", kwlist, &PyList_Type, &ngrams, &n_min, &n_max)) return -1;
    if (self->ngrams.blob) {
        PyErr_SetString(PyExc_RuntimeError, "NgramTable is already initialised");
        return -1;
    }
    if (n_min < 1 || n_max < n_min || n_max > 64) {
        PyErr_SetString(PyExc_ValueError, "need 1 <= n_min <= n_max <= 64");
        return -1;
    }
    self->n_min = n_min;
    self->n_max = n_max;
    return strtable_init(&self->ngrams, ngrams);
}

/* vector(word) -> (ids: bytes of int64, counts: bytes of int64 | None).
 *
 * The vocabulary ids of the word's character n-grams as ``CharNgrams.word_vector`` lists them: the
 * word padded with one space each side, every n-gram of n_min..n_max code points, n ascending then
 * position, unknown ones dropped. When no id repeats (the usual case): the ids in that order and
 * None; else the distinct ids sorted and their counts (``np.unique(..., return_counts=True)``). */
static PyObject *NgramTable_vector(NgramTable *self, PyObject *word) {
    if (!PyUnicode_Check(word)) {
        PyErr_SetString(PyExc_TypeError, "word must be str");
        return NULL;
    }
    if (!self->ngrams.blob) {
        PyErr_SetString(PyExc_RuntimeError, "NgramTable is not initialised");
        return NULL;
    }
    int kind = PyUnicode_KIND(word);
    const void *data = PyUnicode_DATA(word);
    Py_ssize_t n = PyUnicode_GET_LENGTH(word) + 2; /* padded */
    unsigned char *bytes = PyMem_Malloc(4 * n);
    Py_ssize_t *off = PyMem_Malloc((n + 1) * sizeof(Py_ssize_t)); /* code point -> byte offset */
    Py_ssize_t max_ids = (Py_ssize_t)(self->n_max - self->n_min + 1) * n + 1;
    int64_t *ids = PyMem_Malloc(max_ids * sizeof(int64_t));
    PyObject *idx = NULL, *cnt = NULL, *result = NULL;
    if (!bytes || !off || !ids) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n_bytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        off[i] = n_bytes;
        Py_UCS4 c = (i == 0 || i == n - 1) ? ' ' : PyUnicode_READ(kind, data, i - 1);
        n_bytes += utf8(c, bytes + n_bytes);
    }
    off[n] = n_bytes;
    Py_ssize_t n_ids = 0;
    for (int g = self->n_min; g <= self->n_max; g++) {
        for (Py_ssize_t i = 0; i + g <= n; i++) {
            const unsigned char *s = bytes + off[i];
            Py_ssize_t len = off[i + g] - off[i];
            int32_t id = strtable_find(&self->ngrams, s, len, hash_bytes(s, len));
            if (id >= 0) ids[n_ids++] = id;
        }
    }
    /* Any id twice? Sorted copy, adjacent pairs: O(m log m) even for an 800-character word. */
    int repeats = 0;
    int64_t *sorted = PyMem_Malloc((n_ids + 1) * sizeof(int64_t));
    if (!sorted) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(sorted, ids, n_ids * sizeof(int64_t));
    qsort(sorted, n_ids, sizeof(int64_t), sort_cmp_i64);
    for (Py_ssize_t k = 1; k < n_ids && !repeats; k++) repeats = sorted[k] == sorted[k - 1];
    PyMem_Free(sorted);
    if (!repeats) {
        idx = PyBytes_FromStringAndSize((const char *)ids, n_ids * 8);
        if (idx) result = PyTuple_Pack(2, idx, Py_None);
        goto done;
    }
    qsort(ids, n_ids, sizeof(int64_t), sort_cmp_i64);
    Py_ssize_t n_uniq = 0;
    for (Py_ssize_t k = 0; k < n_ids; k++)
        if (k == 0 || ids[k] != ids[k - 1]) n_uniq++;
    idx = PyBytes_FromStringAndSize(NULL, n_uniq * 8);
    cnt = PyBytes_FromStringAndSize(NULL, n_uniq * 8);
    if (!idx || !cnt) goto done;
    int64_t *out_idx = (int64_t *)PyBytes_AS_STRING(idx), *out_cnt = (int64_t *)PyBytes_AS_STRING(cnt);
    Py_ssize_t u = -1;
    for (Py_ssize_t k = 0; k < n_ids; k++) {
        if (k == 0 || ids[k] != ids[k - 1]) {
            out_idx[++u] = ids[k];
            out_cnt[u] = 0;
        }
        out_cnt[u]++;
    }
    result = PyTuple_Pack(2, idx, cnt);
done:
    Py_XDECREF(idx);
    Py_XDECREF(cnt);
    PyMem_Free(bytes);
    PyMem_Free(off);
    PyMem_Free(ids);
    return result;
}

static PyMethodDef NgramTable_methods[] = {
    {"vector", (PyCFunction)NgramTable_vector, METH_O,
     "vector(word) -> (ids, None) in n-gram order when no id repeats, else (sorted ids, counts); int64 bytes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject NgramTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "router._fastfeat.NgramTable",
    .tp_basicsize = sizeof(NgramTable),
    .tp_dealloc = (destructor)NgramTable_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The n-gram vocabulary of router.char_ngrams.CharNgrams as a C hash table.",
    .tp_methods = NgramTable_methods,
    .tp_init = (initproc)NgramTable_init,
    .tp_new = PyType_GenericNew,
};

/* ---- word_counts: the character block's words ------------------------------------------------- */

typedef struct {
    Py_ssize_t start, len, count;
    uint64_t hash;
} WordSlot;

static int same_span(int kind, const void *data, Py_ssize_t a, Py_ssize_t b, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++)
        if (PyUnicode_READ(kind, data, a + k) != PyUnicode_READ(kind, data, b + k)) return 0;
    return 1;
}

/* word_counts(low) -> (words: list[str], counts: bytes of float64).
 *
 * ``Counter(re.findall(r"\w+", low))``: distinct words in order of first occurrence and how often each
 * occurs. ``low`` is the caller's ``text[:max_chars].lower()``. */
static PyObject *word_counts(PyObject *Py_UNUSED(module), PyObject *low) {
    if (!PyUnicode_Check(low)) {
        PyErr_SetString(PyExc_TypeError, "text must be str");
        return NULL;
    }
    int kind = PyUnicode_KIND(low);
    const void *data = PyUnicode_DATA(low);
    Py_ssize_t n = PyUnicode_GET_LENGTH(low);
    Py_ssize_t cap = table_size(n / 2 + 1); /* a word takes at least two code points with its separator */
    WordSlot *slots = PyMem_Calloc(cap, sizeof(WordSlot));
    Py_ssize_t *order = PyMem_Malloc((n / 2 + 2) * sizeof(Py_ssize_t));
    PyObject *words = NULL, *counts = NULL, *result = NULL;
    if (!slots || !order) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n_words = 0;
    for (Py_ssize_t i = 0; i < n;) {
        if (!is_word(PyUnicode_READ(kind, data, i))) {
            i++;
            continue;
        }
        Py_ssize_t start = i;
        uint64_t h = 1469598103934665603ULL;
        for (; i < n; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (!is_word(c)) break;
            h = (h ^ c) * 1099511628211ULL;
        }
        Py_ssize_t len = i - start;
        Py_ssize_t k = (Py_ssize_t)(h ^ (h >> 29)) & (cap - 1);
        while (slots[k].len &&
               !(slots[k].hash == h && slots[k].len == len && same_span(kind, data, slots[k].start, start, len)))
            k = (k + 1) & (cap - 1);
        if (!slots[k].len) {
            slots[k] = (WordSlot){start, len, 0, h};
            order[n_words++] = k;
        }
        slots[k].count++;
    }
    words = PyList_New(n_words);
    counts = PyBytes_FromStringAndSize(NULL, n_words * sizeof(double));
    if (!words || !counts) goto done;
    double *out = (double *)PyBytes_AS_STRING(counts);
    for (Py_ssize_t w = 0; w < n_words; w++) {
        const WordSlot *slot = &slots[order[w]];
        PyObject *word = PyUnicode_Substring(low, slot->start, slot->start + slot->len);
        if (!word) goto done;
        PyList_SET_ITEM(words, w, word);
        out[w] = (double)slot->count;
    }
    result = PyTuple_Pack(2, words, counts);
done:
    Py_XDECREF(words);
    Py_XDECREF(counts);
    PyMem_Free(slots);
    PyMem_Free(order);
    return result;
}

/* ---- TreeWalker: the stacker and gap tree ensembles of router.classifier.TreeBundle -------------- */

typedef struct {
    PyObject_HEAD
    int64_t *feature;    /* (T * (2^D - 1),) split feature of every internal position, per tree */
    double *threshold;   /* same shape */
    double *leaf_value;  /* (T * 2^D,) */
    int64_t *owner;      /* (T,) the ensemble each tree belongs to */
    double *baselines;   /* (E,) */
    Py_ssize_t n_trees, n_ens, max_feature;
    int depth;
} TreeWalker;

static void TreeWalker_dealloc(TreeWalker *self) {
    PyMem_Free(self->feature);
    PyMem_Free(self->threshold);
    PyMem_Free(self->leaf_value);
    PyMem_Free(self->owner);
    PyMem_Free(self->baselines);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A copy of a contiguous buffer of ``itemsize``-byte items with format ``fmt`` ("q" or "d"), and its
 * length; NULL with an exception set on a wrong buffer. */
static void *copy_buffer(PyObject *obj, const char *fmt, const char *what, Py_ssize_t *n) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    int ok = view.itemsize == 8 && view.format &&
             (strcmp(view.format, fmt) == 0 || (fmt[0] == 'q' && strcmp(view.format, "l") == 0));
    void *out = NULL;
    if (!ok)
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous %s buffer", what, fmt[0] == 'q' ? "int64" : "float64");
    else if (!(out = PyMem_Malloc(view.len + 8)))
        PyErr_NoMemory();
    else {
        memcpy(out, view.buf, view.len);
        *n = view.len / 8;
    }
    PyBuffer_Release(&view);
    return out;
}

/* TreeWalker(feature, threshold, leaf_value, depth, owner, baselines): the arrays of a TreeBundle. */
static int TreeWalker_init(TreeWalker *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"feature", "threshold", "leaf_value", "depth", "owner", "baselines", NULL};
    PyObject *feature, *threshold, *leaf_value, *owner, *baselines;
    int depth;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOiOO", kwlist, &feature, &threshold, &leaf_value, &depth,
                                     &owner, &baselines))
        return -1;
    if (self->feature) {
        PyErr_SetString(PyExc_RuntimeError, "TreeWalker is already initialised");
        return -1;
    }
    if (depth < 1 || depth > 30) {
        PyErr_SetString(PyExc_ValueError, "depth must be in 1..30");
        return -1;
    }
    Py_ssize_t n_feat, n_thr, n_leaf, n_owner, n_base;
    self->depth = depth;
    if (!(self->feature = copy_buffer(feature, "q", "feature", &n_feat)) ||
        !(self->threshold = copy_buffer(threshold, "d", "threshold", &n_thr)) ||
        !(self->leaf_value = copy_buffer(leaf_value, "d", "leaf_value", &n_leaf)) ||
        !(self->owner = copy_buffer(owner, "q", "owner", &n_owner)) ||
        !(self->baselines = copy_buffer(baselines, "d", "baselines", &n_base)))
        return -1;
    Py_ssize_t n_int = ((Py_ssize_t)1 << depth) - 1;
    self->n_trees = n_owner;
    self->n_ens = n_base;
    if (n_feat != n_owner * n_int || n_thr != n_feat || n_leaf != n_owner * (n_int + 1)) {
        PyErr_SetString(PyExc_ValueError, "array lengths do not match the number of trees and the depth");
        return -1;
    }
    self->max_feature = -1;
    for (Py_ssize_t i = 0; i < n_feat; i++) {
        if (self->feature[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "negative feature index");
            return -1;
        }
        if (self->feature[i] > self->max_feature) self->max_feature = self->feature[i];
    }
    for (Py_ssize_t t = 0; t < n_owner; t++) {
        if (self->owner[t] < 0 || self->owner[t] >= n_base) {
            PyErr_SetString(PyExc_ValueError, "owner out of range");
            return -1;
        }
    }
    return 0;
}

/* raw(x) -> bytes of float64 (E,): ``TreeBundle.raw(x)``, bit for bit (each ensemble's leaves are
 * added in tree order from 0.0, as np.bincount does, then its baseline). */
static PyObject *TreeWalker_raw(TreeWalker *self, PyObject *x_obj) {
    if (!self->feature) {
        PyErr_SetString(PyExc_RuntimeError, "TreeWalker is not initialised");
        return NULL;
    }
    Py_buffer x;
    if (PyObject_GetBuffer(x_obj, &x, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    if (x.itemsize != 8 || !x.format || strcmp(x.format, "d") || x.len / 8 <= self->max_feature) {
        PyBuffer_Release(&x);
        PyErr_SetString(PyExc_ValueError, "x must be a contiguous float64 vector covering every split feature");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, self->n_ens * sizeof(double));
    if (!out) {
        PyBuffer_Release(&x);
        return NULL;
    }
    double *acc = (double *)PyBytes_AS_STRING(out);
    const double *xv = x.buf;
    for (Py_ssize_t e = 0; e < self->n_ens; e++) acc[e] = 0.0;
    Py_ssize_t n_int = ((Py_ssize_t)1 << self->depth) - 1;
    for (Py_ssize_t t = 0; t < self->n_trees; t++) {
        const int64_t *feature = self->feature + t * n_int;
        const double *threshold = self->threshold + t * n_int;
        Py_ssize_t pos = 0;
        for (int level = 0; level < self->depth; level++)
            pos = 2 * pos + 1 + (xv[feature[pos]] > threshold[pos]);
        acc[self->owner[t]] += self->leaf_value[t * (n_int + 1) + pos - n_int];
    }
    for (Py_ssize_t e = 0; e < self->n_ens; e++) acc[e] = self->baselines[e] + acc[e];
    PyBuffer_Release(&x);
    return out;
}

static PyMethodDef TreeWalker_methods[] = {
    {"raw", (PyCFunction)TreeWalker_raw, METH_O, "raw(x) -> float64 bytes: every ensemble's raw score."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TreeWalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "router._fastfeat.TreeWalker",
    .tp_basicsize = sizeof(TreeWalker),
    .tp_dealloc = (destructor)TreeWalker_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The heap-ordered tree ensembles of router.classifier.TreeBundle, walked in C.",
    .tp_methods = TreeWalker_methods,
    .tp_init = (initproc)TreeWalker_init,
    .tp_new = PyType_GenericNew,
};

/* ---- word_logits: the group prior's per-word rows ----------------------------------------------- */

/* word_logits(vecs, coef) -> bytes of float32 (len(vecs) x G).
 *
 * Row w is ``Σ_j float32(val_j) * coef[idx_j, :]`` over word w's (idx: int64 array, val: float64 array),
 * in float32, the products added in order: ``GroupPrior._word_logits`` (np.add.reduceat over the
 * gathered, scaled rows, which also adds row after row), bit for bit. Why: a word never seen before costs
 * a gather, a product and a reduceat in numpy, ~6 us a word in batches and ~26 alone; here ~1. Raises
 * ValueError for an empty word (reduceat would not give zeros for it; callers never pass one) or an
 * index outside ``coef``. Built with -ffp-contract=off (setup.py) so no multiply-add is fused. */
static PyObject *word_logits(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *vecs, *coef_obj;
    if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &vecs, &coef_obj)) return NULL;
    Py_buffer coef;
    if (PyObject_GetBuffer(coef_obj, &coef, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_ND) < 0) return NULL;
    PyObject *out = NULL;
    if (coef.ndim != 2 || coef.itemsize != 4 || !coef.format || strcmp(coef.format, "f")) {
        PyErr_SetString(PyExc_TypeError, "coef must be a C-contiguous 2-D float32 array");
        goto done;
    }
    Py_ssize_t n_rows = coef.shape[0], g = coef.shape[1], n = PyList_GET_SIZE(vecs);
    const float *c = coef.buf;
    out = PyBytes_FromStringAndSize(NULL, n * g * (Py_ssize_t)sizeof(float));
    if (!out) goto done;
    float *acc = (float *)PyBytes_AS_STRING(out);
    for (Py_ssize_t w = 0; w < n; w++, acc += g) {
        PyObject *item = PyList_GET_ITEM(vecs, w);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "vecs must hold (indices, values) pairs");
            Py_CLEAR(out);
            goto done;
        }
        Py_buffer idx, val;
        if (read_i64(PyTuple_GET_ITEM(item, 0), "indices", &idx) < 0) {
            Py_CLEAR(out);
            goto done;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 1), &val, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            PyBuffer_Release(&idx);
            Py_CLEAR(out);
            goto done;
        }
        const char *why = NULL;
        Py_ssize_t m = idx.len / 8;
        if (val.itemsize != 8 || !val.format || strcmp(val.format, "d") || val.len / 8 != m)
            why = "values must be float64, one per index";
        else if (m == 0)
            why = "a word without n-grams has no logits";
        const int64_t *ix = idx.buf;
        const double *vx = val.buf;
        for (Py_ssize_t j = 0; !why && j < m; j++)
            if (ix[j] < 0 || ix[j] >= n_rows) why = "n-gram index outside coef";
        if (!why) {
            const float v0 = (float)vx[0], *row = c + ix[0] * g;
            for (Py_ssize_t k = 0; k < g; k++) acc[k] = v0 * row[k];
            for (Py_ssize_t j = 1; j < m; j++) {
                const float v = (float)vx[j], *r = c + ix[j] * g;
                for (Py_ssize_t k = 0; k < g; k++) acc[k] = acc[k] + v * r[k];
            }
        }
        PyBuffer_Release(&idx);
        PyBuffer_Release(&val);
        if (why) {
            PyErr_SetString(PyExc_ValueError, why);
            Py_CLEAR(out);
            goto done;
        }
    }
done:
    PyBuffer_Release(&coef);
    return out;
}

/* dense_features(text, low=None): ``low`` is ``text.lower()``, needed for non-ASCII text only. */
static PyObject *dense_features(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "dense_features(text, low=None) takes one or two arguments");
        return NULL;
    }
    return ff_dense_features(args[0], nargs == 2 ? args[1] : Py_None);
}

static PyMethodDef module_methods[] = {
    {"word_counts", word_counts, METH_O, "word_counts(lowered_text) -> (words, float64 counts)."},
    {"word_logits", word_logits, METH_VARARGS,
     "word_logits(vecs, coef) -> float32 bytes: each word's sum of float32(value) * coef[index] rows."},
    {"dense_features", (PyCFunction)(void (*)(void))dense_features, METH_FASTCALL,
     "dense_features(text, low=None) -> list of floats equal to router.features.dense_features(text), or\n"
     "None where the reference must decide (non-ASCII text without low = text.lower(), Unicode digits)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, .m_name = "router._fastfeat",
    .m_doc = "Prompt featurisation of the learned router, in C.", .m_size = -1, .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastfeat(void) {
    if (PyType_Ready(&TermTableType) < 0 || PyType_Ready(&NgramTableType) < 0 || PyType_Ready(&TreeWalkerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "TermTable", (PyObject *)&TermTableType) < 0 ||
        PyModule_AddObjectRef(m, "NgramTable", (PyObject *)&NgramTableType) < 0 ||
        PyModule_AddObjectRef(m, "TreeWalker", (PyObject *)&TreeWalkerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
