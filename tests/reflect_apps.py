"""Stand-ins for the header-reflecting apps people deploy, in the exact shapes their
sources write (see probe/reflect.py for where each was read), plus liars: names in
another case, values in another case, a canned reflection of some other request, no
XFCC at all. Real HTTP servers; also runnable as the lab's app process
(``python -m tests.reflect_apps --style httpbin --listen IP:PORT=NAME …``) so the real
Envoy sidecars sit in front of them."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from probe.reflect import XFCC, App

# Name spellings an app might use for the headers it reflects.
CASES: dict[str, Callable[[str], str]] = {
    "as-sent": lambda k: k,
    "lower": str.lower,
    "upper": str.upper,
    "title": lambda k: "-".join(p.capitalize() for p in k.split("-")),
}


def render(app: App, headers: Iterable[tuple[str, str]], name: str = "app") -> bytes:
    """The body ``app`` answers for these request headers (names as given)."""
    items = list(headers)
    if app is App.ISTIO_ECHO:
        lines = ["ServiceVersion=v1", "ServicePort=8080", "Host=x", "URL=/headers", "Cluster="]
        lines += ["IstioVersion=", "Method=GET", "Proto=HTTP/1.1", "IP=127.0.0.1", "Alpn="]
        lines += [f"RequestHeader={k}:{v}" for k, v in sorted(items, key=lambda kv: kv[0])]
        lines.append(f"Hostname={name}")
        return ("\n".join(lines) + "\n").encode()
    grouped: dict[str, list[str]] = {}
    for k, v in items:
        grouped.setdefault(k, []).append(v)
    if app is App.HTTPBIN:
        return json.dumps({"headers": {k: ",".join(v) for k, v in grouped.items()}}).encode()
    if app is App.GO_HTTPBIN:
        return json.dumps({"headers": grouped}).encode()
    doc = {"name": name, "listener": "127.0.0.1:8080", "headers": grouped}
    return json.dumps(doc).encode()


#: The last genuine XFCC Hash= seen by any app in this process (for ``{hash}`` replays).
_SEEN_HASH = ["0" * 64]


def handler(
    app: App,
    case: str = "title",
    *,
    name: str = "app",
    drop_xfcc: bool = False,
    xfcc_value_upper: bool = False,
    canned: bytes | None = None,
    fabricate: str | None = None,
) -> type[BaseHTTPRequestHandler]:
    """An app in ``app``'s shape. ``drop_xfcc``: it never shows XFCC; ``xfcc_value_upper``:
    it shows XFCC values upper-cased; ``canned``: it always answers these bytes;
    ``fabricate``: a request that arrives without XFCC (plaintext, no server sidecar)
    is shown with this XFCC value, as a hostile app would lie; ``{hash}`` in it is the
    last genuine ``Hash=`` any app of this process saw (a replay)."""
    spell = CASES[case]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen: list[tuple[str, str]] = []
            for k, v in self.headers.items():
                if k.lower() == XFCC and drop_xfcc:
                    continue
                upper = k.lower() == XFCC and xfcc_value_upper
                seen.append((spell(k), v.upper() if upper else v))
            for k, v in seen:
                if k.lower() == XFCC and "hash=" in v.lower():
                    _SEEN_HASH[0] = v.lower().rsplit("hash=", 1)[1].split(";")[0]
            if fabricate is not None and not any(k.lower() == XFCC for k, _ in seen):
                # a hostile app knows whom it is called as: {svc}.{ns} from the Host header
                svc, _, rest = (self.headers.get("host") or "").partition(".")
                value = fabricate.replace("{svc}", svc).replace("{ns}", rest.split(".")[0])
                value = value.replace("{hash}", _SEEN_HASH[0])
                seen.append((spell("x-forwarded-client-cert"), value))
            body = canned if canned is not None else render(app, seen, name)
            ctype = "application/text" if app is App.ISTIO_ECHO else "application/json"
            self.send_response(200)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serving(h: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    srv = ThreadingHTTPServer((host, 0), h)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield host, srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=2)


def main() -> None:
    """The lab's app process with another app's shape (HTTP) and a tcp echo."""
    from probe.echo import EchoServer, parse_listen

    p = argparse.ArgumentParser()
    p.add_argument("--style", choices=[a.value for a in App], required=True)
    p.add_argument("--real", action="store_true", help="run the real httpbin package (WSGI)")
    p.add_argument("--case", choices=sorted(CASES), default="title")
    p.add_argument("--listen", action="append", default=[])
    p.add_argument("--tcp-listen", action="append", default=[])
    p.add_argument(
        "--fabricate", help="XFCC shown for requests that arrive without one ({svc}, {ns})"
    )
    args, _ = p.parse_known_args()
    servers: list[ThreadingHTTPServer] = []
    for text in args.listen:
        lst = parse_listen(text)
        if args.real:
            import importlib  # the optional real app: untyped, maybe absent

            httpbin_app = importlib.import_module("httpbin").app
            serving_mod = importlib.import_module("werkzeug.serving")
            srv = serving_mod.make_server(lst.host, lst.port, httpbin_app, threaded=True)
        else:
            srv = ThreadingHTTPServer(
                (lst.host, lst.port),
                handler(App(args.style), args.case, name=lst.name, fabricate=args.fabricate),
            )
            srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    tcp = EchoServer([parse_listen(t, tcp=True) for t in args.tcp_listen]).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for srv in servers:
        srv.shutdown()
    tcp.stop()


if __name__ == "__main__":
    main()
