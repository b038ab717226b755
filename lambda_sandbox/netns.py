"""A private network namespace per sandbox, joined to the host by a veth pair on its own /30.

host side  lsbh<i>  10.200.x.(4k+1)/30   <- the API server listens here; services on the host are reached here
sandbox    lsbp<i>  10.200.x.(4k+2)/30   (+ lo up, default route via the host side)

cut() deletes the veth pair: from then on nothing a process inside sends (FIN, RST, data) can leave the
namespace, so killing the processes afterwards is invisible to peers on the host (Lambda reclaiming a
frozen sandbox). Names and subnets are unique per host (allocation under a lock file), so several
sandboxes, also from several test processes, can exist at once.
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import os
import re
import shutil
import subprocess
from typing import Optional

from .procs import netns_inode

LOCK_FILE = "/run/lambda_sandbox.netns.lock"
NET = ipaddress.ip_network("10.200.0.0/16")
NAME_RE = re.compile(r"^lsb-(\d+)-(\d+)$")


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be used here (not root, no `ip`, or the kernel refused)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cp = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and cp.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp


def unavailable_reason() -> Optional[str]:
    """Why netns=True cannot work here, or None if it should (probes once: a veth pair is created and
    deleted, which needs root with CAP_NET_ADMIN, iproute2 and kernel support)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns/veth); run the tests as root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if not os.path.exists("/proc/self/ns/net"):
        return "the kernel has no network namespace support"
    return _probe()


@functools.lru_cache(maxsize=1)
def _probe() -> Optional[str]:
    a, b = f"lsbq{os.getpid() % 100000}", f"lsbr{os.getpid() % 100000}"
    cp = _ip("link", "add", a, "type", "veth", "peer", "name", b, check=False)
    if cp.returncode != 0:
        return f"cannot create a veth pair: {cp.stderr.strip()}"
    _ip("link", "del", a, check=False)
    cp = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if cp.returncode != 0:
        return f"cannot create a network namespace: {cp.stderr.strip()}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete namespaces left behind by dead processes (crashed test runs). Returns the names deleted."""
    removed = []
    cp = _ip("netns", "list", check=False)
    for line in cp.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = NAME_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _ip("link", "del", f"lsbh{m.group(2)}", check=False)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


class Netns:
    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        self.index: int = -1
        self.name = ""
        self.host_if = ""
        self.peer_if = ""
        self.host_address = ""
        self.sandbox_address = ""
        self.inode: Optional[int] = None
        self._cut = False
        self._deleted = False
        os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cleanup_stale()
            self._allocate()
            try:
                self._create()
            except Exception:
                self.delete()
                raise

    def _used_indexes(self) -> set[int]:
        used = set()
        cp = _ip("-o", "-4", "addr", "show", check=False)
        for m in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/", cp.stdout):
            addr = ipaddress.ip_address(m.group(1))
            if addr in NET:
                used.add((int(addr) - int(NET.network_address)) // 4)
        cp = _ip("-o", "link", "show", check=False)
        for m in re.finditer(r"\blsb[hp](\d+)\b", cp.stdout):
            used.add(int(m.group(1)))
        cp = _ip("netns", "list", check=False)
        for m in re.finditer(r"\blsb-\d+-(\d+)\b", cp.stdout):
            used.add(int(m.group(1)))
        return used

    def _allocate(self) -> None:
        used = self._used_indexes()
        for i in range(1, NET.num_addresses // 4):
            if i not in used:
                break
        else:
            raise NetnsUnavailable("no free /30 left in 10.200.0.0/16")
        base = int(NET.network_address) + 4 * i
        self.index = i
        self.name = f"lsb-{os.getpid()}-{i}"
        self.host_if = f"lsbh{i}"
        self.peer_if = f"lsbp{i}"
        self.host_address = str(ipaddress.ip_address(base + 1))
        self.sandbox_address = str(ipaddress.ip_address(base + 2))

    def _create(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        _ip("link", "set", self.peer_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        ns = ("-n", self.name)
        _ip(*ns, "link", "set", "lo", "up")
        _ip(*ns, "addr", "add", f"{self.sandbox_address}/30", "dev", self.peer_if)
        _ip(*ns, "link", "set", self.peer_if, "up")
        _ip(*ns, "route", "add", "default", "via", self.host_address)
        self.inode = netns_inode(f"/run/netns/{self.name}")

    def exec_prefix(self) -> list[str]:
        """Prefix for argv so that the program runs inside the namespace (`ip netns exec` execs in place:
        the pid stays the program's own)."""
        return ["ip", "netns", "exec", self.name]

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Remove the veth pair: the namespace has no way out any more (no FIN/RST can reach the host)."""
        if not self._cut:
            self._cut = True
            _ip("link", "del", self.host_if, check=False)

    def delete(self) -> None:
        if self._deleted:
            return
        self._deleted = True
        if self.host_if:
            _ip("link", "del", self.host_if, check=False)
        if self.name:
            _ip("netns", "del", self.name, check=False)
