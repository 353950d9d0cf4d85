"""The SSH lock-out check: which sessions a [host] policy would cut."""

from __future__ import annotations

from dockerguard import compile_policy, parse_policy
from dockerguard.lockout import Session, cut_sessions, sessions_from_environment, sessions_from_ss

HOST = """
external_interfaces = ["eth0"]
[host]
[[host.allow]]
ports = [22]
sources = ["198.51.100.0/24", "2001:db8:100::/64"]
"""


def test_session_from_ssh_connection() -> None:
    assert sessions_from_environment({"SSH_CONNECTION": "198.51.100.10 51234 198.51.100.1 22"}) == [
        Session("198.51.100.10", 22, "SSH_CONNECTION")]
    assert sessions_from_environment({}) == []
    assert sessions_from_environment({"SSH_CONNECTION": "garbage"}) == []


def test_sessions_from_ss_output() -> None:
    listening = ('LISTEN 0 128 0.0.0.0:2222 0.0.0.0:* users:(("sshd",pid=1,fd=3))\n'
                 'LISTEN 0 128 0.0.0.0:80 0.0.0.0:* users:(("nginx",pid=2,fd=3))\n')
    established = ("0 0 198.51.100.1:2222 198.51.100.10:50000\n"
                   "0 0 [2001:db8:100::1]:2222 [2001:db8:100::11]:50001\n"
                   "0 0 [::ffff:198.51.100.1]:2222 [::ffff:203.0.113.5]:50002\n"
                   "0 0 198.51.100.1:80 198.51.100.12:50003\n")
    assert sessions_from_ss(listening, established) == [
        Session("198.51.100.10", 2222, "ss"), Session("2001:db8:100::11", 2222, "ss"),
        Session("203.0.113.5", 2222, "ss")]


def test_cut_only_what_host_rules_refuse_on_external_interfaces() -> None:
    ruleset = compile_policy(parse_policy(HOST))
    kept = Session("198.51.100.10", 22, "ss", "eth0")
    wrong_source = Session("203.0.113.5", 22, "ss", "eth0")
    wrong_port = Session("2001:db8:100::11", 2222, "ss", "eth0")
    internal = Session("203.0.113.5", 22, "ss", "eth1")  # not an external interface: not judged
    unknown = Session("203.0.113.5", 22, "ss", None)  # unknown interface: assume the worst
    assert cut_sessions(ruleset, [kept, wrong_source, wrong_port, internal, unknown]) == [
        wrong_source, wrong_port, unknown]
    assert cut_sessions(compile_policy(parse_policy("")), [wrong_source]) == []  # no [host]: nothing cut
