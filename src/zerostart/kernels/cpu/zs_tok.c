/* zerostart tokenizer inner loops: SentencePiece Unigram segmentation and byte-level BPE
 * (GPT-2's split and the merges; below) over the mapped tokenizer.bin, identical to Hugging
 * Face `tokenizers`.
 *
 * Theory of operation. The worker maps tokenizer.bin (zerostart/tokenize/
 * _compiled.py) and hands this library the addresses of its sections; nothing
 * is copied or built at load. One call segments a whole pre-tokenised segment
 * (the Metaspace text: words start at each replacement character) and writes,
 * per token, its id, its character span in that text and its span in the
 * original text (through the normaliser's alignment), so the Python side only
 * turns arrays into lists. The rules are those of zerostart/tokenize/
 * _unigram.py (tokenizers' Unigram::encode_optimized after SentencePiece's
 * unigram_model.cc), which stays the reference and the fallback:
 *
 *  - Viterbi over the word's UTF-8 bytes: from each character start, every
 *    piece beginning there is found by walking the byte trie; a later
 *    candidate replaces the best path into an end only if strictly better
 *    (ties: the earlier start and the shorter piece win). Scores are float64
 *    and added in the same order as the Python code, so totals are identical.
 *  - A character with no piece of its own length gets the unknown piece at
 *    min_score - 10 (tokenizers' K_UNK_PENALTY).
 *  - Backtracking fuses runs of unknown pieces into one token whose id is the
 *    piece spelled by that text if there is one, else unk_id. With
 *    byte_fallback such a token becomes <0xXX> pieces: rare, and left to the
 *    Python code (return ZS_TOK_NEEDS_PYTHON).
 *
 * The tables are checked once (zs_unigram_check) so that a damaged file
 * cannot send the walk outside them. Build: zerostart/kernels/tok_build.py
 * (portable -O2, no SIMD; needs only libc). Sizes are int64, ids int32.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ZS_TOK_ABI_VERSION 3

/* Return codes of zs_unigram_segment (>= 0: number of tokens). */
#define ZS_TOK_NO_UNK (-1)       /* a character without a piece and no unknown piece */
#define ZS_TOK_NEEDS_PYTHON (-2) /* byte_fallback spelling needed: the caller's path */
#define ZS_TOK_NO_ROOM (-3)      /* the output arrays are too small */
#define ZS_TOK_NO_MEMORY (-4)

int64_t zs_tok_abi_version(void) { return ZS_TOK_ABI_VERSION; }

typedef struct {
    const int32_t *first;  /* node k's children are first[k] .. first[k+1]-1 */
    const uint8_t *labels; /* child j's byte */
    const int32_t *value;  /* piece ending at node j, -1 for none */
    const double *scores;  /* per piece */
    int64_t nodes;         /* len(labels) == len(value) == len(first) - 1 */
    int64_t vocab;
    int64_t unk_id;        /* -1: none */
    int64_t byte_fallback;
    double unk_score;
    int32_t *root;         /* 256 entries: the root's child for each byte, -1 for none;
                              filled by zs_unigram_check (the root has the most children) */
} zs_unigram;

/* 0 if the trie arrays cannot lead a walk outside them, else the first bad index + 1. */
int64_t zs_unigram_check(zs_unigram *m) {
    if (m->nodes < 1 || m->first[0] < 1) return 1;
    for (int64_t k = 0; k < m->nodes; k++) {
        if (m->first[k + 1] < m->first[k] || m->first[k + 1] > m->nodes) return k + 2;
        if (m->value[k] < -1 || m->value[k] >= m->vocab) return k + 1;
    }
    if (m->first[m->nodes] != m->nodes) return m->nodes + 1;
    if (m->unk_id >= m->vocab) return 1;
    for (int64_t b = 0; b < 256; b++) m->root[b] = -1;
    for (int64_t j = m->first[0]; j < m->first[1]; j++) m->root[m->labels[j]] = (int32_t)j;
    return 0;
}

