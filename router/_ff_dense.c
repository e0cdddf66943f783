/* router/_ff_dense.c: router.features.dense_features in C.
 *
 * Why: the Python reference makes ~35 C-level scans, four regex passes and a Python object per number
 * and option line: ~90-140 us on a 1,600-character prompt, on every request. Here it is one pass over
 * the bytes plus short scans for the numbers, the option lines and the stem, with no Python object
 * but the result.
 *
 * Contract: ff_dense_features(text, low) returns a new list of 29 floats equal (==, bit for bit) to
 * dense_features(text), where low is None or text.lower() computed by the caller:
 *  - ASCII text: always computed (low is not read);
 *  - other text: computed when low is given, else None. It is None too (the caller then runs the
 *    reference) in the two cases left to Python, see ffd_narrow: a non-ASCII Unicode digit in text
 *    (re's \d and float() give those meaning), and len(low) != len(text) (a character whose lower case
 *    is longer, in practice only U+0130, capital I with dot above);
 *  - NULL with TypeError when text is not a str, or low neither None nor a str.
 * The result for a low that is not text.lower() is unspecified.
 *
 * Exactness rules followed throughout:
 *  - every regex is replaced by a scan proved equivalent on ASCII text (the argument is next to each);
 *  - "\s" of a str pattern and str.split() both use Py_UNICODE_ISSPACE, which on ASCII is
 *    \t \n \v \f \r, space and \x1c-\x1f (bytes.split() would not include the last four);
 *  - text.lower() changes only A-Z on ASCII, so patterns searched in `low` are compared
 *    case-insensitively on the text itself;
 *  - non-ASCII text is first narrowed to one byte per code point, standing for what the scans can tell
 *    of a non-ASCII character (a space, a word character, anything else), and then takes the ASCII path;
 *    see ffd_narrow for why no scan can tell the difference;
 *  - floats are computed with the same libm calls in the same order as CPython: int / int is
 *    (double)a / (double)b for the small ints here, the squared deviations of the option lengths are
 *    added left to right (an explicit loop in the reference: sum() compensates since Python 3.12, which
 *    made the two differ in the last bit there), float ** 2 is libm pow (which is not always x * x),
 *    float(str) is PyOS_string_to_double.
 *
 * This file has no module definition: router/_fastfeat.c #includes it. Every helper is static and
 * prefixed ffd_/FFD_ so as not to clash with the includer's names; its macros are #undef'd at the end.
 */
#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FFD_N_FEATURES 29

/* ---- character classes ---------------------------------------------------------------------------- */

/* Non-ASCII text is scanned as bytes too (see ffd_narrow): each non-ASCII code point becomes one of
 * these three bytes, none of which is ASCII, so none is in any pattern, digit or option letter. */
#define FFD_U_OTHER 0x80 /* neither \s nor \w: punctuation, symbols, marks, lone surrogates */
#define FFD_U_WORD 0x81  /* \w, i.e. Py_UNICODE_ISALNUM: letters, and numerics such as U+00B2 */
#define FFD_U_SPACE 0x82 /* \s, i.e. Py_UNICODE_ISSPACE: U+0085, U+00A0, U+2028, U+3000, ... */

/* The main pass reads one table entry per byte instead of branching on it: bit 0 = whitespace for
 * str.split() and re's \s on a str pattern (both Py_UNICODE_ISSPACE: \t \n \v \f \r, space,
 * \x1c-\x1f, and the non-ASCII spaces), bit 1 = a sentence end [.!?]. */
#define FFD_SPACE 1u
#define FFD_END 2u
static const unsigned char ffd_class[256] = {
    ['\t'] = FFD_SPACE, ['\n'] = FFD_SPACE, ['\v'] = FFD_SPACE, ['\f'] = FFD_SPACE, ['\r'] = FFD_SPACE,
    [0x1c] = FFD_SPACE, [0x1d] = FFD_SPACE, [0x1e] = FFD_SPACE, [0x1f] = FFD_SPACE, [' '] = FFD_SPACE,
    [FFD_U_SPACE] = FFD_SPACE,
    ['.'] = FFD_END,    ['!'] = FFD_END,    ['?'] = FFD_END,
};

