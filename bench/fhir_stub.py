"""A local FHIR server stand-in for W3: answers every query after a fixed delay.

    python bench/fhir_stub.py DELAY_MS BODIES.json   -> prints its port, serves until killed

BODIES.json maps a resource type to the JSON answered for reads and searches of that type.
GET /__arrivals answers the time.monotonic() at which each query's request line arrived, so that the
bench can tell how close together one call's queries reach the server (the clock is system-wide).
asyncio, keep-alive, one write per response: concurrent queries are not serialised by the stub
itself, so the benchmark measures the service's client, not this stand-in."""

import asyncio
import collections
import json
import sys
import time

delay = float(sys.argv[1]) / 1000
bodies = {name: json.dumps(value).encode() for name, value in json.load(open(sys.argv[2])).items()}
empty = b'{"resourceType":"Bundle","type":"searchset","entry":[]}'
arrivals: collections.deque[float] = collections.deque(maxlen=100_000)  # a long soak stays small


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            if path == "/__arrivals":
                payload = json.dumps(list(arrivals)).encode()
            else:
                arrivals.append(time.monotonic())
                await asyncio.sleep(delay)
                resource_type = path.split("/fhir/", 1)[-1].split("?")[0].split("/")[0]
                payload = bodies.get(resource_type, empty)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