static inline int64_t child(const zs_unigram *m, int64_t node, uint8_t byte) {
    if (node == 0) return m->root[byte];
    int64_t lo = m->first[node], hi = m->first[node + 1];
    while (hi - lo > 8) { /* binary search down to a short run, then scan */
        int64_t mid = (lo + hi) >> 1;
        if (m->labels[mid] <= byte) lo = mid; else hi = mid;
    }
    for (; lo < hi; lo++) {
        if (m->labels[lo] == byte) return lo;
        if (m->labels[lo] > byte) return -1;
    }
    return -1;
}

static inline int64_t utf8_len(uint8_t lead) {
    return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

/* The piece spelled by bytes s[0..n), or -1 (MappedVocab.token_to_id). */
static int64_t lookup(const zs_unigram *m, const uint8_t *s, int64_t n) {
    int64_t node = 0;
    for (int64_t i = 0; i < n; i++) {
        node = child(m, node, s[i]);
        if (node < 0) return -1;
    }
    return node ? m->value[node] : -1;
}

typedef struct {
    double *best;
    int32_t *start;
    int32_t *id;
} scratch;

/* Viterbi over w[0..n); appends tokens as (byte start, byte end, id) to spans
 * (3 per token, in reverse order); returns their count or a ZS_TOK_ code. */
static int64_t viterbi(const zs_unigram *m, const uint8_t *w, int64_t n, scratch *sc,
                       int32_t *spans) {
    double *best = sc->best;
    int32_t *start = sc->start, *bid = sc->id;
    for (int64_t i = 0; i <= n; i++) { best[i] = 0.0; start[i] = -1; bid[i] = 0; }
    for (int64_t pos = 0; pos < n;) {
        int64_t mblen = utf8_len(w[pos]);
        double here = best[pos];
        int single = 0;
        int64_t node = 0;
        for (int64_t end = pos; end < n;) {
            node = child(m, node, w[end]);
            if (node < 0) break;
            end++;
            int32_t v = m->value[node];
            if (v >= 0) {
                double cand = here + m->scores[v];
                if (start[end] < 0 || cand > best[end]) {
                    best[end] = cand; start[end] = (int32_t)pos; bid[end] = v;
                }
                if (end - pos == mblen) single = 1;
            }
        }
        if (!single) {
            if (m->unk_id < 0) return ZS_TOK_NO_UNK;
            int64_t end = pos + mblen;
            if (end > n) end = n; /* not valid UTF-8: cannot come from a Python str */
            double cand = here + m->unk_score;
            if (start[end] < 0 || cand > best[end]) {
                best[end] = cand; start[end] = (int32_t)pos; bid[end] = (int32_t)m->unk_id;
            }
        }
        pos += mblen;
    }
    /* Back from the end, fusing runs of unknown pieces. */
    int64_t count = 0, fused_end = -1;
    for (int64_t end = n; end > 0;) {
        int64_t s = start[end];
        int32_t i = bid[end];
        if (i == m->unk_id) {
            if (fused_end < 0) fused_end = end;
        } else {
            if (fused_end >= 0) {
                spans[3 * count] = (int32_t)end; spans[3 * count + 1] = (int32_t)fused_end;
                spans[3 * count + 2] = -1; count++;
                fused_end = -1;
            }
            spans[3 * count] = (int32_t)s; spans[3 * count + 1] = (int32_t)end;
            spans[3 * count + 2] = i; count++;
        }
        end = s;
    }
    if (fused_end >= 0) {
        spans[3 * count] = 0; spans[3 * count + 1] = (int32_t)fused_end;
        spans[3 * count + 2] = -1; count++;
    }
    for (int64_t k = 0; k < count; k++) { /* fused unknown text: its own piece, or unk */
        if (spans[3 * k + 2] >= 0) continue;
        int64_t found = lookup(m, w + spans[3 * k], spans[3 * k + 1] - spans[3 * k]);
        if (found < 0 && m->byte_fallback) return ZS_TOK_NEEDS_PYTHON;
        spans[3 * k + 2] = (int32_t)(found >= 0 ? found : m->unk_id);
    }
    return count;
}

/* Segment text[0..n) (UTF-8) into tokens.
 *
 * Words: a new word starts at each occurrence of sep[0..sep_len) (Metaspace's
 * replacement, split before it); sep_len 0: the whole text is one word.
 * Offsets: character c of the text stands for original character
 * A(max(c - prepended, 0)) + base, A being align[] (NULL: the identity); a
 * token over characters [cs, ce) spans (orig(cs), orig(ce - 1) + 1).
 * out: six int32 arrays of cap entries each, end to end: id, cs, ce, start,
 * end, word (index of the word in this text). words_out[0]: number of words.
 * joined (NULL: not wanted; else n + cap bytes): the text with a NUL byte
 * between tokens, so that the caller gets the token strings with one decode
 * and one split; words_out[1]: its length.
 * Returns the number of tokens or a ZS_TOK_ code (< 0). */
static int64_t segment(const zs_unigram *m, const uint8_t *text, int64_t n, const uint8_t *sep,
                       int64_t sep_len, const int32_t *align, int64_t prepended, int64_t base,
                       int32_t *out, int64_t cap, int64_t *words_out, uint8_t *joined,
                       int32_t *byte_spans) {
    int32_t *o_id = out, *o_cs = out + cap, *o_ce = out + 2 * cap, *o_s = out + 3 * cap,
            *o_e = out + 4 * cap, *o_w = out + 5 * cap;
    words_out[0] = 0;
    words_out[1] = 0;
    if (n <= 0) return 0;
    /* one allocation: char index per byte, Viterbi arrays, reversed spans */
    size_t bytes = (size_t)(n + 1) * (sizeof(int32_t) + sizeof(double) + 2 * sizeof(int32_t)) +
                   (size_t)n * 3 * sizeof(int32_t);
    char *mem = malloc(bytes);
    if (!mem) return ZS_TOK_NO_MEMORY;
    double *best = (double *)mem;
    int32_t *cidx = (int32_t *)(best + n + 1);
    scratch sc = {best, cidx + n + 1, cidx + 2 * (n + 1)};
    int32_t *spans = cidx + 3 * (n + 1);
    int32_t c = 0;
    for (int64_t b = 0; b < n; b++) {
        cidx[b] = c;
        c += (text[b] & 0xC0) != 0x80;
    }
    cidx[n] = c;
    int64_t count = 0, words = 0, rc = 0, joined_len = 0;
    for (int64_t ws = 0; ws < n;) {
        int64_t we = n;
        if (sep_len > 0) { /* the next separator after this word's first byte */
            for (int64_t j = ws + 1; j + sep_len <= n; j++) {
                if (text[j] == sep[0] && memcmp(text + j, sep, (size_t)sep_len) == 0) {
                    we = j;
                    break;
                }
            }
        }
        int64_t k = viterbi(m, text + ws, we - ws, &sc, spans);
        if (k < 0) { rc = k; goto done; }
        if (count + k > cap) { rc = ZS_TOK_NO_ROOM; goto done; }
        for (int64_t t = k - 1; t >= 0; t--, count++) {
            int64_t cs = cidx[ws + spans[3 * t]], ce = cidx[ws + spans[3 * t + 1]];
            int64_t a = cs - prepended, z = ce - 1 - prepended;
            a = a < 0 ? 0 : a;
            z = z < 0 ? 0 : z;
            o_id[count] = spans[3 * t + 2];
            o_cs[count] = (int32_t)cs;
            o_ce[count] = (int32_t)ce;
            o_s[count] = (int32_t)((align ? align[a] : a) + base);
            o_e[count] = (int32_t)((align ? align[z] : z) + 1 + base);
            o_w[count] = (int32_t)words;
            if (byte_spans) {
                byte_spans[2 * count] = (int32_t)(ws + spans[3 * t]);
                byte_spans[2 * count + 1] = (int32_t)(ws + spans[3 * t + 1]);
            }
            if (joined) {
                int64_t bs = ws + spans[3 * t], be = ws + spans[3 * t + 1];
                if (count) joined[joined_len++] = 0;
                memcpy(joined + joined_len, text + bs, (size_t)(be - bs));
                joined_len += be - bs;
            }
        }
        words++;
        ws = we;
    }
    words_out[0] = words;
    words_out[1] = joined_len;
    rc = count;
done:
    free(mem);
    return rc;
}

int64_t zs_unigram_segment(const zs_unigram *m, const uint8_t *text, int64_t n,
                           const uint8_t *sep, int64_t sep_len, const int32_t *align,
                           int64_t prepended, int64_t base, int32_t *out, int64_t cap,
                           int64_t *words_out, uint8_t *joined) {
    return segment(m, text, n, sep, sep_len, align, prepended, base, out, cap, words_out, joined,
                   NULL);
}

/* ---- Appending to Python lists directly -------------------------------------------------
 *
 * A short text's encode spent more time turning the arrays above into lists (allocating them,
 * slicing, zipping offsets, splitting the joined tokens) and converting eleven ctypes
 * arguments than segmenting. zs_unigram_encode_py appends the tokens to the caller's lists
 * itself. It uses six functions of CPython's stable ABI (PEP 384: same signature on every
 * CPython 3), declared here rather than taken from Python.h so that building the bundle needs
 * no Python headers. They are weak: the library still loads in a process without them
 * (zs_tok_python_api() then says 0 and the caller keeps the array path). The caller must hold
 * the GIL: load through ctypes.PyDLL, not CDLL. */
typedef struct _object PyObject;
typedef intptr_t zs_py_ssize_t; /* Py_ssize_t */
extern PyObject *PyLong_FromLong(long) __attribute__((weak));
extern PyObject *PyUnicode_DecodeUTF8(const char *, zs_py_ssize_t, const char *)
    __attribute__((weak));
extern PyObject *PyTuple_New(zs_py_ssize_t) __attribute__((weak));
extern int PyTuple_SetItem(PyObject *, zs_py_ssize_t, PyObject *) __attribute__((weak));
extern int PyList_Append(PyObject *, PyObject *) __attribute__((weak));
extern void Py_DecRef(PyObject *) __attribute__((weak));

/* 1 if the interpreter that loaded this library exports the functions above. */
int64_t zs_tok_python_api(void) {
    return PyLong_FromLong && PyUnicode_DecodeUTF8 && PyTuple_New && PyTuple_SetItem &&
           PyList_Append && Py_DecRef;
}

static int append_new(PyObject *list, PyObject *item) { /* steals item; -1 on error */
    if (!item) return -1;
    int rc = PyList_Append(list, item);
    Py_DecRef(item);
    return rc;
}

static PyObject *pair(long a, long b) {
    PyObject *t = PyTuple_New(2);
    if (!t) return NULL;
    PyObject *x = PyLong_FromLong(a);
    if (!x || PyTuple_SetItem(t, 0, x) < 0) { Py_DecRef(t); return NULL; }
    PyObject *y = PyLong_FromLong(b);
    if (!y || PyTuple_SetItem(t, 1, y) < 0) { Py_DecRef(t); return NULL; }
    return t;
}

/* Segment as zs_unigram_segment and append each token to four Python lists: its id (int), its
 * text (str: the token's bytes of text), its (start, end) in the original text and its word
 * index plus word0. Nothing is appended unless the whole text segments (a ZS_TOK_ code < 0
 * leaves the lists as they were); ZS_TOK_NO_MEMORY with a Python exception set when an
 * object cannot be made, after which the lists may hold a part of the tokens (the exception
 * propagates through ctypes.PyDLL). Returns the number of words. */
int64_t zs_unigram_encode_py(const zs_unigram *m, const uint8_t *text, int64_t n,
                             const uint8_t *sep, int64_t sep_len, const int32_t *align,
                             int64_t prepended, int64_t base, int64_t word0, PyObject *ids,
                             PyObject *tokens, PyObject *offsets, PyObject *word_ids) {
    if (n <= 0) return 0;
    int32_t local[6 * 64 + 2 * 64];
    int32_t *out = n <= 64 ? local : malloc((size_t)n * 8 * sizeof(int32_t));
    if (!out) return ZS_TOK_NO_MEMORY;
    int32_t *bs = out + 6 * n;
    int64_t words[2];
    int64_t rc = segment(m, text, n, sep, sep_len, align, prepended, base, out, n, words, NULL,
                         bs);
    if (rc >= 0) {
        int32_t *o_id = out, *o_s = out + 3 * n, *o_e = out + 4 * n, *o_w = out + 5 * n;
        for (int64_t t = 0; t < rc; t++) {
            if (append_new(ids, PyLong_FromLong(o_id[t])) < 0 ||
                append_new(tokens, PyUnicode_DecodeUTF8((const char *)text + bs[2 * t],
                                                        bs[2 * t + 1] - bs[2 * t], "strict")) < 0 ||
                append_new(offsets, pair(o_s[t], o_e[t])) < 0 ||
                append_new(word_ids, PyLong_FromLong((long)(word0 + o_w[t]))) < 0) {
                rc = ZS_TOK_NO_MEMORY;
                break;
            }
        }
        if (rc >= 0) rc = words[0];
    }
    if (out != local) free(out);
    return rc;
}

/* ---- Byte-level BPE ----------------------------------------------------------------------
 *
 * One call pre-tokenises a segment with GPT-2's pattern, merges each piece's bytes by rank
 * and appends the tokens to the caller's lists, as zerostart/tokenize/_bytelevel.py and
 * _bpe.py do (they stay the reference and the fallback):
 *
 *  - The pattern 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *    is matched by hand over code point classes (letter, number, White_Space, other: the
 *    ranges of _bytelevel_tables.py, Oniguruma's as tokenizers sees them; ASCII: A-Za-z,
 *    0-9, \t\n\v\f\r and space). At each position the first alternative that matches wins,
 *    each class run is greedy, and a run of white space followed by something else gives
 *    back its last character (the lookahead), unless the run is that one character.
 *  - add_prefix_space puts a space before a segment that does not start with one, aligned
 *    to its first character.
 *  - A piece starts as one symbol per byte (byte_ids); the adjacent pair with the lowest
 *    rank merges, the leftmost among equals, until none has a merge: by scanning for pieces
 *    of up to BPE_SCAN_MAX symbols, with a heap of (rank, position) beyond (tokenizers'
 *    word.rs), which gives the same result.
 *  - Offsets: a token spans from its first byte's character to its last byte's, through the
 *    normaliser's alignment, plus the segment's base. */
typedef struct {
    const uint8_t *pieces;         /* token i's UTF-8: pieces[offsets[i] .. offsets[i + 1]) */
    const uint32_t *offsets;       /* vocab + 1 entries */
    const uint32_t *merge_starts;  /* vocab + 1: left id l's merges are entries [l] .. [l+1]-1 */
    const uint32_t *merge_rights;  /* per merge: the right id, ascending within one left id */
    const uint64_t *merge_values;  /* per merge: rank << 32 | the merged id */
    const uint32_t *byte_ids;      /* 256: the id of each byte's character */
    const uint32_t *ranges;        /* (first, last) code point pairs: letters, numbers, spaces */
    int64_t vocab;
    int64_t merges;
    int64_t pieces_len;
    int64_t n_letter, n_number, n_space; /* how many pairs of each, in that order */
} zs_bpe;

#define BPE_SCAN_MAX 48 /* _bpe.SCAN_MAX_SYMBOLS */
#define NO_MERGE UINT64_MAX
enum { CL_OTHER, CL_LETTER, CL_NUMBER, CL_SPACE };

/* 0 if the tables cannot send a lookup outside them, else the first bad index + 1. */
int64_t zs_bpe_check(const zs_bpe *m) {
    if (m->vocab < 1 || m->offsets[0] != 0 || m->merge_starts[0] != 0) return 1;
    for (int64_t i = 0; i < m->vocab; i++) {
        if (m->offsets[i + 1] < m->offsets[i] || m->merge_starts[i + 1] < m->merge_starts[i])
            return i + 2;
    }
    if ((int64_t)m->offsets[m->vocab] > m->pieces_len) return m->vocab + 1;
    if ((int64_t)m->merge_starts[m->vocab] != m->merges) return m->vocab + 1;
    for (int64_t l = 0; l < m->vocab; l++) {
        for (uint32_t j = m->merge_starts[l]; j < m->merge_starts[l + 1]; j++) {
            if (m->merge_rights[j] >= m->vocab || (m->merge_values[j] & 0xffffffffu) >= (uint64_t)m->vocab)
                return (int64_t)j + 1;
            if (j > m->merge_starts[l] && m->merge_rights[j] <= m->merge_rights[j - 1])
                return (int64_t)j + 1; /* not ascending: the binary search would miss */
        }
    }
    for (int64_t b = 0; b < 256; b++)
        if (m->byte_ids[b] >= m->vocab) return b + 1;
    const uint32_t *r = m->ranges; /* each class's pairs ascending, apart: binary-searchable */
    int64_t groups[3] = {m->n_letter, m->n_number, m->n_space};
    for (int g = 0; g < 3; r += 2 * groups[g], g++) {
        if (groups[g] < 0) return 1;
        for (int64_t k = 0; k < groups[g]; k++)
            if (r[2 * k] > r[2 * k + 1] || (k && r[2 * k] <= r[2 * k - 1])) return k + 1;
    }
    return 0;
}

static int in_ranges(const uint32_t *r, int64_t n, uint32_t cp) {
    int64_t lo = 0, hi = n; /* first pair whose last >= cp */
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        if (r[2 * mid + 1] < cp) lo = mid + 1; else hi = mid;
    }
    return lo < n && r[2 * lo] <= cp;
}