static inline int ffd_is_space(unsigned char c) { return ffd_class[c] & FFD_SPACE; }

/* re's \w (hence \b) on a str pattern */
static inline int ffd_is_word(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == FFD_U_WORD;
}

static inline int ffd_is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static inline unsigned char ffd_lower(unsigned char c) {
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

static inline int ffd_is_option_letter(unsigned char c) {
    return (c >= 'A' && c <= 'H') || (c >= 'a' && c <= 'h');
}

/* ---- substrings ---------------------------------------------------------------------------------- */

/* Every substring test (`pat in text`, text.count(pat), the same on low, and the negation words of
 * the stem) is done in the one pass. A scan per pattern cost ~12 us on 1,600 characters (~25 patterns
 * whose first letters are common); comparing at each position the patterns starting with its letter
 * still cost ~4 us more than this, in mispredicted branches. So a position is a candidate for pattern k only when
 * bit k is set both in ffd_first[its byte] and in ffd_second[the next byte]: two table reads and an
 * AND, and the slow path runs only where a pattern's first two characters are actually there. Every
 * pattern is at least two characters long. Patterns searched in `low` have both cases of their
 * letters in the tables, those searched in `text` only their own.
 * ASCII text is its own lower case (up to A-Z), so one string serves for both kinds of pattern. For
 * other text the caller's low is narrowed apart (ffd_narrow) and the low patterns (FFD_P_IN_LOW) take
 * their candidates and their matches from it, the others from the text. */
enum {
    FFD_P_ANSWER = 1u << 0,     /* low.count("answer:") */
    FFD_P_STATEMENT = 1u << 1,  /* "statement 1" in low */
    FFD_P_SQRT = 1u << 2,       /* low.count("sqrt") */
    FFD_P_WHICH = 1u << 3,      /* "which of the following" in low */
    FFD_P_WRITE = 1u << 4,      /* "write a function" or "write a python" in low */
    FFD_P_PERCENT = 1u << 5,    /* "percent" in low */
    FFD_P_PASSAGE = 1u << 6,    /* "passage" in low */
    FFD_P_REFERS = 1u << 7,     /* "refers to the following" in low */
    FFD_P_FRAC = 1u << 8,       /* low.count("\\frac") */
    FFD_P_TICKS = 1u << 9,      /* _CODE_MARKERS, counted in text: "```" */
    FFD_P_DEF = 1u << 10,       /* "def " */
    FFD_P_RETURN = 1u << 11,    /* "return" */
    FFD_P_CLASS = 1u << 12,     /* "class " */
    FFD_P_IMPORT = 1u << 13,    /* "import" */
    FFD_P_FUNCTION = 1u << 14,  /* "function" */
    FFD_P_ARROW = 1u << 15,     /* "=>" */
    FFD_P_BLANK = 1u << 16,     /* " _ " in text */
    FFD_P_ROMAN = 1u << 17,     /* any _ROMAN_MARKERS in text: all start with I then ' ', I, V or ',' */
    FFD_P_NOT = 1u << 18,       /* the _NEG words, in the stem, lower-cased */
    FFD_P_NEVER = 1u << 19,
    FFD_P_EXCEPT = 1u << 20,
    FFD_P_LEAST = 1u << 21,
    FFD_P_FALSE = 1u << 22,
    FFD_P_INCORRECT = 1u << 23,
};
#define FFD_P_NEG (FFD_P_NOT | FFD_P_NEVER | FFD_P_EXCEPT | FFD_P_LEAST | FFD_P_FALSE | FFD_P_INCORRECT)
#define FFD_P_IN_LOW                                                                                     \
    (FFD_P_ANSWER | FFD_P_STATEMENT | FFD_P_SQRT | FFD_P_WHICH | FFD_P_WRITE | FFD_P_PERCENT | FFD_P_PASSAGE | \
     FFD_P_REFERS | FFD_P_FRAC | FFD_P_NEG)

static const uint32_t ffd_first[256] = {
    ['a'] = FFD_P_ANSWER, ['A'] = FFD_P_ANSWER,
    ['s'] = FFD_P_STATEMENT | FFD_P_SQRT, ['S'] = FFD_P_STATEMENT | FFD_P_SQRT,
    ['w'] = FFD_P_WHICH | FFD_P_WRITE, ['W'] = FFD_P_WHICH | FFD_P_WRITE,
    ['p'] = FFD_P_PERCENT | FFD_P_PASSAGE, ['P'] = FFD_P_PERCENT | FFD_P_PASSAGE,
    ['r'] = FFD_P_REFERS | FFD_P_RETURN, ['R'] = FFD_P_REFERS,
    ['\\'] = FFD_P_FRAC,
    ['`'] = FFD_P_TICKS,
    ['d'] = FFD_P_DEF,
    ['c'] = FFD_P_CLASS,
    ['i'] = FFD_P_IMPORT | FFD_P_INCORRECT, ['I'] = FFD_P_ROMAN | FFD_P_INCORRECT,
    ['f'] = FFD_P_FUNCTION | FFD_P_FALSE, ['F'] = FFD_P_FALSE,
    ['='] = FFD_P_ARROW,
    [' '] = FFD_P_BLANK,
    ['n'] = FFD_P_NOT | FFD_P_NEVER, ['N'] = FFD_P_NOT | FFD_P_NEVER,
    ['e'] = FFD_P_EXCEPT, ['E'] = FFD_P_EXCEPT,
    ['l'] = FFD_P_LEAST, ['L'] = FFD_P_LEAST,
};

static const uint32_t ffd_second[256] = {
    ['n'] = FFD_P_ANSWER | FFD_P_INCORRECT, ['N'] = FFD_P_ANSWER | FFD_P_INCORRECT,
    ['t'] = FFD_P_STATEMENT, ['T'] = FFD_P_STATEMENT,
    ['q'] = FFD_P_SQRT, ['Q'] = FFD_P_SQRT,
    ['h'] = FFD_P_WHICH, ['H'] = FFD_P_WHICH,
    ['r'] = FFD_P_WRITE, ['R'] = FFD_P_WRITE,
    ['e'] = FFD_P_PERCENT | FFD_P_REFERS | FFD_P_NEVER | FFD_P_LEAST | FFD_P_DEF | FFD_P_RETURN,
    ['E'] = FFD_P_PERCENT | FFD_P_REFERS | FFD_P_NEVER | FFD_P_LEAST,
    ['a'] = FFD_P_PASSAGE | FFD_P_FALSE, ['A'] = FFD_P_PASSAGE | FFD_P_FALSE,
    ['f'] = FFD_P_FRAC, ['F'] = FFD_P_FRAC,
    ['o'] = FFD_P_NOT, ['O'] = FFD_P_NOT,
    ['x'] = FFD_P_EXCEPT, ['X'] = FFD_P_EXCEPT,
    ['`'] = FFD_P_TICKS,
    ['l'] = FFD_P_CLASS,
    ['m'] = FFD_P_IMPORT,
    ['u'] = FFD_P_FUNCTION,
    ['>'] = FFD_P_ARROW,
    ['_'] = FFD_P_BLANK,
    [' '] = FFD_P_ROMAN, ['I'] = FFD_P_ROMAN, ['V'] = FFD_P_ROMAN, [','] = FFD_P_ROMAN,
};

/* text.count(pat) counts non-overlapping hits (it resumes the scan after each one): a hit counts
 * when it starts at or after the end of the last counted hit, the leftmost-first rule str.count
 * follows. */
typedef struct {
    Py_ssize_t count;
    Py_ssize_t next; /* where the next hit may start */
} ffd_counter;

typedef struct {
    ffd_counter answer, sqrt_, frac, ticks, def, ret, klass, import, function, arrow;
    int statement, which, write, percent, passage, refers, blank, roman, negation;
    Py_ssize_t stem_len; /* the negation words are looked for in text[:stem_len] */
} ffd_patterns;

/* pat at s[i:] */
static inline int ffd_at(const char *s, Py_ssize_t n, Py_ssize_t i, const char *pat, Py_ssize_t m) {
    return n - i >= m && memcmp(s + i, pat, (size_t)m) == 0;
}

/* pat (lower case) at text.lower()[i:], where s is the text when it is ASCII (so lowered here), else
 * the narrowed low, which has no A-Z (no character but A-Z lowers to one) */
static inline int ffd_at_lower(const char *s, Py_ssize_t n, Py_ssize_t i, const char *pat, Py_ssize_t m) {
    if (n - i < m) return 0;
    for (Py_ssize_t j = 0; j < m; j++)
        if (ffd_lower((unsigned char)s[i + j]) != (unsigned char)pat[j]) return 0;
    return 1;
}

/* These read the text t, the string l for text.lower() (see ffd_patterns_at), their length n and the
 * position i. */
#define FFD_AT(lit) ffd_at(t, n, i, (lit), (Py_ssize_t)sizeof(lit) - 1)
#define FFD_AT_LOWER(lit) ffd_at_lower(l, n, i, (lit), (Py_ssize_t)sizeof(lit) - 1)
#define FFD_COUNT_HIT(ctr, found, lit)                    \
    do {                                                  \
        if (i >= (ctr).next && (found)) {                 \
            (ctr).count++;                                \
            (ctr).next = i + (Py_ssize_t)sizeof(lit) - 1; \
        }                                                 \
    } while (0)
#define FFD_COUNT(ctr, lit) FFD_COUNT_HIT(ctr, FFD_AT(lit), lit)
#define FFD_COUNT_LOWER(ctr, lit) FFD_COUNT_HIT(ctr, FFD_AT_LOWER(lit), lit)
#define FFD_FLAG(flag, found)          \
    do {                               \
        if (!(flag)) (flag) = (found); \
    } while (0)
/* _NEG = \b(?:not|except|least|false|incorrect|never)\b searched in stem.lower(): the words are all
 * word characters, so a match is a maximal run of word characters equal to one of them, inside the
 * stem (whose end is a boundary: the string ends there). The boundary before is checked by the caller.
 * It is searched in low[:stem_len]; for non-ASCII text, ffd_narrow says why that is stem.lower(). */
#define FFD_NEG_WORD(lit)                                                                      \
    (i + (Py_ssize_t)sizeof(lit) - 1 <= p->stem_len && FFD_AT_LOWER(lit) &&                    \
     (i + (Py_ssize_t)sizeof(lit) - 1 == p->stem_len || !ffd_is_word((unsigned char)l[i + sizeof(lit) - 1])))

/* The patterns flagged in cand (ffd_first & ffd_second) that start at position i: those of `text` in
 * t, those of `low` in l (the same string as t when the text is ASCII). */
static void ffd_patterns_at(const char *t, const char *l, Py_ssize_t n, Py_ssize_t i, uint32_t cand,
                            ffd_patterns *p) {
    if (cand & FFD_P_ANSWER) FFD_COUNT_LOWER(p->answer, "answer:");
    if (cand & FFD_P_STATEMENT) FFD_FLAG(p->statement, FFD_AT_LOWER("statement 1"));
    if (cand & FFD_P_SQRT) FFD_COUNT_LOWER(p->sqrt_, "sqrt");
    if (cand & FFD_P_WHICH) FFD_FLAG(p->which, FFD_AT_LOWER("which of the following"));
    if (cand & FFD_P_WRITE) FFD_FLAG(p->write, FFD_AT_LOWER("write a function") || FFD_AT_LOWER("write a python"));
    if (cand & FFD_P_PERCENT) FFD_FLAG(p->percent, FFD_AT_LOWER("percent"));
    if (cand & FFD_P_PASSAGE) FFD_FLAG(p->passage, FFD_AT_LOWER("passage"));
    if (cand & FFD_P_REFERS) FFD_FLAG(p->refers, FFD_AT_LOWER("refers to the following"));
    if (cand & FFD_P_FRAC) FFD_COUNT_LOWER(p->frac, "\\frac");
    if (cand & FFD_P_TICKS) FFD_COUNT(p->ticks, "```");
    if (cand & FFD_P_DEF) FFD_COUNT(p->def, "def ");
    if (cand & FFD_P_RETURN) FFD_COUNT(p->ret, "return");
    if (cand & FFD_P_CLASS) FFD_COUNT(p->klass, "class ");
    if (cand & FFD_P_IMPORT) FFD_COUNT(p->import, "import");
    if (cand & FFD_P_FUNCTION) FFD_COUNT(p->function, "function");
    if (cand & FFD_P_ARROW) FFD_COUNT(p->arrow, "=>");
    if (cand & FFD_P_BLANK) FFD_FLAG(p->blank, FFD_AT(" _ "));
    if (cand & FFD_P_ROMAN)
        FFD_FLAG(p->roman, FFD_AT("I only") || FFD_AT("II only") || FFD_AT("III only") || FFD_AT("IV only") ||
                               FFD_AT("I and II") || FFD_AT("II and III") || FFD_AT("I and III") || FFD_AT("I, II"));
    if ((cand & FFD_P_NEG) && !p->negation && i < p->stem_len && (i == 0 || !ffd_is_word((unsigned char)l[i - 1])))
        p->negation = ((cand & FFD_P_NOT) && FFD_NEG_WORD("not")) || ((cand & FFD_P_NEVER) && FFD_NEG_WORD("never")) ||
                      ((cand & FFD_P_EXCEPT) && FFD_NEG_WORD("except")) ||
                      ((cand & FFD_P_LEAST) && FFD_NEG_WORD("least")) ||
                      ((cand & FFD_P_FALSE) && FFD_NEG_WORD("false")) ||
                      ((cand & FFD_P_INCORRECT) && FFD_NEG_WORD("incorrect"));
}

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
     * let the compiler fold it into a product, which glibc's pow does not always equal in the last bit
     * (about 1 in 2,000 random deviations; the tests pin such a case). */
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
/* ---- the features --------------------------------------------------------------------------------- */

static double ffd_ratio(Py_ssize_t a, Py_ssize_t b) { return (double)a / (double)(b > 1 ? b : 1); }

/* Py_ALWAYS_INLINE is Python >= 3.11's (and empty in debug builds); without it, only speed is lost */
#ifdef Py_ALWAYS_INLINE
#define FFD_ALWAYS_INLINE Py_ALWAYS_INLINE
#else
#define FFD_ALWAYS_INLINE
#endif

/* The features of the text s, n bytes (one per code point), whose lower case is l: s itself when the
 * text is ASCII, else both are narrowed (ffd_narrow). n_utf8 = len(text.encode("utf-8", "ignore")).
 * Inlined into its two calls so that the ASCII one, where l == s, drops the test for it on every
 * character of the main pass (which cost 0.3 us, 5%, on 1,600 characters). */
static inline FFD_ALWAYS_INLINE PyObject *ffd_features(const char *s, const char *l, Py_ssize_t n, Py_ssize_t n_utf8) {
    /* first, since the main pass looks for the negation words in the stem */
    ffd_patterns pat;
    memset(&pat, 0, sizeof(pat));
    pat.stem_len = ffd_stem_length(s, n);

    /* The main pass: a byte histogram (every single-character count derives from it), the words and
     * sentences from the class of each byte and the one before (branch-free), and the candidates for
     * the substring patterns.
     * len(text.split()) = the number of non-space bytes after a space (or at the start).
     * _SENT.findall, r"[.!?](\s|$)": "$" (no re.M) holds at the end or before a final '\n', which \s
     * takes anyway. The \s a match consumes is never in [.!?], so non-overlapping matching skips no
     * candidate: the count is that of [.!?] followed by a space or the end. */
    Py_ssize_t hist[256] = {0};
    Py_ssize_t n_words = 0, n_sent = 0;
    unsigned prev = FFD_SPACE;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        unsigned cls = ffd_class[c];
        hist[c]++;
        n_words += prev & ~cls & FFD_SPACE;
        n_sent += (prev >> 1) & cls & FFD_SPACE;
        prev = cls;
        if (i + 1 < n) {
            uint32_t cand = ffd_first[c] & ffd_second[(unsigned char)s[i + 1]];
            if (l != s) /* non-ASCII text: the patterns of low are looked for in low */
                cand = (cand & ~(uint32_t)FFD_P_IN_LOW) |
                       (ffd_first[(unsigned char)l[i]] & ffd_second[(unsigned char)l[i + 1]] & FFD_P_IN_LOW);
            if (cand) ffd_patterns_at(s, l, n, i, cand, &pat);
        }
    }
    n_sent += (prev & FFD_END) != 0;

    Py_ssize_t n_digits = 0, n_upper = 0;
    for (int c = '0'; c <= '9'; c++) n_digits += hist[c];
    for (int c = 'A'; c <= 'Z'; c++) n_upper += hist[c];
    Py_ssize_t n_math = hist['='] + hist['+'] + hist['*'] + hist['/'] + hist['^'] + hist['<'] + hist['>'];
    /* _CODE_MARKERS, each counted on its own, summed (ints: the order does not matter) */
    Py_ssize_t n_code = pat.ticks.count + pat.def.count + pat.ret.count + pat.klass.count + hist['{'] + hist['}'] +
                        hist[';'] + pat.import.count + pat.function.count + pat.arrow.count;
    /* len(raw) - raw.count(b" ") - ...: those bytes only come from ASCII characters */
    Py_ssize_t n_nonspace = n_utf8 - hist[' '] - hist['\n'] - hist['\t'];

    ffd_numbers nums = {0, 0, 0.0, 0};
    if (n_digits > 0 && ffd_scan_numbers(s, n, &nums) < 0) return NULL; /* a number needs a digit */
    double max_num = nums.max_num < 1e12 ? nums.max_num : 1e12; /* min(max_num, 1e12) */

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

    double f[FFD_N_FEATURES] = {
        log1p((double)n),
        log1p((double)n_words),
        log1p((double)hist['\n']),
        log1p((double)nums.count),
        log1p((double)nums.distinct),
        ffd_ratio(n_digits, n),
        log1p(max_num),
        (double)nums.has_dot,
        (double)opt.count,
        log1p(mean_opt),
        sqrt(var_opt) / (mean_opt + 1.0),
        ffd_ratio(opt.numeric, opt.count),
        log1p((double)pat.stem_len),
        (double)pat.statement,
        (double)pat.negation,
        (double)pat.which,
        (double)(hist['%'] > 0 || pat.percent),
        (double)hist['$'],
        (double)(pat.refers || pat.passage),
        (double)hist['?'],
        log1p((double)(n_math + pat.frac.count + pat.sqrt_.count)),
        (double)pat.roman,
        ffd_ratio(n_upper, n),
        log1p((double)n_code),
        (double)(pat.blank || (n >= 2 && s[0] == '_' && s[1] == ' ')), /* or text.startswith("_ ") */
        (double)pat.write,
        log1p((double)n_sent),
        ffd_ratio(n_nonspace, n_words),
        pat.answer.count > 0 ? (double)(pat.answer.count - 1) : 0.0, /* low.count("answer:") - 1 if in low */
    };

    PyObject *result = PyList_New(FFD_N_FEATURES);
    if (result == NULL) return NULL;
    for (Py_ssize_t k = 0; k < FFD_N_FEATURES; k++) {
        PyObject *v = PyFloat_FromDouble(f[k]);
        if (v == NULL) {
            Py_DECREF(result); /* the items not set yet are NULL, which list_dealloc skips */
            return NULL;
        }
        PyList_SET_ITEM(result, k, v);
    }
    return result;
}

