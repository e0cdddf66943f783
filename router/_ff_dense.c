/* router/_ff_dense.c: router.features.dense_features in C, for ASCII text.
 *
 * Why: the Python reference makes ~35 C-level scans, four regex passes and a Python object per number
 * and option line; ~140 us on a 1,600-character prompt, on every request. Here it is one byte pass
 * plus a few short substring scans, with no Python object but the result.
 *
 * Contract: ff_dense_features(text) returns a new list of 29 floats equal (==, bit for bit) to
 * dense_features(text) when text is an ASCII str; None when it is not (the caller then runs the
 * reference: Unicode digits, spaces and case mapping stay Python's); NULL with TypeError for a non-str.
 *
 * Exactness rules followed throughout:
 *  - every regex is replaced by a scan proved equivalent on ASCII text (the argument is next to each);
 *  - "\s" of a str pattern and str.split() both use Py_UNICODE_ISSPACE, which on ASCII is
 *    \t \n \v \f \r, space and \x1c-\x1f (bytes.split() would not include the last four);
 *  - floats are computed with the same libm calls and the same operation order as CPython
 *    (int / int is (double)a / (double)b for the small ints here; sum() of floats adds left to right;
 *    float ** 2 calls libm pow, not x * x; float(str) is PyOS_string_to_double).
 *
 * This file has no module definition: router/_fastfeat.c #includes it. Every helper is static and
 * prefixed ffd_ so as not to clash with the includer's names.
 */
#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FFD_N_FEATURES 29

/* ---- character classes (ASCII) ------------------------------------------------------------------ */