static int char_class(const zs_bpe *m, uint32_t cp) {
    if (cp < 128) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return CL_LETTER;
        if (cp >= '0' && cp <= '9') return CL_NUMBER;
        if (cp == ' ' || (cp >= '\t' && cp <= '\r')) return CL_SPACE;
        return CL_OTHER;
    }
    const uint32_t *r = m->ranges;
    if (in_ranges(r, m->n_letter, cp)) return CL_LETTER;
    r += 2 * m->n_letter;
    if (in_ranges(r, m->n_number, cp)) return CL_NUMBER;
    r += 2 * m->n_number;
    if (in_ranges(r, m->n_space, cp)) return CL_SPACE;
    return CL_OTHER;
}

static uint64_t find_merge(const zs_bpe *m, uint32_t left, uint32_t right) {
    int64_t lo = m->merge_starts[left], hi = m->merge_starts[left + 1];
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        uint32_t r = m->merge_rights[mid];
        if (r == right) return m->merge_values[mid];
        if (r < right) lo = mid + 1; else hi = mid;
    }
    return NO_MERGE;
}

typedef struct { uint64_t value; int32_t pos; } heap_entry;

static int heap_less(heap_entry a, heap_entry b) {
    return a.value < b.value || (a.value == b.value && a.pos < b.pos);
}