/* ---- non-ASCII text ------------------------------------------------------------------------------- */

/* Every scan above looks at a character only to compare it with ASCII characters (the patterns, the
 * digits, [.,], [ \t], '(', [A-Ha-h], [.)], [.!?], '\n', the histogram's characters), or to ask whether
 * it is \s (str.split(), _SENT, _OPTION) or \w (the \b of _NEG), and it counts positions in code points
 * (len(text), the option lines' and the stem's lengths, str.count's non-overlapping hits). Re's "."
 * and the "^"/"$" of re.M look at '\n' alone (U+2028 is no line break for them). So replacing each
 * non-ASCII code point by one non-ASCII byte that answers those questions alike (FFD_U_SPACE,
 * FFD_U_WORD or FFD_U_OTHER: Py_UNICODE_ISSPACE and Py_UNICODE_ISALNUM, re's own tests for \s and \w,
 * are never both true) changes no feature, but for:
 *  - \d, which is Py_UNICODE_ISDECIMAL: a non-ASCII decimal digit (U+0661, U+FF12, ...) would be part
 *    of _NUM's numbers, which float() then reads, and would make an option line numeric. Such text is
 *    left to Python (None). Other numeric characters (U+00B2, U+2153) are only \w for re.
 *  - raw = text.encode("utf-8", "ignore"): the bytes it counts (digits, A-Z, math characters, ' ',
 *    '\n', '\t') come from ASCII characters only, every byte of a longer UTF-8 sequence being >= 0x80;
 *    len(raw) takes the UTF-8 length of each code point, 0 for a surrogate: a str holds surrogates as
 *    single code points (a "pair" too), which the encoder refuses one by one and "ignore" drops.
 *
 * The patterns searched in low look at the caller's text.lower(), narrowed the same way (a non-ASCII
 * character can lower to an ASCII letter: U+212A KELVIN SIGN to 'k'). No character lowers to fewer
 * than one code point, so len(low) == len(text) means each lowered to exactly one, and low[i] is the
 * lower case of text[i]; the other texts (U+0130 lowers to two) are left to Python (None).
 * _has_negation(stem.lower()) is then searched in low[:len(stem)], which is stem.lower(): CPython
 * lowers each code point alone (_PyUnicode_ToLowerFull) except U+03A3 capital sigma, whose form (final
 * or not) depends on the characters around it up to the string's ends (handle_capital_sigma in
 * Objects/unicodeobject.c). Cutting the text at the stem's end changes no sigma: a stem shorter than the
 * text ends with the '\n' before the option line (_OPTION's match starts where "^" holds), and '\n'
 * is neither cased nor case-ignorable, so the look-ahead from a sigma in the stem stops at that '\n'
 * at the latest, in the stem as in the text. (Were it otherwise, the two forms are both \w letters
 * and in none of the negation words, so _NEG would find the same.) */

