"""Bad input to the real CLI process: command lines, environments and kubeconfigs.

Each case runs ``python -m autocanary`` as a user would and asserts a
non-zero exit, the message that names what was wrong, and no traceback.
Every cluster command is run without a kubeconfig, with a missing one, with
malformed ones, and against an API server that is not there (a closed port on
127.0.0.1). Nothing here needs the control plane.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from shell_completion import bash_complete

pytestmark = pytest.mark.integration

CONFIG = """\
prometheus:
  url: http://127.0.0.1:9
daemon:
  listen: 127.0.0.1:{port}
  leaderElection: {{enabled: false}}
rollouts:
  - name: web
    namespace: shop
    stable: web
    analysis:
      checks: [{{name: errors, template: error-rate, max: 1%}}]
"""

#: Every command that talks to the cluster, with the arguments it needs.
CLUSTER_COMMANDS = [
    ["status"],
    ["status", "web", "-o", "json"],
    ["release", "web", "--image", "registry.example/web:v2"],
    ["promote", "web"],
    ["abort", "web"],
    ["retry", "web"],
    ["pause", "web"],
    ["resume", "web"],
    ["run"],
]


def run_cli(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autocanary", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=cwd,
    )


def assert_refused(
    result: subprocess.CompletedProcess[str], *fragments: str, code: int = 1
) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "unexpected" not in result.stderr, result.stderr  # the last-resort handler: a bug
    assert result.returncode == code, output
    for fragment in fragments:
        assert fragment in output, output


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty home directory: no ~/.kube/config."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def clean_env(home: Path) -> dict[str, str]:
    """The environment of a new user: no KUBECONFIG, not in a pod, nothing of autocanary's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KUBE", "AUTOCANARY_")) and k != "KUBERNETES_SERVICE_HOST"
    }
    env["HOME"] = str(home)
    return env


@pytest.fixture
def config(tmp_path: Path) -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "autocanary.yaml"
    path.write_text(CONFIG.format(port=port))
    return path


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def kubeconfig(server: str) -> str:
    return f"""\
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: '{server}', insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: not-a-token}}}}]
contexts: [{{name: here, context: {{cluster: c, user: u}}}}]
current-context: here
"""


BROKEN_KUBECONFIGS = {
    "not YAML": ("clusters: [\n", "is not valid YAML"),
    "a list": ("- just\n- a list\n", "is malformed"),
    "unknown current context": (
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n",
        "Expected object with name gone",
    ),
    "not UTF-8": ("\udcff\udcfe", "is malformed"),
}


@pytest.mark.parametrize("argv", CLUSTER_COMMANDS, ids=" ".join)
def test_without_any_kubeconfig(
    argv: list[str], clean_env: dict[str, str], config: Path, home: Path
) -> None:
    result = run_cli(*argv, "-c", str(config), env=clean_env)
    assert_refused(
        result,
        f"error: no kubeconfig: {home}/.kube/config does not exist and this is not a pod",
        "pass --kubeconfig FILE or set KUBECONFIG",
    )


@pytest.mark.parametrize("argv", CLUSTER_COMMANDS, ids=" ".join)
def test_with_a_kubeconfig_that_does_not_exist(
    argv: list[str], clean_env: dict[str, str], config: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "config"
    result = run_cli(*argv, "-c", str(config), "--kubeconfig", str(missing), env=clean_env)
    assert_refused(result, f"error: no kubeconfig: {missing} (--kubeconfig) does not exist")


# Every command with one malformed kubeconfig, and every kind of malformed one with one
# command: they all go through the same loader.
MALFORMED = [(argv, "not YAML") for argv in CLUSTER_COMMANDS] + [
    (["status"], broken) for broken in BROKEN_KUBECONFIGS if broken != "not YAML"
]


@pytest.mark.parametrize(("argv", "broken"), MALFORMED, ids=str)
def test_with_a_malformed_kubeconfig(
    argv: list[str], broken: str, clean_env: dict[str, str], config: Path, tmp_path: Path
) -> None:
    text, message = BROKEN_KUBECONFIGS[broken]
    path = tmp_path / "kubeconfig"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    result = run_cli(*argv, "-c", str(config), "--kubeconfig", str(path), env=clean_env)
    assert_refused(result, f"error: kubeconfig {path}", message)


@pytest.mark.parametrize("argv", [a for a in CLUSTER_COMMANDS if a[0] != "run"], ids=" ".join)
def test_against_an_unreachable_api_server(
    argv: list[str], clean_env: dict[str, str], config: Path, tmp_path: Path, closed_port: int
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig(f"https://127.0.0.1:{closed_port}"))
    result = run_cli(*argv, "-c", str(config), "--kubeconfig", str(path), env=clean_env)
    assert_refused(
        result, f"cannot reach the API server at https://127.0.0.1:{closed_port}: ", "refused"
    )


def test_without_a_config_file_against_an_unreachable_api_server(
    clean_env: dict[str, str], tmp_path: Path, closed_port: int
) -> None:
    # No -c and no ./autocanary.yaml: the CLI looks for the daemon's ConfigMap.
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig(f"https://127.0.0.1:{closed_port}"))
    result = run_cli("status", "--kubeconfig", str(path), env=clean_env, cwd=tmp_path)
    assert_refused(
        result,
        "find the autocanary daemon in namespace autocanary: cannot reach the API server",
    )


