"""Docker as input (issue 13 item 7): container names, labels, networks, addresses and ports come from the
Docker API and are data, never syntax. A fake Docker answers the Engine API's JSON (so the client's own
parsing is exercised); a hostile name, label, network, address or port cannot change the rules beyond its
own entry: the rendered output equals the output for the same containers with benign values (or with the
unusable values left out), in every backend's text and in the nft JSON."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from dockerguard import published
from dockerguard.backends import get_backend
from dockerguard.docker import DockerClient
from dockerguard.engine import Engine
from dockerguard.model import Family
from dockerguard.policy import parse_policy

HOSTILE = [
    '"; COMMIT', "\n-A INPUT -j ACCEPT\n", "COMMIT", "-A INPUT -j ACCEPT", "} accept; {", "'", "\\",
    "x\u2028-A FORWARD -j ACCEPT", "\x00", "web\nCOMMIT\n*filter", "@allow_v4_tcp", "eth0+", "$(reboot)",
    "\u202eevil", "x" * 100_000, "-A", "..", "-j",
]
IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,14}")  # the policy's grammar of interface names
INJECTED = ("-A INPUT -j ACCEPT", "-A FORWARD", "$(reboot)", "evil", "x" * 1000)  # in no rendered text

POLICY = """
external_interfaces = ["eth0"]
[[allow]]
container = "web"
sources = ["198.51.100.0/24"]
comment = "web by name"
[[allow]]
labels = { app = "api" }
proto = "udp"
sources = ["2001:db8:100::/64"]
[[allow]]
ports = [443]
[[deny]]
sources = ["203.0.113.9"]
[[egress]]
container = "web"
destinations = ["203.0.113.0/24"]
ports = [25]
action = "reject"
[[egress]]
networks = ["backend"]
destinations = ["192.0.2.0/24"]
action = "drop"
"""


def container(name: str, ident: str, labels: dict[str, Any], ports: list[Any], networks: dict[str, Any]
              ) -> dict[str, Any]:
    return {"Id": ident, "Names": [f"/{name}"], "Labels": labels, "Ports": ports,
            "NetworkSettings": {"Networks": networks}}


def benign_answer() -> dict[str, list[dict[str, Any]]]:
    return {
        "/containers/json": [
            container("web", "a" * 64, {"app": "web"}, [{"PrivatePort": 80, "PublicPort": 8080, "Type": "tcp",
                                                         "IP": "0.0.0.0"}],
                      {"backend": {"IPAddress": "192.0.2.2", "GlobalIPv6Address": "2001:db8:2::2"}}),
            container("api", "b" * 64, {"app": "api"}, [{"PrivatePort": 9000, "PublicPort": 9000, "Type": "udp",
                                                         "IP": "::"}],
                      {"backend": {"IPAddress": "192.0.2.3"}}),
            container("bystander", "c" * 64, {"app": "other"}, [{"PrivatePort": 1, "PublicPort": 7000,
                                                                 "Type": "tcp", "IP": "0.0.0.0"}],
                      {"frontend": {"IPAddress": "192.0.2.4"}}),
        ],
        "/networks": [
            {"Name": "backend", "Id": "d" * 64, "Driver": "bridge", "Options": {}},
            {"Name": "frontend", "Id": "e" * 64, "Driver": "bridge",
             "Options": {"com.docker.network.bridge.name": "br-front"}},
        ],
    }


class FakeDocker(DockerClient):
    """Answers the Engine API paths from a dict of decoded JSON; everything else is the real client."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__("/nonexistent/docker.sock")
        self.answers = json.loads(json.dumps(answers))  # exactly what would come over the wire

    def _get_json(self, path: str) -> Any:
        return copy.deepcopy(self.answers[path])


def render(answers: dict[str, Any]) -> dict[str, str]:
    docker = FakeDocker(answers)
    engine = Engine("nft", docker=docker,
                    discover=lambda containers: published.Discovery(
                        frozenset(published.from_containers(containers()))))
    ruleset = engine.compile(parse_policy(POLICY))
    nft = get_backend("nft")
    out = {"nft file": nft.render_persistent(ruleset, Family.IPV4),
           "nft JSON": json.dumps(nft.render(ruleset).payload, sort_keys=True)}
    for name in ("iptables-nft", "iptables-legacy"):
        driver = get_backend(name)
        driver.live = False  # against the baseline layout: nothing of this host is read
        out[name] = driver.render(ruleset).text
        for family in Family:
            out[f"{name} file ipv{family.value}"] = driver.render_persistent(ruleset, family)
    out["resolutions"] = "\n".join(resolution.describe() for resolution in engine.resolutions)
    return out


