"""The world generator (fusefs/emulator/world.py) and the name mapping rule (naming.py)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fusefs.emulator import world as world_mod
from fusefs.emulator.content import Content, md5_of_generated
from fusefs.emulator.naming import escape_name, name_hash, namemap, split_ext
from fusefs.emulator.world import MiB, generate, main

Json = dict[str, Any]


# ----------------------------------------------------------------------------- helpers


def tree_digest(root: Path) -> str:
    """sha256 over every path, kind and file content under root (mtimes ignored)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root).encode()
        h.update(b"D" + rel + b"\0")
        for name in sorted(filenames):
            h.update(b"F" + os.path.join(rel, name.encode()) + b"\0")
            h.update(hashlib.sha256(Path(dirpath, name).read_bytes()).digest())
    return h.hexdigest()


def load(world_dir: Path, name: str) -> Any:
    return json.loads((world_dir / name).read_text(encoding="utf-8"))


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def utf8_len(name: str) -> int:
    return len(name.encode("utf-8"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world-test") / "tiny"
    generate(out, 7, "tiny")
    return out


@pytest.fixture(scope="module")
def tiny_world(tiny: Path) -> Json:
    data: Json = load(tiny, "world.json")
    return data


@pytest.fixture(scope="module")
def tiny_manifest(tiny: Path) -> list[Json]:
    data: list[Json] = load(tiny, "manifest.json")
    return data


# ----------------------------------------------------------------------------- naming: table

LONG_A = "a" * 300 + ".txt"
LONG_X = "x" * 400
LONG_PCT = "%" * 100 + ".txt"
LONG_ZH = "a" + "文" * 100 + ".txt"
LONG_EXT17 = "y" * 280 + "." + "e" * 16  # ext of 17 bytes: not an extension
LONG_EXT16 = "y" * 280 + "." + "e" * 15  # ext of 16 bytes: kept


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("发票1.pdf", "发票1.pdf"),
        ("AI测试-勿删", "AI测试-勿删"),
        ("a/b.txt", "a%2Fb.txt"),
        ("nul\x00byte", "nul%00byte"),
        ("100%.txt", "100%25.txt"),
        ("%2F", "%252F"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("", "%"),
        ("%", "%25"),
        ("%2E", "%252E"),
        ("...", "..."),
        (".hidden", ".hidden"),
        ("bad\ud800x", "bad%uD800x"),
        ("\udc80", "%uDC80"),
        ("cafe\u0301", "cafe\u0301"),
        ("back\\slash\nnewline", "back\\slash\nnewline"),
        (LONG_A, "a" * 242 + "~" + name_hash(LONG_A) + ".txt"),
        (LONG_X, "x" * 246 + "~" + name_hash(LONG_X)),
        (LONG_PCT, "%25" * 80 + "~" + name_hash(LONG_PCT) + ".txt"),
        (LONG_ZH, "a" + "文" * 80 + "~" + name_hash(LONG_ZH) + ".txt"),
        (LONG_EXT17, (LONG_EXT17)[:246] + "~" + name_hash(LONG_EXT17)),
        (LONG_EXT16, "y" * 230 + "~" + name_hash(LONG_EXT16) + "." + "e" * 15),
        ("a" * 255, "a" * 255),
        ("文" * 85, "文" * 85),  # exactly 255 bytes
        ("文" * 86, "文" * 82 + "~" + name_hash("文" * 86)),
    ],
)
def test_namemap_single(remote: str, expected: str) -> None:
    assert namemap([(remote, "id1")]) == [expected]
    assert utf8_len(expected) <= 255


def test_namemap_hash_is_sha256_of_remote_name_with_surrogatepass() -> None:
    name = "\ud800" * 200
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    (mapped,) = namemap([(name, "x")])
    assert mapped.endswith("~" + digest)
    assert mapped.startswith("%uD800")
    assert utf8_len(mapped) <= 255
    assert len(mapped.split("~")[0]) % 6 == 0  # never cut inside a %uXXXX escape


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (
            [("report.pdf", "F2"), ("report.pdf", "F1"), ("report.pdf", "F3")],
            ["report~F2.pdf", "report.pdf", "report~F3.pdf"],
        ),
        ([("data", "b"), ("data", "a")], ["data~b", "data"]),
        ([(".hidden", "2"), (".hidden", "1")], [".hidden~2", ".hidden"]),
        ([("x.tar.gz", "2"), ("x.tar.gz", "1")], ["x.tar~2.gz", "x.tar.gz"]),
        ([("..", "2"), ("..", "1")], ["%2E%2E~2", "%2E%2E"]),
        ([("", "2"), ("", "1")], ["%~2", "%"]),
        ([(".", "1"), ("%2E", "2")], ["%2E", "%252E"]),
        ([("", "1"), ("%", "2")], ["%", "%25"]),
        ([("cafe\u0301", "1"), ("caf\u00e9", "2")], ["cafe\u0301", "caf\u00e9"]),
        ([("Report.pdf", "1"), ("report.pdf", "2")], ["Report.pdf", "report.pdf"]),
        # an id with "/" (EnOS fileUri) is escaped like a name
        (
            [("m.pdf", "enos-connect://b.pdf"), ("m.pdf", "enos-connect://a.pdf")],
            ["m~enos-connect:%2F%2Fb.pdf.pdf", "m.pdf"],
        ),
        # the "F" ids sort as plain strings, not numerically or case-insensitively
        ([("n", "Fa"), ("n", "FZ"), ("n", "F_")], ["n~Fa", "n", "n~F_"]),
    ],
)
def test_namemap_duplicates(pairs: list[tuple[str, str]], expected: list[str]) -> None:
    assert namemap(pairs) == expected