def test_an_unknown_context(clean_env: dict[str, str], config: Path, tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig("https://127.0.0.1:1"))
    result = run_cli(
        "status", "-c", str(config), "--kubeconfig", str(path), "--context", "prod", env=clean_env
    )
    assert_refused(result, f"error: kubeconfig {path} has no context 'prod'")


# ---- command lines ---------------------------------------------------------------------------

ARGUMENTS = [
    (["status", "--every", "banana"], 2, "argument --every: expected a duration like 500ms"),
    (["status", "--every", "0s"], 2, "argument --every: expected at least 100ms, got '0s'"),
    (["status", "-o", "yaml"], 2, "invalid choice: 'yaml' (choose from 'table', 'json')"),
    (
        ["status", "UNKNOWN-ROLLOUT"],
        1,
        "error: no rollout 'UNKNOWN-ROLLOUT' in the config; known: web",
    ),
    (["status", "-n", "other"], 1, "error: no rollouts in namespace other in the config"),
    (["promote", "web", "-n", "other"], 1, "error: no rollout 'web' in namespace other"),
    (["release", "web"], 2, "the following arguments are required: --image"),
    (["release", "web", "--image", "x:v2", "--env", "NOEQUALS"], 1, "--env expects NAME=VALUE"),
    (["promote"], 2, "the following arguments are required: rollout"),
    (["completion", "fish"], 2, "invalid choice: 'fish'"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize(("argv", "code", "message"), ARGUMENTS, ids=str)
def test_bad_arguments(
    argv: list[str],
    code: int,
    message: str,
    clean_env: dict[str, str],
    config: Path,
    tmp_path: Path,
) -> None:
    # A kubeconfig whose server is never reached: each of these fails before.
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig("https://127.0.0.1:1"))
    env = {**clean_env, "KUBECONFIG": str(path)}
    result = run_cli(*argv, env=env, cwd=config.parent)  # ./autocanary.yaml is the config
    assert_refused(result, message, code=code)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read: Is a directory"),
        (b"\xff\xfe", "not UTF-8 text (byte 0)"),
        (b"prometheus: [" + b"[" * 900 + b"]" * 901, "nested more than 64 levels deep"),
        (b"- a\n- b\n", "expected a mapping with 'prometheus' and 'rollouts'"),
    ],
)
def test_validate_bad_files(
    content: bytes | None, message: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    assert_refused(run_cli("validate", str(path), env=clean_env), f"{path}", message)
    assert_refused(
        run_cli("validate", str(tmp_path / "absent.yaml"), env=clean_env), "No such file"
    )


def test_run_on_a_port_already_taken(clean_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig("https://127.0.0.1:1"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(CONFIG.format(port=port))
        result = run_cli("run", "-c", str(config), "--kubeconfig", str(path), env=clean_env)
    assert_refused(
        result, f"error: cannot listen on 127.0.0.1:{port} (daemon.listen): Address already in use"
    )


def test_run_on_a_port_that_does_not_exist(clean_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(port=99999))
    result = run_cli("run", "-c", str(config), env=clean_env)
    assert_refused(result, f"{config}:4: daemon.listen: expected a port from 0 to 65535, got 99999")


# ---- environment ---------------------------------------------------------------------------


def test_autocanary_config_naming_a_missing_file(clean_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "gone.yaml"
    env = {**clean_env, "AUTOCANARY_CONFIG": str(missing)}
    assert_refused(run_cli("status", env=env), f"{missing}: cannot read: No such file")
    assert_refused(run_cli("run", env=env), f"{missing}: cannot read: No such file")


def test_kubeconfig_listing_only_missing_files(
    clean_env: dict[str, str], config: Path, tmp_path: Path
) -> None:
    # KUBECONFIG, as a list of files none of which exists.
    files = f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}"
    env = {**clean_env, "KUBECONFIG": files}
    assert_refused(
        run_cli("status", "-c", str(config), env=env),
        f"error: no kubeconfig: {tmp_path / 'a'}, {tmp_path / 'b'} (KUBECONFIG) does not exist",
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("FAULT_ERROR_RATE", "banana", "FAULT_ERROR_RATE"),
        ("FAULT_LATENCY", "fast", "FAULT_LATENCY"),
    ],
)
def test_testpage_faults_from_the_environment(
    variable: str, value: str, message: str, clean_env: dict[str, str]
) -> None:
    env = {**clean_env, variable: value}
    result = run_cli("testpage", "--port", "0", env=env, timeout=30)
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert result.returncode != 0
    assert message in output


def test_completion_offers_the_rollouts_of_the_config(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "rollouts.yaml"
    config.write_text(
        "prometheus: {url: http://127.0.0.1:9}\n"
        "rollouts:\n"
        + "".join(
            f"  - {{name: {name}, namespace: {ns}, stable: {name}, "
            "analysis: {checks: [{name: e, template: error-rate, max: 1%}]}}\n"
            for name, ns in (("web", "shop"), ("worker", "jobs"), ("api", "shop"))
        )
    )
    c = f"-c {config}"
    # Every command that takes a rollout, its first positional (or backtest's --rollout).
    for command in ("status", "release", "promote", "abort", "pause", "resume", "retry"):
        assert bash_complete(f"autocanary {command} {c} ", clean_env) == ["web", "worker", "api"]
    assert bash_complete(f"autocanary backtest {c} --rollout ", clean_env) == [
        "web",
        "worker",
        "api",
    ]
    assert bash_complete(f"autocanary promote {c} w", clean_env) == ["web", "worker"]
    # -n narrows them to a namespace; options before the rollout are skipped with values.
    assert bash_complete(f"autocanary status -n shop {c} ", clean_env) == ["web", "api"]
    assert bash_complete(f"autocanary release {c} --image app:2 ", clean_env) == [
        "web",
        "worker",
        "api",
    ]
    # Once given, the rollout is not offered again; an option's value is not a rollout.
    assert "web" not in bash_complete(f"autocanary status {c} web ", clean_env)
    assert "--watch" in bash_complete(f"autocanary status {c} web ", clean_env)
    assert bash_complete(f"autocanary status {c} -o ", clean_env) == ["table", "json"]
    # ./autocanary.yaml, as the commands read it, when there is no -c.
    (tmp_path / "autocanary.yaml").write_text(config.read_text())
    assert bash_complete("autocanary abort a", clean_env, cwd=tmp_path) == ["api"]
    # Nothing to read (no config, no cluster): nothing offered, and no error in the shell.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert bash_complete("autocanary status ", clean_env, cwd=empty) == []
    assert bash_complete("autocanary status -c missing.yaml ", clean_env, cwd=empty) == []


def test_version_and_completion(clean_env: dict[str, str]) -> None:
    from autocanary.cli import version

    result = run_cli("--version", env=clean_env)
    assert (result.returncode, result.stdout.strip()) == (0, f"autocanary {version()}")
    script = run_cli("completion", "bash", env=clean_env).stdout
    # Completion in a real bash: the command names, then a command's options.
    probe = (
        f"{script}\n"
        'COMP_WORDS=(autocanary sta); COMP_CWORD=1; _autocanary; echo "${COMPREPLY[*]}"\n'
        'COMP_WORDS=(autocanary status --wa); COMP_CWORD=2; _autocanary; echo "${COMPREPLY[*]}"\n'
        'COMP_WORDS=(autocanary status -o ""); COMP_CWORD=3; _autocanary; echo "${COMPREPLY[*]}"\n'
        'COMP_WORDS=(kubectl-autocanary pro); COMP_CWORD=1; _autocanary; echo "${COMPREPLY[*]}"\n'
    )
    bash = subprocess.run(
        ["bash", "--norc", "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert bash.stdout.splitlines() == ["status", "--watch", "table json", "probe promote"]
