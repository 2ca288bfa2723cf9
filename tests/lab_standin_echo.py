"""A stand-in for ``mtlsprobe serve`` used only by lab tests until (and unless) the
real echo responder is importable: one asyncio process serving many addresses,
HTTP answers with the request headers as JSON, TCP echoes bytes."""

from __future__ import annotations

import asyncio
import json
import sys


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
    try:
        while True:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = json.dumps({"name": name, "headers": headers}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await asyncio.wait_for(reader.read(4096), 10):
            writer.write(data)
            await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(argv: list[str]) -> None:
    servers = []
    it = iter(argv)
    for flag in it:
        spec = next(it)
        addr, _, name = spec.partition("=")
        host, _, port = addr.rpartition(":")
        if flag == "--listen":

            async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: str = name) -> None:
                await _http(r, w, n)

            servers.append(await asyncio.start_server(cb, host, int(port)))
        else:
            servers.append(await asyncio.start_server(_tcp, host, int(port)))
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
