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
 *   NgramTable(ngrams, n_min, n_max).vector(word)           == CharNgrams.word_vector(word)'s n-gram ids
 *   word_logits(vecs, coef)                                 == GroupPrior._word_logits(vecs)
 *   TreeWalker(<TreeBundle arrays>).raw(x)                  == TreeBundle.raw(x)
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

/* one concept per file, compiled as one unit (setup.py lists them as dependencies) */
#include "_ff_common.c"
#include "_ff_terms.c"
#include "_ff_chars.c"
#include "_ff_trees.c"
#include "_ff_dense.c"

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
