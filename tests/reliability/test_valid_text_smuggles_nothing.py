"""Comments and interface names the policy grammar ACCEPTS must never smuggle anything into what a backend
sends or what `dockerguard export` prints: rendered with hostile-looking values, every text has the same
lines and the same tokens outside quoted strings (and outside the interface argument) as with benign ones,
and the real parsers accept it (`nft -c -f`, `*-restore --test`, inside a namespace)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from corpus import toml_string
from kernelcheck import Rendered, kernel_refusals, render_all
from relenv import Netns, dockerguard_argv

from dockerguard.backends import get_backend
from dockerguard.compiler import compile_policy
from dockerguard.export import export_text
from dockerguard.model import Family
from dockerguard.policy import parse_policy

# Printable, so the grammar takes them; each looks like syntax of some renderer.
HOSTILE_COMMENTS = [
    "COMMIT", "-A INPUT -j ACCEPT", "-j", "--help", "; drop", "} accept; {", "'single' quotes", "# hash",
    "$(reboot) `id`", "%n %s %%", "*", "!", "+", "@allow_v4_tcp", "caf\u00e9 \u2713 \u4e2d\u6587", "x" * 100,
    "\u00e9" * 100, "\U0001f525" * 25, "a  b", " leading and trailing ", "comment \"", "::ffff:1.2.3.4",
]
HOSTILE_COMMENTS.remove('comment "')  # a quote is refused by the grammar (the corpus covers it)
HOSTILE_INTERFACES = ["COMMIT", "A", "abcdefghijklmno", "eth0.100", "veth1@if5", "br-1a2b3c4d5e6f", "wg_0",
                      "_x", "0", "a-", "e..", "x@"]


def policy_text(comments: list[str], interfaces: list[str]) -> str:
    """Every place a comment goes (allow, host allow, deny, egress), and the interfaces."""
    parts = [f"external_interfaces = [{', '.join(map(toml_string, interfaces))}]", "log_dropped = true",
             "[sets]", 'office = ["198.51.100.0/28", "2001:db8:1::/48"]']
    for index, comment in enumerate(comments):
        c = toml_string(comment)
        parts += ["[[allow]]", f'ports = [{8000 + index}, "{9000 + index}-{9001 + index}"]',
                  'sources = ["@office", "203.0.113.0/24"]', f"comment = {c}",
                  "[[deny]]", f'sources = ["192.0.2.{index + 1}", "2001:db8:dead::{index + 1:x}"]', f"comment = {c}",
                  "[[egress]]", f'destinations = ["203.0.113.{index + 1}"]', f"ports = [{100 + index}]",
                  'action = "reject"', f"comment = {c}"]
    parts += ["[host]", "[[host.allow]]", "ports = [22]", 'sources = ["@office"]',
              f"comment = {toml_string(comments[0])}"]
    return "\n".join(parts) + "\n"


def benign(values: list[str], stem: str) -> list[str]:
    return [f"{stem}{index}" for index in range(len(values))]


def texts(comments: list[str], interfaces: list[str]) -> dict[str, str]:
    """What every backend sends and every export format prints, for this policy."""
    policy = parse_policy(policy_text(comments, interfaces), filename="/etc/dockerguard/policy.toml")
    ruleset = compile_policy(policy)
    out = {f"export {fmt}": export_text(policy, fmt, ruleset=ruleset, family=family)
           for fmt, family in (("nft", 4), ("iptables-restore", 4), ("iptables-restore", 6), ("ipset", 4))}
    out["export iptables-restore 6"] = out.pop("export iptables-restore")
    out["export iptables-restore 4"] = export_text(policy, "iptables-restore", ruleset=ruleset, family=4)
    out["export systemd"] = export_text(policy, "systemd", command=["/usr/sbin/dockerguard"])
    nft = get_backend("nft").render(ruleset)
    out["nft sends (JSON)"] = json.dumps(nft.payload, indent=0, sort_keys=True)
    for name in ("iptables-nft", "iptables-legacy"):
        driver = get_backend(name)
        driver.live = False  # the text against the baseline layout: the kernel of this host is not read
        out[f"{name} sends"] = driver.render(ruleset).text
    return out


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def skeleton(name: str, text: str) -> list[str]:
    """The text with every quoted string (and iptables' interface/comment arguments) masked: what is
    left is syntax, which a comment or an interface name must not change."""
    lines = []
    for line in text.splitlines():
        if name.startswith("nft sends"):
            line = _QUOTED.sub("S", line)
        elif "iptables" in name and line.startswith(("-A ", "-I ", "-D ", "-R ")):
            tokens = shlex.split(line)  # iptables-restore's own tokeniser is shell-like
            for index in range(1, len(tokens)):
                if tokens[index - 1] in ("-i", "-o", "--comment"):
                    tokens[index] = "S"
            line = " ".join(tokens)
        else:
            line = _QUOTED.sub("S", line)
            line = re.sub(r"dockerguard-[0-9a-f]{12}", "SET", line)  # ipset names are digests of the contents
        lines.append(re.sub(r"ruleset [0-9a-f]{12}", "ruleset D", line))
    return lines


def test_hostile_but_valid_values_change_no_syntax() -> None:
    hostile = texts(HOSTILE_COMMENTS, HOSTILE_INTERFACES)
    plain = texts(benign(HOSTILE_COMMENTS, "benign "), benign(HOSTILE_INTERFACES, "if"))
    assert hostile.keys() == plain.keys()
    for name in hostile:
        assert len(hostile[name].splitlines()) == len(plain[name].splitlines()), name
        assert skeleton(name, hostile[name]) == skeleton(name, plain[name]), name
    for name in ("export iptables-restore 4", "export iptables-restore 6", "iptables-nft sends"):
        commits = [line for line in hostile[name].splitlines() if line.strip() == "COMMIT"]
        assert len(commits) == len([line for line in plain[name].splitlines() if line.strip() == "COMMIT"])
    assert "COMMIT" not in hostile["export systemd"] and "reboot" not in hostile["export systemd"]


@pytest.mark.parametrize("comment", HOSTILE_COMMENTS)
def test_kernel_parses_each_hostile_comment(comment: str, module_netns: Netns) -> None:
    policy = parse_policy(policy_text([comment], ["eth0"]))
    assert kernel_refusals(module_netns, render_all(compile_policy(policy))) == []


def test_kernel_parses_hostile_interfaces(module_netns: Netns) -> None:
    policy = parse_policy(policy_text(["c"], HOSTILE_INTERFACES))
    assert kernel_refusals(module_netns, render_all(compile_policy(policy))) == []


def test_cli_export_of_hostile_values_smuggles_nothing(tmp_path: Path, module_netns: Netns) -> None:
    """`dockerguard export --format nft|iptables-restore|ipset|systemd` as a process (in the namespace: no
    Docker, nothing published): the same syntax as for benign values, and the kernel's tools load it."""
    printed: dict[str, dict[str, str]] = {}
    for kind, comments, interfaces in (("hostile", HOSTILE_COMMENTS, HOSTILE_INTERFACES),
                                       ("benign", benign(HOSTILE_COMMENTS, "benign "),
                                        benign(HOSTILE_INTERFACES, "if"))):
        policy = tmp_path / f"{kind}.toml"
        policy.write_text(policy_text(comments, interfaces))
        printed[kind] = {}
        for fmt, family in (("nft", 4), ("iptables-restore", 4), ("iptables-restore", 6), ("ipset", 4),
                            ("systemd", 4)):
            proc = module_netns.run([*dockerguard_argv(), "export", "--format", fmt, "-c", str(policy),
                                     "--family", str(family)])
            assert proc.returncode == 0, proc.stderr
            printed[kind][f"export {fmt} {family}"] = proc.stdout
    for name, text in printed["hostile"].items():
        benign_text = printed["benign"][name].replace("benign.toml", "hostile.toml")
        assert skeleton(name, text) == skeleton(name, benign_text), name
    hostile = printed["hostile"]
    rendered = Rendered(hostile["export nft 4"], {Family.IPV4: hostile["export iptables-restore 4"],
                                                   Family.IPV6: hostile["export iptables-restore 6"]},
                        hostile["export ipset 4"])
    assert kernel_refusals(module_netns, rendered) == []
