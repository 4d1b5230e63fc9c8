"""Browse, search, watch and select a library's clips in a web browser.

Starts a web server for one library: a search box (caption, visual, hybrid, as `recap search`) with
"more like this" on every clip, filter controls that write the `--where` expression they apply
(shown and editable), a results grid whose thumbnails preview on hover and play on click, selections
saved to LIB/selections/NAME.parquet (then `recap export LIB --selection NAME --out SHARDS`), and
the report's plots on a Stats page. The JSON API is documented at /docs.

It binds to 127.0.0.1 (this machine only) unless --host says otherwise; there is no
authentication, so --host 0.0.0.0 lets anyone who reaches the port read the library and save
selections. Only committed parts are read, so it can run while `recap ingest` writes; only clip
files inside the library are served (a `reference` clip's source video is shown as uri and time
range, not served). Thumbnails and the report go to LIB/.ui/.

Examples:
  recap serve lib                      # then open http://127.0.0.1:8000
  recap serve lib --port 8080 --milvus-uri http://milvus:19530
  ssh -L 8000:127.0.0.1:8000 gpu-node  # reach a server on another machine without exposing it
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

import uvicorn

from pipeline.cli.index import add_common
from pipeline.embed import load_index_config
from pipeline.library import LibraryError
from pipeline.serve import create_app
from trainer.typedconfig import ConfigError

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]", "::1"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 shares it, unauthenticated)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (so port 0 can say which port it got before serving)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    return sock


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        print(f"recap serve: error: --port {args.port} is not a port (0-65535)", file=sys.stderr)
        return 2
    loopback = is_loopback(args.host)
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        print(f"recap serve: error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    try:
        cfg = load_index_config(args.config, args.overrides)
        app = create_app(args.library, cfg, milvus_uri=args.milvus_uri, token=args.token,
                         allowed_hosts=[*LOOPBACK_NAMES, host] if loopback else None, bind=url)
    except (ConfigError, LibraryError, FileNotFoundError, OSError) as e:
        sock.close()
        print(f"recap serve: error: {e}", file=sys.stderr)
        return 2
    print(f"serving {args.library} at {url}  (API docs: {url}/docs)", flush=True)
    if loopback:
        print(f"listening on loopback {shown} only: other machines cannot connect "
              "(--host 0.0.0.0 to share it; there is no authentication)", flush=True)
    else:
        print(f"WARNING: listening on {shown}, reachable from other machines, without authentication: anyone "
              "who reaches this port can read the library and save selections", flush=True)
    print("Ctrl-C stops it", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
