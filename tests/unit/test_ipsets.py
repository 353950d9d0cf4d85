"""ipsets.parse_save: our content sets read back from `ipset save`, the way they are compared."""

from __future__ import annotations

from dockerguard.backends.iptables import ipsets
from dockerguard.model import Family

SAVE = """create dockerguard-abc hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
add dockerguard-abc 10.0.1.0/24
add dockerguard-abc 10.0.0.1
create dockerguard-ban4 hash:net family inet hashsize 1024 maxelem 1048576 timeout 0
add dockerguard-ban4 192.0.2.4 timeout 0
create dockerguard-def hash:net family inet6 hashsize 1024 maxelem 65536
add dockerguard-def 2001:db8::1
add dockerguard-def 2001:db8:1::/48
create dockerguard-empty hash:net family inet hashsize 1024 maxelem 65536
create someone-else hash:net family inet hashsize 1024 maxelem 65536
add someone-else 198.51.100.1
add dockerguard-abcd 203.0.113.9
"""


def test_our_content_sets_with_prefix_lengths_sorted() -> None:
    assert ipsets.parse_save(SAVE) == {
        "dockerguard-abc": (Family.IPV4, ("10.0.0.1/32", "10.0.1.0/24"), "hash:net family inet"),
        "dockerguard-def": (Family.IPV6, ("2001:db8:1::/48", "2001:db8::1/128"), "hash:net family inet6"),
        "dockerguard-empty": (Family.IPV4, (), "hash:net family inet"),
    }


def test_members_round_trip_through_restore_text() -> None:
    """What restore_text creates is what parse_save reads (ipset prints hosts without /32)."""
    members = ("192.0.2.0/25", "198.51.100.7/32")
    text = ipsets.restore_text({"dockerguard-x": (Family.IPV4, members)}).replace("/32", "")
    assert ipsets.parse_save(text) == {"dockerguard-x": (Family.IPV4, members, ipsets.spec(Family.IPV4))}


def test_what_else_decides_is_in_the_declaration() -> None:
    """A member flagged nomatch excludes it, a timeout makes it expire, another set type matches otherwise:
    each is read into the declaration compared with ours (as `ipset save` of ipset 7.17 prints them)."""
    saved = ipsets.parse_save(
        "create dockerguard-x hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5f90dfa1\n"
        "add dockerguard-x 198.51.100.7 nomatch\nadd dockerguard-x 198.51.100.0/24\n"
        "create dockerguard-y hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 initval 0x1\n"
        "add dockerguard-y 192.0.2.1 timeout 299\n")
    assert saved["dockerguard-x"] == (Family.IPV4, ("198.51.100.0/24", "198.51.100.7/32"),
                                      "hash:net family inet; 198.51.100.7/32 nomatch")
    assert saved["dockerguard-y"][2] == "hash:ip family inet timeout; 192.0.2.1/32 timeout"
