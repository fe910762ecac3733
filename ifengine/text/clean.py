"""Caption cleaning as IF was trained with it.

The IF authors normalised LAION captions before T5 (urls, html, CJK, dashes, quotes, shop spam ...),
and both reference implementations apply the same rules twice at inference. We keep the rules as data,
in their original order, so that a cleaned prompt is the same string the reference would encode; the
tests compare against diffusers on a corpus. Without ftfy and bs4 installed, cleaning degrades to the
reference's fallback (lower-case and strip), with a warning.
"""

from __future__ import annotations

import bisect
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
_SCHEME_TAIL = r":(?:\/{1,3}|[a-zA-Z0-9%])"
_URL_SCHEMES = {r"\b((?:" + s + _SCHEME_TAIL + "|" + _URL_TLDS + "))": s for s in ("https?", "www")}
_EARLY = [
    (r"<person>", "person"),
    *((pattern, "") for pattern in _URL_SCHEMES),  # https?:// ..., then www: ...
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
_HOST_RUN = re.compile(r"[a-zA-Z0-9.\-]+")  # what the url rules' "[a-zA-Z0-9.\-]+" may cover
_TLD = re.compile(r"[.](?:com|co|ru|net|org|edu|gov|it)")
_TLD_TAIL = re.compile(r"[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)")
_BOUNDARY = re.compile(r"\b")


class _UrlRule:
    """``\\b(SCHEME:... | [a-zA-Z0-9.\\-]+[.]tld[\\w/-]*\\b/?(?!@))`` removed in one linear pass.

    The regex engine retries the host part from every word boundary of a long host-like run ("a.a.a...")
    and rescans the run each time. But the host part from a start p ends at the run's LAST "." whose tld and
    tail match after p (greedy ``+`` backtracks from the run's end), and what matches after that "." does
    not depend on p. So: find once, per run, its last such "."; a try at p then succeeds iff p is a word
    boundary of the run before it. The scheme branch is tried first at each position, as in the regex.
    """

    def __init__(self, scheme: str):
        self.scheme = re.compile(r"\b" + scheme + _SCHEME_TAIL)

    def sub(self, repl: str, text: str) -> str:
        ends = {m.start(): t.end() for m in _TLD.finditer(text) if (t := _TLD_TAIL.match(text, m.start()))}
        dots = list(ends)  # in text order
        runs = []  # (run start, the run's last "." with a matching tld and tail) in text order
        for run in _HOST_RUN.finditer(text) if dots else ():
            k = bisect.bisect_left(dots, run.end()) - 1
            if k >= 0 and dots[k] > run.start():
                runs.append((run.start(), dots[k]))
        return repl.join(self._kept(text, runs, ends))

    def _kept(self, text: str, runs, ends):
        """The text between matches, in order."""
        pos, i, scheme = 0, 0, self.scheme.search(text)
        while True:
            if scheme is not None and scheme.start() < pos:
                scheme = self.scheme.search(text, pos)
            host = None
            while i < len(runs) and (host := self._host_start(text, runs[i], pos)) is None:
                i += 1  # no try in this run can start at or after pos: pos only grows
            first = min((s for s in (scheme and scheme.start(), host) if s is not None), default=None)
            if first is None:
                yield text[pos:]
                return
            yield text[pos:first]
            took_scheme = scheme is not None and scheme.start() == first  # tried first at a position
            pos = scheme.end() if took_scheme else ends[runs[i][1]]

    @staticmethod
    def _host_start(text: str, run, pos: int) -> int | None:
        """The first word boundary in the run at or after ``pos`` and before its last tld "." (else None)."""
        start, last = run
        b = _BOUNDARY.search(text, max(start, pos))
        if b is not None and b.start() < last:
            return b.start()
        return None


# The reference's rules as written above, but five of them backtrack quadratically on long runs (100k
# characters of "a." took 23 s); each is replaced by a linear rule with the same matches. The equality is
# checked against the rules as written (tests/test_clean_linear.py, on captions and random strings).
_LINEAR = {
    # a whitespace run not followed by "." fails wherever inside it a try starts: start only at its first char
    r"\s+\.\s+": re.compile(r"(?<!\s)\s+\.\s+"),
    # the same for a non-space run without a file name; a match ends at the run's last ".png", so no match
    # ever starts inside a run
    r"[\S]+\." + _FILE_EXT: re.compile(r"(?<!\S)[\S]+\." + _FILE_EXT),
    # "\d+\.?\d*" is "\d+(?:\.\d*)?" without the ambiguity between \d+ and \d* (quadratic on digits); the
    # digits before the "x" must reach it, and after it the longest end before a \b wins in both
    r"\b\d+\.?\d*[xх×]\d+\.?\d*\b": re.compile(r"\b\d+(?:\.\d*)?[xх×]\d+(?:\.\d*)?\b"),
}


def _compile(rules):
    out = []
    for pattern, repl in rules:
        if pattern in _URL_SCHEMES:
            out.append((_UrlRule(_URL_SCHEMES[pattern]), repl))
        else:
            out.append((_LINEAR.get(pattern) or re.compile(pattern), repl))
    return out


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
