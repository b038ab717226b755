"""Where dbkeeper's per-query relay overhead comes from, and what a fast path would win.

    ./.venv/bin/python -m bench.relay_experiment [--iterations N] [--rounds R]

Runs, interleaved with direct TCP, dbkeeper (the built layer), socat and the bare uvloop relay,
the same bare uvloop server (this file, --serve) in three modes, twice each (two processes per
mode, so process-to-process variation shows):

  plain   forwards bytes (like bench/minirelay.py)
  relay   feeds every chunk through dbkeeper's own `dbkeeper.relay.Relay` (imported from the layer),
          exactly as dbkeeper does once a session is relaying
  lean    a prototype fast path on top of that Relay: a chunk that is exactly one whole command
          packet (not one dbkeeper intercepts), arriving when the previous reply provably ended
          (last chunk ends with a final EOF, or is a single OK packet), is written at once and only
          the last reply chunk is kept; anything else falls back to the Relay for good. Edge cases
          (COM_SET_OPTION bookkeeping, ERR replies, command counting) are ignored: it is a
          measurement of the achievable gain, not an implementation.

If relay ~ dbkeeper and plain ~ bare uvloop, the overhead is the Relay hot path itself.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

MODES = ("plain", "relay", "lean")


# --------------------------------------------------------------------------- the server (--serve)

def serve(listen_port: int, upstream_port: int, lib: str, mode: str) -> None:
    sys.path.insert(0, lib)
    import asyncio

    import uvloop

    Relay = object
    if mode != "plain":
        from dbkeeper.protocol.commands import INTERCEPTED
        from dbkeeper.relay import Relay

    class LeanRelay(Relay):
        _last = None
        _lean = True

        def client_data(self, data):
            n = len(data)
            whole_packet = n > 4 and (data[0] | data[1] << 8 | data[2] << 16) == n - 4
            if self._lean and whole_packet and data[4] not in INTERCEPTED:
                last = self._last
                if (last is None
                        or (len(last) >= 9 and last[-9] == 5 and last[-5] == 0xFE and not last[-2] & 0x08)
                        or (len(last) > 4 and last[4] == 0
                            and len(last) == 4 + (last[0] | last[1] << 8 | last[2] << 16))):
                    self._last = None
                    self._upstream_write(data)
                    return None
            self._lean = False  # anything unusual: the full machinery from here on
            return super().client_data(data)

        def upstream_data(self, data):
            if self._lean:
                self._client_write(data)
                self._last = data
            else:
                super().upstream_data(data)

    class Upstream(asyncio.Protocol):
        def __init__(self, client):
            self.client, self.transport, self.chunks = client, None, 0

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            client = self.client
            if mode == "plain":
                client.transport.write(data)
                return
            if client.relay is None:  # handshake: greeting, then the OK: then relay commands
                client.transport.write(data)
                self.chunks += 1
                if self.chunks == 2:
                    client.relay = (LeanRelay if mode == "lean" else Relay)(client, self)
                return
            client.relay.upstream_data(data)

        def connection_lost(self, exc):
            self.client.transport.close()

        def forget_options(self):
            pass

    class Client(asyncio.Protocol):
        def __init__(self):
            self.relay = self.upstream = self.transport = None

        def connection_made(self, transport):
            self.transport = transport
            transport.pause_reading()
            asyncio.ensure_future(self._connect())

        async def _connect(self):
            loop = asyncio.get_running_loop()
            _, self.upstream = await loop.create_connection(lambda: Upstream(self), "127.0.0.1", upstream_port)
            self.transport.resume_reading()

        def data_received(self, data):
            if self.relay is None:
                self.upstream.transport.write(data)
            elif self.relay.client_data(data) is not None:
                self.transport.close()

        def connection_lost(self, exc):
            if self.upstream is not None and self.upstream.transport is not None:
                self.upstream.transport.close()

        def set_reading(self, reading):
            pass

        def upstream_lost(self):
            self.transport.close()

    async def main():
        loop = asyncio.get_running_loop()
        await loop.create_server(Client, "127.0.0.1", listen_port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


# --------------------------------------------------------------------------- the driver

def drive(iterations: int, rounds: int) -> None:
    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo))
    from bench import latency, targets
    from bench.stats import percentile
    from tests.dbkeeper_process import extension_python
    from tests.mariadb import free_port

    layer, fingerprint = targets.snapshot_layer()
    env = targets.start(layer, with_tls=False)
    procs = []
    try:
        lib = str(layer / "dbkeeper" / "lib")
        for i, mode in enumerate(MODES + MODES):
            port = free_port()
            proc = subprocess.Popen([extension_python(), "-I", "-S", __file__, "--serve", str(port),
                                     str(env.db.port), lib, mode], stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{mode} server did not start")
            name = f"{mode}{i // len(MODES) + 1}"
            env.endpoints[name] = targets.Endpoint(name, dict(host="127.0.0.1", port=port), proc.pid, "uvloop")
        names = ["direct_tcp", "dbk_tcp", "socat_tcp", "uvloop_tcp"] + [f"{m}{k}" for k in (1, 2) for m in MODES]
        sessions = latency.open_sessions(env, tuple(names))
        print(f"layer {fingerprint}; p50 µs, {iterations} interleaved iterations per round")
        print(f"{'round/step':24s}" + "".join(f"{n:>11s}" for n in names))
        try:
            for r in range(rounds):
                res = latency.run(env, sessions, iterations, 10, progress=lambda m: None,
                                  idle_iterations=max(200, iterations // 5))
                for step in ("select1_pymysql", "select1_raw", "select1_idle"):
                    row = res["samples_us"][step]
                    print(f"{r} {step:22s}" + "".join(f"{percentile(row[n], 50):11.0f}" for n in names))
        finally:
            for s in sessions.values():
                s.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        env.close()
        shutil.rmtree(layer.parent, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        parser = argparse.ArgumentParser(prog="python -m bench.relay_experiment", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--iterations", type=int, default=3000)
        parser.add_argument("--rounds", type=int, default=2)
        args = parser.parse_args()
        drive(args.iterations, args.rounds)
