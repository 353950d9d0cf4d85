"""The iptables-legacy driver's two commit paths against a real kernel, each in a fresh namespace: libiptc
through python-iptables (the optional `libiptc` extra, which CI installs: without it these fail under
CI=true), and iptables-legacy-restore when python-iptables is not installed (the default install)."""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dockerguard import Engine, parse_policy
from dockerguard.backends.iptables.legacy import IptablesLegacyBackend
from dockerguard.sandbox import in_netns

pytestmark = pytest.mark.distro  # both paths, on every distro kernel of the VM matrix

POLICY = parse_policy('external_interfaces = ["eth0"]\n[[allow]]\nports = [443]\nsources = ["192.0.2.7"]\n')
OUR_JUMP = "-A DOCKER-USER -i eth0 -m comment --comment dockerguard -j DOCKERGUARD"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def netns(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh namespace with the test's thread inside it; the probe's cached verdict forgotten."""
    monkeypatch.setattr(IptablesLegacyBackend, "_refusal", None)
    name = f"dgleg{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    root = os.stat("/proc/thread-self/ns/net").st_ino
    try:
        with in_netns(name):
            assert os.stat("/proc/thread-self/ns/net").st_ino != root  # never the root namespace's firewall
            yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=10)


def saved(family: int = 4) -> list[str]:
    tool = "iptables-legacy-save" if family == 4 else "ip6tables-legacy-save"
    return [line for line in subprocess.run([tool], check=True, capture_output=True, text=True, timeout=30
                                            ).stdout.splitlines() if line.startswith("-A ")]


def apply_and_check(expected_commit: str) -> None:
    probe = IptablesLegacyBackend.probe()
    assert probe.available, probe.reason
    assert dict(probe.details)["commit"].startswith(expected_commit), probe.details
    engine = Engine(IptablesLegacyBackend())
    assert engine.apply(POLICY).changed
    for family in (4, 6):  # before Docker: DOCKER-USER and FORWARD's jump created by the driver itself
        rules = saved(family)
        assert "-A FORWARD -j DOCKER-USER" in rules and OUR_JUMP in rules
    assert [rule for rule in saved(4) if rule.startswith("-A DOCKERGUARD -s 192.0.2.7/32 -p tcp -m conntrack "
                                                          "--ctorigdstport 443 ")]
    assert not engine.apply(POLICY).changed  # read back equal: nothing sent
    assert engine.remove()
    assert OUR_JUMP not in saved(4)


def test_with_python_iptables_the_driver_commits_through_libiptc(netns: str) -> None:
    if importlib.util.find_spec("iptc") is None:
        message = "python-iptables is not installed: pip install -e '.[test,libiptc]' (the README's second command)"
        if _in_ci():
            pytest.fail(message + " (CI is set, so this is an error, not a skip)", pytrace=False)
        pytest.skip(message)
    refusal = IptablesLegacyBackend._python_iptables_refusal()
    if refusal is not None:  # iptables 1.8.13 (Debian forky): the restore path is the right one there
        pytest.skip(f"this libxtables takes the restore path: {refusal}")
    apply_and_check("libiptc")


def test_without_python_iptables_the_driver_commits_through_restore(netns: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "iptc", None)  # `import iptc` fails as in the default install
    apply_and_check("iptables-legacy-restore")
    assert "python-iptables is not installed" in IptablesLegacyBackend.probe().reason


def test_an_extension_error_after_libnftables_is_an_exception_not_an_exit(netns: str) -> None:
    """libnftables (published-port discovery) initialises the process's libxtables with globals whose error
    handler exits the process. A rule python-iptables cannot build must still raise, however the garbage
    collector has run: in a subprocess (an exit would end the test run), with the collector off."""
    if importlib.util.find_spec("iptc") is None:
        if _in_ci():
            pytest.fail("python-iptables is not installed: CI installs the libiptc extra")
        pytest.skip("python-iptables is not installed (the libiptc extra)")
    script = (
        "import gc; gc.disable()\n"
        "from dockerguard.backends.iptables import legacy\n"
        "from dockerguard.model import Family\n"
        "iptc = legacy._iptc()\n"
        "try:  # python-iptables makes (and caches) its xtables object; the rule itself does not matter\n"
        "    legacy._rule(iptc, None, Family.IPV4, '-p tcp -m tcp --dport 443 -j RETURN')\n"
        "except Exception:\n"
        "    pass\n"
        "import nftables; nftables.Nftables()  # initialises libxtables with libnftables' globals\n"
        "try:\n"
        "    legacy._rule(legacy._iptc(), None, Family.IPV4, '-m set --match-set dgnosuchset src -j RETURN')\n"
        "except Exception as exc:\n"
        "    print('raised', type(exc).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "raised" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr)


def _libiptc_or_skip() -> None:
    if importlib.util.find_spec("iptc") is None:
        if _in_ci():
            pytest.fail("python-iptables is not installed: CI installs the libiptc extra")
        pytest.skip("python-iptables is not installed (the libiptc extra)")
    refusal = IptablesLegacyBackend._python_iptables_refusal()
    if refusal is not None:
        pytest.skip(f"this libxtables takes the restore path: {refusal}")


LIMITED = parse_policy('external_interfaces = ["eth0"]\n[[allow]]\nports = [443]\nlimit = "1/second"\n')


def test_ipv6_jumps_committed_through_libiptc_are_the_ones_ip6tables_makes(netns: str) -> None:
    """python-iptables 1.2.0 gave IPv6 interface matches a one-bit mask per character: a libiptc commit of
    `-i ab` followed by a transaction through ip6tables-legacy-restore (rate limits take that path), which
    deletes the jump by its spec, failed (found by tests/reliability/test_apply_property.py)."""
    _libiptc_or_skip()
    from dockerguard.backends.iptables.legacy import _iptc, damaged_masks

    engine = Engine(IptablesLegacyBackend())
    engine.apply(parse_policy('external_interfaces = ["ab"]\n[[allow]]\nports = [2]\n'), guard=False)
    assert damaged_masks(_iptc()) == []
    assert engine.apply(LIMITED, guard=False).changed
    assert OUR_JUMP in saved(6)


def test_jumps_an_older_dockerguard_left_with_one_bit_masks_are_drift_and_mended(netns: str) -> None:
    _libiptc_or_skip()
    from dockerguard.backends.iptables import legacy

    engine = Engine(IptablesLegacyBackend())
    engine.apply(POLICY, guard=False)
    iptc = legacy._iptc()
    table = legacy._private_table(iptc, legacy.Family.IPV6)
    chain = iptc.Chain(table, "DOCKER-USER")
    rule = chain.rules[0]
    rule.entry.ipv6.iniface_mask = b"\x01" * 5  # what python-iptables 1.2.0 wrote for "eth0"
    chain.replace_rule(rule, 0)
    table.commit()
    table.close()
    assert legacy.damaged_masks(iptc) == [("DOCKER-USER", 1)]
    status = engine.status(POLICY)
    assert status.in_sync is False
    assert any("DOCKER-USER rule 1: its interface compares one bit" in change.what
               for change in status.diff.changes)  # type: ignore[union-attr]
    assert engine.apply(POLICY, guard=False).changed
    assert legacy.damaged_masks(iptc) == [] and engine.status(POLICY).in_sync is True


def test_a_comment_that_reads_like_an_option_is_committed_through_libiptc(netns: str) -> None:
    """Free text after --comment is one value, even when it starts with "-" (found by the property test)."""
    _libiptc_or_skip()
    text = 'external_interfaces = ["eth0"]\n[[deny]]\nsources = ["192.0.2.0/24"]\ncomment = "-A INPUT -j ACCEPT"\n'
    assert Engine(IptablesLegacyBackend()).apply(parse_policy(text), guard=False).changed
    assert any('--comment "-A INPUT -j ACCEPT"' in rule for rule in saved(4))
