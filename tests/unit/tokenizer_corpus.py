"""Texts the tokenizer parity tests run through both implementations.

Grouped by what they exercise; every group is there because it once was, or
easily could be, a place where a re-implementation of BERT tokenisation drifts
from `tokenizers` (offsets after normalisation changes length, Unicode tables,
truncation arithmetic). `corpus()` returns at least 200 strings.
"""

from __future__ import annotations

import itertools
import random

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "I can't believe it's not butter; they'd've known.",
    "Serverless inference means paying only for what you use.",
    "unaffable tokenization preprocessing reimplementation",
    "Dr. Smith's appointment is at 3:45 p.m. on Tuesday (room 12-B).",
    'She said: "Don\'t go!" — and then left...',
    "ALL CAPS SENTENCE WITH SHOUTING",
    "MiXeD cAsE wOrDs LiKe iPhone and eBay",
    "a",
    "",
    " ",
    "   leading and trailing spaces   ",
    "word",
    "!!!???...,,,;;;:::",
    "#hashtag @mention $100 50% ^caret &amp; *star* ~tilde~ `code` |pipe| <tag> {brace} [bracket]",
    "back\\slash and/forward/slash",
    "under_score and hyphen-ated and en–dash and em—dash",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "John Doe lives at 742 Evergreen Terrace, Springfield, OR 97477.",
    "Call me at +1 (555) 010-0199 or 555.010.0199 tomorrow.",
    "Her SSN is 123-45-6789 and her card 4111 1111 1111 1111.",
]
NUMBERS_URLS = [
    "3.14159 2,718 1e-10 0x1F 1/2 ½ ⅓ ² ³ ⁴ ₁ ① Ⅻ",
    "Version v1.2.3-rc.4+build.5 released 2024-11-22T10:00:00Z",
    "Visit https://example.com/path?query=1&b=two#frag or http://localhost:8080/",
    "mail me: first.last+tag@sub.example.co.uk, or admin@127.0.0.1",
    "ftp://user:pass@host:21/file.tar.gz",
    "$1,234.56 €99 £5 ¥1000 ₹500 ₿0.01",
    "IPv6 2001:db8::1 and MAC 00:1B:44:11:3A:B7",
    "C++ C# F# .NET node.js i18n l10n a11y",
]
ACCENTS = [
    "café naïve résumé coöperate façade jalapeño piñata",
    "Ñandú, ÅSTRÖM, Øresund, Æsir, Œuvre, Çà va?",
    "Crème brûlée à la française, s'il vous plaît",
    "Zürich Müller Größe Straße",
    "e\u0301 (combining acute) vs é (precomposed)",
    "a\u0300\u0301\u0302\u0303\u0304 stacked marks",
    "o\u0308\u0304 ȫ ǖ ǘ ǚ ǜ",
    "Ångström unit Å (U+212B) vs Å (U+00C5)",
    "Tiếng Việt có dấu: Người, được, những, thường",
    "Dziękuję, źdźbło, łódź, Świętokrzyskie",
    "Čeština: příliš žluťoučký kůň úpěl ďábelské ódy",
    "Română: știință, țară; Türkçe: ığüşöç",
    "x\u0316\u0301 y\u0301\u0316 reordered marks",
    "\u0301 leading combining mark",
    "ḉ\u0316 ǘ\u0316 \u1e09\u0316",
]
CASE_CHANGING = [
    "İstanbul İZMİR",
    "ﬁne ﬂour ﬀ ﬃ ﬄ ﬅ ﬆ ligatures",
    "ΣΊΣΥΦΟΣ ΟΔΥΣΣΕΥΣ final sigma Σ",
    "straße STRASSE ß ẞ",
    "ǅ ǈ ǋ ǲ titlecase digraphs",
    "ΐ ΰ ῒ ῢ ﬓ ﬔ",
    "Kelvin K (U+212A) Ohm Ω (U+2126)",
    "ᾼ ῌ ῼ ᾈ",
    "Ⓐ Ⓑ Ⓒ circled letters",
    "ＦＵＬＬＷＩＤＴＨ ｆｕｌｌｗｉｄｔｈ １２３",
    "Ꭰ Ꭱ Ꭲ ꭰ Cherokee",
    "ǰ ẖ ẗ ẘ ẙ ẚ",
    "İ" * 10,
]
CJK = [
    "我爱自然语言处理。",
    "北京是中国的首都，上海是最大的城市。",
    "日本語のテキストにはひらがなとカタカナと漢字が混ざっている。",
    "東京タワーは333メートルです",
    "한국어 텍스트 처리는 흥미롭습니다.",
    "안녕하세요 세계",
    "中文English混合text测试",
    "𠀀𠀁𪜀𫝀 astral ideographs",
    "豈 更 車 compatibility ideographs",
    "ｶﾀｶﾅ halfwidth katakana",
    "「引用」『二重』【括弧】〈角〉《書名》",
    "㐀㐁 extension A",
    "ㄱㄴㄷ ᄀᄁ jamo",
]
EMOJI = [
    "I love it 😍😍😍",
    "family 👩‍👩‍👧‍👦 and 👨‍💻 coder",
    "thumbs 👍🏻 👍🏼 👍🏽 👍🏾 👍🏿",
    "flags 🇺🇸 🇯🇵 🏳️‍🌈 🏴‍☠️",
    "keycap 1️⃣ #️⃣ ❤️ ☺️",
    "new emoji 🥰 🫠 🪿 🫨",
    "🤖robot🤖joined🤖words",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿 tag sequence",
]
SCRIPTS = [
    "مرحبا بالعالم، كيف حالك؟",
    "السَّلَامُ عَلَيْكُمْ",
    "שָׁלוֹם עוֹלָם",
    "שלום, מה שלומך?",
    "Привет, мир! Как дела?",
    "Ёлка ёжик ЙОД й",
    "नमस्ते दुनिया। हिन्दी पाठ",
    "क़ ख़ ग़ ज़ ड़ ढ़ फ़ य़",
    "สวัสดีชาวโลก ภาษาไทย",
    "Γειά σου Κόσμε",
    "ქართული ენა",
    "Հայերեն լեզու",
    "தமிழ் மொழி கொ கோ கௌ",
    "বাংলা ভাষা কো কৌ",
    "ᬓ᭄ᬱ Balinese ᬓ\u1b44\u1b34",
    "ትግርኛ አማርኛ",
    "ᠮᠣᠩᠭᠣᠯ Mongolian",
    "Ꭰ Cherokee ᏣᎳᎩ",
    "𝄞 𝅘𝅥𝅮 𝅗𝅥 music \U0001d15e\U0001d165",
    "mixed: English, Русский, العربية, 中文, हिन्दी, ไทย",
]
CONTROL = [
    "tab\tseparated\tvalues",
    "line one\nline two\r\nline three\rline four",
    "nul\x00char and replacement\ufffdchar",
    "bell\x07 backspace\x08 escape\x1b delete\x7f",
    "vertical\x0btab form\x0cfeed",
    "next\x85line sep\u2028para\u2029graph",
    "zero\u200bwidth\u200cnon\u200djoiner\u2060word\ufeffbom",
    "soft\u00adhyphen",
    "rtl\u200fmark ltr\u200emark \u202aembed\u202c",
    "nbsp\u00a0thin\u2009ideographic\u3000space\u202fnarrow",
    "private\ue000use\U000f0000chars",
    "unassigned\u0378\U0001fffe chars",
    "\x00\x00\x00",
    "\ufffd",
    "x\x01y\x02z",
    "\x1c\x1d\x1e\x1f file separators",
    "variation\ufe0fselector\ufe0e",
    "interlinear\ufff9anno\ufffb",
    "Arabic\u0600sign and \u061cletter mark",
]
LONG_WORDS = [
    "a" * 101,
    "a" * 100,
    "x" * 99 + "ä",
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "supercalifragilisticexpialidocious " * 5,
    "é" * 101,
    "İ" * 60,  # 60 characters, 120 after lowercasing
    "word " + "z" * 250 + " word",
    "https://example.com/" + "segment/" * 20,
]
SPECIAL_IN_TEXT = [
    "[CLS] text [SEP] more [SEP]",
    "[MASK] is a [MASK]",
    "[UNK][PAD][SEP][CLS][MASK]",
    "[sep] [cls] lowercase lookalikes",
    "[[SEP]] nested [S E P]",
    "x[SEP]y",
    "中[SEP]文",
    "[SEP]",
    # SentencePiece (XLM-R) specials; <mask> strips the spaces before it (lstrip)
    "<s> text </s></s> more </s>",
    "Paris is the <mask> of France.",
    "two spaces  <mask>  around, tab\t<mask>, start <mask>",
    "<mask><mask> <unk><pad></s><s>",
    "<s>",
    "x<mask>y <S> </ s>",
]