def assert_nothing_injected(texts: dict[str, str]) -> None:
    for name, text in texts.items():
        for needle in INJECTED:
            assert needle not in text, (name, needle)


@pytest.fixture(scope="module")
def baseline() -> dict[str, str]:
    texts = render(benign_answer())
    assert "8080" in texts["nft file"] and "9000" in texts["nft file"]  # the selectors did select
    assert "192.0.2.2" in texts["nft file"]
    return texts


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v[:20]) for v in HOSTILE])
def test_hostile_name_labels_networks_of_a_bystander_change_nothing(value: str, baseline: dict[str, str]) -> None:
    """A container the policy does not select, with a hostile name, labels and network names."""
    answers = benign_answer()
    bystander = answers["/containers/json"][2]
    bystander["Names"] = [f"/{value}"]
    bystander["Labels"] = {value: value, "app": value}
    bystander["NetworkSettings"]["Networks"] = {value: {"IPAddress": "192.0.2.4"}}
    answers["/networks"].append({"Name": value, "Id": value, "Driver": "bridge",
                                 "Options": {"com.docker.network.bridge.name": value}})
    texts = render(answers)
    assert_nothing_injected(texts)
    assert {k: v for k, v in texts.items() if k != "resolutions"} == \
        {k: v for k, v in baseline.items() if k != "resolutions"}


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v[:20]) for v in HOSTILE])
def test_hostile_labels_of_a_selected_container_change_nothing(value: str, baseline: dict[str, str]) -> None:
    """The selected containers carry hostile extra labels (keys and values): their rules stay the same."""
    answers = benign_answer()
    for selected in answers["/containers/json"][:2]:
        selected["Labels"] = {**selected["Labels"], value: value, f"x{value}": "-A INPUT -j ACCEPT"}
    assert render(answers) == baseline


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v[:20]) for v in HOSTILE])
def test_hostile_addresses_and_ports_are_left_out(value: str, baseline: dict[str, str]) -> None:
    """Addresses and ports that are not addresses and ports are dropped; only the entries of that container
    could differ, and here nothing usable was added, so nothing differs."""
    answers = benign_answer()
    web = answers["/containers/json"][0]
    web["NetworkSettings"]["Networks"]["hostile"] = {"IPAddress": value, "GlobalIPv6Address": f"2001:db8::1{value}"}
    web["Ports"] += [{"PrivatePort": value, "PublicPort": value, "Type": "tcp", "IP": value},
                     {"PrivatePort": 80, "PublicPort": 8081, "Type": value, "IP": "0.0.0.0"},
                     {"PrivatePort": 80, "PublicPort": 70000, "Type": "tcp", "IP": value}]
    texts = render(answers)
    assert_nothing_injected(texts)
    assert {k: v for k, v in texts.items() if k != "resolutions"} == \
        {k: v for k, v in baseline.items() if k != "resolutions"}


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v[:20]) for v in HOSTILE])
def test_hostile_bridge_name_selects_no_interface(value: str) -> None:
    """The bridge of a network the policy names is an interface in the rules: a hostile one is not used (the
    egress entry then matches nothing, exactly as when the network has no bridge)."""
    answers, bridgeless = benign_answer(), benign_answer()
    answers["/networks"][0]["Options"] = {"com.docker.network.bridge.name": value}
    bridgeless["/networks"][0]["Driver"] = "macvlan"
    texts = render(answers)
    assert_nothing_injected(texts)
    if IFNAME.fullmatch(value):  # a real interface name ("COMMIT" is one): used as that interface, nothing more
        renamed = benign_answer()
        renamed["/networks"][0]["Options"] = {"com.docker.network.bridge.name": "brbenign"}
        assert texts == {k: v.replace("brbenign", value) for k, v in render(renamed).items()}
    else:
        assert texts == render(bridgeless)


def test_a_selected_container_with_a_hostile_name_prints_one_line(baseline: dict[str, str]) -> None:
    """`api` is selected by its label; its name, whatever Docker says, stays on one line in what is shown."""
    answers = benign_answer()
    answers["/containers/json"][1]["Names"] = ["/api\n-A INPUT -j ACCEPT\u2028x"]
    texts = render(answers)
    assert_nothing_injected(texts)
    assert {k: v for k, v in texts.items() if k != "resolutions"} == \
        {k: v for k, v in baseline.items() if k != "resolutions"}
    assert len(texts["resolutions"].splitlines()) == len(baseline["resolutions"].splitlines())
