"""PII scrubbing: e-mail addresses, phone numbers and IPv4/IPv6 addresses -> placeholders."""

from __future__ import annotations

import ipaddress
import re

PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP_ADDRESS>"}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)")
# Candidate IPv6 runs (hex groups and colons, optional dotted IPv4 tail), confirmed by ipaddress.
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
# International and North-American formats: optional +CC, an area code (in parentheses or not),
# a 3-4 digit group and a final 4-digit group (so dates like 2023-10-01 do not match).
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\) ?|\d{2,4}[ .-])\d{3,4}[ .-]\d{4}(?![\w-])")


# Cheap anchors: the strict patterns above only run in a window around each anchor hit, which
# is several times faster than scanning every position with their look-behinds.
_ANCHORS = {
    "email": (re.compile(r"@"), 64, 256),
    "ipv6": (re.compile(r":[0-9A-Fa-f]{0,4}:"), 40, 48),
    "ipv4": (re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"), 0, 2),
    "phone": (re.compile(r"[+(\d][\d ().+-]{6,22}\d"), 0, 2),
}


def _replace(text: str, kind: str, strict: re.Pattern, placeholder: str, counts: dict, check=None) -> str:
    anchor, left, right = _ANCHORS[kind]
    pieces, last, searched = [], 0, 0
    for hit in anchor.finditer(text):
        start = max(hit.start() - left, last, searched)
        end = min(len(text), hit.end() + right)
        if start >= end:
            continue
        for m in strict.finditer(text, start, end):
            if m.start() < last or (check is not None and not check(m.group(0))):
                continue
            pieces += [text[last : m.start()], placeholder]
            last = m.end()
            counts[kind] += 1
        searched = max(searched, hit.start())
    pieces.append(text[last:])
    return "".join(pieces)


def scrub(text: str) -> tuple[str, dict[str, int]]:
    """The text with PII replaced, and how many of each kind were replaced."""
    counts = {"email": 0, "ipv6": 0, "ipv4": 0, "phone": 0}
    text = _replace(text, "email", _EMAIL, PLACEHOLDERS["email"], counts)
    text = _replace(text, "ipv6", _IPV6, PLACEHOLDERS["ip"], counts, _is_ipv6)
    text = _replace(text, "ipv4", _IPV4, PLACEHOLDERS["ip"], counts)
    text = _replace(text, "phone", _PHONE, PLACEHOLDERS["phone"], counts, _is_phone)
    return text, counts


def _is_ipv6(text: str) -> bool:
    # Slices such as a[1::2] are not addresses: ask for 3 groups, or 2 with a 4-digit one.
    groups = [g for g in text.replace(".", ":").split(":") if g]
    if len(groups) < 3 and not (len(groups) == 2 and max(len(g) for g in groups) == 4):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_phone(text: str) -> bool:
    return 7 <= sum(c.isdigit() for c in text) <= 15
