"""The fence guard (launcher/fence_guard.c) on real processes, built from the tree's source:
a process that preloads it ends once the deadline file's time passes, and no sooner; it
never runs without a deadline; a moved deadline is followed; a lost file fences at the last
deadline read. Also the handler's refusal of a guard library it must not load into QEMU."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from corral import fence_guard
from handler.main import main as handler_main
from launcher import domain_xml
from tests.cluster import REPO
from tests.test_launcher_domain_xml import kernel_vm

SOURCE = REPO / "launcher" / "fence_guard.c"


@pytest.fixture(scope="module")
def guard(tmp_path_factory) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the guard cannot be built")
    out = tmp_path_factory.mktemp("guard") / "fence-guard.so"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-pthread",
                    "-o", str(out), str(SOURCE)], check=True)
    return str(out)


def write_deadline(path: Path, seconds_from_now: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{time.monotonic() + seconds_from_now:.3f}\n")
    os.replace(tmp, path)


def guarded_sleep(guard: str, fence_file: Path) -> subprocess.Popen:
    env = {**os.environ, fence_guard.PRELOAD_ENV: guard, fence_guard.FENCE_FILE_ENV: str(fence_file)}
    return subprocess.Popen(["sleep", "30"], env=env, stderr=subprocess.PIPE)


def ended_within(process: subprocess.Popen, seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_guarded_process_ends_when_the_deadline_passes_and_not_before(guard, tmp_path):
    fence_file = tmp_path / "fence-deadline"
    write_deadline(fence_file, 1.5)
    started = time.monotonic()
    process = guarded_sleep(guard, fence_file)
    assert not ended_within(process, 1.0), "ended before its deadline"
    assert ended_within(process, 2.0), "still running 1.5 s after its deadline"
    took = time.monotonic() - started
    assert process.returncode == -signal.SIGKILL
    assert 1.4 < took < 2.2
    assert b"fencing deadline passed" in process.stderr.read()


def test_a_renewed_deadline_keeps_it_running(guard, tmp_path):
    fence_file = tmp_path / "fence-deadline"
    write_deadline(fence_file, 1.0)
    process = guarded_sleep(guard, fence_file)
    try:
        for _ in range(6):  # 3 s of renewals, each 1 s ahead
            time.sleep(0.5)
            write_deadline(fence_file, 1.0)
        assert process.poll() is None, "fenced although the deadline kept moving"
    finally:
        process.kill()
        process.wait()


def test_no_deadline_at_start_means_no_run(guard, tmp_path):
    process = guarded_sleep(guard, tmp_path / "absent")
    assert ended_within(process, 2.0)
    assert process.returncode == -signal.SIGKILL
    assert b"no fencing deadline readable at start" in process.stderr.read()


def test_a_symlinked_deadline_file_is_not_followed(guard, tmp_path):
    real = tmp_path / "elsewhere"
    write_deadline(real, 60)
    link = tmp_path / "fence-deadline"
    link.symlink_to(real)
    process = guarded_sleep(guard, link)
    assert ended_within(process, 2.0), "followed a symlink to a far deadline"


def test_a_removed_file_fences_at_the_last_deadline_read(guard, tmp_path):
    fence_file = tmp_path / "fence-deadline"
    write_deadline(fence_file, 1.5)
    process = guarded_sleep(guard, fence_file)
    time.sleep(0.3)
    fence_file.unlink()  # a handler gone with its state, or a file made unreadable
    assert ended_within(process, 2.5)
    assert process.returncode == -signal.SIGKILL


def test_without_the_environment_the_library_does_nothing(guard):
    env = {**os.environ, fence_guard.PRELOAD_ENV: guard}
    env.pop(fence_guard.FENCE_FILE_ENV, None)
    assert subprocess.run(["sleep", "0.2"], env=env).returncode == 0


def test_domain_xml_preloads_the_guard_with_the_nodes_deadline_file():
    vm = kernel_vm()
    options = domain_xml.DomainOptions(emulation=True, serial_log_path="/v/serial.log",
                                       fence_guard="/lib/guard.so", fence_file="/s/fence-deadline")
    xml = domain_xml.build_domain_xml(vm, options)
    assert (f'<qemu:env name="{fence_guard.PRELOAD_ENV}" value="/lib/guard.so" />' in xml
            and f'<qemu:env name="{fence_guard.FENCE_FILE_ENV}" value="/s/fence-deadline" />' in xml)
    unguarded = domain_xml.DomainOptions(emulation=True, serial_log_path="/v/serial.log")
    assert "qemu:env" not in domain_xml.build_domain_xml(vm, unguarded)


@pytest.mark.parametrize("case", ["missing", "writable", "not-root", "relative"])
def test_handler_refuses_a_guard_it_must_not_load_into_qemu(case, tmp_path, capsys):
    if os.geteuid() != 0 and case != "missing":
        pytest.skip("ownership checks need root to make a root-owned file")
    lib = tmp_path / "lib" / "guard.so"
    lib.parent.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(lib.parent, 0o755)
    if case != "missing":
        lib.write_bytes(b"\x7fELF")
        os.chmod(lib, 0o666 if case == "writable" else 0o644)
        if case == "not-root":
            os.chown(lib, 4321, 4321)
    path = "lib/guard.so" if case == "relative" else str(lib)
    state = tmp_path / "state"
    code = handler_main(["--state-dir", str(state), "--fence-guard", path, "--servers", "127.0.0.1:1",
                         "--etcd-endpoints", "http://127.0.0.1:1", "--listen", "127.0.0.1:0",
                         "--migration-listen", "127.0.0.1:0"])
    assert code == 2
    assert "fence guard" in capsys.readouterr().err
    assert not (state / "fence-deadline").exists()  # it stopped before anything else
