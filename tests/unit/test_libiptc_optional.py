"""python-iptables is an optional extra: without it the iptables-legacy driver commits through
iptables-legacy-restore, says so, and the libraries' "(you must be root)" lines stay off stderr.
No kernel is touched: the driver's tools and the module import are simulated."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dockerguard import cli, stderr_noise
from dockerguard.backends import ProbeResult
from dockerguard.backends.iptables import legacy
from dockerguard.backends.iptables.legacy import IptablesLegacyBackend
from dockerguard.model import Family

ROOT = Path(__file__).resolve().parents[2]
VERSION = "iptables v1.8.9 (legacy)"


def pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"])


def test_python_iptables_is_only_in_the_libiptc_extra() -> None:
    """`pip install -e '.[test]'` (the README's first command) must not need a compiler."""
    project = pyproject()
    extras = project["optional-dependencies"]
    for requirements in (project["dependencies"], extras["test"]):
        assert not [r for r in requirements if r.lower().startswith("python-iptables")]
    assert [r for r in extras["libiptc"] if r.startswith("python-iptables")]


@pytest.fixture
def no_iptc(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import iptc` fails as it does when the libiptc extra is not installed."""
    monkeypatch.setitem(sys.modules, "iptc", None)  # makes `import iptc` raise ModuleNotFoundError
    monkeypatch.setattr(IptablesLegacyBackend, "_refusal", None)  # the per-process cache


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """The iptables-legacy binaries, simulated: present, readable kernel tables, `--version`."""
    have = {"-restore": True}

    def probe_binaries(cls: type, suffixes: tuple[str, ...]) -> ProbeResult | None:
        if all(have.get(suffix, True) for suffix in suffixes):
            return None
        return ProbeResult(cls.name, False, "missing iptables-legacy-restore (install the iptables package)")

    monkeypatch.setattr(legacy, "probe_binaries", probe_binaries)
    monkeypatch.setattr(legacy, "ipset_detail", lambda: ("ipsets", "no: install ipset"))
    monkeypatch.setattr(legacy, "run_tool", lambda argv, **_: subprocess.CompletedProcess(argv, 0, VERSION + "\n"))
    return have


@pytest.mark.usefixtures("no_iptc")
def test_without_python_iptables_the_probe_offers_the_restore_path(tools: dict[str, bool]) -> None:
    probe = IptablesLegacyBackend.probe()
    assert probe.available
    assert probe.reason.startswith(f"{VERSION} through iptables-legacy-restore: python-iptables is not installed")
    commit = dict(probe.details)["commit"]
    assert commit.startswith("iptables-legacy-restore, one transaction per family")
    assert "dockerguard[libiptc]" in commit  # how to get the other path


@pytest.mark.usefixtures("no_iptc")
def test_without_python_iptables_and_restore_the_backend_is_unavailable(tools: dict[str, bool]) -> None:
    tools["-restore"] = False
    probe = IptablesLegacyBackend.probe()
    assert not probe.available
    assert probe.reason == ("python-iptables is not installed (pip install 'dockerguard[libiptc]' adds it), "
                            "and iptables-legacy-restore is missing")


@pytest.mark.usefixtures("no_iptc")
def test_without_python_iptables_transactions_go_through_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[Family, str]] = []
    monkeypatch.setattr(IptablesLegacyBackend, "_restore", lambda self, family, text: sent.append((family, text)))
    driver = IptablesLegacyBackend()
    with driver._lock():  # no xtables lock of our own: iptables-legacy-restore -w takes it
        driver._send(Family.IPV6, "*filter\nCOMMIT\n")
    assert sent == [(Family.IPV6, "*filter\nCOMMIT\n")]


def test_a_python_iptables_that_fails_to_load_is_named(monkeypatch: pytest.MonkeyPatch, tools: dict[str, bool]) -> None:
    monkeypatch.setattr(IptablesLegacyBackend, "_refusal", None)

    def broken() -> Any:
        raise OSError("libxtables.so.12: cannot open shared object file")

    monkeypatch.setattr(legacy, "_iptc", broken)
    probe = IptablesLegacyBackend.probe()
    assert probe.available
    assert "python-iptables cannot be loaded (libxtables.so.12: cannot open shared object file)" in probe.reason


@pytest.mark.usefixtures("no_iptc")
def test_backends_command_says_which_path_commits(monkeypatch: pytest.MonkeyPatch, tools: dict[str, bool]) -> None:
    from dockerguard import backends, detect
    from dockerguard.detect import Detection

    monkeypatch.setattr(backends, "probe_all", lambda: [IptablesLegacyBackend.probe()])
    monkeypatch.setattr(detect, "detect", lambda docker: Detection("iptables-legacy", "simulated", ()))
    result = CliRunner().invoke(cli.app, ["backends"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cells = " ".join(result.output.replace("│", " ").split())  # the details column, unwrapped
    assert "commit: iptables-legacy-restore, one transaction per family: python-iptables is not installed" in cells
    listed = CliRunner().invoke(cli.app, ["backends", "--json"], catch_exceptions=False)
    (probe,) = __import__("json").loads(listed.output)["backends"]
    assert ["commit", dict(probe["details"])["commit"]] in probe["details"]


# -- the libraries' noise --------------------------------------------------------------------------------
NOISE = b"Operation not permitted (you must be root)\n"


def test_noise_is_dropped_and_everything_else_kept(capfd: pytest.CaptureFixture[str]) -> None:
    with stderr_noise.privilege_noise_filtered(always=True):
        os.write(2, NOISE + b"a real diagnostic\n" + b"Permission denied (you must be root)\n")
    assert capfd.readouterr().err == "a real diagnostic\n"


def test_with_net_admin_fd_2_is_left_alone(monkeypatch: pytest.MonkeyPatch,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(stderr_noise, "has_net_admin", lambda: True)
    before = os.fstat(2).st_ino
    with stderr_noise.privilege_noise_filtered():
        assert os.fstat(2).st_ino == before  # not redirected: root's log lines are never delayed
        os.write(2, NOISE)
    assert capfd.readouterr().err == NOISE.decode()


def test_capability_is_read_from_proc() -> None:
    status = Path("/proc/self/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("CapEff:")]
    assert stderr_noise.has_net_admin() == bool(int(line.split()[1], 16) & (1 << 12))


def _as_nobody() -> list[str]:
    """argv prefix running a command as user nobody, or skip (needs root and setpriv, and a Python and a
    checkout that user may read)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command without privileges")
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    check = subprocess.run([*prefix, sys.executable, "-c", "import dockerguard.cli"], capture_output=True,
                           text=True, timeout=60, cwd="/")
    if check.returncode != 0:
        pytest.skip(f"user nobody cannot run this Python or read this checkout: {check.stderr.strip()[-200:]}")
    return prefix


@pytest.mark.parametrize("args", [["backends"], ["status", "--backend", "nft"],
                                  ["status", "--backend", "iptables-legacy"]])
def test_without_privileges_only_our_own_error_reaches_stderr(args: list[str], tmp_path: Path) -> None:
    """Reads only: without CAP_NET_ADMIN nothing can be changed, and every probe fails."""
    environment = {**os.environ, "DOCKERGUARD_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run([*_as_nobody(), sys.executable, "-m", "dockerguard", *args], capture_output=True,
                          text=True, timeout=120, cwd="/", env=environment)
    assert "(you must be root)" not in proc.stderr, proc.stderr
    if args[0] == "status":
        assert proc.returncode == 1 and proc.stderr.startswith("error: backend "), proc.stderr


def test_library_hints_last_only_for_the_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """python-iptables is told where libxtables and its extensions are (no ldconfig, gcc or setuptools
    import), for the import alone: the environment and sys.modules are as before afterwards, and a
    variable the user set wins."""
    libdir = tmp_path / "lib"
    (libdir / "xtables").mkdir(parents=True)
    (libdir / "libxtables.so.12").touch()
    (libdir / "xtables" / "libxt_conntrack.so").touch()
    monkeypatch.setattr(legacy, "_library_folders", lambda: [str(tmp_path / "missing"), str(libdir)])
    monkeypatch.setenv("XTABLES_LIBDIR", "/users/choice")
    monkeypatch.delenv("IPTABLES_LIBDIR", raising=False)
    monkeypatch.delenv("PYTHON_IPTABLES_XTABLES_VERSION", raising=False)
    monkeypatch.delitem(sys.modules, "distutils", raising=False)
    seen: dict[str, Any] = {}
    with legacy._library_hints():
        seen = {key: os.environ.get(key) for key in
                ("XTABLES_LIBDIR", "IPTABLES_LIBDIR", "PYTHON_IPTABLES_XTABLES_VERSION")}
        with pytest.raises(ModuleNotFoundError):
            import distutils.sysconfig  # noqa: F401
    assert seen["XTABLES_LIBDIR"] == "/users/choice" and seen["PYTHON_IPTABLES_XTABLES_VERSION"] == "12"
    assert str(seen["IPTABLES_LIBDIR"]).split(":")[0] == str(libdir)
    assert os.environ["XTABLES_LIBDIR"] == "/users/choice"
    assert "IPTABLES_LIBDIR" not in os.environ and "PYTHON_IPTABLES_XTABLES_VERSION" not in os.environ
    assert "distutils" not in sys.modules
