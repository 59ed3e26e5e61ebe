"""``./scripts/bench [--quick] [--profile lan|wan|both]``: fusefs and its peers side by side on
the same bytes from the same server, with the limits of the machine measured in the same run.
Method: docs/benchmarks.md."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import dataset, limits, measures, servers
from .report import (
    FUSEFS,
    SYSTEM_LABELS,
    Cell,
    cells_to_json,
    markdown_table,
    ratios,
)
from .report import limits as limit_specs
from .report import measures as measure_specs
from .systems import ALL, Mounted, System, Target, make_systems
from .util import (
    PY,
    ROOT,
    BenchError,
    GiB,
    MiB,
    Proc,
    WrongBytes,
    cpu_seconds,
    drop_caches,
    loud,
    peak_rss_mib,
    say,
    tail,
    version_of,
)

SEED = 4242


@dataclass(frozen=True)
class Budget:
    reps: int  # runs of every measure in the lan profile (and of the local limits)
    wan_reps: int  # runs in the wan profile
    read_cap: float  # s: a sequential read stops here (value over what was read, marked †)
    rand_n: int  # random 4 KiB reads per measure
    rand_cap: float
    ls_timeout: float
    cp_cap: float
    par_cap: float
    rss_cap_fusefs: float
    rss_cap_peer: float
    gets_cap: float
    range_n: int


BUDGETS = {
    "quick": Budget(
        reps=1,
        wan_reps=1,
        read_cap=2.5,
        rand_n=30,
        rand_cap=1.5,
        ls_timeout=5,
        cp_cap=2,
        par_cap=1.0,
        rss_cap_fusefs=12,
        rss_cap_peer=2,
        gets_cap=2,
        range_n=40,
    ),
    "full": Budget(
        reps=3,
        wan_reps=1,
        read_cap=4,
        rand_n=200,
        rand_cap=2,
        ls_timeout=8,
        cp_cap=4,
        par_cap=2,
        rss_cap_fusefs=75,
        rss_cap_peer=6,
        gets_cap=6,
        range_n=60,
    ),
}


class Run:
    """Everything one bench invocation measures, and where it records it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = "quick" if args.quick else "full"
        self.budget = BUDGETS[self.mode]
        if args.reps:
            self.budget = Budget(**{**asdict(self.budget), "reps": args.reps})
        if args.wan_reps:
            self.budget = Budget(**{**asdict(self.budget), "wan_reps": args.wan_reps})
        self.interrupted = False
        self.work = Path(args.workdir).absolute()
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        self.results: dict[str, dict[str, dict[str, Cell]]] = {}
        self.limits: dict[str, dict[str, Cell]] = {}
        self.wrong: list[str] = []
        self.commands: dict[str, Any] = {}
        self.started = time.time()
        self.timings: dict[str, float] = {}
        self.profiles: list[str] = []
        self.fleet: list[Any] = []  # fleet.FleetResult, without and with the tier
        self.fleet_error: str | None = None
        self.ds: dataset.Dataset

    def reps(self, profile: str) -> int:
        return self.budget.wan_reps if profile == "wan" else self.budget.reps

    # ---- recording ---------------------------------------------------------------------------

    def cell(self, profile: str, measure: str, system: str) -> Cell:
        return (
            self.results.setdefault(profile, {}).setdefault(measure, {}).setdefault(system, Cell())
        )

    def add(
        self,
        profile: str,
        measure: str,
        system: str,
        value: float,
        *,
        capped: bool = False,
        note: str | None = None,
        **extra: Any,
    ) -> None:
        c = self.cell(profile, measure, system)
        c.runs.append(value)
        c.capped = c.capped or capped
        if note and note not in c.notes:
            c.notes.append(note)
        for k, v in extra.items():
            c.extra.setdefault(k, []).append(v)

    def fail(
        self, profile: str, keys: list[str], system: str, exc: BaseException, log: str
    ) -> None:
        text = f"{SYSTEM_LABELS.get(system, system)}: {exc}".strip()
        if isinstance(exc, WrongBytes):
            self.wrong.append(text)
            loud(f"WRONG BYTES: {text}")
        short = text.splitlines()[0][:300]
        for k in keys:
            c = self.cell(profile, k, system)
            if short not in c.errors:
                c.errors.append(short)
            if log:
                c.extra["log_tail"] = log[-1500:]

    def skip(self, profile: str, measure: str, system: str, why: str) -> None:
        """A measure that could not be taken for a reason that is not a failure (n/a + note)."""
        c = self.cell(profile, measure, system)
        if why not in c.notes:
            c.notes.append(why)

    def limit(
        self, profile: str, key: str, value: float, *, capped: bool = False, **extra: Any
    ) -> None:
        c = self.limits.setdefault(profile, {}).setdefault(key, Cell())
        c.runs.append(value)
        c.capped = c.capped or capped
        for k, v in extra.items():
            c.extra.setdefault(k, []).append(v)

    def limit_fail(self, profile: str, key: str, exc: BaseException) -> None:
        c = self.limits.setdefault(profile, {}).setdefault(key, Cell())
        c.errors.append(str(exc).splitlines()[0][:300])
        if isinstance(exc, WrongBytes):
            self.wrong.append(f"limit {key}: {exc}")
            loud(f"WRONG BYTES: limit {key}: {exc}")

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Add the seconds of the block to ``timings[key]`` (where a run's time goes)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - t0, 2)

    @contextlib.contextmanager
    def guarded(
        self, profile: str, system: System, keys: list[str], logs: Callable[[], str]
    ) -> Iterator[None]:
        """Record a failure of this step for the measures it had not recorded yet; go on."""
        before = {k: len(self.cell(profile, k, system.key).runs) for k in keys}
        try:
            yield
        except Exception as exc:  # the bench continues with the next step
            missing = [k for k in keys if len(self.cell(profile, k, system.key).runs) == before[k]]
            log = logs()
            dead = system.last_exit is not None or getattr(exc, "errno", None) == errno.ENOTCONN
            if dead and not isinstance(exc, WrongBytes):
                status = f"exit status {system.last_exit}" if system.last_exit is not None else ""
                why = crash_reason(log) or status or "its mount went ENOTCONN"
                exc = BenchError(f"the daemon died ({why}); then: {exc}")
            say(f"  {system.label}: FAILED: {str(exc).splitlines()[0][:200]}")
            self.fail(profile, missing or keys, system.key, exc, log)


def crash_reason(log: str) -> str:
    """The last line of a daemon's log that says why it died (no backtrace addresses)."""
    lines = [ln.strip() for ln in log.splitlines() if "[0x" not in ln and "+0x" not in ln]
    for keys in (("fatal", "panic", "traceback"), ("error", "exception", "invalid argument")):
        hits = [ln for ln in lines if any(k in ln.lower() for k in keys)]
        if hits:
            return hits[-1][:300]
    return ""


class Profile:
    """The servers of one profile: targets for http and https, emulators pointing at them."""

    def __init__(self, run: Run, name: str, nginx: servers.Nginx, certs: servers.Certs) -> None:
        self.run = run
        self.name = name
        self.nginx = nginx
        self.certs = certs
        self.procs: list[Proc] = []
        self.targets: dict[str, Target] = {}

    def start(self) -> None:
        ds, work, ng = self.run.ds, self.run.work, self.nginx
        wan = self.name == "wan"
        if wan:
            self.procs.append(servers.start_proxy(work, ng.http, ng.proxy_port))
            bases = {
                "http": f"http://127.0.0.1:{ng.proxy_port}",
                "https": f"https://127.0.0.1:{ng.https_wan}",
            }
        else:
            bases = {
                "http": f"http://127.0.0.1:{ng.http}",
                "https": f"https://127.0.0.1:{ng.https}",
            }
        for scheme, base in bases.items():
            emu = servers.start_emulator(ds, work, f"{self.name}-{scheme}", base, wan)
            self.procs.append(emu.proc)
            self.targets[scheme] = Target(scheme, f"{base}/files/", emu.url, self.certs.ca)
        servers.check_https(self.targets["https"].peer_url, self.certs.ca)
        self.run.commands.setdefault("emulator", " ".join(self.procs[-1].argv))

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


# ---- the steps ---------------------------------------------------------------------------------


MAIN_KEYS = [
    "ls_cold",
    "ls_warm",
    "seq_mid_cold",
    "seq_cold",
    "cpu_per_gib",
    "reread",
    "cp_r",
    "rand_cold_mean",
    "rand_cold_p50",
    "rand_repeat_mean",
    "rand_repeat_p50",
]
OWN_KEYS = ["rand_own_mean", "rand_own_p50", "reread_own", "par4", "par8"]
TLS_KEYS = ["tls_seq_cold", "tls_rand_cold_mean", "tls_rand_cold_p50"]


def check(run: Run, path: Path, source: Path, length: int, offset: int = 0) -> None:
    """The untimed byte-for-byte check of what a timed read read (its time is tallied)."""
    with run.timed("checks_total"):
        measures.check_range(path, source, length, offset)


def random_reads(
    run: Run, path: Path, source: Path, offs: list[int], cap: float
) -> measures.RandomResult:
    with run.timed("random_total"):
        return measures.random_reads(path, source, offs, cap)


def ls_l(run: Run, folder: Path, expected: dict[str, int], timeout: float) -> float:
    with run.timed("ls_total"):
        return measures.ls_l(folder, expected, timeout)


def seq_read(run: Run, path: Path, cap: float, limit: int | None = None) -> measures.ReadResult:
    with run.timed("seq_total"):
        return measures.seq_read(path, cap, limit)


def small_expected(run: Run) -> dict[str, int]:
    return dict.fromkeys(run.ds.small_names(), run.ds.spec.small_size)


def step_main(
    run: Run, prof: Profile, system: System, rep: int, *, with_parallel: bool = True
) -> None:
    """A fresh mount: ls -l cold/warm, sequential cold (64 MiB, 1 GiB) + re-read, cp -r, random
    cold + repeated; then a remount on the same cache after drop_caches: random and sequential
    from the own cache, then the parallel readers on regions not read yet."""
    b, ds, p, k = run.budget, run.ds, prof.name, system.key
    offs = measures.offsets(ds.spec.huge, b.rand_n, SEED + rep)
    mnt_box: list[Mounted] = []

    def logs() -> str:
        return tail(mnt_box[-1].log) if mnt_box else tail(run.work / "logs" / f"{k}.log")

    read_len = ds.spec.big
    n_done = len(offs)
    with run.guarded(p, system, MAIN_KEYS, logs):
        cache = system.fresh_cache()
        drop_caches()
        with system.mounted(prof.targets["http"], cache) as m:
            mnt_box.append(m)
            try:
                t = ls_l(run, m.root / "small", small_expected(run), b.ls_timeout)
                run.add(p, "ls_cold", k, t)
                run.add(
                    p,
                    "ls_warm",
                    k,
                    ls_l(run, m.root / "small", small_expected(run), b.ls_timeout),
                )
            except measures.TimedOut as exc:
                run.add(
                    p, "ls_cold", k, exc.seconds, capped=True, note=f"> {exc.seconds:g} s: stopped"
                )
                run.skip(p, "ls_warm", k, "not measured: the cold `ls -l` did not finish")
            rm = seq_read(run, m.root / "mid.bin", b.read_cap)
            run.add(p, "seq_mid_cold", k, rm.mbps, capped=not rm.complete, bytes=rm.nbytes)
            check(run, m.root / "mid.bin", ds.mid, rm.nbytes)
            cpu0 = cpu_seconds(m.pid)
            r = seq_read(run, m.root / "big.bin", b.read_cap)
            cpu1 = cpu_seconds(m.pid)
            read_len = r.nbytes
            run.add(p, "seq_cold", k, r.mbps, capped=not r.complete, bytes=r.nbytes)
            run.add(p, "cpu_per_gib", k, (cpu1 - cpu0) / (r.nbytes / GiB))
            r2 = seq_read(run, m.root / "big.bin", b.read_cap, limit=read_len)
            run.add(p, "reread", k, r2.mbps, capped=not r2.complete, bytes=r2.nbytes)
            check(run, m.root / "big.bin", ds.big, read_len)
            with run.timed("cp_r_total"):
                cp = measures.cp_r(m.root / "small", ds.small, run.work / "cp-dest", b.cp_cap)
            run.add(
                p,
                "cp_r",
                k,
                cp.seconds_for_all,
                capped=not cp.complete,
                note=None
                if cp.complete
                else "† stopped by the time cap: extrapolated from files/s",
                files_per_s=round(cp.files_per_s, 1),
                files=cp.done,
            )
            rr = random_reads(run, m.root / "huge.bin", ds.huge, offs, b.rand_cap)
            run.add(p, "rand_cold_mean", k, rr.mean, capped=not rr.complete, n=len(rr.latencies_ms))
            run.add(p, "rand_cold_p50", k, rr.p50, capped=not rr.complete, n=len(rr.latencies_ms))
            n_done = max(1, len(rr.latencies_ms))
            rp = random_reads(run, m.root / "huge.bin", ds.huge, offs[:n_done], b.rand_cap)
            run.add(p, "rand_repeat_mean", k, rp.mean, capped=not rp.complete)
            run.add(p, "rand_repeat_p50", k, rp.p50, capped=not rp.complete)
    if not with_parallel:
        return  # xattrs = false: the own-cache and parallel reads are the default's data plane
    if not mnt_box:
        run.fail(p, OWN_KEYS, k, BenchError("the first mount failed"), "")
        return
    mnt_box.clear()
    with (
        run.guarded(p, system, OWN_KEYS, logs),
        system.mounted(prof.targets["http"], system.cache_dir()) as m,
    ):
        mnt_box.append(m)
        drop_caches()
        rr = random_reads(run, m.root / "huge.bin", ds.huge, offs[:n_done], b.rand_cap)
        run.add(p, "rand_own_mean", k, rr.mean, capped=not rr.complete)
        run.add(p, "rand_own_p50", k, rr.p50, capped=not rr.complete)
        r = seq_read(run, m.root / "big.bin", b.read_cap, limit=read_len)
        run.add(p, "reread_own", k, r.mbps, capped=not r.complete, bytes=r.nbytes)
        check(run, m.root / "big.bin", ds.big, r.nbytes)
        if with_parallel:
            parallel_readers(run, p, k, m)


def parallel_readers(run: Run, p: str, k: str, m: Mounted) -> None:
    """4 readers over 0-40 % of the huge object, then 8 over 50-100 %: regions nothing has read
    yet but the few MiB the random reads touched, far enough apart that read-ahead of one set
    never serves the other."""
    size = run.ds.spec.huge
    for readers, span in ((4, (0, size * 4 // 10)), (8, (size // 2, size))):
        with run.timed("parallel_total"):
            r = measures.parallel_read(m.root / "huge.bin", readers, run.budget.par_cap, span)
        run.add(p, f"par{readers}", k, r.mbps, capped=not r.complete, bytes=r.nbytes)
        for off, n in r.regions:
            check(run, m.root / "huge.bin", run.ds.huge, n, off)


def step_tls(run: Run, prof: Profile, system: System, rep: int) -> None:
    b, ds, p, k = run.budget, run.ds, prof.name, system.key
    box: list[Mounted] = []
    with run.guarded(p, system, TLS_KEYS, lambda: tail(box[-1].log) if box else ""):
        cache = system.fresh_cache()
        drop_caches()
        with system.mounted(prof.targets["https"], cache) as m:
            box.append(m)
            r = seq_read(run, m.root / "big.bin", b.read_cap)
            run.add(p, "tls_seq_cold", k, r.mbps, capped=not r.complete, bytes=r.nbytes)
            check(run, m.root / "big.bin", ds.big, r.nbytes)
            offs = measures.offsets(ds.spec.huge, b.rand_n, SEED + 100 + rep)
            rr = random_reads(run, m.root / "huge.bin", ds.huge, offs, b.rand_cap)
            run.add(p, "tls_rand_cold_mean", k, rr.mean, capped=not rr.complete)
            run.add(p, "tls_rand_cold_p50", k, rr.p50, capped=not rr.complete)


def step_rss(run: Run, prof: Profile, system: System) -> None:
    b, ds, p, k = run.budget, run.ds, prof.name, system.key
    cap = b.rss_cap_fusefs if k in FUSEFS else b.rss_cap_peer
    box: list[Mounted] = []
    with run.guarded(p, system, ["rss"], lambda: tail(box[-1].log) if box else ""):
        cache = system.fresh_cache()
        drop_caches()
        with system.mounted(prof.targets["http"], cache) as m:
            box.append(m)
            r = measures.stream_huge(m.root / "huge.bin", cap)
            rss = peak_rss_mib(m.pid)
            note = None
            if not r.complete:
                note = (
                    f"{SYSTEM_LABELS[k]}: † streamed {r.nbytes / GiB:.2f} GiB of "
                    f"{ds.spec.huge / GiB:.0f} GiB in its {cap:g} s cap"
                )
            run.add(
                p,
                "rss",
                k,
                rss,
                capped=not r.complete,
                note=note,
                streamed_GiB=round(r.nbytes / GiB, 2),
                MBps=round(r.nbytes / r.seconds / 1e6),
            )
        shutil.rmtree(cache, ignore_errors=True)


# ---- limits ------------------------------------------------------------------------------------


def measure_local_limits(run: Run) -> None:
    say("limits: local disk, page cache, pread, ls -l")
    try:
        for _ in range(run.budget.reps):
            out = limits.local_limits(run.ds, run.budget.rand_n, SEED)
            for prof in run.profiles:
                run.limit(prof, "disk", out["disk_MBps"])
                run.limit(prof, "page_cache", out["page_cache_MBps"])
                run.limit(prof, "disk_pread_mean", out["disk_pread_mean_ms"])
                run.limit(prof, "disk_pread_p50", out["disk_pread_p50_ms"])
                run.limit(prof, "page_pread_mean", out["page_cache_pread_mean_ms"])
                run.limit(prof, "page_pread_p50", out["page_cache_pread_p50_ms"])
                run.limit(prof, "ls_local", out["ls_l_local_warm_s"])
    except Exception as exc:
        for prof in run.profiles:
            run.limit_fail(prof, "disk", exc)


def measure_net_limits(run: Run, prof: Profile) -> None:
    b, ds, p = run.budget, run.ds, prof.name
    http, https = prof.targets["http"], prof.targets["https"]
    say(f"limits ({p}): curl, Range GETs, listing API, GETs in series")

    def attempt(key: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            say(f"  limit {key}: FAILED: {exc}")
            run.limit_fail(p, key, exc)

    for _ in range(run.reps(p)):

        def do_curl() -> None:
            r = limits.curl(http.peer_url + "big.bin", None, ds.spec.big)
            run.limit(p, "curl", r.mbps)
            run.limit(p, "curl_cpu", r.cpu_per_gib)

        attempt("curl", do_curl)
        attempt(
            "curl_mid",
            lambda: run.limit(
                p, "curl_mid", limits.curl(http.peer_url + "mid.bin", None, ds.spec.mid).mbps
            ),
        )
        attempt(
            "curl_tls",
            lambda: run.limit(
                p, "curl_tls", limits.curl(https.peer_url + "big.bin", https.ca, ds.spec.big).mbps
            ),
        )
        for n in (4, 8):

            def do_par(n: int = n) -> None:
                url = http.peer_url + "big.bin"
                run.limit(p, f"curl_par{n}", limits.curl_parallel(url, None, ds.spec.big, n))

            attempt(f"curl_par{n}", do_par)

        def do_range(scheme: str) -> None:
            t = prof.targets[scheme]
            lat = limits.range_gets(t.peer_url + "huge.bin", t.ca, ds.huge, b.range_n, SEED)
            suffix = "_tls" if scheme == "https" else ""
            run.limit(p, f"range_get{suffix}_mean", sum(lat) / len(lat))
            run.limit(p, f"range_get{suffix}_p50", sorted(lat)[len(lat) // 2])

        attempt("range_get_mean", lambda: do_range("http"))
        attempt("range_get_tls_mean", lambda: do_range("https"))
        attempt(
            "listing_api",
            lambda: run.limit(p, "listing_api", limits.page_listing(http.emulator_url, ds)),
        )

        def do_gets() -> None:
            r = limits.gets_in_series(http.peer_url, ds, b.gets_cap)
            run.limit(p, "gets_series", r.seconds, capped=not r.complete, done=r.done)

        attempt("gets_series", do_gets)

        def do_links() -> None:
            links_s = limits.link_batches(http.emulator_url, ds)
            gets = run.limits[p]["gets_series"]
            run.limit(p, "links_gets", links_s + gets.runs[-1], capped=gets.capped, links_s=links_s)

        attempt("links_gets", do_links)


# ---- machine info ------------------------------------------------------------------------------


def httpdirfs_version() -> str:
    p = subprocess.run(["httpdirfs", "--version"], capture_output=True, text=True, check=False)
    for line in (p.stdout + p.stderr).splitlines():
        if line.startswith("HTTPDirFS version"):
            return line.removeprefix("HTTPDirFS version").strip()
    return "?"


def machine_info(run: Run) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    git = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    default_xattrs = subprocess.run(
        [PY, "-c", "from fusefs.config import MountOptions; print(MountOptions().xattrs)"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": version_of(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": sys.version.split()[0],
        "rclone": version_of(["rclone", "version"]),
        "httpdirfs": httpdirfs_version(),
        "nginx": servers.nginx_version(),
        "curl": version_of(["curl", "--version"]),
        "openssl": version_of(["openssl", "version"]),
        "fusefs_git": git,
        "fusefs_default_xattrs": default_xattrs or "?",
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# ---- output ------------------------------------------------------------------------------------


def size_label(n: int) -> str:
    return f"{n // GiB} GiB" if n >= GiB else f"{n // MiB} MiB"


def write_report(run: Run, info: dict[str, Any], systems: list[str]) -> Path:
    spec = run.ds.spec
    big, count, huge = size_label(spec.big), f"{spec.small_count:,}", size_label(spec.huge)
    mid = size_label(spec.mid)
    ms = measure_specs(big, mid, count, huge)
    ls = limit_specs(big, mid, count)
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(run.started))
    info = {**info, "loadavg_end": Path("/proc/loadavg").read_text().split()[:3]}
    elapsed = time.time() - run.started
    doc: dict[str, Any] = {
        "stamp": stamp,
        "mode": run.mode,
        "profiles": run.profiles,
        "elapsed_s": round(elapsed, 1),
        "budget": asdict(run.budget),
        "dataset": {**asdict(spec), "root": str(run.ds.root)},
        "machine": info,
        "commands": run.commands,
        "timings_s": run.timings,
        "wrong_bytes": run.wrong,
        "interrupted": run.interrupted,
        "profiles_results": {},
    }
    interrupted = " — INTERRUPTED, partial" if run.interrupted else ""
    md: list[str] = [
        f"## fusefs benchmark {stamp} ({run.mode}, {elapsed / 60:.1f} min{interrupted})",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, Linux {info['kernel']}, "
        f"{info['os']}; load average {' '.join(info['loadavg_start'])} at the start, "
        f"{' '.join(info['loadavg_end'])} at the end (shared machine).",
        f"Versions: fusefs {info['fusefs_git']} "
        f"(default `xattrs` = {info['fusefs_default_xattrs']}), "
        f"Python {info['python']}, {info['rclone']}, httpdirfs {info['httpdirfs']}, "
        f"{info['nginx']}, {info['curl'].split(' (')[0]}, {info['openssl']}.",
        f"Data: {big} random, {size_label(spec.mid)} random, {count} × 1 KiB, "
        f"{huge} patterned (random reads, RSS); median of {run.budget.reps} run(s) in `lan`, "
        f"{run.budget.wan_reps} in `wan`, (min–max) when more than one.",
        "↑ higher is better, ↓ lower is better; **bold**: the best peer; † stopped by a time cap "
        f"(reads: {run.budget.read_cap:g} s, cp -r: {run.budget.cp_cap:g} s, random reads: "
        f"{run.budget.rand_cap:g} s); ratios: the fusefs value ÷ the limit, ÷ the best peer's; "
        "· not run for `xattrs = false` (xattrs change metadata calls only).",
        "",
    ]
    for prof in run.profiles:
        notes: list[str] = []
        results = run.results.get(prof, {})
        lims = run.limits.get(prof, {})
        md.append(markdown_table(prof, results, lims, ms, ls, systems, notes))
        md.append("")
        if notes:
            md += [f"{i}. {n}" for i, n in enumerate(notes, 1)]
            md.append("")
        doc["profiles_results"][prof] = {
            "measures": cells_to_json(results),
            "limits": cells_to_json({"limits": lims})["limits"] if lims else {},
            "ratios": ratios(results, lims, ms),
        }
    if run.fleet or run.fleet_error:
        md += [
            f"### fleet: the same {big} cold on 3 mounts at once (LAN, separate caches)",
            "",
            "| | cloud bytes sent, MiB ↓ | × the file | wall time until all 3 had it, s ↓ |",
            "|---|---|---|---|",
        ]
        for r in run.fleet:
            label = "with the Redis tier" if r.with_tier else "without (3 single hosts)"
            md.append(
                f"| {label} | {r.cloud_bytes / (1 << 20):,.0f} | {r.cloud_bytes / r.file_bytes:.2f}"
                f" | {r.wall_s:.2f} |"
            )
        if run.fleet_error:
            md.append(f"| failed | {run.fleet_error.splitlines()[0]} | | |")
        md.append("")
        doc["fleet"] = [asdict(r) for r in run.fleet] or {"error": run.fleet_error}
    md.append("Limits of this run:")
    md.append("")
    md.append("| limit | " + " | ".join(f"`{p}`" for p in run.profiles) + " |")
    md.append("|---|" + "---|" * len(run.profiles))
    from .report import fmt_cell

    for lim in ls:
        cells = []
        for prof in run.profiles:
            c = run.limits.get(prof, {}).get(lim.key)
            cells.append(fmt_cell(c, lim.unit, []) if c else "")
        md.append(f"| {lim.label}, {lim.unit} | " + " | ".join(cells) + " |")
    md.append("")
    md.append("Commands:")
    md.append("")
    for name, cmd in run.commands.items():
        if isinstance(cmd, dict):
            for key, cmds in cmd.items():
                md += [f"- {SYSTEM_LABELS.get(key, key)}: `{c}`" for c in cmds]
        else:
            md.append(f"- {name}: `{cmd}`")
    if run.wrong:
        md += ["", "**WRONG BYTES** (the run failed):", *(f"- {w}" for w in run.wrong)]
    text = "\n".join(md) + "\n"
    (out_dir / f"{stamp}.md").write_text(text)

    def clean(o: Any) -> Any:
        if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    (out_dir / f"{stamp}.json").write_text(json.dumps(clean(doc), indent=1, ensure_ascii=False))
    print()
    print(text)
    say(f"written: {out_dir / stamp}.md and .json")
    return out_dir / f"{stamp}.md"


# ---- main --------------------------------------------------------------------------------------


def preflight() -> None:
    if os.geteuid() != 0:
        raise SystemExit("scripts/bench: run as root (drop_caches, nginx, mlock)")
    for tool in ("nginx", "rclone", "httpdirfs", "curl", "openssl", "fusermount3", "cp", "ls"):
        if shutil.which(tool) is None:
            raise SystemExit(f"scripts/bench: {tool} not found (scripts/bench installs it)")
    if not os.path.exists("/dev/fuse"):
        raise SystemExit("scripts/bench: /dev/fuse is missing")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller data set, one run per measure")
    ap.add_argument("--profile", choices=["lan", "wan", "both"], default="both")
    ap.add_argument("--systems", default=",".join(ALL), help=f"comma list of {', '.join(ALL)}")
    ap.add_argument(
        "--reps", type=int, default=0, help="runs per measure in lan (default 3, quick 1)"
    )
    ap.add_argument("--wan-reps", type=int, default=0, help="runs per measure in wan (default 1)")
    ap.add_argument("--no-rss", action="store_true", help="skip the large-object RSS stream")
    ap.add_argument("--no-fleet", action="store_true", help="skip the fleet row (3 mounts, Redis)")
    ap.add_argument("--workdir", default=str(ROOT / ".fusefs-bench"))
    args = ap.parse_args(argv)
    preflight()

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM both end the run cleanly (also when started with SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    keys = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [k for k in keys if k not in ALL]
    if bad:
        ap.error(f"unknown system(s) {bad}; choose from {', '.join(ALL)}")
    run = Run(args)
    run.profiles = ["lan", "wan"] if args.profile == "both" else [args.profile]
    say(f"mode {run.mode}, profiles {', '.join(run.profiles)}, systems {', '.join(keys)}")
    run.ds = dataset.ensure(run.work, run.mode)
    info = machine_info(run)
    systems = make_systems(keys, run.work, run.ds)
    procs: list[Proc] = []
    try:
        pinner = dataset.start_pinner(run.ds, run.work)
        procs.append(pinner)
        certs = servers.make_certs(run.work / "tls")
        nginx = servers.start_nginx(run.ds, run.work, certs)
        procs.append(nginx.proc)
        run.commands["nginx"] = " ".join(nginx.proc.argv) + f"   # {nginx.conf}"
        with run.timed("limits_local"):
            measure_local_limits(run)
        for name in run.profiles:
            prof = Profile(run, name, nginx, certs)
            t_prof = time.perf_counter()
            try:
                prof.start()
                with run.timed(f"limits_{name}"):
                    measure_net_limits(run, prof)
                reps = run.reps(name)
                for rep in range(reps):
                    for system in systems:
                        t0 = time.perf_counter()
                        say(f"{name} run {rep + 1}/{reps}: {system.label}")
                        # xattrs change metadata calls only: the data-plane extras are fusefs's
                        full = system.key != "fusefs-noxattr"
                        step_main(run, prof, system, rep, with_parallel=full)
                        if full:
                            step_tls(run, prof, system, rep)
                        dt = time.perf_counter() - t0
                        run.timings[f"{name}/{rep}/{system.key}"] = round(dt, 1)
                        say(f"  {system.label}: {dt:.0f} s")
                if name == "lan" and not args.no_rss:
                    for system in systems:
                        if system.key == "fusefs-noxattr":
                            continue
                        t0 = time.perf_counter()
                        say(f"{name}: {system.label}: streaming {size_label(run.ds.spec.huge)}")
                        step_rss(run, prof, system)
                        run.timings[f"{name}/rss/{system.key}"] = round(time.perf_counter() - t0, 1)
            except Exception as exc:
                loud(f"profile {name} aborted: {exc}")
                for system in systems:
                    run.fail(name, ["seq_cold"], system.key, exc, "")
            finally:
                prof.stop()
                run.timings[f"{name}/total"] = round(time.perf_counter() - t_prof, 1)
        if not args.no_fleet:
            from . import fleet

            t0 = time.perf_counter()
            try:
                run.fleet, cmds = fleet.measure(run.work, run.ds)
                run.commands["fleet"] = " ; ".join(cmds)
            except BenchError as exc:
                run.fleet_error = str(exc)
                loud(f"fleet row failed: {exc}")
            run.timings["fleet"] = round(time.perf_counter() - t0, 1)
    except KeyboardInterrupt:
        run.interrupted = True
        loud("interrupted: unmounting, stopping the servers, writing what was measured")
    finally:
        for s in systems:
            with contextlib.suppress(Exception):
                from .util import fuse_unmount

                fuse_unmount(s.mnt)
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(run.work / "cache", ignore_errors=True)  # GiBs of the systems' caches
        shutil.rmtree(run.work / "cp-dest", ignore_errors=True)
        run.commands["systems"] = {s.key: s.commands for s in systems}
        for s in systems:
            run.timings[f"mount/{s.key}"] = max(s.mount_seconds, default=0.0)
            run.timings[f"unmount/{s.key}"] = max(s.unmount_seconds, default=0.0)
            run.timings[f"mount+unmount_total/{s.key}"] = round(
                sum(s.mount_seconds) + sum(s.unmount_seconds), 1
            )
        from .util import DROPS

        run.timings["drop_caches_total"] = round(sum(DROPS), 1)
        run.timings["drop_caches_count"] = len(DROPS)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    write_report(run, info, keys)
    if run.interrupted:
        return 130
    if run.wrong:
        loud(f"{len(run.wrong)} measure(s) returned WRONG BYTES: the bench FAILS")
        return 1
    return 0
