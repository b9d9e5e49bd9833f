"""NodeAgent's part that ends a run the way a person asked (stop, restart, save; a forced
stop that overtakes a graceful one) and looks after the saved-memory files of save/restore.
A mixin: the methods use the agent's launchers, reports and settings (handler/agent.py)."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc

from corral.v1 import vm_pb2
from handler import saved_files
from handler.isolation import hand_over_to
from handler.launchers import Launcher, run_owner

log = logging.getLogger(__name__)


class RunEnding:
    """Stop, restart and save asked by a person (mixed into handler.agent.NodeAgent)."""

    def _end_requested(self, vm: vm_pb2.VirtualMachine, uid: str) -> bool:
        request = vm.status.run_request
        if not request.action or request.instance_uid != uid:
            return False
        return request.action != vm_pb2.RUN_ACTION_SAVE or uid not in self.save_failed

    def _hurry(self, vm: vm_pb2.VirtualMachine) -> None:
        """A forced stop while a graceful one waits for the guest: destroy now (in a thread of
        its own: the pool's worker is blocked in the graceful stop)."""
        launcher = self.launchers.get(vm.status.instance_uid)
        if launcher is None:
            return
        self.hurried.add(launcher.uid)

        def destroy() -> None:
            try:
                launcher.kill()
            except (grpc.RpcError, ValueError) as exc:
                log.warning("vm %s: forced stop: %s", vm.metadata.name, exc)

        threading.Thread(target=destroy, name=f"hurry-{launcher.uid[:8]}", daemon=True).start()

    def _grace(self, vm: vm_pb2.VirtualMachine, request: vm_pb2.RunRequest | None = None) -> int:
        """Seconds between the ACPI power-off and destroy (0: destroy at once): the request's,
        else the VM's termination grace period, else this node's default."""
        if request is not None and request.HasField("grace_period_seconds"):
            return request.grace_period_seconds
        if vm.spec.HasField("termination_grace_period_seconds"):
            return vm.spec.termination_grace_period_seconds
        return self.grace_seconds

    def _end_run(self, vm: vm_pb2.VirtualMachine, launcher: Launcher) -> None:
        """End the run as asked (stop, restart or save), report how it ended, free the node."""
        request = vm.status.run_request
        name = vm.metadata.name
        saved_path = ""
        try:
            if request.action == vm_pb2.RUN_ACTION_SAVE:
                saved_path = str(self._save(vm, launcher))
                reason, message = "Saved", f"the guest's memory was saved to {saved_path}"
            elif request.force or (grace := self._grace(vm, request)) == 0:
                launcher.kill()
                reason, message = "Stopped", "destroyed on request"
            else:
                status = launcher.shutdown(grace)
                how = "powered off" if status.reason != "destroyed" else "destroyed after the grace period"
                reason, message = "Stopped", f"stopped on request ({how})"
        except (grpc.RpcError, ValueError, OSError) as exc:
            detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
            if request.action == vm_pb2.RUN_ACTION_SAVE and launcher.running():
                log.error("vm %s: save failed: %s", name, detail)
                self.save_failed.add(launcher.uid)
                self._send_report(vm, launcher, vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, "SaveFailed",
                                  f"saving failed: {detail}")
            else:
                log.warning("vm %s: ending the run failed, will retry: %s", name, detail)
            return
        if request.action == vm_pb2.RUN_ACTION_RESTART:
            message = "restarting: " + message
        if self._send_report(vm, launcher, vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, reason, message,
                             saved_state_path=saved_path):
            self._finish(launcher)
        else:
            launcher.ended = (reason, message, saved_path)  # reported by the next pass

    def _save(self, vm: vm_pb2.VirtualMachine, launcher: Launcher) -> Path:
        """Save into SAVE_DIR/<vm uid>/<run uid>.save, a directory the run's user may write
        until the file is written; then root takes it back (handler/saved_files.py)."""
        owner = run_owner(launcher.vm_dir)
        folder = saved_files.prepare_save_folder(self.save_dir, vm.metadata.uid, hand_over_to(self.isolation, owner))
        path = folder / f"{launcher.uid}.save"
        if not os.path.lexists(path):  # else saved already, before a handler restart
            launcher.save(path)
        if self.isolation is not None:
            self.isolation.give_back_path(owner[0], str(folder))
        return path

    def _prepare_restore(self, vm: vm_pb2.VirtualMachine, vm_dir: Path) -> None:
        """Let the new run's user read the saved file (never following what a run planted)."""
        saved_files.prepare_restore(self.save_dir, vm.metadata.uid, Path(vm.status.restore_from.path),
                                    hand_over_to(self.isolation, run_owner(vm_dir)))

    def _forget_saved_file(self, vm: vm_pb2.VirtualMachine) -> None:
        """A restored run is running: its saved file must never be restored a second time."""
        path = Path(vm.status.restore_from.path)
        try:
            path.unlink()
            log.info("vm %s: resumed; removed %s", vm.metadata.name, path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("vm %s: cannot remove the restored file %s: %s", vm.metadata.name, path, exc)
