"""The servers of a run: nginx (plain and TLS, the static bytes), the delaying proxy of the
``wan`` profile, the emulator (KooDrive metadata, links pointing at nginx or the proxy), and the
bench's own certificate authority."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .dataset import Dataset
from .util import PY, ROOT, BenchError, Proc, free_port, run, wait_port, wait_port_file

WAN_DELAY = 0.020


@dataclass
class Certs:
    ca: Path
    cert: Path
    key: Path


def make_certs(d: Path) -> Certs:
    """A throw-away CA and a leaf for 127.0.0.1 / localhost signed by it (made once)."""
    d.mkdir(parents=True, exist_ok=True)
    certs = Certs(d / "ca.pem", d / "server.pem", d / "server.key")
    if certs.ca.exists() and certs.cert.exists() and certs.key.exists():
        return certs
    ca_key = d / "ca.key"
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=fusefs bench CA",
            "-keyout",
            str(ca_key),
            "-out",
            str(certs.ca),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]
    )
    csr = d / "server.csr"
    run(
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(certs.key),
            "-out",
            str(csr),
        ]
    )
    ext = d / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(certs.ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            str(ext),
            "-out",
            str(certs.cert),
        ]
    )
    return certs


NGINX_CONF = """\
# written by scripts/bench: static bytes of the data set, plain and TLS, and a TLS front for the
# delaying proxy (wan profile)
user root;
worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    types {{ }}
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fastcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    server {{
        listen 127.0.0.1:{http};
        root {root};
        autoindex on;
        autoindex_exact_size on;
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        root {root};
        autoindex on;
        autoindex_exact_size on;
    }}
    upstream delay_proxy {{
        server 127.0.0.1:{proxy};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{https_wan} ssl;
        location / {{
            proxy_pass http://delay_proxy;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_buffer_size 1m;
            proxy_buffers 4 1m;
            proxy_busy_buffers_size 2m;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    proc: Proc
    conf: Path
    http: int
    https: int
    https_wan: int
    proxy_port: int  # where the delaying proxy must listen (the TLS front's upstream)


def start_nginx(ds: Dataset, work: Path, certs: Certs) -> Nginx:
    d = work / "nginx"
    d.mkdir(parents=True, exist_ok=True)
    ports = {
        "http": free_port(),
        "https": free_port(),
        "https_wan": free_port(),
        "proxy": free_port(),
    }
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=d, root=ds.root, cert=certs.cert, key=certs.key, **ports))
    run(["nginx", "-t", "-p", str(d), "-c", str(conf)])
    proc = Proc("nginx", ["nginx", "-p", str(d), "-c", str(conf)], work / "logs" / "nginx.log")
    proc.start()
    for name in ("http", "https", "https_wan"):
        wait_port(ports[name], proc=proc)
    return Nginx(proc, conf, ports["http"], ports["https"], ports["https_wan"], ports["proxy"])


def start_proxy(work: Path, upstream_port: int, listen_port: int) -> Proc:
    port_file = work / "proxy.port"
    port_file.unlink(missing_ok=True)
    proc = Proc(
        "delay-proxy",
        [
            PY,
            "-m",
            "benchmarks.proxy",
            "--upstream",
            f"127.0.0.1:{upstream_port}",
            "--delay",
            str(WAN_DELAY),
            "--port",
            str(listen_port),
            "--port-file",
            str(port_file),
        ],
        work / "logs" / "proxy.log",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()
    wait_port_file(port_file, proc)
    return proc


@dataclass
class Emulator:
    proc: Proc
    url: str
    link_base: str


def start_emulator(ds: Dataset, work: Path, name: str, link_base: str, wan: bool) -> Emulator:
    """``python -m fusefs.emulator --link-base``; in ``wan`` every route waits WAN_DELAY."""
    port_file = work / f"emulator-{name}.port"
    port_file.unlink(missing_ok=True)
    argv = [
        PY,
        "-m",
        "fusefs.emulator",
        "--world",
        str(ds.root),
        "--port-file",
        str(port_file),
        "--link-base",
        link_base,
    ]
    faults = work / f"faults-{name}.json"
    plan: dict[str, object] = {"presign_expires": 86400}
    if wan:
        plan["rules"] = [{"route": "*", "kind": "latency", "seconds": WAN_DELAY}]
    faults.write_text(json.dumps(plan))
    argv += ["--faults", str(faults)]
    proc = Proc(f"emulator-{name}", argv, work / "logs" / f"emulator-{name}.log").start()
    port = wait_port_file(port_file, proc)
    return Emulator(proc, f"http://127.0.0.1:{port}", link_base)


def nginx_version() -> str:
    p = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return (p.stderr or p.stdout).strip()


def check_https(url: str, ca: Path) -> None:
    p = subprocess.run(
        ["curl", "-sS", "--cacert", str(ca), "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if p.stdout.strip() != "200":
        raise BenchError(f"https check of {url} failed: {p.stdout} {p.stderr}")
