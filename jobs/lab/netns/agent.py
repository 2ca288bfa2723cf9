"""A stand-in for pilot-agent's local endpoints in a lab probe pod (127.0.0.1:15020).

In a pod, ``POST /quitquitquit`` goes to pilot-agent, a process beside Envoy: it answers
200 and then stops Envoy. Routing it to Envoy's own admin cannot answer reliably (Envoy
is already going away), so each probe pod with a sidecar runs this small process, as
UID 1337 like pilot-agent. ``GET /healthz/ready`` answers what Envoy's ``/ready`` says.

Run: ``python -m jobs.lab.netns.agent ADMIN_PORT LISTEN_PORT``.
"""

from __future__ import annotations

import http.client
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _admin(method: str, port: int, path: str) -> int:
    """One request to Envoy's admin on loopback; its status, 503 when unreachable."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        resp = conn.getresponse()
        resp.read()
        return int(resp.status)
    except (OSError, http.client.HTTPException):
        return 503
    finally:
        conn.close()


def serve(admin_port: int, port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/healthz/ready":
                status = _admin("GET", admin_port, "/ready")
                self._answer(200 if status == 200 else 503, b"")
            else:
                self._answer(404, b"")

        def do_POST(self) -> None:
            if self.path != "/quitquitquit":
                self._answer(404, b"")
                return
            self._answer(200, b"OK\n")
            self.wfile.flush()
            # Answer first, then stop Envoy and ourselves, as pilot-agent does.
            _admin("POST", admin_port, "/quitquitquit")
            threading.Thread(target=server.shutdown, daemon=True).start()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
