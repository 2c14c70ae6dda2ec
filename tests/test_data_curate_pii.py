"""Every planted e-mail, phone number and IPv4/IPv6 address is scrubbed; look-alikes stay."""

from __future__ import annotations

import numpy as np

from llm.data.curate.pii import PLACEHOLDERS, scrub


def planted_pii(rng) -> dict[str, list[str]]:
    names = ["john.doe", "a.b-c", "x_y+tag", "mary", "ops99"]
    domains = ["example.com", "mail.example.org", "uni-x.ac.uk", "corp.io"]
    emails = [f"{names[i % 5]}{i}@{domains[i % 4]}" for i in range(20)]
    phones = []
    for i in range(20):
        a, b, c = rng.integers(200, 999), rng.integers(200, 999), rng.integers(1000, 9999)
        phones.append([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"+1 {a} {b} {c}", f"{a}.{b}.{c}", f"+44 20 {b}{c % 10} {c}"][i % 5])
    ipv4 = [".".join(str(x) for x in rng.integers(0, 256, 4)) for _ in range(20)]
    ipv6 = []
    for i in range(20):
        groups = [f"{x:x}" for x in rng.integers(0, 65536, 8)]
        ipv6.append(":".join(groups) if i % 2 else f"2001:db8:{groups[0]}::{groups[1]}:{groups[2]}")
    return {"email": emails, "phone": phones, "ip": ipv4 + ipv6}


def test_every_planted_item_is_scrubbed():
    rng = np.random.default_rng(0)
    planted = planted_pii(rng)
    items = [(kind, value) for kind, values in planted.items() for value in values]
    order = rng.permutation(len(items))
    filler = ["the", "server", "contact", "at", "call", "host", "(see", "below)", "and", "then,"]
    parts = []
    for k in order:
        parts.append(" ".join(rng.choice(filler, 4)))
        kind, value = items[k]
        parts.append(value + rng.choice([",", ".", "", ")", ";"]))
    text = " ".join(parts)
    out, counts = scrub(text)
    for kind, value in items:
        assert value not in out, (kind, value)
    assert counts["email"] == 20 and counts["phone"] == 20 and counts["ipv4"] + counts["ipv6"] == 40
    assert out.count(PLACEHOLDERS["ip"]) == 40 and out.count(PLACEHOLDERS["email"]) == 20


def test_lookalikes_are_left_alone():
    text = (
        "released 2023-10-01 at 12:30:45, version 3.11.7, x[1::2] + y[::2], "
        "dict(a=1):b, @property, ratio 1.5, pi 3.14159, 255.255.255.256, isbn 978-3-16"
    )
    out, counts = scrub(text)
    assert out == text and sum(counts.values()) == 0
