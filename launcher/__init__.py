"""corral-launcher: one process per VM that owns exactly one libvirt domain.

It serves its node's handler over gRPC (``corral.v1.LauncherService``) on
``VM_DIR/launcher.sock``. See :mod:`launcher.main` for the command line and the
lifecycle contract.
"""

import os as _os

# libvirt forks QEMU (and its capability probe) from this process. With gRPC's fork
# support on, its pthread_atfork child handler restarts gRPC's poller in the forked child,
# whose fds libvirt has just closed, and the child aborts ("epoll_wait error: Bad file
# descriptor") before it can exec QEMU. Must be set before grpc is imported.
_os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
