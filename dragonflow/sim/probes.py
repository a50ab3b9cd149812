"""Real traffic for the test bed and the demo: scripts a VM runs with its own Python
(``ip netns exec``) -- echo servers, one connection attempt that tells an open port from a
refused one from a dropped one, a long conversation that reports every exchange."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable

from dragonflow.sim.testbed import Vm

# TCP echo servers on the given ports (IPv4 and IPv6), until killed
SERVE = r"""
import socket, sys, threading
def serve(fam, port):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
def echo(c):
    try:
        while (data := c.recv(100)):
            c.sendall(data)
    except OSError:
        pass
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(100)
        s.sendto(data, peer)
for p in sys.argv[1:]:
    if p.startswith("u"):
        threading.Thread(target=udp, args=(int(p[1:]),), daemon=True).start()
    else:
        for fam in (socket.AF_INET, socket.AF_INET6):
            threading.Thread(target=serve, args=(fam, int(p)), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# one try: "open" (echo came back), "refused" (RST / ICMP unreachable), "timeout" (dropped)
PROBE = r"""
import socket, sys
proto, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(1.5)
try:
    s.connect((ip, port))
    s.send(b"ping")
    print("open" if s.recv(100) == b"ping" else "wrong")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
"""

# a long TCP conversation: every 0.2 s one line and its echo; prints "<time> ok|fail"
TALK = r"""
import socket, sys, time
ip, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((ip, port), timeout=2)
s.settimeout(0.8)
end = time.time() + seconds
while time.time() < end:
    try:
        s.send(b"x")
        ok = s.recv(10) == b"x"
    except OSError:
        ok = False
    print(f"{time.time():.3f} {'ok' if ok else 'fail'}", flush=True)
    time.sleep(0.2)
"""



def serve(vm: Vm, ports: list[str]) -> subprocess.Popen[str]:
    """Echo servers in ``vm`` on TCP ports (and ``u<port>``: UDP), IPv4 and IPv6; returns
    once they listen. The caller kills the process."""
    proc = subprocess.Popen(["ip", "netns", "exec", vm.netns, sys.executable, "-c", SERVE,
                             *ports], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"echo servers in {vm.name} did not start")
    return proc


def probe(vm: Vm, proto: str, ip: str, port: int) -> str:
    """One ``proto`` (tcp|udp) attempt from ``vm``: open, refused or timeout (dropped)."""
    return vm.exec([sys.executable, "-c", PROBE, proto, ip, str(port)], timeout=20
                   ).stdout.strip()


def talk(vm: Vm, ip: str, port: int, seconds: float) -> subprocess.Popen[str]:
    """A TCP conversation from ``vm``: every 0.2 s a byte and its echo; stdout lines are
    ``<unix time> ok|fail``."""
    return subprocess.Popen(["ip", "netns", "exec", vm.netns, sys.executable, "-c", TALK,
                             ip, str(port), str(seconds)], stdout=subprocess.PIPE, text=True)


# a TCP server that prints the address of the first peer that connects, then exits
WHO = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    c, peer = s.accept()
    print(peer[0], flush=True)
except (socket.timeout, TimeoutError):
    print("nobody", flush=True)
"""


def connection_source(netns: str, port: int, connect: Callable[[], object],
                      timeout: float = 10.0) -> str:
    """The source address a TCP server in ``netns`` (e.g. a host outside) sees on the
    connection ``connect()`` opens to it on ``port`` ("nobody" if none came)."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", WHO,
                             str(port), str(timeout)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"no TCP server in {netns}")
        connect()
        return proc.stdout.readline().strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def capture(netns: str, dev: str, bpf: str, action: Callable[[], object], count: int = 1,
            link: bool = False) -> str:
    """tcpdump's lines for ``count`` frames matching ``bpf`` on ``dev`` in ``netns`` while
    ``action()`` runs ("" if none came); ``link``: with link-level headers (MACs, VLAN
    tags)."""
    cap = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-l", "-n",
                            *(["-e"] if link else []), "-i", dev, "-c", str(count), bpf],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.5)  # tcpdump listening
        action()
        out, _ = cap.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        out = ""
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.communicate()
    return out


def echo_source(netns: str, dev: str, ping: Callable[[], object]) -> str:
    """The source address of the first ICMP echo request tcpdump sees on ``dev`` in
    ``netns`` while ``ping()`` runs ("" if none)."""
    m = re.search(r"IP (\S+) > ", capture(netns, dev, "icmp[icmptype] = icmp-echo", ping))
    return m.group(1) if m else ""
