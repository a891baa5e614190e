"""Slow clients against a served instance: do probes and hook calls still get answers?

    python bench/slow_clients.py PORT [--headers 200] [--bodies 50] [--seconds 20]

Opens slow-header connections (one header byte every 2 s) and slow-body connections (headers
declaring a 64 KB body, then one body byte every 2 s), reopening any the server closes, on
loopback only; meanwhile probes `/healthz` every 0.25 s and posts a hook call every second, and
reports the probe latencies, failures and how many slow connections the server closed. Bounded in
time and count; used by `make soak`, `make slow-clients` and (in a short form) the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

HOOK_BODY = (Path(__file__).resolve().parent.parent / "fixtures" / "requests" / "acute-lbp-defer.json").read_bytes()


async def _slow_connection(port: int, kind: str, stop: float, closed: list[int]) -> None:
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        try:
            if kind == "body":
                writer.write(b"POST /cds-services/lumbar-mri-order-select HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 65536\r\n\r\n")  # fmt: skip
                payload = b"{"
            else:
                writer.write(b"GET /healthz HTTP/1.1\r\n")
                payload = b"X"
            await writer.drain()
            while time.monotonic() < stop:
                await asyncio.sleep(2.0)
                if reader.at_eof():
                    break
                writer.write(payload)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            closed[0] += 1 if time.monotonic() < stop else 0
            writer.close()


async def _timed_request(port: int, request: bytes, timeout: float = 5.0) -> tuple[float | None, int | None]:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        return time.monotonic() - started, int(status_line.split()[1])
    except (OSError, TimeoutError, IndexError, ValueError):
        return None, None


async def _probe(port: int, request: bytes, every: float, stop: float, results: list) -> None:
    while time.monotonic() < stop:
        results.append(await _timed_request(port, request))
        await asyncio.sleep(every)


async def _run(port: int, headers: int, bodies: int, seconds: float, warmup: float) -> dict[str, Any]:
    stop = time.monotonic() + seconds
    closed = [0]
    slow = [asyncio.create_task(_slow_connection(port, "header", stop, closed)) for _ in range(headers)]
    slow += [asyncio.create_task(_slow_connection(port, "body", stop, closed)) for _ in range(bodies)]
    await asyncio.sleep(warmup)  # let the slow connections open before probing
    health: list = []
    hooks: list = []
    health_request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    hook_request = (b"POST /cds-services/lumbar-mri-order-select HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\nContent-Length: " + str(len(HOOK_BODY)).encode()
                    + b"\r\n\r\n" + HOOK_BODY)  # fmt: skip
    await asyncio.gather(_probe(port, health_request, 0.25, stop, health), _probe(port, hook_request, 1.0, stop, hooks))
    await asyncio.gather(*slow, return_exceptions=True)
    return {"health": _summary(health), "hook": _summary(hooks), "slow_connections_closed": closed[0],
            "slow_headers": headers, "slow_bodies": bodies, "seconds": seconds}  # fmt: skip


def _summary(results: list[tuple[float | None, int | None]]) -> dict[str, Any]:
    # answered: any HTTP status within the time (under CDS_AUTH=required a hook call without a token is a 401)
    answered = [latency for latency, status in results if latency is not None and status is not None and status < 500]
    return {
        "probes": len(results),
        "answered": len(answered),
        "max_s": round(max(answered), 3) if answered else None,
        "p50_s": round(statistics.median(answered), 4) if answered else None,
        "within_1s": sum(1 for latency in answered if latency <= 1.0),
    }


def run(port: int, headers: int = 200, bodies: int = 50, seconds: float = 20.0, warmup: float = 2.0) -> dict[str, Any]:
    return asyncio.run(_run(port, headers, bodies, seconds, warmup))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--headers", type=int, default=200)
    parser.add_argument("--bodies", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(json.dumps(run(args.port, args.headers, args.bodies, args.seconds), indent=2))


if __name__ == "__main__":
    main()
