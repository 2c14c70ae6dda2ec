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
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)\s?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{4}(?![\w-])")


def scrub(text: str) -> tuple[str, dict[str, int]]:
    """The text with PII replaced, and how many of each kind were replaced."""
    counts = {"email": 0, "ipv6": 0, "ipv4": 0, "phone": 0}

    def replace(kind: str, placeholder: str, check=None):
        def fn(match: re.Match) -> str:
            if check is not None and not check(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return placeholder

        return fn

    text = _EMAIL.sub(replace("email", PLACEHOLDERS["email"]), text)
    text = _IPV6.sub(replace("ipv6", PLACEHOLDERS["ip"], _is_ipv6), text)
    text = _IPV4.sub(replace("ipv4", PLACEHOLDERS["ip"]), text)
    text = _PHONE.sub(replace("phone", PLACEHOLDERS["phone"], _is_phone), text)
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