static inline int ffd_utf8_len(Py_UCS4 c) {
    if (c < 0x80) return 1;
    if (c < 0x800) return 2;
    if (c < 0x10000) return Py_UNICODE_IS_SURROGATE(c) ? 0 : 3;
    return 4;
}

/* The byte standing for the non-ASCII c; -1 for a decimal digit when in_text. */
static inline int ffd_narrow_char(Py_UCS4 c, int in_text) {
    if (Py_UNICODE_ISSPACE(c)) return FFD_U_SPACE;
    if (Py_UNICODE_ISALNUM(c)) return in_text && Py_UNICODE_ISDECIMAL(c) ? -1 : FFD_U_WORD;
    return FFD_U_OTHER;
}

/* Narrows the str s (of length n) into out[0:n]. Returns len(s.encode("utf-8", "ignore")), or -1 when
 * in_text and s has a non-ASCII decimal digit. One loop per storage kind, so that the loop does not
 * branch on the kind for every character. */
static Py_ssize_t ffd_narrow(PyObject *s, Py_ssize_t n, char *out, int in_text) {
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t n_utf8 = 0;
#define FFD_NARROW_LOOP(T)                                   \
    for (Py_ssize_t i = 0; i < n; i++) {                     \
        Py_UCS4 c = ((const T *)data)[i];                    \
        if (c < 0x80) {                                      \
            out[i] = (char)c;                                \
            n_utf8++;                                        \
            continue;                                        \
        }                                                    \
        int b = ffd_narrow_char(c, in_text);                 \
        if (b < 0) return -1;                                \
        out[i] = (char)b;                                    \
        n_utf8 += ffd_utf8_len(c);                           \
    }
    switch (PyUnicode_KIND(s)) {
    case PyUnicode_1BYTE_KIND: FFD_NARROW_LOOP(Py_UCS1) break;
    case PyUnicode_2BYTE_KIND: FFD_NARROW_LOOP(Py_UCS2) break;
    default: FFD_NARROW_LOOP(Py_UCS4) break;
    }
#undef FFD_NARROW_LOOP
    return n_utf8;
}

