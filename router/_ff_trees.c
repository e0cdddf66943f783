/* router/_ff_trees.c: TreeWalker, the tree ensembles of router.classifier.TreeBundle walked in C
 * (#included by _fastfeat.c). */
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

/* A copy of a contiguous int64 ('q') or float64 ('d') buffer, and its length; NULL with an exception set
 * on a wrong buffer. */
static void *copy_buffer(PyObject *obj, char type, const char *what, Py_ssize_t *n) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    void *out = NULL;
    if (!buffer_holds(&view, type))
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous %s buffer", what, type == 'q' ? "int64" : "float64");
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
    if (!(self->feature = copy_buffer(feature, 'q', "feature", &n_feat)) ||
        !(self->threshold = copy_buffer(threshold, 'd', "threshold", &n_thr)) ||
        !(self->leaf_value = copy_buffer(leaf_value, 'd', "leaf_value", &n_leaf)) ||
        !(self->owner = copy_buffer(owner, 'q', "owner", &n_owner)) ||
        !(self->baselines = copy_buffer(baselines, 'd', "baselines", &n_base)))
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
    if (!buffer_holds(&x, 'd') || x.len / 8 <= self->max_feature) {
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
