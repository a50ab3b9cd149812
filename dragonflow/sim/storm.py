"""Hostile traffic for the test bed: a script a VM runs (``python -c STORM mac rmac
seconds``) that floods controller-bound frames as fast as a raw socket sends -- neighbour
solicitations for the router address fd00:9::1, IPv4 with TTL 1 through the router (to
10.10.0.11), truncated MLDv2 reports -- and prints how many it sent. Used by the storm test
and bench/fault_bench.py."""

STORM = r"""
import socket, struct, sys, time
from os_ken.lib.packet import ethernet, icmpv6, ipv4, ipv6, packet, icmp
src_mac, rmac, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])

def build(*protos):
    p = packet.Packet()
    for x in protos:
        p.add_protocol(x)
    p.serialize()
    return bytes(p.data)

ns = build(ethernet.ethernet("33:33:ff:00:00:01", src_mac, 0x86DD),
           ipv6.ipv6(src="fd00:9::66", dst="ff02::1:ff00:1", nxt=58, hop_limit=255),
           icmpv6.icmpv6(type_=135, data=icmpv6.nd_neighbor(
               dst="fd00:9::1", option=icmpv6.nd_option_sla(hw_src=src_mac))))
ttl1 = build(ethernet.ethernet(rmac, src_mac, 0x0800),
             ipv4.ipv4(src="10.9.0.66", dst="10.10.0.11", proto=1, ttl=1),
             icmp.icmp(type_=8, data=icmp.echo(id_=1, seq=1, data=b"x" * 16)))
mld = bytes.fromhex("333300000016") + bytes.fromhex(src_mac.replace(":", "")) + \
    bytes.fromhex("86dd6000000000083a01fd00000900000000000000000000006" "6ff02000000000000"
                  "0000000000000016" "8f00")  # truncated MLDv2 report
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
frames, sent, end = (ns, ns, ttl1, mld), 0, time.monotonic() + seconds
while time.monotonic() < end:
    for f in frames:
        try:
            s.send(f)
            sent += 1
        except OSError:
            pass
print(sent)
"""
