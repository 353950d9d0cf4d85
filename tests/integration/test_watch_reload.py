"""Change control under `watch`, with real packets: an edited policy file changes nothing until SIGHUP (what
`systemctl reload` sends); a broken file is one error and the running policy stays; watch never dies of
SIGHUP; a `rollback` by the operator is followed, not fought."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from dockerguard.sandbox import HOST_EXT_V4, Probe, Topology

from harness import probe_many, wait_for, watching

POLICY_A = '[[allow]]\nports = [8080]\ncomment = "A"\n'
POLICY_B = '[[allow]]\nports = [9000]\ncomment = "B"\n'


def test_edits_wait_for_sighup_broken_files_change_nothing_and_rollback_is_followed(  # type: ignore[no-untyped-def]
        make_topology, tmp_path: Path) -> None:
    topo: Topology = make_topology("iptables-nft")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY_A)
    log = tmp_path / "watch.log"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return topo.run("host", [sys.executable, "-m", "dockerguard", *args], check=False, timeout=60)

    def open_ports() -> list[bool]:
        return probe_many(topo, [Probe("ext", HOST_EXT_V4, 8080, timeout=0.5), Probe("ext", HOST_EXT_V4, 9000,
                                                                                     timeout=0.5)])

    with watching(topo, policy, "nft", log) as watcher:
        assert wait_for(lambda: open_ports() == [True, False], 15), log.read_text()
        policy.write_text(POLICY_B)  # edited: nothing changes until the reload
        time.sleep(2.0)  # four drift checks
        assert open_ports() == [True, False], log.read_text()

        watcher.send_signal(signal.SIGHUP)
        assert wait_for(lambda: open_ports() == [False, True], 10), log.read_text()
        history = json.loads(cli("status", "--json").stdout)["history"]
        assert history[-1]["origin"]["reason"] == "reload", history

        policy.write_text("[[allow]]\nports = [0]\n")  # broken
        watcher.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload: the policy file is not valid" in log.read_text(), 10), log.read_text()
        time.sleep(1.0)
        assert watcher.poll() is None, "watch died of SIGHUP"
        assert open_ports() == [False, True]

        rolled = cli("rollback")
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        assert wait_for(lambda: "the policy in force changed" in log.read_text(), 10), log.read_text()
        time.sleep(2.0)  # watch keeps A now: it does not put B back
        assert open_ports() == [True, False], log.read_text()
        status = json.loads(cli("status", "--json").stdout)
        assert status["watch"]["running"] and status["watch"]["state"] == "enforcing", status["watch"]
        assert status["current"]["action"] == "rollback" and status["current"]["policy"]["path"] == str(policy)
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=10) == 0, log.read_text()
    print(log.read_text())  # with -s: what the journal of such a watch says
    errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "port 0 out of range" in errors[0], log.read_text()
