/* router/_ff_terms.c: TermTable, the word vocabulary of router.features._TermIndex (tokens and bigrams)
 * and its term counts (#included by _fastfeat.c). */
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
    PyObject *result = NULL;
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
    result = distinct_counts(cols, n_cols);
done:
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
