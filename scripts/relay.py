"""A TCP relay for the end-to-end tests and the benches: listens on LISTEN and forwards every
connection to TARGET (each HOST:PORT, or a port on 127.0.0.1).

Stopping it with SIGSTOP freezes every connection through it without closing any, which is what a NAT
that silently drops a connection, or a failover, looks like to both ends.

With --rtt-ms, every byte is held for half the round trip in each direction, as a network between two
hosts would hold it (these kernels have no netem qdisc to do it). Bytes are not held back for the ones
before them to be delivered: a stream keeps its throughput and only gains the delay.

    python3 relay.py [--rtt-ms MS] LISTEN TARGET
"""

import argparse
import asyncio
import time


def address(text):
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


async def pipe(reader, writer, delay):
    """Copies reader to writer, each chunk `delay` seconds after it was read."""
    queue = asyncio.Queue()

    async def deliver():
        while (item := await queue.get()) is not None:
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    delivery = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            if delay:
                queue.put_nowait((time.monotonic() + delay, data))
            else:
                writer.write(data)
                await writer.drain()
        queue.put_nowait(None)
        await delivery
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        delivery.cancel()
        writer.close()


async def main(listen, target, delay):
    async def relay(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, server_writer, delay), pipe(server_reader, client_writer, delay)
        )

    server = await asyncio.start_server(relay, *listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round-trip delay to add")
    parser.add_argument("listen", type=address)
    parser.add_argument("target", type=address)
    args = parser.parse_args()
    asyncio.run(main(args.listen, args.target, args.rtt_ms / 2000.0))