ENGLISH_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "it",
    "his",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "not",
    "first",
    "one",
    "their",
    "its",
    "new",
    "after",
    "but",
    "who",
    "they",
    "have",
    "her",
    "she",
    "two",
    "been",
    "other",
    "when",
    "there",
    "all",
    "during",
    "into",
    "school",
    "time",
    "may",
    "years",
    "more",
    "most",
    "only",
    "over",
    "city",
    "some",
    "world",
    "would",
    "where",
    "later",
    "up",
    "such",
    "used",
    "many",
    "can",
    "state",
    "about",
    "national",
    "out",
    "known",
    "university",
    "united",
    "then",
    "made",
    "don't",
    "e-mail",
    "3.14",
]
COMMON_WORDS = [*ENGLISH_WORDS, "café", "naïve", "東京", "İstanbul"]


def _long_texts() -> list[str]:
    rng = random.Random(1234)
    vocab = COMMON_WORDS
    out = []
    for n_words in (300, 1000, 3000, 6000):
        out.append(" ".join(rng.choice(vocab) for _ in range(n_words)))
    out.append(". ".join(ENGLISH * 40))
    out.append(" ".join(SCRIPTS * 20))
    out.append(" ".join(CJK * 30))
    return out


def corpus() -> list[str]:
    """All single texts; ≥ 200 strings."""
    base = (
        ENGLISH
        + NUMBERS_URLS
        + ACCENTS
        + CASE_CHANGING
        + CJK
        + EMOJI
        + SCRIPTS
        + CONTROL
        + LONG_WORDS
        + SPECIAL_IN_TEXT
    )
    # Each short text again, wrapped and joined, so words meet punctuation,
    # controls and other scripts at their edges.
    derived = [f"«{t}»" for t in base[:60]]
    derived += [f"{a}\t{b}" for a, b in zip(base[::2], base[1::2], strict=False)]
    derived += [t.upper() for t in ACCENTS + SCRIPTS]
    return base + derived + _long_texts()


def pairs() -> list[tuple[str, str]]:
    """Sentence pairs of every length relation (for longest_first truncation)."""
    texts = corpus()
    short = [t for t in texts if 0 < len(t) < 60]
    # Long, but not the multi-thousand-word ones: `tokenizers` builds every
    # combination of both sides' overflow windows, which explodes for pairs.
    long_ = [t for t in texts if 400 < len(t) < 8000]
    out = [(a, b) for a, b in zip(short[::3], short[1::3], strict=False)]
    out += [(a, b) for a, b in zip(long_, short, strict=False)]
    out += [(b, a) for a, b in zip(long_, short, strict=False)]
    out += [(a, a) for a in long_]
    out += [(a, b) for a, b in itertools.pairwise(long_)]
    out += [("", "x"), ("x", ""), ("", ""), ("[SEP]", "[CLS]")]
    return out
