from __future__ import annotations

import random

from fusefs.naming import map_names


def test_escapes_and_reserved() -> None:
    names = map_names(
        [
            ("a/b", "1"),
            ("nul\0x", "2"),
            (".", "3"),
            ("..", "4"),
            ("", "5"),
            ("50%", "6"),
            ("发票1.pdf", "7"),
        ]
    )
    assert names == ["a%2Fb", "nul%00x", "%2E", "%2E%2E", "%", "50%25", "发票1.pdf"]


def test_duplicates_smallest_id_keeps_name() -> None:
    names = map_names([("r.pdf", "Fb"), ("r.pdf", "Fa"), ("r.pdf", "enos-connect://x.pdf")])
    assert names[1] == "r.pdf"
    assert names[0] == "r~Fb.pdf"
    assert names[2] == "r~enos-connect:%2F%2Fx.pdf.pdf"


def test_long_names_are_capped() -> None:
    long_ascii = "a" * 300 + ".txt"
    long_cn = "测" * 100 + ".pdf"
    a, b = map_names([(long_ascii, "1"), (long_cn, "2")])
    for n in (a, b):
        assert len(n.encode()) <= 255
    assert a.endswith(".txt") and b.endswith(".pdf")
    assert "~" in a and "~" in b


def test_properties_on_random_names() -> None:
    rng = random.Random(3)
    alphabet = ["a", "/", "\0", ".", "%", "测", "é", " ", "~", "\udc80"]
    for _ in range(200):
        entries = [
            ("".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300))), f"id{i}")
            for i in range(rng.randrange(1, 12))
        ]
        entries += entries[: rng.randrange(0, 3)]  # duplicates (same id too)
        entries = [(n, f"{i}-{d}") for i, (n, d) in enumerate(entries)]
        out = map_names(entries)
        assert len(set(out)) == len(out)
        for n in out:
            assert n not in (".", "..", "")
            assert "/" not in n and "\0" not in n
            assert len(n.encode("utf-8", "surrogateescape")) <= 255
        rev = list(reversed(entries))
        assert list(reversed(map_names(rev))) == out