/* str.split() with no argument and re's \s on a str pattern (both Py_UNICODE_ISSPACE) */
static inline int ffd_is_space(unsigned char c) {
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* re's \w (hence \b) on a str pattern */
static inline int ffd_is_word(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static inline int ffd_is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static inline unsigned char ffd_lower(unsigned char c) {
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

static inline int ffd_is_option_letter(unsigned char c) {
    return (c >= 'A' && c <= 'H') || (c >= 'a' && c <= 'h');
}

/* ---- substrings ---------------------------------------------------------------------------------- */

/* str.count(pat) (non-overlapping: the scan resumes after each hit), or, with first_only, 1 when
 * pat in s else 0. Our own loop rather than memmem, which not every platform has. m >= 1. */
static Py_ssize_t ffd_count(const char *s, Py_ssize_t n, const char *pat, Py_ssize_t m, int first_only) {
    Py_ssize_t count = 0, i = 0;
    while (i <= n - m) {
        const char *hit = memchr(s + i, pat[0], (size_t)(n - m + 1 - i));
        if (hit == NULL) break;
        i = hit - s;
        if (memcmp(hit + 1, pat + 1, (size_t)(m - 1)) == 0) {
            count++;
            if (first_only) break;
            i += m;
        } else {
            i++;
        }
    }
    return count;
}

#define FFD_COUNT(s, n, lit) ffd_count((s), (n), (lit), (Py_ssize_t)(sizeof(lit) - 1), 0)
#define FFD_HAS(s, n, lit) (ffd_count((s), (n), (lit), (Py_ssize_t)(sizeof(lit) - 1), 1) != 0)

/* ---- numbers: _numbers(text) == re.findall(r"\d+(?:[.,]\d+)*", text) ------------------------------ */

/* The next match at or after *pos, as findall scans: start at the first digit; \d+ takes every digit
 * (greedy, and what follows must be [.,], never a digit, so it never gives one back); each further
 * [.,]\d+ is taken when a digit follows the separator, else the group stops and the match ends
 * before the separator. Sets [*start, *pos) to the match; 0 when there is none. */
static int ffd_next_number(const char *s, Py_ssize_t n, Py_ssize_t *pos, Py_ssize_t *start) {
    Py_ssize_t i = *pos;
    while (i < n && !ffd_is_digit((unsigned char)s[i])) i++;
    if (i >= n) return 0;
    *start = i;
    while (i < n && ffd_is_digit((unsigned char)s[i])) i++;
    while (i + 1 < n && (s[i] == '.' || s[i] == ',') && ffd_is_digit((unsigned char)s[i + 1])) {
        i += 2;
        while (i < n && ffd_is_digit((unsigned char)s[i])) i++;
    }
    *pos = i;
    return 1;
}

/* float(nm.replace(",", "")) for a match nm: 1 with *out set; 0 when Python raises ValueError (two or
 * more '.', as in "1.2.3"); -1 with an exception set (MemoryError, which the reference does not
 * suppress either). */
static int ffd_number_value(const char *p, Py_ssize_t len, double *out) {
    Py_ssize_t n_digits = 0, n_dots = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (p[i] == '.') n_dots++;
        else if (p[i] != ',') n_digits++;
    }
    if (n_dots > 1) return 0;
    if (n_dots == 0 && n_digits <= 15) {
        /* below 10^15 < 2^53 the integer is exact, so it equals the correctly rounded parse */
        long long v = 0;
        for (Py_ssize_t i = 0; i < len; i++)
            if (p[i] != ',') v = v * 10 + (p[i] - '0');
        *out = (double)v;
        return 1;
    }
    /* what float() runs on the same characters: correctly rounded, inf past DBL_MAX (no exception) */
    char small[128];
    char *buf = (n_digits + n_dots + 1 <= (Py_ssize_t)sizeof(small)) ? small : PyMem_Malloc((size_t)len + 1);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < len; i++)
        if (p[i] != ',') buf[k++] = p[i];
    buf[k] = '\0';
    double v = PyOS_string_to_double(buf, NULL, NULL);
    if (buf != small) PyMem_Free(buf);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    *out = v;
    return 1;
}

typedef struct {
    const char *p;
    Py_ssize_t len;
} ffd_span;

/* set() of number strings: compares the strings (so "01" and "1" differ), not their values */
static int ffd_span_cmp(const void *a, const void *b) {
    const ffd_span *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return memcmp(x->p, y->p, (size_t)x->len);
}

typedef struct {
    Py_ssize_t count, distinct;
    double max_num; /* the reference's max_num, before min(., 1e12) */
    int has_dot;
} ffd_numbers;

static int ffd_scan_numbers(const char *s, Py_ssize_t n, ffd_numbers *out) {
    Py_ssize_t pos = 0, start;
    out->count = 0;
    out->max_num = 0.0;
    out->has_dot = 0;
    while (ffd_next_number(s, n, &pos, &start)) {
        const char *p = s + start;
        Py_ssize_t len = pos - start;
        double v;
        int ok = ffd_number_value(p, len, &v);
        if (ok < 0) return -1;
        if (ok && v > out->max_num) out->max_num = v; /* max(max_num, v) keeps the first on ties */
        if (!out->has_dot && memchr(p, '.', (size_t)len) != NULL) out->has_dot = 1;
        out->count++;
    }
    out->distinct = out->count;
    if (out->count < 2) return 0;
    /* second pass to collect the strings; sorting puts equal ones next to each other */
    ffd_span *spans = PyMem_Malloc((size_t)out->count * sizeof(ffd_span));
    if (spans == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t k = 0;
    pos = 0;
    while (ffd_next_number(s, n, &pos, &start)) {
        spans[k].p = s + start;
        spans[k].len = pos - start;
        k++;
    }
    qsort(spans, (size_t)k, sizeof(ffd_span), ffd_span_cmp);
    out->distinct = 1;
    for (Py_ssize_t i = 1; i < k; i++)
        if (ffd_span_cmp(&spans[i - 1], &spans[i]) != 0) out->distinct++;
    PyMem_Free(spans);
    return 0;
}

/* ---- option lines: _OPTION_LINE.findall(text), r"^[ \t]*\(?[A-Ha-h][.)][ \t].*$" with re.M ----------- */

/* The match end when the pattern matches at line start p, else -1. No backtracking can help: fewer
 * [ \t] would leave a blank where '(' or a letter is needed, and skipping an available '(' leaves
 * '(' where a letter is needed. ".*" stops before '\n' only ('\r' included) and "$" (re.M) holds there
 * or at the end, so the match is the whole line without its '\n'. */
static Py_ssize_t ffd_option_line_at(const char *s, Py_ssize_t n, Py_ssize_t p) {
    Py_ssize_t i = p;
    while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
    if (i < n && s[i] == '(') i++;
    if (i >= n || !ffd_is_option_letter((unsigned char)s[i])) return -1;
    i++;
    if (i >= n || (s[i] != '.' && s[i] != ')')) return -1;
    i++;
    if (i >= n || (s[i] != ' ' && s[i] != '\t')) return -1;
    i++;
    const char *nl = memchr(s + i, '\n', (size_t)(n - i));
    return nl ? nl - s : n;
}

typedef struct {
    Py_ssize_t count;   /* n_opt */
    Py_ssize_t total;   /* sum(opt_lens) */
    Py_ssize_t numeric; /* lines where _NUM.search finds a digit */
    double sq_dev;      /* sum((x - mean) ** 2 for x in opt_lens), when asked */
} ffd_options;

/* One pass over the lines. With with_mean, accumulates the squared deviations from mean in line
 * order (the reference's generator order), so a second call finishes the variance. The next search
 * after a match starts at its '\n', where "^" cannot hold, so every line is tried exactly once. */
static void ffd_scan_option_lines(const char *s, Py_ssize_t n, int with_mean, double mean, ffd_options *out) {
    /* Python evaluates (x - mean) ** 2 as libm pow(|x - mean|, 2.0) (float_pow); a constant 2.0 would
     * let the compiler fold it into a product, which pow need not equal in the last bit. */
    volatile double two = 2.0;
    const double exponent = two;
    out->count = out->total = out->numeric = 0;
    out->sq_dev = 0.0;
    Py_ssize_t p = 0;
    while (p < n) {
        Py_ssize_t end = ffd_option_line_at(s, n, p);
        const char *nl;
        if (end >= 0) {
            Py_ssize_t len = end - p;
            out->count++;
            out->total += len;
            for (Py_ssize_t i = p; i < end; i++)
                if (ffd_is_digit((unsigned char)s[i])) {
                    out->numeric++;
                    break;
                }
            if (with_mean) out->sq_dev += pow(fabs((double)len - mean), exponent);
            nl = end < n ? s + end : NULL;
        } else {
            nl = memchr(s + p, '\n', (size_t)(n - p));
        }
        if (nl == NULL) break;
        p = (nl - s) + 1;
    }
}

/* ---- stem: _OPTION.search(text).start(), r"^\s*\(?([A-Ha-h])[.)]\s" with re.M ----------------------- */

/* search() tries positions in order; "^" holds at 0 and after each '\n'. From a line start p, \s*
 * greedily reaches q, the first non-space (newlines included), and giving back cannot help (a space
 * is neither '(' nor a letter), so the match exists iff the rest matches at q; the start reported is
 * p. Every line start inside [p, q] reaches the same q, so after a failure the next line start worth
 * trying follows the first '\n' at or after q. Returns the start, or n when nothing matches (then
 * stem is the whole text). */
static Py_ssize_t ffd_stem_length(const char *s, Py_ssize_t n) {
    Py_ssize_t p = 0;
    while (p < n) {
        Py_ssize_t q = p;
        while (q < n && ffd_is_space((unsigned char)s[q])) q++;
        Py_ssize_t i = q;
        if (i < n && s[i] == '(') i++;
        if (i + 2 < n && ffd_is_option_letter((unsigned char)s[i]) && (s[i + 1] == '.' || s[i + 1] == ')') &&
            ffd_is_space((unsigned char)s[i + 2]))
            return p;
        const char *nl = q < n ? memchr(s + q, '\n', (size_t)(n - q)) : NULL;
        if (nl == NULL) break;
        p = (nl - s) + 1;
    }
    return n;
}

/* _has_negation(stem.lower()): \b(?:not|except|least|false|incorrect|never)\b. The words are all
 * word characters, so with a boundary on each side a match is exactly a maximal run of word
 * characters equal to one of them (the stem's end counts as a boundary, as the string ends there). */
static int ffd_has_negation(const char *low, Py_ssize_t n) {
    static const char *const words[] = {"not", "except", "least", "false", "incorrect", "never"};
    Py_ssize_t i = 0;
    while (i < n) {
        while (i < n && !ffd_is_word((unsigned char)low[i])) i++;
        Py_ssize_t start = i;
        while (i < n && ffd_is_word((unsigned char)low[i])) i++;
        Py_ssize_t len = i - start;
        if (len < 3 || len > 9) continue;
        for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++)
            if ((Py_ssize_t)strlen(words[w]) == len && memcmp(low + start, words[w], (size_t)len) == 0) return 1;
    }
    return 0;
}

/* ---- the features --------------------------------------------------------------------------------- */

static double ffd_ratio(Py_ssize_t a, Py_ssize_t b) { return (double)a / (double)(b > 1 ? b : 1); }

PyObject *ff_dense_features(PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "dense_features() argument must be str");
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0) return NULL;
#endif
    if (!PyUnicode_IS_ASCII(text)) Py_RETURN_NONE;
    const char *s = (const char *)PyUnicode_1BYTE_DATA(text);
    const Py_ssize_t n = PyUnicode_GET_LENGTH(text);

    /* text.lower(): on ASCII only A-Z change. Clipped prompts fit the stack buffer. */
    char low_small[2048];
    char *low = n <= (Py_ssize_t)sizeof(low_small) ? low_small : PyMem_Malloc((size_t)n);
    if (low == NULL) return PyErr_NoMemory();
    PyObject *result = NULL;

    /* One pass for the single-character counts, the words and the sentences. */
    Py_ssize_t n_words = 0, n_lines = 0, n_digits = 0, n_upper = 0, n_math = 0, n_blank = 0;
    Py_ssize_t n_dollar = 0, n_qmark = 0, n_code1 = 0, n_sent = 0;
    int has_percent = 0, in_word = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        low[i] = (char)ffd_lower(c);
        if (ffd_is_space(c)) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            n_words++; /* len(text.split()): runs of non-space */
        }
        switch (c) {
        case '\n': n_lines++; n_blank++; break;
        case ' ':
        case '\t': n_blank++; break;
        case '=': case '+': case '*': case '/': case '^': case '<': case '>': n_math++; break;
        case '$': n_dollar++; break;
        case '%': has_percent = 1; break;
        case '{': case '}': case ';': n_code1++; break;
        case '?': /* counted, and also a sentence end */
            n_qmark++;
            /* fall through */
        case '.':
        case '!':
            /* _SENT.findall, r"[.!?](\s|$)": "$" (no re.M) holds at the end or before a final '\n',
             * which \s takes anyway. The \s a match consumes is never in [.!?], so non-overlapping
             * matching skips no candidate and the count is just this test at every position. */
            if (i + 1 == n || ffd_is_space((unsigned char)s[i + 1])) n_sent++;
            break;
        default:
            if (c >= '0' && c <= '9') n_digits++;
            else if (c >= 'A' && c <= 'Z') n_upper++;
        }
    }

    ffd_numbers nums;
    if (ffd_scan_numbers(s, n, &nums) < 0) goto done;

    ffd_options opt;
    ffd_scan_option_lines(s, n, 0, 0.0, &opt);
    /* opt_lens = [...] or [0]: without option lines the mean and variance are those of [0] */
    double mean_opt = 0.0, var_opt = 0.0;
    if (opt.count > 0) {
        mean_opt = (double)opt.total / (double)opt.count; /* int / int, both exact in a double */
        ffd_options again;
        ffd_scan_option_lines(s, n, 1, mean_opt, &again);
        var_opt = again.sq_dev / (double)opt.count;
    }

    Py_ssize_t stem_len = ffd_stem_length(s, n);

    /* the code markers, in the reference's order (the sum is of ints, so order does not matter) */
    Py_ssize_t n_code = FFD_COUNT(s, n, "```") + FFD_COUNT(s, n, "def ") + FFD_COUNT(s, n, "return") +
                        FFD_COUNT(s, n, "class ") + n_code1 + FFD_COUNT(s, n, "import") +
                        FFD_COUNT(s, n, "function") + FFD_COUNT(s, n, "=>");
    int roman = FFD_HAS(s, n, "I only") || FFD_HAS(s, n, "II only") || FFD_HAS(s, n, "III only") ||
                FFD_HAS(s, n, "IV only") || FFD_HAS(s, n, "I and II") || FFD_HAS(s, n, "II and III") ||
                FFD_HAS(s, n, "I and III") || FFD_HAS(s, n, "I, II");
    int blank = FFD_HAS(s, n, " _ ") || (n >= 2 && s[0] == '_' && s[1] == ' ');
    Py_ssize_t n_answer = FFD_COUNT(low, n, "answer:");
    Py_ssize_t n_mathops = n_math + FFD_COUNT(low, n, "\\frac") + FFD_COUNT(low, n, "sqrt");
    double max_num = nums.max_num < 1e12 ? nums.max_num : 1e12; /* min(max_num, 1e12) */

    double f[FFD_N_FEATURES] = {
        log1p((double)n),
        log1p((double)n_words),
        log1p((double)n_lines),
        log1p((double)nums.count),
        log1p((double)nums.distinct),
        ffd_ratio(n_digits, n),
        log1p(max_num),
        (double)nums.has_dot,
        (double)opt.count,
        log1p(mean_opt),
        sqrt(var_opt) / (mean_opt + 1.0),
        ffd_ratio(opt.numeric, opt.count),
        log1p((double)stem_len),
        (double)FFD_HAS(low, n, "statement 1"),
        (double)ffd_has_negation(low, stem_len),
        (double)FFD_HAS(low, n, "which of the following"),
        (double)(has_percent || FFD_HAS(low, n, "percent")),
        (double)n_dollar,
        (double)(FFD_HAS(low, n, "refers to the following") || FFD_HAS(low, n, "passage")),
        (double)n_qmark,
        log1p((double)n_mathops),
        (double)roman,
        ffd_ratio(n_upper, n),
        log1p((double)n_code),
        (double)blank,
        (double)(FFD_HAS(low, n, "write a function") || FFD_HAS(low, n, "write a python")),
        log1p((double)n_sent),
        ffd_ratio(n - n_blank, n_words), /* n_nonspace: bytes other than ' ', '\n', '\t' */
        n_answer > 0 ? (double)(n_answer - 1) : 0.0,
    };

    result = PyList_New(FFD_N_FEATURES);
    if (result == NULL) goto done;
    for (Py_ssize_t k = 0; k < FFD_N_FEATURES; k++) {
        PyObject *v = PyFloat_FromDouble(f[k]);
        if (v == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, k, v);
    }
done:
    if (low != low_small) PyMem_Free(low);
    return result;
}
