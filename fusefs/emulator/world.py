"""Deterministic world generator: ``world.json``, ``blobs/``, ``expected/`` and ``manifest.json``.

``generate(DIR, seed, scale)`` writes the API-level state the emulator serves and the view the
mount must show (docs/world.md). Everything comes from ``random.Random(seed)`` and fixed base
times, so the same (seed, scale) gives byte-identical output.

The expected view is derived from the world dict alone (``expected_view``), with this package's
own implementation of the name mapping rule (``naming.namemap``): this module is an independent
witness and imports nothing from ``fusefs`` outside ``fusefs.emulator``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from fusefs.emulator.content import Content, generated_range, md5_of_generated
from fusefs.emulator.naming import namemap

Json = dict[str, Any]
T = TypeVar("T")

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
GENERATED_MIN = 8 * MiB  # objects at least this big get generated content, not a blob
EXPECTED_BIG_MIN = 256 * MiB  # --no-expected-big leaves these out of expected/
FIXED_MTIME = 1_700_000_000  # mtime of every file and directory of a world (irrelevant by design)

ENOS_BASE_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
KOODRIVE_BASE = datetime(2023, 12, 11, 9, 17, 25, 529_000, tzinfo=UTC)
IOTDA_BASE = datetime(2020, 8, 12, 12, 12, 12, 333_000, tzinfo=UTC)
ROMA_BASE = datetime(2019, 12, 6, 6, 49, 4, tzinfo=UTC)
IOTDA_ZIP_DATE = (2020, 8, 12, 12, 12, 12)
ROMA_ZIP_DATE = (2019, 12, 6, 6, 49, 4)

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_FILE_ID_CHARS = _ALNUM + "_-"


@dataclass(frozen=True)
class Scale:
    name: str
    koodrive_sizes: tuple[int, ...]  # personal space "sizes/"
    enos_sizes: tuple[int, ...]  # files of the second inverter (org 1)
    firmware_big: int  # size of the single firmware of the second inverter product
    pages: tuple[int, ...]  # personal space "page-<n>/" folders with n small files each
    koodrive_big: tuple[int, ...] = ()  # team space "big/"
    enos_big: tuple[int, ...] = ()  # files of the first pump (org 2)
    iotda: tuple[int, int, int] = (12, 1, 2)  # tasks: Success, Processing, Failed
    roma: tuple[int, int, int] = (2, 1, 1)  # jobs: SUCCEEDED, RUNNING, FAILED
    group_space: bool = False  # a third KooDrive container (a group space)
    zip_big: int = 0  # size of the payload of one bigger IoTDA and ROMA zip (0: none)


_TINY_SIZES = (0, 1, MiB - 1, MiB, MiB + 1, 8 * MiB)
_DEMO = Scale(
    name="demo",
    koodrive_sizes=(*_TINY_SIZES, 2 * MiB, 4 * MiB + 1, 8 * MiB - 1, 16 * MiB + 1),
    enos_sizes=(0, 1, 4 * KiB, MiB + 1, 4 * MiB, 8 * MiB + 1),
    firmware_big=MiB,
    pages=(101, 250, 1000),
    iotda=(20, 2, 3),
    roma=(3, 1, 1),
    group_space=True,
    zip_big=MiB + 3,
)
SCALES: dict[str, Scale] = {
    "tiny": Scale(
        name="tiny",
        koodrive_sizes=_TINY_SIZES,
        enos_sizes=(0, 1, 4 * KiB),
        firmware_big=64 * KiB,
        pages=(101, 1000),
    ),
    "demo": _DEMO,
    "bench": Scale(
        name="bench",
        koodrive_sizes=_DEMO.koodrive_sizes,
        enos_sizes=_DEMO.enos_sizes,
        firmware_big=_DEMO.firmware_big,
        pages=(101, 250, 1000, 10_000),
        koodrive_big=(256 * MiB - 1, 256 * MiB, GiB, GiB + 1),
        enos_big=(GiB + 3,),
        iotda=(40, 5, 5),
        roma=(5, 1, 2),
        group_space=True,
        zip_big=_DEMO.zip_big,
    ),
}


# ----------------------------------------------------------------------------- helpers


def size_label(size: int) -> str:
    """``0B``, ``1B``, ``4KiB``, ``1MiB-1``, ``1GiB+1``: a size near a power-of-two unit."""
    for unit, suffix in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        count = round(size / unit)
        delta = size - count * unit
        if count >= 1 and abs(delta) <= 4096:
            return f"{count}{suffix}" + (f"{delta:+d}" if delta else "")
    return f"{size}B"


def _text_bytes(label: str, size: int) -> bytes:
    line = f"{label}: line %06d of fusefs test data\n"
    parts: list[str] = []
    total = 0
    index = 0
    while total < size:
        parts.append(line % index)
        total += len(parts[-1])
        index += 1
    return "".join(parts).encode()[:size]


def _zip(members: list[tuple[str, bytes]], date_time: tuple[int, int, int, int, int, int]) -> bytes:
    """A byte-for-byte reproducible zip (stored, fixed dates and attributes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _ms_time(dt: datetime) -> str:
    """``2023-12-11T09:17:25.529Z`` (KooDrive, IoTDA)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _s_time(dt: datetime) -> str:
    """``2019-12-06T06:49:04Z`` (ROMA)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _i18n(default: str, zh: str | None = None) -> Json:
    return {"defaultValue": default, "i18nValue": {"zh_CN": zh} if zh else {}}


_SURROGATE = re.compile("[\ud800-\udfff]")


def dump_json(obj: object) -> bytes:
    """Sorted, indented UTF-8 JSON; lone surrogates (valid in JSON strings) as ``\\uXXXX``."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1)
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return (text + "\n").encode()


class _Gen:
    """The one source of randomness, ids and contents of a world being generated."""

    def __init__(self, root: Path, seed: int, scale: Scale, *, blobs: bool = True) -> None:
        self.root = root
        self.seed = seed
        self.scale = scale
        self.rng = random.Random(seed)
        self._blobs = 0
        self._ids: set[str] = set()
        if blobs:
            (root / "blobs").mkdir(parents=True, exist_ok=True)

    def unique(self, make: Callable[[], str]) -> str:
        while (value := make()) in self._ids:
            pass
        self._ids.add(value)
        return value

    def hex(self, n: int) -> str:
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    def chars(self, alphabet: str, n: int) -> str:
        return "".join(self.rng.choices(alphabet, k=n))

    def digits(self, n: int) -> str:
        return str(self.rng.randrange(10 ** (n - 1), 10**n))

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def blob(self, data: bytes) -> Json:
        self._blobs += 1
        name = f"blobs/{self._blobs:06d}.bin"
        (self.root / name).write_bytes(data)
        return Content(size=len(data), md5=_md5(data), blob=name).to_json()

    def content(self, oid: str, size: int, *, text: bool = False) -> Json:
        """Content of object ``oid``: generated when big, else a blob (text or random bytes)."""
        if size >= GENERATED_MIN:
            key = f"{self.seed}:{oid}"
            return Content(size=size, md5=md5_of_generated(key, size), key=key).to_json()
        return self.blob(_text_bytes(oid, size) if text else self.rng.randbytes(size))


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------------------------- credentials


def _access_keys(seed: int) -> tuple[str, str]:
    """The IAM user's AK/SK pair (20 and 40 characters, as Huawei's), derived from the seed
    without drawing from the generator, so everything else generated for a seed is unchanged."""
    digest = hashlib.sha256(f"fusefs-aksk:{seed}".encode()).hexdigest()
    return digest[:20].upper(), hashlib.sha256(digest.encode()).hexdigest()[:40]


def _credentials(g: _Gen, project_id: str) -> Json:
    access_key, secret_key = _access_keys(g.seed)
    return {
        "enos": {"appKey": g.uuid(), "appSecret": g.uuid()},
        "iam": {
            "user": "fusefs-demo",
            "password": "Fz-" + g.chars(_ALNUM, 16),
            "domain": "fusefs-domain",
            "project": "cn-north-4",
            "projectId": project_id,
            "accessKey": access_key,
            "secretKey": secret_key,
        },
        "koodrive": {
            "token": "Bearer " + g.hex(48),
            "appId": g.digits(16),
            "appSecret": g.hex(32),
            "userId": g.digits(18),
        },
    }


# ----------------------------------------------------------------------------- EnOS

_INV, _SITE, _METER, _PUMP = "fusefs_inverter", "fusefs_site", "fusefs_meter", "fusefs_pump"


def _model(model_id: str, name: str, attrs: dict[str, str], points: dict[str, str]) -> Json:
    def features(types: dict[str, str]) -> Json:
        return {k: {"identifier": k, "name": _i18n(k), "dataType": t} for k, t in types.items()}

    return {
        "modelId": model_id,
        "modelIdPath": f"/{model_id}",
        "name": _i18n(name),
        "attributes": features(attrs),
        "measurepoints": features(points),
    }


def _models() -> dict[str, Json]:
    docs = {f"doc{i:02d}": "FILE" for i in range(1, 25)}
    inverter_attrs = {
        **docs,
        "serialNo": "STRING",
        "backupLocation": "STRING",
        "datasheetUri": "STRING",
        "ratedPower": "DOUBLE",
    }
    inverter_points = {
        "snapshot": "FILE",
        "thermalImage": "FILE",
        "activePower": "DOUBLE",
        "status": "INT",
    }
    return {
        _INV: _model(_INV, "Inverter", inverter_attrs, inverter_points),
        _SITE: _model(
            _SITE,
            "Site",
            {"sitePlan": "FILE", "permit": "FILE", "address": "STRING"},
            {"dailyReport": "FILE", "irradiance": "DOUBLE"},
        ),
        _METER: _model(_METER, "Meter", {"serialNo": "STRING"}, {"energy": "DOUBLE"}),
        _PUMP: _model(
            _PUMP,
            "Pump",
            {"manual": "FILE", "location": "STRING"},
            {"vibration": "FILE", "recording": "FILE", "flow": "DOUBLE"},
        ),
    }


_TEXT_EXTS = (".txt", ".csv", ".log", ".json", ".md")

# (feature id, originalFilename, size) of the first inverter: every odd name EnOS can hold.
_ENOS_ODD_FILES: tuple[tuple[str, str, int], ...] = (
    ("doc01", "发票1.pdf", 2345),
    ("doc02", "manual.pdf", 5000),
    ("thermalImage", "manual.pdf", 4000),  # same originalFilename: a duplicate
    ("doc03", "AI测试-勿删.docx", 777),
    ("doc04", "☀️ panel photo.jpg", 3000),
    ("doc05", "Cafe\u0301 menu.txt", 300),
    ("doc06", "wiring/diagram.pdf", 1200),
    ("doc07", "nul\x00byte.bin", 10),
    ("doc08", ".", 11),
    ("doc09", "..", 12),
    ("doc10", "", 13),
    ("doc11", "50%.csv", 400),
    ("doc12", "manual-" + "x" * 300 + ".pdf", 600),
    ("doc13", "说明书" * 40 + ".pdf", 700),
    ("doc14", "empty.log", 0),
    ("doc15", "one-byte.txt", 1),
    ("snapshot", "snapshot 📷 2023-11-14.jpg", 2048),
)


class _Org:
    """One EnOS organisation under construction."""

    def __init__(self, g: _Gen) -> None:
        self.g = g
        self.org_id = "o" + g.digits(14)
        self.models = _models()
        self.products: list[Json] = []
        self.assets: list[Json] = []
        self.files: dict[str, Json] = {}
        self.firmwares: list[Json] = []
        self._clock = 0

    def ms(self) -> int:
        self._clock += 60_000 + self.g.rng.randrange(60_000)
        return ENOS_BASE_MS + self._clock

    def file_uri(self, filename: str) -> str:
        ext = filename.rsplit(".", 1)[-1] if "." in filename else ""
        suffix = f".{ext}" if re.fullmatch("[A-Za-z0-9]{1,8}", ext) else ""
        return self.g.unique(lambda: f"enos-connect://{self.g.hex(16)}{suffix}")

    def add_file(self, asset_id: str, filename: str, size: int) -> str:
        uri = self.file_uri(filename)
        self.files[uri] = {
            "originalFilename": filename,
            "category": "feature",
            "createTime": self.ms(),
            "assetId": asset_id,
            "content": self.g.content(uri, size, text=filename.endswith(_TEXT_EXTS)),
        }
        return uri

    def product(self, model_id: str, name: str, firmwares: list[tuple[str, str, str, int]]) -> str:
        key = self.g.unique(lambda: self.g.chars(_ALNUM, 8))
        self.products.append(
            {
                "productKey": key,
                "productName": _i18n(name),
                "modelId": model_id,
                "createTime": self.ms(),
            }
        )
        for fw_name, version, ext, size in firmwares:
            self.firmware(key, fw_name, version, ext, size)
        return key

    def firmware(self, product_key: str, name: str, version: str, ext: str, size: int) -> None:
        firmware_id = self.g.unique(lambda: self.g.hex(24))
        url = self.g.unique(lambda: f"enos-connect://{self.g.hex(16)}.{ext}")
        self.firmwares.append(
            {
                "firmwareId": firmware_id,
                "productKey": product_key,
                "name": _i18n(name),
                "version": version,
                "desc": None,
                "signMethod": "md5",
                "fileUrl": url,
                "createTime": self.ms(),
                "content": self.g.content(firmware_id, size),
            }
        )

    def asset(
        self,
        name: str,
        model_id: str,
        product_key: str | None,
        files: list[tuple[str, str, int]],
        attributes: Json | None = None,
        points: Json | None = None,
    ) -> str:
        """Add an asset; ``files`` are (feature id, originalFilename, size) of FILE features."""
        asset_id = self.g.unique(lambda: self.g.chars(_ALNUM, 8))
        attrs: Json = dict(attributes or {})
        latest: Json = {k: {"time": self.ms(), "value": v} for k, v in (points or {}).items()}
        model = self.models[model_id]
        for feature, filename, size in files:
            uri = self.add_file(asset_id, filename, size)
            if feature in model["measurepoints"]:
                latest[feature] = {"time": self.ms(), "value": uri}
            else:
                attrs[feature] = uri
        self.assets.append(
            {
                "assetId": asset_id,
                "name": _i18n(name),
                "modelId": model_id,
                "createTime": self.ms(),
                "timezone": "+08:00",
                "productKey": product_key,
                "deviceKey": ("dk" + self.g.chars(_ALNUM, 10)) if product_key else None,
                "attributes": attrs,
                "measurepoints": latest,
            }
        )
        return asset_id

    def to_json(self) -> Json:
        return {
            "orgId": self.org_id,
            "models": self.models,
            "products": self.products,
            "assets": self.assets,
            "files": self.files,
            "firmwares": self.firmwares,
        }


def _enos_org1(g: _Gen) -> Json:
    org = _Org(g)
    small = 48 * KiB
    inv = org.product(
        _INV,
        "Inverter 5K",
        [
            ("主控固件", "1.0", "bin", small),
            ("fw/beta", "2.0-rc1", "zip", small),
            ("100% safe", "3.0", "zip", small),
            ("..", "0", "bin", 0),
            ("🔥 hotfix", "1.0.1", "zip", small),
            ("MCU", "1.0", "bin", small),
            ("MCU", "1.0", "bin", small + 1),  # same name and version: a duplicate
        ],
    )
    inv2 = org.product(
        _INV, "Inverter 10K", [("Inverter2 FW", "1.2.3", "zip", g.scale.firmware_big)]
    )
    meter = org.product(_METER, "Meter", [])
    inv1_id = org.asset(
        "Inverter A1",
        _INV,
        inv,
        list(_ENOS_ODD_FILES),
        attributes={
            "serialNo": "SN-" + g.digits(10),
            "backupLocation": "ftp://backup.example.com/inverters/A1/manual.pdf",
            "datasheetUri": f"enos-connect://{g.hex(16)}.pdf",  # a STRING: not a file
            "ratedPower": 5.5,
            "doc20": None,  # a FILE attribute without a value
        },
        points={"activePower": 3.25, "status": 1},
    )
    org.add_file(inv1_id, "orphan-not-referenced.txt", 100)  # no feature points at it
    sizes = [
        (f"doc{i + 1:02d}", f"{size_label(s)}.bin", s) for i, s in enumerate(g.scale.enos_sizes)
    ]
    org.asset("Inverter A2", _INV, inv2, sizes, points={"activePower": 7.5})
    org.asset("Meter A3", _METER, meter, [], attributes={"serialNo": "M-" + g.digits(8)})
    org.asset(
        "Site A4",
        _SITE,
        None,
        [("sitePlan", "场站平面图.dwg", 30_000), ("dailyReport", "daily-report.csv", 900)],
        attributes={"address": "上海市 1 号", "permit": None},
        points={"irradiance": 812.5},
    )
    org.asset("Site A5", _SITE, None, [], attributes={"address": "nowhere"})
    return org.to_json()


def _enos_org2(g: _Gen) -> Json:
    org = _Org(g)
    pump = org.product(
        _PUMP, "Pump P1", [("pump", "1.0", "bin", 20 * KiB), ("pump", "1.1", "bin", 21 * KiB)]
    )
    big = [("recording", f"recording-{size_label(s)}.bin", s) for s in g.scale.enos_big]
    org.asset(
        "Pump B1",
        _PUMP,
        pump,
        [("manual", "泵 manual.pdf", 9000), ("vibration", "vibration.csv", 1500), *big],
        attributes={"location": "hall 2"},
        points={"flow": 1.5},
    )
    org.asset("Pump B2", _PUMP, pump, [], points={"flow": 0.0})
    org.asset("Site B3", _SITE, None, [("sitePlan", "布局.png", 5000)])
    return org.to_json()


def _enos(g: _Gen) -> Json:
    return {"orgs": [_enos_org1(g), _enos_org2(g)]}


# ----------------------------------------------------------------------------- KooDrive


class _Drive:
    """One KooDrive container under construction."""

    def __init__(self, g: _Gen) -> None:
        self.g = g
        self.container_id = g.unique(lambda: "IAADfsBFCO6WtAtuA" + g.hex(32))
        self.entries: list[Json] = []
        self._clock = KOODRIVE_BASE

    def _add(
        self,
        parent: str,
        name: str,
        folder: bool,
        size: int,
        text: bool,
        content: Json | None = None,
    ) -> str:
        file_id = self.g.unique(lambda: "F" + self.g.chars(_FILE_ID_CHARS, 32))
        self._clock += timedelta(seconds=self.g.rng.randrange(1, 600), milliseconds=1)
        edited = self._clock + timedelta(milliseconds=self.g.rng.randrange(0, 3_600_000))
        if content is None and not folder:
            content = self.g.content(file_id, size, text=text)
        self.entries.append(
            {
                "id": file_id,
                "parentId": parent,
                "fileName": name,
                "folder": folder,
                "createdTime": _ms_time(self._clock),
                "editedTime": _ms_time(edited),
                "content": content,
            }
        )
        return file_id

    def folder(self, parent: str, name: str) -> str:
        return self._add(parent, name, True, 0, False)

    def file(self, parent: str, name: str, size: int | None = None) -> str:
        if size is None:
            size = self.g.rng.randrange(1, 4096)
        return self._add(parent, name, False, size, name.endswith(_TEXT_EXTS))

    def to_json(self, name: str, kind: str, group_id: str | None) -> Json:
        return {
            "containerId": self.container_id,
            "groupId": group_id,
            "type": kind,
            "name": name,
            "entries": self.entries,
        }


# Remote names that cannot be file names as they are, or break naive code.
_ODD_NAMES: tuple[str, ...] = (
    "发票1.pdf",
    "📦 package 🚀.bin",
    "cafe\u0301.txt",  # combining accent (NFD) ...
    "caf\u00e9.txt",  # ... and the precomposed form: two different names
    "a/b.txt",
    "nul\x00byte.txt",
    ".",
    "%2E",  # looks like the escape of "."
    "",
    "%",
    "100%.txt",
    "%2F.txt",
    "a" * 300 + ".txt",
    "a" * 300 + "b.txt",  # same cut stem as the one above, another hash
    "长文件名测试" * 20 + ".pdf",
    "a" + "文" * 100 + ".txt",  # the cut falls inside a multi-byte character
    "%" * 100 + ".txt",  # the cut must not split a %25
    "x" * 400,
    "y" * 280 + ".extension-too-long",
    "bad\udc80name.txt",  # a lone surrogate
    "Report.pdf",
    " leading space.txt",
    "trailing space ",
    "line\nbreak.txt",
    "tab\there.txt",
    "back\\slash.txt",
    "-rf",
    'win*?<>|:".txt',
    ".hidden",
    "...",
    "noext",
    "archive.tar.gz",
    "~tilde~.txt",
)


def _odd_names(d: _Drive, parent: str) -> None:
    for name in _ODD_NAMES:
        d.file(parent, name)
    for _ in range(3):
        d.file(parent, "report.pdf")  # a 3-way duplicate
    for _ in range(2):
        d.file(parent, "d" * 300 + ".log")  # a duplicate that is also too long
    d.file(parent, "data")
    data = d.folder(parent, "data")  # a file and a folder with the same name
    d.file(data, "inside-data.txt")
    dotdot = d.folder(parent, "..")
    d.file(dotdot, "inside-dotdot.txt")
    long_folder = d.folder(parent, "folder-" + "f" * 300)
    d.file(long_folder, "inside-long-folder.txt")


def _personal_space(g: _Gen) -> Json:
    d = _Drive(g)
    top = d.folder("root", "AI测试-勿删")
    d.file(top, "说明.txt")
    parent = top
    for level in ("level-2", "level-3", "第四层", "level 5", "level-6", "level-7"):
        parent = d.folder(parent, level)
    d.file(parent, "deep.txt")  # depth 7
    d.folder("root", "empty folder")
    d.folder(d.folder("root", "空文件夹"), "empty inside empty")
    _odd_names(d, d.folder("root", "edge-names"))
    sizes = d.folder("root", "sizes")
    for size in g.scale.koodrive_sizes:
        d.file(sizes, f"{size_label(size)}.bin", size)
    for index in range(2):  # two folders with the same name, both with contents
        d.file(d.folder("root", "photos"), f"IMG_{index:04d}.jpg")
    for count in g.scale.pages:
        page = d.folder("root", f"page-{count}")
        for index in range(count):
            d.file(page, f"item-{index:05d}.txt", g.rng.randrange(0, 200))
    d.file("root", "readme.txt", 700)
    return d.to_json("个人空间", "1", None)


def _team_space(g: _Gen) -> Json:
    d = _Drive(g)
    docs = d.folder("root", "共享文档")
    d.file(docs, "发票1.pdf")
    d.file(docs, "发票1.pdf")
    d.file(docs, "budget 2024.xlsx")
    path = d.folder(d.folder(d.folder("root", "批量任务测试"), "007"), "001")
    d.file(path, "任务结果.xlsx")
    d.folder("root", "empty")
    d.file("root", "AI测试-勿删")  # a file here, a folder in the personal space
    if g.scale.koodrive_big:
        big = d.folder("root", "big")
        for size in g.scale.koodrive_big:
            d.file(big, f"{size_label(size)}.bin", size)
    return d.to_json("研发部", "0", g.digits(19))


def _group_space(g: _Gen) -> Json:
    d = _Drive(g)
    project = d.folder("root", "project ✨")
    d.file(project, "plan.md")
    d.file(project, "data.csv")
    d.file("root", "notes.txt")
    return d.to_json("fusefs group", "2", g.digits(19))


def _koodrive(g: _Gen) -> Json:
    containers = [_personal_space(g), _team_space(g)]
    if g.scale.group_space:
        containers.append(_group_space(g))
    return {"containers": containers}


# ----------------------------------------------------------------------------- IoTDA


def _xls_bytes(g: _Gen, rows: int, min_size: int = 0) -> bytes:
    lines = ["device_id\tnode_id\tstatus\tmessage"]
    total = 0
    index = 0
    while index < rows or total < min_size:
        line = f"{g.hex(24)}\tnode-{index:05d}\t{g.rng.choice(['SUCCESS', 'FAIL'])}\t{g.hex(16)}"
        lines.append(line)
        total += len(line) + 1
        index += 1
    return ("\n".join(lines) + "\n").encode()


def _iotda_task(g: _Gen, when: datetime, status: str, payload: int) -> Json:
    task_id = g.unique(lambda: f"{int(when.timestamp()):08x}{g.hex(16)}")
    count = g.rng.randrange(3, 40)
    content = None
    if status == "Success":
        xls = _xls_bytes(g, count, payload)
        content = g.blob(_zip([(f"BatchTask_{task_id}.xls", xls)], IOTDA_ZIP_DATE))
    done = status != "Processing"
    return {
        "export_task_id": task_id,
        "resource_type": "BatchTask",
        "resource_condition": {"task_id": g.hex(24)},
        "export_format": "xls",
        "status": status,
        "export_count": count,
        "progress": 100 if done else g.rng.randrange(1, 100),
        "create_time": _ms_time(when),
        "end_time": _ms_time(when + timedelta(seconds=g.rng.randrange(5, 300))) if done else None,
        "app_type": "GLOBAL",
        "app_id": g.chars(_ALNUM, 28),
        "content": content,
    }


def _iotda(g: _Gen, project_id: str) -> Json:
    success, processing, failed = g.scale.iotda
    statuses = ["Success"] * success + ["Failed"] * failed
    g.rng.shuffle(statuses)
    statuses += ["Processing"] * processing  # the newest ones are still running
    tasks = []
    when = IOTDA_BASE
    for index, status in enumerate(statuses):
        when += timedelta(seconds=g.rng.randrange(600, 7200), milliseconds=g.rng.randrange(1000))
        payload = g.scale.zip_big if index == 0 and status == "Success" else 0
        tasks.append(_iotda_task(g, when, status, payload))
    return {"projectId": project_id, "instanceId": g.uuid(), "tasks": tasks}


# ----------------------------------------------------------------------------- ROMA


def _roma_job(g: _Gen, when: datetime, status: str, payload: int) -> Json:
    archive_id = content = None
    if status == "SUCCEEDED":
        archive_id = g.unique(lambda: g.hex(32))
        export = {"apps": [{"id": g.uuid()} for _ in range(2)], "tasks": [{"id": g.uuid()}]}
        members = [("export.json", dump_json(export))]
        if payload:
            members.append(("attachments/data.bin", g.rng.randbytes(payload)))
        content = g.blob(_zip(members, ROMA_ZIP_DATE))
    end = _s_time(when + timedelta(seconds=g.rng.randrange(10, 120)))
    progress = {"SUCCEEDED": 1.0, "RUNNING": 0.4, "FAILED": 0.6}[status]
    return {
        "job_id": g.unique(lambda: g.hex(32)),
        "type": "exportAsset",
        "status": status,
        "archive_id": archive_id,
        "progress_percent": progress,
        "begin_time": _s_time(when),
        "end_time": None if status == "RUNNING" else end,
        "content": content,
    }


def _roma(g: _Gen, project_id: str) -> Json:
    succeeded, running, failed = g.scale.roma
    statuses = ["SUCCEEDED"] * succeeded + ["FAILED"] * failed + ["RUNNING"] * running
    jobs = []
    when = ROMA_BASE
    for index, status in enumerate(statuses):
        when += timedelta(seconds=g.rng.randrange(60, 3600))
        jobs.append(_roma_job(g, when, status, g.scale.zip_big if index == 0 else 0))
    return {"projectId": project_id, "instances": [{"instanceId": g.uuid(), "jobs": jobs}]}


def build_world(g: _Gen) -> Json:
    project_id = g.hex(32)
    return {
        "format": 1,
        "seed": g.seed,
        "scale": g.scale.name,
        "credentials": _credentials(g, project_id),
        "enos": _enos(g),
        "koodrive": _koodrive(g),
        "iotda": _iotda(g, project_id),
        "roma": _roma(g, project_id),
    }


# ----------------------------------------------------------------------------- expected view


@dataclass(frozen=True)
class ExpectedFile:
    path: str  # relative to expected/, "/"-separated, every component mapped
    content: Content
    provider: str
    remote_id: str
    remote_name: str


@dataclass
class ExpectedView:
    dirs: list[str] = field(default_factory=list)
    files: list[ExpectedFile] = field(default_factory=list)

    def add_file(self, path: str, content: Json, provider: str, rid: str, name: str) -> None:
        self.files.append(ExpectedFile(path, Content.from_json(content), provider, rid, name))


def _mapped(items: list[tuple[str, str, T]]) -> Iterator[tuple[str, T]]:
    """(mapped name, payload) for the (remote name, remote id, payload) of one directory."""
    names = namemap([(name, rid) for name, rid, _ in items])
    return zip(names, (payload for _, _, payload in items), strict=True)


def asset_file_uris(org: Json, asset: Json) -> list[str]:
    """fileUris of the FILE-typed attributes and measure points of an asset (first seen order)."""
    model = org["models"][asset["modelId"]]
    values = [(model["attributes"], k, v) for k, v in asset["attributes"].items()]
    values += [(model["measurepoints"], k, p["value"]) for k, p in asset["measurepoints"].items()]
    uris: list[str] = []
    for features, key, value in values:
        is_file = features.get(key, {}).get("dataType") == "FILE"
        if is_file and isinstance(value, str) and value.startswith("enos-connect://"):
            if value not in org["files"]:
                raise ValueError(f"asset {asset['assetId']}: dangling {value}")
            if value not in uris:
                uris.append(value)
    return uris


def firmware_file_name(firmware: Json) -> str:
    url: str = firmware["fileUrl"]
    last = url.rsplit("/", 1)[-1]
    ext = last[last.rfind(".") :] if "." in last else ""
    return f"{firmware['name']['defaultValue']}-{firmware['version']}{ext}"


def _view_enos(view: ExpectedView, enos: Json) -> None:
    view.dirs.append("enos")
    for org_name, org in _mapped([(o["orgId"], o["orgId"], o) for o in enos["orgs"]]):
        view.dirs.append(f"enos/{org_name}")
        for asset_name, asset in _mapped([(a["assetId"], a["assetId"], a) for a in org["assets"]]):
            base = f"enos/{org_name}/{asset_name}"
            view.dirs += [base, f"{base}/files", f"{base}/firmware"]
            files = [
                (org["files"][u]["originalFilename"], u, u) for u in asset_file_uris(org, asset)
            ]
            for name, uri in _mapped(files):
                info = org["files"][uri]
                view.add_file(
                    f"{base}/files/{name}", info["content"], "enos", uri, info["originalFilename"]
                )
            if asset["productKey"] is None:
                continue
            fws = [f for f in org["firmwares"] if f["productKey"] == asset["productKey"]]
            for name, fw in _mapped([(firmware_file_name(f), f["firmwareId"], f) for f in fws]):
                view.add_file(
                    f"{base}/firmware/{name}",
                    fw["content"],
                    "enos",
                    fw["firmwareId"],
                    firmware_file_name(fw),
                )


def _view_koodrive(view: ExpectedView, koodrive: Json) -> None:
    view.dirs.append("koodrive")
    containers = koodrive["containers"]
    for cname, container in _mapped([(c["containerId"], c["containerId"], c) for c in containers]):
        children: dict[str, list[Json]] = {}
        for entry in container["entries"]:
            children.setdefault(entry["parentId"], []).append(entry)
        stack = [("root", f"koodrive/{cname}")]
        while stack:
            parent, path = stack.pop()
            view.dirs.append(path)
            kids = children.get(parent, [])
            for name, entry in _mapped([(e["fileName"], e["id"], e) for e in kids]):
                if entry["folder"]:
                    stack.append((entry["id"], f"{path}/{name}"))
                else:
                    view.add_file(
                        f"{path}/{name}",
                        entry["content"],
                        "koodrive",
                        entry["id"],
                        entry["fileName"],
                    )


def _view_huawei(view: ExpectedView, iotda: Json, roma: Json) -> None:
    view.dirs += ["iotda", "iotda/exports", "roma"]
    done = [t for t in iotda["tasks"] if t["status"] == "Success"]
    for name, task in _mapped(
        [(f"{t['export_task_id']}.zip", t["export_task_id"], t) for t in done]
    ):
        tid = task["export_task_id"]
        view.add_file(f"iotda/exports/{name}", task["content"], "iotda", tid, f"{tid}.zip")
    instances = roma["instances"]
    for iname, instance in _mapped([(i["instanceId"], i["instanceId"], i) for i in instances]):
        view.dirs += [f"roma/{iname}", f"roma/{iname}/archives"]
        jobs = [j for j in instance["jobs"] if j["status"] == "SUCCEEDED" and j["archive_id"]]
        for name, job in _mapped([(f"{j['archive_id']}.zip", j["archive_id"], j) for j in jobs]):
            aid = job["archive_id"]
            view.add_file(
                f"roma/{iname}/archives/{name}", job["content"], "roma", aid, f"{aid}.zip"
            )


def expected_view(world: Json) -> ExpectedView:
    """The mount view of a world: every directory and every file (docs/world.md layout)."""
    view = ExpectedView()
    _view_enos(view, world["enos"])
    _view_koodrive(view, world["koodrive"])
    _view_huawei(view, world["iotda"], world["roma"])
    return view


def _write_content(world_dir: Path, content: Content, dest: Path) -> None:
    if content.blob is not None:
        shutil.copyfile(world_dir / content.blob, dest)
        return
    assert content.key is not None
    with open(dest, "wb") as f:
        for part in generated_range(content.key, 0, content.size):
            f.write(part)


def _write_expected(world_dir: Path, view: ExpectedView, expected_big: bool) -> list[Json]:
    """Write expected/ and return the manifest rows."""
    root = world_dir / "expected"
    root.mkdir()
    for path in view.dirs:
        (root / path).mkdir(parents=True, exist_ok=True)
    manifest: list[Json] = []
    for item in view.files:
        written = expected_big or item.content.size < EXPECTED_BIG_MIN
        if written:
            _write_content(world_dir, item.content, root / item.path)
        manifest.append(
            {
                "path": item.path,
                "size": item.content.size,
                "md5": item.content.md5,
                "provider": item.provider,
                "remote_id": item.remote_id,
                "remote_name": item.remote_name,
                "in_expected": written,
            }
        )
    manifest.sort(key=lambda row: row["path"])
    return manifest


# ----------------------------------------------------------------------------- generate


def _fix_mtimes(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), (FIXED_MTIME, FIXED_MTIME))
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if any(out_dir.iterdir()) and not (out_dir / "world.json").is_file():
        raise FileExistsError(f"{out_dir} is not empty and holds no world.json: not replacing it")


def _replace(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)


def generate(out_dir: Path, seed: int, scale: str, *, expected_big: bool = True) -> None:
    """Write the world (seed, scale) to ``out_dir``, replacing a world already there."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r} (choose from {', '.join(SCALES)})")
    out_dir = Path(out_dir).absolute()
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        world = build_world(_Gen(tmp, seed, SCALES[scale]))
        (tmp / "world.json").write_bytes(dump_json(world))
        manifest = _write_expected(tmp, expected_view(world), expected_big)
        (tmp / "manifest.json").write_bytes(dump_json(manifest))
        _fix_mtimes(tmp)
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def generate_from_files(
    world_dir: Path,
    subdir: str = "files",
    *,
    seed: int = 1,
    md5s: dict[str, str] | None = None,
) -> Json:
    """Write ``world_dir/world.json`` for the files already under ``world_dir/subdir``.

    The world has one KooDrive container (a personal space) whose tree mirrors ``subdir``; every
    file is a blob at its own path (``<subdir>/a/b.bin``), so a static server whose root is
    ``world_dir`` holds the very bytes the emulator lists (``--link-base``, docs/emulator.md).
    EnOS, IoTDA and ROMA are empty. ``md5s`` (blob path -> md5) spares hashing files whose md5
    the caller already knows. Ids and times are deterministic (``seed``, sorted names).
    Returns the world dict.
    """
    world_dir = Path(world_dir).absolute()
    root = world_dir / subdir
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    g = _Gen(world_dir, seed, SCALES["tiny"], blobs=False)
    project_id = g.hex(32)
    d = _Drive(g)
    known = md5s or {}

    def walk(folder: Path, parent: str) -> None:
        for child in sorted(folder.iterdir(), key=lambda p: p.name):
            if child.is_dir():
                walk(child, d.folder(parent, child.name))
                continue
            blob = child.relative_to(world_dir).as_posix()
            md5 = known.get(blob)
            if md5 is None:
                h = hashlib.md5()
                with open(child, "rb") as f:
                    while chunk := f.read(MiB):
                        h.update(chunk)
                md5 = h.hexdigest()
            content = Content(size=child.stat().st_size, md5=md5, blob=blob).to_json()
            d._add(parent, child.name, False, 0, False, content)

    walk(root, "root")
    world: Json = {
        "format": 1,
        "seed": seed,
        "scale": f"files:{subdir}",
        "credentials": _credentials(g, project_id),
        "enos": {"orgs": []},
        "koodrive": {"containers": [d.to_json(subdir, "1", None)]},
        "iotda": {"projectId": project_id, "instanceId": g.uuid(), "tasks": []},
        "roma": {"projectId": project_id, "instances": []},
    }
    tmp = world_dir / f".world.json.tmp-{os.getpid()}"
    tmp.write_bytes(dump_json(world))
    os.replace(tmp, world_dir / "world.json")
    return world


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusefs world", description="deterministic test worlds")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write world.json, blobs/, expected/, manifest.json")
    gen.add_argument("dir", type=Path)
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    gen.add_argument(
        "--no-expected-big",
        dest="expected_big",
        action="store_false",
        help=f"leave files >= {EXPECTED_BIG_MIN // MiB} MiB out of expected/ (see manifest.json)",
    )
    files = sub.add_parser(
        "from-files",
        help="write DIR/world.json: one KooDrive space mirroring the files under DIR/SUBDIR",
    )
    files.add_argument("dir", type=Path)
    files.add_argument("--subdir", default="files", help="folder under DIR to mirror")
    files.add_argument("--seed", type=int, default=1)
    files.add_argument(
        "--md5s", type=Path, help="JSON object {blob path: md5} of files not to hash again"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "from-files":
            md5s = json.loads(args.md5s.read_text()) if args.md5s else None
            generate_from_files(args.dir, args.subdir, seed=args.seed, md5s=md5s)
        else:
            generate(args.dir, args.seed, args.scale, expected_big=args.expected_big)
    except (FileExistsError, FileNotFoundError) as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