/* ---- entry point ------------------------------------------------------------------------------------ */

PyObject *ff_dense_features(PyObject *text, PyObject *low) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "dense_features() argument 'text' must be str");
        return NULL;
    }
    if (low == NULL) low = Py_None;
    if (low != Py_None && !PyUnicode_Check(low)) {
        PyErr_SetString(PyExc_TypeError, "dense_features() argument 'low' must be str or None");
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0 || (low != Py_None && PyUnicode_READY(low) < 0)) return NULL;
#endif
    const Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (PyUnicode_IS_ASCII(text)) {
        const char *s = (const char *)PyUnicode_1BYTE_DATA(text);
        return ffd_features(s, s, n, n);
    }
    if (low == Py_None || PyUnicode_GET_LENGTH(low) != n) Py_RETURN_NONE;

    /* the narrowed text and low, side by side; a clipped prompt (1,601 characters) fits on the stack */
    char small[4096];
    char *buf = n <= (Py_ssize_t)sizeof(small) / 2 ? small : PyMem_Malloc((size_t)n * 2);
    if (buf == NULL) return PyErr_NoMemory();
    PyObject *result;
    Py_ssize_t n_utf8 = ffd_narrow(text, n, buf, 1);
    if (n_utf8 < 0) {
        Py_INCREF(Py_None);
        result = Py_None;
    } else {
        ffd_narrow(low, n, buf + n, 0);
        result = ffd_features(buf, buf + n, n, n_utf8);
    }
    if (buf != small) PyMem_Free(buf);
    return result;
}

/* the includer (router/_fastfeat.c) need not see these */
#undef FFD_N_FEATURES
#undef FFD_SPACE
#undef FFD_END
#undef FFD_U_OTHER
#undef FFD_U_WORD
#undef FFD_U_SPACE
#undef FFD_P_NEG
#undef FFD_P_IN_LOW
#undef FFD_ALWAYS_INLINE
#undef FFD_AT
#undef FFD_AT_LOWER
#undef FFD_COUNT_HIT
#undef FFD_COUNT
#undef FFD_COUNT_LOWER
#undef FFD_FLAG
#undef FFD_NEG_WORD