def test_namemap_long_duplicates_stay_distinct() -> None:
    name = "d" * 300 + ".log"
    h = name_hash(name)
    got = namemap([(name, "F2"), (name, "F1"), (name, "F3")])
    assert got[1] == "d" * 242 + "~" + h + ".log"
    assert got[0] == "d" * 239 + "~F2~" + h + ".log"
    assert got[2] == "d" * 239 + "~F3~" + h + ".log"
    assert all(utf8_len(n) == 255 for n in got)


def test_split_ext() -> None:
    assert split_ext("a.pdf") == ("a", ".pdf")
    assert split_ext(".bashrc") == (".bashrc", "")
    assert split_ext("a.") == ("a", ".")
    assert split_ext("noext") == ("noext", "")
    assert split_ext("x." + "e" * 15) == ("x", "." + "e" * 15)
    assert split_ext("x." + "e" * 16) == ("x." + "e" * 16, "")
    assert split_ext("x.文文文文文") == ("x", ".文文文文文")  # 16 bytes
    assert split_ext("x.文文文文文文") == ("x.文文文文文文", "")


def test_escape_is_injective_on_tricky_names() -> None:
    names = [
        "",
        "%",
        ".",
        "..",
        "%2E",
        "%2E%2E",
        "%25",
        "/",
        "%2F",
        "\x00",
        "%00",
        "\ud800",
        "%uD800",
    ]
    escaped = [escape_name(n) for n in names]
    assert len(set(escaped)) == len(names)


# ----------------------------------------------------------------------------- naming: property

_ALPHABET = [*"abcXYZ019.-_ %/\x00", "\u0301", "é", "文", "测", "📦", "\ud800", "\udfff"]


