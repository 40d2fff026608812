"""Completion as a user gets it: ``autocanary completion bash`` sourced in a real bash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def bash_complete(line: str, env: dict[str, str], cwd: Path | None = None) -> list[str]:
    """What a real bash offers after ``line`` (its last word being completed), one a line.

    The completion script comes from ``autocanary completion bash``, sourced as a user
    does; bash calls its function with COMP_WORDS/COMP_CWORD as on a Tab press.
    """
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    harness = (
        "source <(autocanary completion bash)\n"
        'read -ra COMP_WORDS <<< "$LINE"\n'
        '[[ $LINE == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE=$LINE; COMP_POINT=${#LINE}\n"
        '_autocanary; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "-c", harness],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**env, "LINE": line},
        cwd=cwd,
    )
    assert (result.returncode, result.stderr) == (0, ""), result
    return [word for word in result.stdout.splitlines() if word]
