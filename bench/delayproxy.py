"""
A TCP proxy that delays every byte by a fixed time in each direction.

It models a network link with a round-trip time of twice ``--delay``, on
loopback only. Ordering is preserved; throughput is not limited.

    python bench/delayproxy.py --listen 127.0.0.1:2600 \
        --target 127.0.0.1:2525 --delay 0.025
"""

from __future__ import annotations

import argparse
import asyncio
import time


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def sender() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(sender())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
    finally:
        queue.put_nowait((time.monotonic() + delay, b""))
        await task


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    async def handle(
        client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        server_r, server_w = await asyncio.open_connection(*target)
        await asyncio.gather(
            _pump(client_r, server_w, delay),
            _pump(server_r, client_w, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, *listen)
    async with server:
        await server.serve_forever()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loopback only")
    return host, int(port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", type=_addr, required=True)
    parser.add_argument("--target", type=_addr, required=True)
    parser.add_argument("--delay", type=float, default=0.025, help="seconds each way")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.target, args.delay))