def _random_name(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.1:
        return rng.choice(["", ".", "..", "%", "%2E", "a.b", "..."])
    length = rng.choice([1, 3, 8, 40, 90, 200, 300])
    name = "".join(rng.choices(_ALPHABET, k=length))
    if rng.random() < 0.5:
        name += rng.choice([".txt", ".pdf", ".tar.gz", "." + "e" * 20, ".文件"])
    return name


def _random_dir(rng: random.Random) -> list[tuple[str, str]]:
    pool = [_random_name(rng) for _ in range(rng.randrange(1, 12))]
    # "~" is absent from names: the rule does not guard against a remote name that is literally
    # another entry's "<stem>~<id><ext>" (see docs/world.md)
    ids = rng.sample(range(10_000), rng.randrange(1, 30))
    id_forms = ["F{:05d}", "enos-connect://{:016x}.zip", "{:024x}"]
    return [(rng.choice(pool), rng.choice(id_forms).format(i)) for i in ids]


def test_namemap_properties_on_random_directories() -> None:
    rng = random.Random(12345)
    for _ in range(1500):
        pairs = _random_dir(rng)
        mapped = namemap(pairs)
        assert len(mapped) == len(pairs)
        assert len(set(mapped)) == len(mapped), pairs
        for name in mapped:
            assert 0 < utf8_len(name) <= 255
            assert "/" not in name and "\x00" not in name
            assert name not in (".", "..")
        shuffled = pairs[:]
        rng.shuffle(shuffled)
        again = dict(zip(shuffled, namemap(shuffled), strict=True))
        assert [again[p] for p in pairs] == mapped
        short = [(n, i) for (n, i), m in zip(pairs, mapped, strict=True) if "~" not in m]
        for (remote, _), name in zip(short, namemap(short), strict=True):
            assert name == escape_name(remote)  # steps 1-2 alone when nothing collides


# ----------------------------------------------------------------------------- generation


def test_tiny_is_fast_and_small(tmp_path: Path) -> None:
    start = time.perf_counter()
    generate(tmp_path / "w", 3, "tiny")
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    total = sum(p.stat().st_size for p in (tmp_path / "w").rglob("*") if p.is_file())
    assert total < 20 * MiB


def test_same_seed_same_bytes_and_regenerate_replaces(tmp_path: Path, tiny: Path) -> None:
    out = tmp_path / "again"
    generate(out, 7, "tiny")
    assert tree_digest(out) == tree_digest(tiny)
    (out / "stray.txt").write_text("left over")
    generate(out, 7, "tiny")  # into an existing world: replaced whole
    assert not (out / "stray.txt").exists()
    assert tree_digest(out) == tree_digest(tiny)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_different_seed_differs(tmp_path: Path, tiny: Path, tiny_world: Json) -> None:
    generate(tmp_path / "other", 8, "tiny")
    other = load(tmp_path / "other", "world.json")
    assert tree_digest(tmp_path / "other") != tree_digest(tiny)
    assert other["enos"]["orgs"][0]["orgId"] != tiny_world["enos"]["orgs"][0]["orgId"]
    assert other["credentials"] != tiny_world["credentials"]


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate(tmp_path, 1, "tiny")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_cli(tmp_path: Path, tiny: Path) -> None:
    assert main(["generate", str(tmp_path / "cli"), "--seed", "7", "--scale", "tiny"]) == 0
    assert tree_digest(tmp_path / "cli") == tree_digest(tiny)
    with pytest.raises(SystemExit):
        main(["generate", str(tmp_path / "x"), "--scale", "huge"])


def test_mtimes_are_fixed(tiny: Path) -> None:
    mtimes = {p.stat().st_mtime for p in (tiny / "expected").rglob("*")}
    assert mtimes == {world_mod.FIXED_MTIME}


def test_no_expected_big(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(world_mod, "EXPECTED_BIG_MIN", 8 * MiB)
    generate(tmp_path / "w", 7, "tiny", expected_big=False)
    manifest = load(tmp_path / "w", "manifest.json")
    skipped = [row for row in manifest if not row["in_expected"]]
    assert skipped and all(row["size"] >= 8 * MiB for row in skipped)
    for row in skipped:
        assert not (tmp_path / "w" / "expected" / row["path"]).exists()


# ----------------------------------------------------------------------------- expected view


def test_expected_files_match_manifest_and_contents(
    tiny: Path, tiny_world: Json, tiny_manifest: list[Json]
) -> None:
    root = tiny / "expected"
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    paths = [row["path"] for row in tiny_manifest]
    assert len(paths) == len(set(paths))
    assert on_disk == set(paths)
    for row in tiny_manifest:
        assert file_md5(root / row["path"]) == row["md5"], row["path"]
        assert (root / row["path"]).stat().st_size == row["size"]
    # every content of world.json is consistent with its bytes
    view = world_mod.expected_view(tiny_world)
    for item in view.files:
        c = item.content
        if c.blob is not None:
            data = (tiny / c.blob).read_bytes()
            assert len(data) == c.size and hashlib.md5(data).hexdigest() == c.md5
            assert c.size < world_mod.GENERATED_MIN
        else:
            assert c.key is not None and c.size >= world_mod.GENERATED_MIN
            assert md5_of_generated(c.key, c.size) == c.md5


def test_every_blob_is_used_and_every_content_is_valid(tiny: Path, tiny_world: Json) -> None:
    contents: list[Content] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            if "md5" in obj and "size" in obj and ("blob" in obj or "generated" in obj):
                contents.append(Content.from_json(obj))
                return
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    walk(tiny_world)
    blobs = Counter(c.blob for c in contents if c.blob)
    assert max(blobs.values()) == 1
    assert set(blobs) == {f"blobs/{p.name}" for p in (tiny / "blobs").iterdir()}
    for c in contents:
        if c.key is not None:
            assert c.key.startswith("7:")  # derived from the seed and the object id


def test_expected_layout(tiny: Path, tiny_world: Json, tiny_manifest: list[Json]) -> None:
    root = tiny / "expected"
    assert sorted(p.name for p in root.iterdir()) == ["enos", "iotda", "koodrive", "roma"]
    for org in tiny_world["enos"]["orgs"]:
        for asset in org["assets"]:
            base = root / "enos" / org["orgId"] / asset["assetId"]
            assert sorted(p.name for p in base.iterdir()) == ["files", "firmware"]
            if asset["productKey"] is None:
                assert not any((base / "firmware").iterdir())
    for c in tiny_world["koodrive"]["containers"]:
        assert (root / "koodrive" / c["containerId"]).is_dir()
    exports = sorted(p.name for p in (root / "iotda" / "exports").iterdir())
    success = [t for t in tiny_world["iotda"]["tasks"] if t["status"] == "Success"]
    assert exports == sorted(f"{t['export_task_id']}.zip" for t in success)
    (instance,) = tiny_world["roma"]["instances"]
    archives = sorted(
        p.name for p in (root / "roma" / instance["instanceId"] / "archives").iterdir()
    )
    done = [j for j in instance["jobs"] if j["status"] == "SUCCEEDED"]
    assert archives == sorted(f"{j['archive_id']}.zip" for j in done)
    for row in tiny_manifest:
        assert all(0 < utf8_len(part) <= 255 for part in row["path"].split("/"))


# ----------------------------------------------------------------------------- edge cases present


def test_edge_sizes(tiny_manifest: list[Json]) -> None:
    sizes = {row["size"] for row in tiny_manifest}
    for size in (0, 1, MiB - 1, MiB, MiB + 1, 8 * MiB):
        assert size in sizes
    by_provider = {(row["provider"], row["size"]) for row in tiny_manifest}
    assert ("enos", 0) in by_provider and ("enos", 1) in by_provider


def test_edge_names(tiny_world: Json, tiny_manifest: list[Json]) -> None:
    names = [e["fileName"] for c in tiny_world["koodrive"]["containers"] for e in c["entries"]]
    assert "发票1.pdf" in names and "AI测试-勿删" in names
    assert any("📦" in n for n in names) and any("\u0301" in n for n in names)
    for odd in ("a/b.txt", ".", "..", "", "%"):
        assert odd in names
    assert any("\x00" in n for n in names)
    assert any(0xD800 <= ord(ch) <= 0xDFFF for n in names for ch in n)
    assert any(utf8_len(n) > 255 and n.isascii() for n in names)
    assert any(utf8_len(n) > 255 and "文" in n for n in names)
    # duplicates in one folder: a 3-way one, and a file and a folder with the same name
    per_parent = Counter(
        (e["parentId"], e["fileName"])
        for c in tiny_world["koodrive"]["containers"]
        for e in c["entries"]
    )
    assert per_parent.most_common(1)[0][1] >= 3
    entries = [e for c in tiny_world["koodrive"]["containers"] for e in c["entries"]]
    data = [e for e in entries if e["fileName"] == "data"]
    assert {e["folder"] for e in data} == {True, False}
    assert len({e["parentId"] for e in data}) == 1
    paths = [row["path"] for row in tiny_manifest]
    leaves = {p.rsplit("/", 1)[-1] for p in paths}
    for mapped in ("a%2Fb.txt", "%2E", "%", "%25", "nul%00byte.txt", "bad%uDC80name.txt"):
        assert mapped in leaves
    assert any(p.split("/")[-2] == "%2E%2E" for p in paths)
    assert sum(1 for leaf in leaves if leaf.startswith("report~F")) == 2


def test_koodrive_shape(tiny: Path, tiny_world: Json) -> None:
    containers = tiny_world["koodrive"]["containers"]
    assert len(containers) >= 2
    assert any(c["groupId"] is None for c in containers)
    assert any(c["groupId"] for c in containers)
    for c in containers:
        assert c["containerId"].startswith("IAADfsBFCO6WtAtuA") and len(c["containerId"]) == 49
        ids = [e["id"] for e in c["entries"]]
        assert len(set(ids)) == len(ids)
        assert all(i.startswith("F") and len(i) == 33 for i in ids)
    root = tiny / "expected" / "koodrive"
    depth = max(len(p.relative_to(root).parts) - 1 for p in root.rglob("*") if p.is_dir())
    assert depth >= 6
    empty = [p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert len(empty) >= 2
    assert max(len(list(p.iterdir())) for p in root.rglob("*") if p.is_dir()) > 100


def test_enos_shape(tiny: Path, tiny_world: Json, tiny_manifest: list[Json]) -> None:
    orgs = tiny_world["enos"]["orgs"]
    assert len(orgs) == 2
    assert all(o["orgId"].startswith("o") and len(o["orgId"]) == 15 for o in orgs)
    assets = [a for o in orgs for a in o["assets"]]
    assert any(a["productKey"] and a["deviceKey"] for a in assets)
    assert any(a["productKey"] is None and a["deviceKey"] is None for a in assets)
    org = orgs[0]
    fw_counts = Counter(f["productKey"] for f in org["firmwares"])
    counts = sorted(fw_counts.get(p["productKey"], 0) for p in org["products"])
    assert counts[0] == 0 and 1 in counts and counts[-1] > 1
    types = {
        (kind, f["dataType"])
        for m in org["models"].values()
        for kind in ("attributes", "measurepoints")
        for f in m[kind].values()
    }
    assert {("attributes", "FILE"), ("attributes", "STRING"), ("measurepoints", "FILE")} <= types
    values = [v for a in assets for v in a["attributes"].values() if isinstance(v, str)]
    ftp = [v for v in values if v.startswith("ftp://")]
    assert ftp
    assert not [row for row in tiny_manifest if row["remote_id"] in ftp]
    points = [p["value"] for a in assets for p in a["measurepoints"].values()]
    assert any(isinstance(v, str) and v.startswith("enos-connect://") for v in points)
    # an asset with no files, and an asset with two files named alike
    root = tiny / "expected" / "enos"
    file_dirs = [root / o["orgId"] / a["assetId"] / "files" for o in orgs for a in o["assets"]]
    assert any(not any(d.iterdir()) for d in file_dirs)
    dup = Counter((f["assetId"], f["originalFilename"]) for o in orgs for f in o["files"].values())
    assert dup.most_common(1)[0][1] == 2
    assert any("~enos-connect:%2F%2F" in row["path"] for row in tiny_manifest)
    assert any(
        "%2F" in f["name"]["defaultValue"] or "/" in f["name"]["defaultValue"]
        for f in org["firmwares"]
    )
    # only files referenced by FILE-typed features are in the mount (not the orphan one)
    referenced = {row["remote_id"] for row in tiny_manifest if row["provider"] == "enos"}
    assert any(uri not in referenced for o in orgs for uri in o["files"])


def test_huawei_shape(tiny: Path, tiny_world: Json) -> None:
    tasks = tiny_world["iotda"]["tasks"]
    statuses = Counter(t["status"] for t in tasks)
    assert statuses["Success"] >= 12 and statuses["Processing"] and statuses["Failed"]
    ids = [t["export_task_id"] for t in tasks]
    assert ids == sorted(ids) and all(len(i) == 24 for i in ids)  # increasing with time
    for t in tasks:
        assert (t["content"] is None) == (t["status"] != "Success")
        if t["content"]:
            with zipfile.ZipFile(tiny / t["content"]["blob"]) as zf:
                (member,) = zf.namelist()
                assert member.endswith(".xls")
                assert zf.testzip() is None
    jobs = tiny_world["roma"]["instances"][0]["jobs"]
    assert {j["status"] for j in jobs} == {"SUCCEEDED", "RUNNING", "FAILED"}
    for j in jobs:
        assert (j["archive_id"] is None) == (j["status"] != "SUCCEEDED")
        assert (j["content"] is None) == (j["status"] != "SUCCEEDED")
    creds = tiny_world["credentials"]
    assert creds["enos"]["appKey"] and creds["iam"]["password"] and creds["koodrive"]["token"]
    assert creds["iam"]["projectId"] == tiny_world["iotda"]["projectId"]


@pytest.mark.slow
def test_demo(tmp_path: Path) -> None:
    start = time.perf_counter()
    generate(tmp_path / "demo", 1, "demo")
    assert time.perf_counter() - start < 10
    total = sum(p.stat().st_size for p in (tmp_path / "demo").rglob("*") if p.is_file())
    assert total < 100 * MiB
    manifest = load(tmp_path / "demo", "manifest.json")
    for row in manifest:
        assert file_md5(tmp_path / "demo" / "expected" / row["path"]) == row["md5"]
    assert any(row["path"].split("/")[-2] == "page-250" for row in manifest)
    world = load(tmp_path / "demo", "world.json")
    assert len(world["koodrive"]["containers"]) == 3
