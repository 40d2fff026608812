"""``python -m autocanary_testbed up``: run the local control plane until Ctrl-C or SIGTERM.

Prints the kubeconfig path and an ``export KUBECONFIG=...`` line for another
shell, then waits; on Ctrl-C or SIGTERM it stops every process and removes the
work directory (unless ``--keep`` or ``AUTOCANARY_KEEP=1``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import structlog

from autocanary_testbed.controlplane import ControlPlane
from autocanary_testbed.errors import HarnessError


class _Terminated(Exception):
    """SIGTERM arrived; unwinds the main thread so the control plane is torn down."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run it; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m autocanary_testbed")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the local control plane and wait for Ctrl-C")
    up.add_argument("--bin-dir", type=Path, help="control-plane binaries (default: build.sh's)")
    up.add_argument("--workdir", type=Path, help="work directory (default: a new temp dir)")
    up.add_argument("--keep", action="store_true", help="keep the work directory at exit")
    args = parser.parse_args(argv)
    # stdout carries only the lines meant for the user (and for scripts reading them).
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )

    # Installed before anything starts, so a SIGTERM during start-up also tears down.
    signal.signal(signal.SIGTERM, _raise_terminated)
    plane = ControlPlane()
    plane.keep_workdir = plane.keep_workdir or args.keep
    try:
        with plane.start(args.bin_dir, args.workdir):
            print(f"kubeconfig: {plane.kubeconfig_path}")
            print(f"export KUBECONFIG={plane.kubeconfig_path}")
            print(f"logs: {plane.workdir / 'logs'}; Ctrl-C to stop", flush=True)
            while True:
                signal.pause()
    except (KeyboardInterrupt, _Terminated):
        print("stopped", file=sys.stderr)
        return 0
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
