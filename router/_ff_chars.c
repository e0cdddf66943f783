/* router/_ff_chars.c: the character block (router/char_ngrams.py) and the group prior's per-word rows
 * (router/group_prior.py): NgramTable, word_counts and word_logits (#included by _fastfeat.c). */
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
    uint32_t *ids = PyMem_Malloc(max_ids * sizeof(uint32_t));
    uint32_t *sorted = PyMem_Malloc(2 * max_ids * sizeof(uint32_t)); /* a sorted copy, and radix scratch */
    PyObject *idx = NULL, *result = NULL;
    if (!bytes || !off || !ids || !sorted) {
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
            if (id >= 0) ids[n_ids++] = (uint32_t)id;
        }
    }
    /* Any id twice? A sorted copy, adjacent pairs: O(m) even for an 800-character word; when there are
     * repeats, the same copy gives the distinct ids and their counts. */
    memcpy(sorted, ids, n_ids * sizeof(uint32_t));
    radix_sort_u32(sorted, sorted + max_ids, n_ids);
    int repeats = 0;
    for (Py_ssize_t k = 1; k < n_ids && !repeats; k++) repeats = sorted[k] == sorted[k - 1];
    if (repeats) {
        result = distinct_counts(sorted, n_ids);
        goto done;
    }
    idx = PyBytes_FromStringAndSize(NULL, n_ids * 8);
    if (!idx) goto done;
    int64_t *out = (int64_t *)PyBytes_AS_STRING(idx);
    for (Py_ssize_t k = 0; k < n_ids; k++) out[k] = ids[k];
    result = PyTuple_Pack(2, idx, Py_None);
done:
    Py_XDECREF(idx);
    PyMem_Free(bytes);
    PyMem_Free(off);
    PyMem_Free(ids);
    PyMem_Free(sorted);
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
    if (coef.ndim != 2 || !buffer_holds(&coef, 'f')) {
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
        if (!buffer_holds(&val, 'd') || val.len / 8 != m)
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