static void heap_push(heap_entry *h, int64_t *n, heap_entry e) {
    int64_t i = (*n)++;
    while (i > 0) {
        int64_t p = (i - 1) >> 1;
        if (!heap_less(e, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static heap_entry heap_pop(heap_entry *h, int64_t *n) {
    heap_entry top = h[0], last = h[--(*n)];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(h[c + 1], h[c])) c++;
        if (!heap_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}

/* Merge ids[0..n) (lens: byte lengths) in place; returns the new count or ZS_TOK_NO_MEMORY. */
static int64_t bpe_merge(const zs_bpe *m, uint32_t *ids, int32_t *lens, int64_t n) {
    if (n <= BPE_SCAN_MAX) {
        while (n > 1) {
            int64_t best = -1;
            uint64_t bv = NO_MERGE;
            for (int64_t i = 0; i + 1 < n; i++) {
                uint64_t v = find_merge(m, ids[i], ids[i + 1]);
                if (v < bv) { bv = v; best = i; }
            }
            if (best < 0) break;
            ids[best] = (uint32_t)(bv & 0xffffffffu);
            lens[best] += lens[best + 1];
            memmove(ids + best + 1, ids + best + 2, (size_t)(n - best - 2) * sizeof *ids);
            memmove(lens + best + 1, lens + best + 2, (size_t)(n - best - 2) * sizeof *lens);
            n--;
        }
        return n;
    }
    /* The heap never holds more than 2n entries: n - 1 at first, then each merge pops its
     * own entry and pushes at most two (stale entries are only ever popped). */
    char *mem = malloc((size_t)n * (3 * sizeof(int32_t) + 2 * sizeof(heap_entry)));
    if (!mem) return ZS_TOK_NO_MEMORY;
    heap_entry *heap = (heap_entry *)mem;
    int32_t *nxt = (int32_t *)(heap + 2 * n), *prev = nxt + n, *alive = prev + n;
    int64_t hn = 0;
    for (int64_t i = 0; i < n; i++) {
        nxt[i] = (int32_t)(i + 1); prev[i] = (int32_t)(i - 1); alive[i] = 1;
        if (i + 1 < n) {
            uint64_t v = find_merge(m, ids[i], ids[i + 1]);
            if (v != NO_MERGE) heap_push(heap, &hn, (heap_entry){v, (int32_t)i});
        }
    }
    while (hn > 0) {
        heap_entry e = heap_pop(heap, &hn);
        int64_t i = e.pos, j = nxt[i];
        if (!alive[i] || j >= n || find_merge(m, ids[i], ids[j]) != e.value) continue;
        ids[i] = (uint32_t)(e.value & 0xffffffffu);
        lens[i] += lens[j];
        alive[j] = 0;
        int64_t k = nxt[j];
        nxt[i] = (int32_t)k;
        if (k < n) prev[k] = (int32_t)i;
        int64_t p = prev[i];
        uint64_t v;
        if (p >= 0 && (v = find_merge(m, ids[p], ids[i])) != NO_MERGE)
            heap_push(heap, &hn, (heap_entry){v, (int32_t)p});
        if (k < n && (v = find_merge(m, ids[i], ids[k])) != NO_MERGE)
            heap_push(heap, &hn, (heap_entry){v, (int32_t)i});
    }
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!alive[i]) continue;
        ids[kept] = ids[i]; lens[kept] = lens[i]; kept++;
    }
    free(mem);
    return kept;
}

/* The end (exclusive, in characters) of GPT-2's pattern's match at character i of nc. */
static int64_t gpt2_piece_end(const uint32_t *cp, const uint8_t *cl, int64_t i, int64_t nc) {
    if (cp[i] == '\'' && i + 1 < nc) { /* 's 't 're 've 'm 'll 'd */
        uint32_t a = cp[i + 1], b = i + 2 < nc ? cp[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
            return i + 3;
    }
    int64_t j = i;
    if (cl[i] == CL_SPACE) {
        if (!(cp[i] == ' ' && i + 1 < nc && cl[i + 1] != CL_SPACE)) { /* \s+(?!\S) | \s+ */
            int64_t e = i + 1;
            while (e < nc && cl[e] == CL_SPACE) e++;
            if (e == nc) return e;
            return e - 1 > i ? e - 1 : i + 1;
        }
        j = i + 1; /* " ?" before a letter, number or other run */
    }
    int64_t e = j + 1;
    while (e < nc && cl[e] == cl[j]) e++;
    return e;
}

/* Pre-tokenise text[0..n) (UTF-8; the segment after the normaliser) with ByteLevel, merge each
 * piece and append each token to four Python lists: its id, its string (the vocabulary's), its
 * (start, end) in the original text (align: the original index of each character of text,
 * NULL for the identity; plus base) and its word index (word0 + the piece's). use_regex 0:
 * the segment is one piece. Returns the number of pieces, or a ZS_TOK_ code with nothing
 * appended; ZS_TOK_NO_MEMORY with a Python exception set if an object cannot be made (the
 * lists may then hold a part of the tokens). The GIL must be held (ctypes.PyDLL). */
int64_t zs_bpe_encode_py(const zs_bpe *m, const uint8_t *text, int64_t n, const int32_t *align,
                         int64_t base, int64_t word0, int64_t add_prefix_space,
                         int64_t use_regex, PyObject *ids, PyObject *tokens, PyObject *offsets,
                         PyObject *word_ids) {
    if (n <= 0) return 0;
    int64_t pre = add_prefix_space && text[0] != ' ';
    int64_t nb = n + pre;
    /* per byte: the byte, its character, the symbols and the tokens (at most one per byte);
     * per character: code point, class, first byte */
    size_t size = (size_t)(nb + 1) * (1 + 1 + 4 * sizeof(int32_t) + sizeof(uint32_t)) +
                  (size_t)nb * (2 * sizeof(uint32_t) + 5 * sizeof(int32_t));
    uint32_t *cp = malloc(size);
    if (!cp) return ZS_TOK_NO_MEMORY;
    uint32_t *sym = cp + nb + 1;
    int32_t *lens = (int32_t *)(sym + nb), *cidx = lens + nb, *cstart = cidx + nb + 1;
    int32_t *t_id = cstart + nb + 1, *t_s = t_id + nb, *t_e = t_s + nb, *t_w = t_e + nb;
    uint8_t *wb = (uint8_t *)(t_w + nb), *cl = wb + nb + 1;
    if (pre) wb[0] = ' ';
    memcpy(wb + pre, text, (size_t)n);
    int64_t nc = 0;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t lead = wb[b];
        if ((lead & 0xC0) != 0x80) { /* a character starts: decode it (valid UTF-8) */
            int64_t len = utf8_len(lead);
            uint32_t c = len == 1 ? lead : lead & (0xFF >> (len + 1));
            for (int64_t k = 1; k < len && b + k < nb; k++) c = (c << 6) | (wb[b + k] & 0x3F);
            cp[nc] = c;
            cl[nc] = (uint8_t)char_class(m, c);
            cstart[nc] = (int32_t)b;
            nc++;
        }
        cidx[b] = (int32_t)(nc - 1);
    }
    cstart[nc] = (int32_t)nb;
    int64_t count = 0, pieces = 0, rc = 0;
    for (int64_t ci = 0; ci < nc; pieces++) {
        int64_t ce = use_regex ? gpt2_piece_end(cp, cl, ci, nc) : nc;
        int64_t bs = cstart[ci], be = cstart[ce];
        for (int64_t b = bs; b < be; b++) { sym[b - bs] = m->byte_ids[wb[b]]; lens[b - bs] = 1; }
        int64_t k = bpe_merge(m, sym, lens, be - bs);
        if (k < 0) { rc = k; goto done; }
        for (int64_t t = 0, pos = bs; t < k; t++, count++) {
            int64_t a = cidx[pos], z = cidx[pos + lens[t] - 1];
            pos += lens[t];
            if (pre) { a = a ? a - 1 : 0; z = z ? z - 1 : 0; }
            t_id[count] = (int32_t)sym[t];
            t_s[count] = (int32_t)((align ? align[a] : a) + base);
            t_e[count] = (int32_t)((align ? align[z] : z) + 1 + base);
            t_w[count] = (int32_t)pieces;
        }
        ci = ce;
    }
    for (int64_t t = 0; t < count; t++) {
        uint32_t i = (uint32_t)t_id[t], o = m->offsets[i];
        if (append_new(ids, PyLong_FromLong(t_id[t])) < 0 ||
            append_new(tokens, PyUnicode_DecodeUTF8((const char *)m->pieces + o,
                                                    m->offsets[i + 1] - o, "strict")) < 0 ||
            append_new(offsets, pair(t_s[t], t_e[t])) < 0 ||
            append_new(word_ids, PyLong_FromLong((long)(word0 + t_w[t]))) < 0) {
            rc = ZS_TOK_NO_MEMORY;
            goto done;
        }
    }
    rc = pieces;
done:
    free(cp);
    return rc;
}
