"""Open-Sora's prompt cleaning before T5: the caption cleaning of PixArt-alpha / DeepFloyd
IF. The published weights saw cleaned captions, so every step is kept as it is."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _strip_html(text: str) -> str:
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def _unicode_fix(text: str) -> str:
    import ftfy

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _many_dashes(text: str) -> str:
    # Word-joining dashes and underscores are kept unless they look like a slug.
    return re.sub(r"[-_]", " ", text) if len(re.findall(r"[-_]", text)) > 3 else text


_CJK = "\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff"
_DASHES = ("\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030\u30a0"
           "\ufe31\ufe32\ufe58\ufe63\uff0d")
_DOMAIN = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)"
_MEDIA = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"

# Applied in order to the lower-cased, URL-unquoted caption; a callable is one whole step.
_CLEANING_STEPS: tuple = (
    (r"<person>", "person"),
    (rf"\b(?:https?:(?:/{{1,3}}|[a-zA-Z0-9%])|{_DOMAIN})", ""),  # URLs and bare domains
    (rf"\b(?:www:(?:/{{1,3}}|[a-zA-Z0-9%])|{_DOMAIN})", ""),
    _strip_html,
    (r"@[\w\d]+\b", ""),  # @handles
    (f"[{_CJK}]+", ""),
    (f"[{_DASHES}]+", "-"),
    (r"[`´«»“”¨]", '"'),
    (r"[‘’]", "'"),
    (r"&quot;?", ""),
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # IP addresses
    (r"\d:\d\d\s+$", ""),  # trailing article ids
    (r"\\n", " "),  # escaped newlines
    (r"#\d{1,3}\b", ""),
    (r"#\d{5,}\b", ""),
    (r"\b\d{6,}\b", ""),
    (rf"\S+\.{_MEDIA}", ""),  # file names
    (r"[\"']{2,}", '"'),
    (r"\.{2,}", " "),
    (r"[#®•©™&@·º½¾¿¡§~)(\]\[}{|\\/*]+", " "),
    (r"\s+\.\s+", " "),
    _many_dashes,
    _unicode_fix,
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),  # product codes: jc1234, a1b2c
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),
    (r"\b\d+[a-zA-Z]+\d+\b", ""),
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (rf"\b{_MEDIA}(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # sizes: 1920x1080
    (r"\b\s+:\s+", ": "),
    (r"(\D[,./])\b", r"\1 "),  # a space after punctuation
    (r"\s+", " "),
    str.strip,
    (r"^[\"']([\w\W]+)[\"']$", r"\1"),  # surrounding quotes
    (r"^[',_\-:;]", ""),
    (r"[',_\-:+]$", ""),
    (r"^\.", ""),
    str.strip,
)
_COMPILED_STEPS = tuple(step if callable(step) else (re.compile(step[0]), step[1]) for step in _CLEANING_STEPS)


def _clean_once(text: str) -> str:
    from urllib.parse import unquote_plus

    text = unquote_plus(str(text)).strip().lower()
    for step in _COMPILED_STEPS:
        text = step(text) if callable(step) else step[0].sub(step[1], text)
    return text


def clean_caption(text: str) -> str:
    """Open-Sora's prompt cleaning for T5 (lower-case; URLs, HTML, @handles, CJK, IPs,
    file names and stray symbols removed; dashes and quotes normalised), applied twice
    as Open-Sora does: the first pass can expose more to clean."""
    return _clean_once(_clean_once(text))
