"""Hostile answers at the provider boundary (issue 9): every field of a listing is checked; a bad
entry is skipped with one log line and the rest is listed; listings are bounded; server text in
errors is one line."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from fusefs.providers import _fields as fields
from fusefs.providers._http import short_body
from fusefs.providers.base import EntryKind, ProtocolError, ProviderError, RemoteEntry
from fusefs.providers.enos import EnosProvider
from fusefs.providers.koodrive import KoodriveProvider
from fusefs.providers.roma import RomaProvider

from .conftest import EnvFactory, walk

MISSING = object()
BAD_SIZES: list[Any] = [MISSING, -5, 2**63, 10**30, "abc", "-5", "1.5", 1.5, 1.0, None, True, [1]]


def patch(route: str, match: dict[str, Any], set_: dict[str, Any] | None = None,
          unset: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    rule: dict[str, Any] = {"route": route, "kind": "patch", "match": match}
    if set_ is not None:
        rule["set"] = set_
    if unset is not None:
        rule["unset"] = unset
    return {"rules": [rule]}


def skip_lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skipped" in r.getMessage() and needle in
            r.getMessage()]  # fmt: skip


async def koodrive_folder(kd: KoodriveProvider) -> tuple[str, list[RemoteEntry]]:
    """A KooDrive folder key with at least three files."""
    todo = [e.key for e in await kd.list_dir("")]
    while todo:
        key = todo.pop(0)
        entries = await kd.list_dir(key)
        if sum(e.kind is EntryKind.FILE for e in entries) >= 3:
            return key, entries
        todo.extend(e.key for e in entries if e.kind is EntryKind.DIR)
    raise AssertionError("no folder with three files")


# ---- the shared field parsers ------------------------------------------------------------------


@pytest.mark.parametrize("value", BAD_SIZES)
def test_size_field_refuses_what_is_not_a_size(value: Any) -> None:
    obj = {} if value is MISSING else {"size": value}
    with pytest.raises(fields.BadField):
        fields.size(obj, "size")


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0), (5, 5), ("17", 17), (2**63 - 1, 2**63 - 1)]
)
def test_size_field_takes_sizes(value: Any, expected: int) -> None:
    assert fields.size({"size": value}, "size") == expected


def test_times_out_of_range_are_unknown() -> None:
    assert fields.ms_time_ns(10**30) is None
    assert fields.ms_time_ns(True) is None
    assert fields.ms_time_ns("1700000000000") == 1700000000000 * 10**6
    assert fields.iso_time_ns("not a time") is None
    assert fields.iso_time_ns("2023-12-11T10:06:13.466Z") == 1702289173466 * 10**6


@pytest.mark.parametrize("value", [5, 1.5, True, ["a"], {"a": 1}])
def test_cursors_that_are_not_strings_are_errors(value: Any) -> None:
    with pytest.raises(ProtocolError):
        fields.cursor(value, "x.list")
    assert fields.cursor(None, "x.list") is None
    assert fields.cursor("", "x.list") is None


def test_listing_budget_bounds_pages_and_entries() -> None:
    b = fields.ListingBudget("x.list", "folder", max_pages=3, max_entries=10)
    b.page(4)
    b.page(4)
    with pytest.raises(ProtocolError, match="more than 10 entries"):
        b.page(4)
    b = fields.ListingBudget("x.list", "folder", max_pages=2, max_entries=100)
    b.page(0)
    b.page(0)
    with pytest.raises(ProtocolError, match="more than 2 pages"):
        b.page(0)


def test_error_bodies_are_one_capped_line() -> None:
    body = b"<Error>\n<Code>X</Code>\r\n2026-12-02 ERROR fusefs: forged\x1b[31m\n</Error>" * 50
    text = short_body(body)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "\\n" in text and "\\x1b" in text
    assert len(text) <= 301
    err = ProviderError("bad\nline\u2028two", call="x\ny")
    assert "\n" not in str(err) and "\u2028" not in str(err)


def test_one_line_formatter_escapes_the_whole_record() -> None:
    from fusefs.logs import OneLineFormatter

    fmt = OneLineFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("server said:\nERROR forged")
    except ValueError:
        import sys

        rec = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "a\nb %s", ("c\rd",), sys.exc_info()
        )
    out = fmt.format(rec)
    assert "\n" not in out and "\r" not in out
    assert out.startswith("ERROR a\\nb c\\rd")


# ---- KooDrive ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", BAD_SIZES)
async def test_koodrive_bad_size_skips_that_entry_only(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture, value: Any
) -> None:
    env = await make_env()
    kd = env.providers["koodrive"]
    assert isinstance(kd, KoodriveProvider)
    key, before = await koodrive_folder(kd)
    victim = next(e for e in before if e.kind is EntryKind.FILE)
    if value is MISSING:
        await env.faults(patch("koodrive.list", {"id": victim.remote_id}, unset=["size"]))
    else:
        await env.faults(patch("koodrive.list", {"id": victim.remote_id}, {"size": value}))
    caplog.set_level(logging.WARNING)
    after = await kd.list_dir(key)
    assert {e.remote_id for e in after} == {e.remote_id for e in before} - {victim.remote_id}
    assert len(skip_lines(caplog, victim.remote_id)) == 1


@pytest.mark.parametrize("change", [{"unset": ["fileName"]}, {"set": {"fileName": 5}},
                                    {"set": {"fileName": None}}, {"set": {"id": 7}},
                                    {"set": {"id": "a\nb"}}])  # fmt: skip
async def test_koodrive_bad_name_or_id_skips_that_entry_only(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture, change: dict[str, Any]
) -> None:
    env = await make_env()
    kd = env.providers["koodrive"]
    key, before = await koodrive_folder(kd)
    victim = next(e for e in before if e.kind is EntryKind.FILE)
    await env.faults(
        patch("koodrive.list", {"id": victim.remote_id}, change.get("set"), change.get("unset"))
    )
    caplog.set_level(logging.WARNING)
    after = await kd.list_dir(key)
    assert {e.remote_id for e in after} == {e.remote_id for e in before} - {victim.remote_id}
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1, lines
    assert all("\n" not in line for line in lines)


async def test_koodrive_bad_times_are_zero_and_logged_once(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env()
    kd = env.providers["koodrive"]
    key, before = await koodrive_folder(kd)
    await env.faults(
        patch("koodrive.list", {"category": "drive#file"}, {"editedTime": "yesterday"})
    )
    caplog.set_level(logging.WARNING)
    after = await kd.list_dir(key)
    assert len(after) == len(before)
    assert all(e.mtime_ns == 0 for e in after if e.kind is EntryKind.FILE)
    assert len([r for r in caplog.records if "editedTime" in r.getMessage()]) == 1


async def test_koodrive_integer_cursor_is_an_error_not_the_end(make_env: EnvFactory) -> None:
    env = await make_env(faults={"koodrive_page_limit": 1})
    kd = env.providers["koodrive"]
    key, _ = await koodrive_folder(kd)
    await env.faults(patch("koodrive.list", {"code": 0}, {"nextCursor": 12345}))
    with pytest.raises(ProtocolError, match="not a string"):
        await kd.list_dir(key)


async def test_koodrive_endless_cursors_stop_at_the_page_cap(
    make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fusefs.providers.koodrive as koodrive

    env = await make_env()
    kd = env.providers["koodrive"]
    key, _ = await koodrive_folder(kd)
    monkeypatch.setattr(koodrive, "ListingBudget", _budget(max_pages=25))
    # every page empty, each with a new cursor: a listing that never ends
    await env.faults({"koodrive_empty_every": 1})
    await env.reset_stats()
    with pytest.raises(ProtocolError, match="more than 25 pages"):
        await kd.list_dir(key)
    assert (await env.stats())["koodrive.list"] == 26


def _budget(**kw: int) -> Any:
    def make(call: str, what: str) -> fields.ListingBudget:
        return fields.ListingBudget(call, what, **kw)

    return make


async def test_koodrive_entries_cap(make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    import fusefs.providers.koodrive as koodrive

    env = await make_env()
    kd = env.providers["koodrive"]
    key, before = await koodrive_folder(kd)
    monkeypatch.setattr(koodrive, "ListingBudget", _budget(max_entries=len(before) - 1))
    with pytest.raises(ProtocolError, match="entries"):
        await kd.list_dir(key)


async def test_koodrive_missing_download_link_is_eio_not_estale(make_env: EnvFactory) -> None:
    from fusefs.providers.base import ObjectRef

    env = await make_env()
    kd = env.providers["koodrive"]
    _, before = await koodrive_folder(kd)
    f = next(e for e in before if e.kind is EntryKind.FILE and e.size)
    await env.faults(patch("koodrive.download_links", {"fileId": f.remote_id},
                           {"fileId": "someone-else"}))  # fmt: skip
    ref = ObjectRef("koodrive", f.key, f.version, f.size)
    with pytest.raises(ProtocolError, match="no download link"):
        async with kd.open_stream(ref) as it:
            async for _ in it:
                pass


# ---- EnOS ----------------------------------------------------------------------------------------


async def enos_files_dir(enos: EnosProvider) -> tuple[str, list[RemoteEntry]]:
    for path, e in await walk(enos):
        if path[-2] == "files":
            org, asset = e.key.split("/")[1:3]
            key = f"files/{org}/{asset}"
            entries = await enos.list_dir(key)
            if len(entries) >= 2:
                return key, entries
    raise AssertionError("no EnOS files dir with two files")


@pytest.mark.parametrize("value", BAD_SIZES)
async def test_enos_bad_file_size_skips_that_file_only(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture, value: Any
) -> None:
    env = await make_env()
    enos = env.providers["enos"]
    assert isinstance(enos, EnosProvider)
    key, before = await enos_files_dir(enos)
    victim = before[0]
    if value is MISSING:
        await env.faults(patch("enos.file.info", {"fileUri": victim.remote_id}, unset=["fileSize"]))
    else:
        await env.faults(
            patch("enos.file.info", {"fileUri": victim.remote_id}, {"fileSize": value})
        )
    caplog.set_level(logging.WARNING)
    after = await enos.list_dir(key)
    assert {e.remote_id for e in after} == {e.remote_id for e in before} - {victim.remote_id}
    assert len(skip_lines(caplog, victim.remote_id)) == 1


async def test_enos_bad_name_skips_that_file_and_a_bad_md5_is_unknown(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env()
    enos = env.providers["enos"]
    key, before = await enos_files_dir(enos)
    a, b = before[0], before[1]
    await env.faults(patch("enos.file.info", {"fileUri": a.remote_id}, {"originalFilename": 3}))
    await env.faults(patch("enos.file.info", {"fileUri": b.remote_id}, {"md5": 5}))
    caplog.set_level(logging.WARNING)
    after = await enos.list_dir(key)
    assert {e.remote_id for e in after} == {e.remote_id for e in before} - {a.remote_id}
    assert len(skip_lines(caplog, a.remote_id)) == 1
    # an md5 that is not a string is not needed to list the file: it is unknown, not a guess
    listed_b = next(e for e in after if e.remote_id == b.remote_id)
    assert listed_b.md5 is None and listed_b.size == b.size


async def test_enos_bad_firmware_size_skips_that_firmware_only(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env()
    enos = env.providers["enos"]
    found = [(p, e) for p, e in await walk(enos) if p[-2] == "firmware"]
    assert found, "no firmware in the world"
    key = "firmware/" + "/".join(found[0][1].key.split("/")[1:3])
    before = await enos.list_dir(key)
    victim = before[0]
    fid = victim.remote_id
    await env.faults(patch("enos.firmware.search", {"firmwareId": fid}, {"fileSize": "abc"}))
    caplog.set_level(logging.WARNING)
    after = await enos.list_dir(key)
    assert {e.remote_id for e in after} == {e.remote_id for e in before} - {fid}
    assert len(skip_lines(caplog, fid)) == 1


async def test_enos_endless_pages_stop_at_the_cap(
    make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fusefs.providers.enos as enos_mod

    env = await make_env()
    enos = env.providers["enos"]
    org = env.world["enos"]["orgs"][0]["orgId"]
    monkeypatch.setattr(enos_mod, "ListingBudget", _budget(max_pages=5))
    # a server that claims ever more assets and answers every page with a full one
    page = {"pageNo": 1, "pageSize": 100, "totalSize": 10**9}
    await env.faults(
        patch("enos.asset.search", {"code": 0}, {"data": [{"assetId": "x"}], "pagination": page})
    )
    with pytest.raises(ProtocolError, match="more than 5 pages"):
        await enos.list_dir(f"org/{org}")


# ---- ROMA ----------------------------------------------------------------------------------------


async def roma_archives(roma: RomaProvider) -> tuple[str, list[RemoteEntry]]:
    for inst in await roma.list_dir(""):
        for d in await roma.list_dir(inst.key):
            entries = await roma.list_dir(d.key)
            if entries:
                return d.key, entries
    raise AssertionError("no ROMA archive")


@pytest.mark.parametrize("change", [{"archive_id": 5}, {"archive_id": ".."}, {"status": None},
                                    {"archive_id": "a\nb"}, {"end_time": "never"}])  # fmt: skip
async def test_roma_bad_job_fields_skip_that_job_only(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture, change: dict[str, Any]
) -> None:
    env = await make_env()
    roma = env.providers["roma"]
    assert isinstance(roma, RomaProvider)
    key, before = await roma_archives(roma)
    victim = before[0]
    await env.faults(patch("roma.job", {"archive_id": victim.remote_id}, change))
    caplog.set_level(logging.WARNING)
    after = await roma.list_dir(key)
    if "end_time" in change:  # not needed to list it: shown as 0, logged once
        assert len(after) == len(before)
        assert next(e for e in after if e.remote_id == victim.remote_id).mtime_ns == 0
        assert len([r for r in caplog.records if "end_time" in r.getMessage()]) == 1
        return
    assert {e.remote_id for e in after} == {e.remote_id for e in before} - {victim.remote_id}
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 1


# ---- IoTDA ---------------------------------------------------------------------------------------


async def _iotda_exports(iot: Any) -> list[RemoteEntry]:
    (exports,) = await iot.list_dir("")
    return list(await iot.list_dir(exports.key))


@pytest.mark.parametrize("change", [{"unset": ["export_task_id"]}, {"set": {"export_task_id": 7}},
                                    {"set": {"export_task_id": "a\nb"}},
                                    {"set": {"export_task_id": "../x"}},
                                    {"set": {"export_task_id": ".."}}])  # fmt: skip
async def test_iotda_bad_task_id_skips_that_export_only(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture, change: dict[str, Any]
) -> None:
    env = await make_env()
    iot = env.providers["iotda"]
    before = await _iotda_exports(iot)
    assert len(before) >= 2
    victim = before[0]
    await env.faults(
        patch("iotda.list", {"export_task_id": victim.remote_id}, change.get("set"),
              change.get("unset"))
    )  # fmt: skip
    caplog.set_level(logging.WARNING)
    after = await _iotda_exports(iot)
    assert {e.remote_id for e in after} == {e.remote_id for e in before} - {victim.remote_id}
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1, lines
    assert all("\n" not in line for line in lines)
    assert all("/" not in e.name for e in after)


async def test_iotda_bad_end_time_is_zero_and_logged_once(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env()
    iot = env.providers["iotda"]
    before = await _iotda_exports(iot)
    await env.faults(patch("iotda.list", {"status": "Success"}, {"end_time": "soon"}))
    caplog.set_level(logging.WARNING)
    after = await _iotda_exports(iot)
    assert [e.remote_id for e in after] == [e.remote_id for e in before]
    assert all(e.mtime_ns == 0 for e in after)
    assert len([r for r in caplog.records if "end_time" in r.getMessage()]) == 1


async def test_iotda_integer_marker_is_an_error_not_the_end(make_env: EnvFactory) -> None:
    env = await make_env()
    iot = env.providers["iotda"]
    assert len(await _iotda_exports(iot)) >= 2
    iot._page_size = 1  # every page full: the listing goes on by its marker
    await env.faults({"rules": [{"route": "iotda.list", "kind": "patch",
                                 "set": {"page": {"marker": 12345}}}]})  # fmt: skip
    with pytest.raises(ProtocolError, match="not a string"):
        await _iotda_exports(iot)
