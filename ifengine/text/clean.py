"""Caption cleaning as IF was trained with it.

The IF authors normalised LAION captions before T5 (urls, html, CJK, dashes, quotes, shop spam ...),
and both reference implementations apply the same rules twice at inference. We keep the rules as data,
in their original order, so that a cleaned prompt is the same string the reference would encode; the
tests compare against diffusers on a corpus. Without ftfy and bs4 installed, cleaning degrades to the
reference's fallback (lower-case and strip), with a warning.
"""

from __future__ import annotations

import html
import logging
import re
import urllib.parse

log = logging.getLogger(__name__)

_URL_TLDS = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)"
_BAD_PUNCT = r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\\/\*]{1,}"
_DASHES = (
    r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030"
    r"\u30A0\uFE31\uFE32\uFE58\uFE63\uFF0D]+"
)
_FILE_EXT = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"

# Rules before the html pass.
_EARLY = [
    (r"<person>", "person"),
    (r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|" + _URL_TLDS + "))", ""),
    (r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|" + _URL_TLDS + "))", ""),
]
# Rules between the html pass and the dash-heavy slug check.
_MIDDLE = [
    (r"@[\w\d]+\b", ""),
    (r"[\u31c0-\u9fff]+", ""),  # CJK strokes .. unified ideographs: one contiguous block
    (_DASHES, "-"),
    (r"[`´«»“”¨]", '"'),
    (r"[‘’]", "'"),
    (r"&quot;?", ""),
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # ip addresses
    (r"\d:\d\d\s+$", ""),  # article ids
    (r"\\n", " "),
    (r"#\d{1,3}\b", ""),
    (r"#\d{5,}\b", ""),
    (r"\b\d{6,}\b", ""),
    (r"[\S]+\." + _FILE_EXT, ""),  # file names
    (r"[\"\']{2,}", '"'),
    (r"[\.]{2,}", " "),
    (_BAD_PUNCT, " "),
    (r"\s+\.\s+", " "),
]
# Rules after ftfy and html unescaping.
_LATE = [
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),  # product codes: jc6640
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),
    (r"\b\d+[a-zA-Z]+\d+\b", ""),
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (r"\b" + _FILE_EXT + r"(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # sizes like 1920x1080
    (r"\b\s+\:\s+", ": "),
    (r"(\D[,\./])\b", r"\1 "),
    (r"\s+", " "),
    (r"^[\"\']([\w\W]+)[\"\']$", r"\1"),
    (r"^[\'\_,\-\:;]", ""),
    (r"[\'\_,\-\:\-\+]$", ""),
    (r"^\.\S+$", ""),
]
_SLUG_SEPARATORS = re.compile(r"(?:\-|\_)")


def _compile(rules):
    return [(re.compile(pattern), repl) for pattern, repl in rules]


_EARLY_C, _MIDDLE_C, _LATE_C = _compile(_EARLY), _compile(_MIDDLE), _compile(_LATE)


def _apply(rules, text: str) -> str:
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    return text


def cleaning_available() -> bool:
    try:
        import bs4  # noqa: F401
        import ftfy  # noqa: F401
    except ImportError:
        return False
    return True


def clean_once(caption: str) -> str:
    """One pass of the IF caption rules (needs ftfy and bs4)."""
    import ftfy
    from bs4 import BeautifulSoup

    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    text = _apply(_EARLY_C, text)
    text = BeautifulSoup(text, features="html.parser").text
    text = _apply(_MIDDLE_C, text)
    if len(_SLUG_SEPARATORS.findall(text)) > 3:  # this-is-my-cute-cat -> words
        text = _SLUG_SEPARATORS.sub(" ", text)
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _apply(_LATE_C, text).strip()


def preprocess(prompts: list[str], clean: bool) -> list[str]:
    """What the reference feeds T5: cleaned twice, or lower-cased and stripped."""
    if clean and not cleaning_available():
        log.warning("clean_caption needs `pip install ftfy beautifulsoup4`; using lower-case prompts instead")
        clean = False
    if clean:
        return [clean_once(clean_once(p)) for p in prompts]
    return [p.lower().strip() for p in prompts]
