"""The ``autocanary`` command line (also ``kubectl autocanary``, as a kubectl plugin).

``run`` starts the daemon; ``validate`` and ``schema`` help write configs;
``status`` shows every rollout; ``release`` ships a new image to the canary;
``promote|abort|retry|pause|resume`` set the command annotation the daemon
consumes on its next tick (GitOps-safe: nothing else in the spec changes);
``testpage`` and ``probe`` run the rehearsal app and the load probe;
``backtest`` replays a rollout's analysis over past Prometheus data;
``completion`` prints a shell completion script.

Cluster commands follow kubectl's conventions: ``--kubeconfig``,
``--context``, ``-n/--namespace``; without ``-c`` they read the daemon's own
config from its ConfigMap in the cluster. Every failure is one line (or one
line per config problem) on stderr and a non-zero exit status: 1 for errors,
2 for bad arguments, 130 on Ctrl-C; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from autocanary.config.loader import load_config, parse_config
from autocanary.config.models import Config, RolloutConfig
from autocanary.config.units import parse_duration
from autocanary.errors import AutocanaryError, ConfigError, ConfigProblem, ResourceNotFound
from autocanary.rollout import revision
from autocanary.rollout import route as route_math
from autocanary.rollout import state as state_codec

#: The config file when -c is not given: $AUTOCANARY_CONFIG, else this file if it exists.
LOCAL_CONFIG = "autocanary.yaml"
#: Where the CLI looks for the daemon's config when there is no local file.
DAEMON_NAMESPACE = "autocanary"
_PASSTHROUGH = {"testpage": "autocanary.apps.testpage", "probe": "autocanary.apps.probe"}
#: Hidden command the completion script runs: the rollout names, one a line.
COMPLETE_ROLLOUTS = "__complete-rollouts"
#: Exit status for a bug: an exception no code path expected (sysexits' EX_SOFTWARE).
EXIT_BUG = 70


def version() -> str:
    """The installed autocanary's version."""
    try:
        return metadata.version("autocanary")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _duration_argument(value: str) -> float:
    """An argparse type: a duration like 2s or 500ms, in seconds, at least 100ms."""
    try:
        seconds = parse_duration(value).total_seconds()
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds < 0.1:
        raise argparse.ArgumentTypeError(f"expected at least 100ms, got {value!r}")
    return seconds


def _parser(prog: str = "autocanary") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Metrics-driven canary releases for Kubernetes Deployments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_cluster(
        p: argparse.ArgumentParser, *, config_file: bool = True
    ) -> argparse.ArgumentParser:
        if config_file:
            p.add_argument(
                "-c",
                "--config",
                help="config file (env AUTOCANARY_CONFIG; default ./autocanary.yaml if it "
                "exists, else the daemon's ConfigMap in the cluster)",
            )
            p.add_argument(
                "--daemon-namespace",
                default=os.environ.get("AUTOCANARY_NAMESPACE", DAEMON_NAMESPACE),
                help="namespace of the daemon whose config is read when there is no config "
                "file (env AUTOCANARY_NAMESPACE; default autocanary)",
            )
        p.add_argument(
            "--kubeconfig",
            help="kubeconfig file (default: in a pod, its ServiceAccount; "
            "else $KUBECONFIG or ~/.kube/config)",
        )
        p.add_argument("--context", help="kubeconfig context to use (default: its current one)")
        return p

    def with_namespace(p: argparse.ArgumentParser) -> None:
        p.add_argument("-n", "--namespace", help="only rollouts in this namespace (as kubectl -n)")

    run = with_cluster(sub.add_parser("run", help="run the daemon"), config_file=False)
    run.add_argument(
        "-c",
        "--config",
        default=os.environ.get("AUTOCANARY_CONFIG", LOCAL_CONFIG),
        help="config file (env AUTOCANARY_CONFIG)",
    )
    run.add_argument("--identity", help="name in Leases and Events (default: pod name or host-pid)")

    validate = sub.add_parser("validate", help="check a config file; exit 1 listing every problem")
    validate.add_argument("config_file", metavar="CONFIG")
    validate.add_argument(
        "--check-queries",
        action="store_true",
        help="also run every check's query against the config's Prometheus",
    )
    validate.add_argument("--prometheus", help="Prometheus URL for --check-queries")

    sub.add_parser("schema", help="print the config's JSON Schema")

    status = with_cluster(sub.add_parser("status", help="show the rollouts"))
    with_namespace(status)
    status.add_argument("rollout", nargs="?", help="only this rollout")
    status.add_argument("-w", "--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument(
        "--every",
        type=_duration_argument,
        default=2.0,
        metavar="DURATION",
        help="refresh period with --watch (default 2s)",
    )
    status.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default="table",
        help="json: an array; with --watch one JSON object per rollout per line (NDJSON)",
    )

    release = with_cluster(sub.add_parser("release", help="ship an image to the canary"))
    with_namespace(release)
    release.add_argument("rollout")
    release.add_argument("--image", required=True)
    release.add_argument("--container", help="container to change (default: the first)")
    release.add_argument(
        "--version",
        help="value of the version label (default: the image tag)",
        dest="version_value",
    )
    release.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="set a container env var"
    )

    for command, text in (
        ("promote", "skip the remaining steps and promote"),
        ("abort", "roll the release back now"),
        ("retry", "release a rolled-back revision again"),
        ("pause", "stop advancing; keep the current split"),
        ("resume", "continue a paused release"),
    ):
        manual = with_cluster(sub.add_parser(command, help=text))
        with_namespace(manual)
        manual.add_argument("rollout")

    _backtest_arguments(sub.add_parser("backtest", help="replay a rollout's analysis over history"))
    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh"])
    for name in _PASSTHROUGH:
        sub.add_parser(name, help=f"run the {name} (see autocanary {name} --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "autocanary") -> int:
    """Entry point of the ``autocanary`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:1] == [COMPLETE_ROLLOUTS]:
            return _complete_rollouts(args_list[1:])
        if args_list and args_list[0] in _PASSTHROUGH:
            import importlib

            module = importlib.import_module(_PASSTHROUGH[args_list[0]])
            code: int = module.main(args_list[1:])
            return code
        args = _parser(prog).parse_args(args_list)
        args.prog = prog
        return int(_COMMANDS[args.command](args))
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    except AutocanaryError as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`status -o json | head`): nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # noqa: BLE001 -- the last line of defence: a bug, said in one line
        print(
            f"error: unexpected {type(e).__name__}: {_one_line(str(e))} "
            "(a bug in autocanary; please report it with the command that caused it)",
            file=sys.stderr,
        )
        return EXIT_BUG


def kubectl_main() -> int:
    """Entry point of ``kubectl-autocanary``: kubectl runs it for ``kubectl autocanary ...``."""
    return main(prog="kubectl autocanary")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---- commands ------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from autocanary.adapters.kubernetes import KubeClient, load_api_client
    from autocanary.daemon import logs
    from autocanary.daemon.service import Daemon, default_identity

    config = load_config(args.config)
    logs.configure(config.daemon.log_level, config.daemon.log_format)
    identity = args.identity or default_identity()
    kube = KubeClient(load_api_client(args.kubeconfig, args.context), identity=identity)
    return Daemon(Path(args.config), config, kube, identity=identity).run()


def _cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config_file)
    if args.check_queries:
        problems = _check_queries(args.config_file, config, args.prometheus)
        if problems:
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1
    names = ", ".join(r.name for r in config.rollouts)
    checked = " and its queries" if args.check_queries else ""
    print(f"{args.config_file}{checked}: valid ({len(config.rollouts)} rollout(s): {names})")
    return 0


def _check_queries(path: str, config: Config, url: str | None) -> list[ConfigProblem]:
    """Run every query the daemon will run, for the versions Prometheus has now."""
    from autocanary.adapters.prometheus import PrometheusClient
    from autocanary.rollout.query_check import check_queries

    prometheus_cfg = config.prometheus
    if url:
        prometheus_cfg = prometheus_cfg.model_copy(update={"url": url.rstrip("/")})
    client = PrometheusClient(prometheus_cfg)
    try:
        return check_queries(path, config, client)
    finally:
        client.close()


def _cmd_schema(args: argparse.Namespace) -> int:
    schema = Config.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "autocanary configuration"
    print(json.dumps(schema, indent=2))
    return 0


def _kube(args: argparse.Namespace) -> Any:
    from autocanary.adapters.kubernetes import KubeClient, load_api_client

    return KubeClient(load_api_client(args.kubeconfig, args.context), identity="autocanary-cli")


def _cluster_config(args: argparse.Namespace) -> tuple[Config, Any]:
    """The config (a local file, else the daemon's ConfigMap) and a client for the cluster.

    A local file is read first, so its problems show without a cluster.
    """
    path = args.config or os.environ.get("AUTOCANARY_CONFIG")
    if not path and Path(LOCAL_CONFIG).is_file():
        path = LOCAL_CONFIG
    if path:
        config = load_config(path)
        return config, _kube(args)
    kube = _kube(args)
    text, source = kube.daemon_config(args.daemon_namespace)
    return parse_config(text, source), kube


def _complete_rollouts(argv: Sequence[str]) -> int:
    """Print the rollout names a command line's options point at, one a line (for completion).

    ``argv`` is what the user typed after the command; only the options that
    choose the config (``-c``, ``--daemon-namespace``, ``--kubeconfig``,
    ``--context``) and ``-n`` are read, the rest ignored. The config comes from
    where ``status`` reads it. Any failure prints nothing and exits 1: a shell
    completing a word shows no errors.
    """
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("-c", "--config")
    parser.add_argument(
        "--daemon-namespace", default=os.environ.get("AUTOCANARY_NAMESPACE", DAEMON_NAMESPACE)
    )
    parser.add_argument("--kubeconfig")
    parser.add_argument("--context")
    parser.add_argument("-n", "--namespace")
    try:
        args, _ = parser.parse_known_args(list(argv))
        path = args.config or os.environ.get("AUTOCANARY_CONFIG")
        if not path and Path(LOCAL_CONFIG).is_file():
            path = LOCAL_CONFIG
        if path:
            config = load_config(path)
        else:
            text, source = _kube(args).daemon_config(args.daemon_namespace)
            config = parse_config(text, source)
    except Exception:  # noqa: BLE001 -- completion offers nothing rather than an error
        return 1
    names = [r.name for r in config.rollouts if not args.namespace or r.namespace == args.namespace]
    print("\n".join(names))
    return 0


def _selected(config: Config, args: argparse.Namespace) -> list[RolloutConfig]:
    """The rollouts a command applies to: ``args.rollout`` if given, within ``--namespace``."""
    rollouts = [r for r in config.rollouts if not args.namespace or r.namespace == args.namespace]
    scope = f" in namespace {args.namespace}" if args.namespace else ""
    if getattr(args, "rollout", None):
        named = [r for r in rollouts if r.name == args.rollout]
        if not named:
            known = ", ".join(r.name for r in rollouts) or "none"
            raise AutocanaryError(
                f"no rollout {args.rollout!r}{scope} in the config; known: {known}"
            )
        return named
    if not rollouts:
        raise AutocanaryError(f"no rollouts{scope} in the config")
    return rollouts


def _rollout(args: argparse.Namespace) -> tuple[RolloutConfig, Any]:
    config, kube = _cluster_config(args)
    return _selected(config, args)[0], kube


def _cmd_manual(args: argparse.Namespace) -> int:
    rollout, kube = _rollout(args)
    kube.set_command(rollout.namespace, rollout.canary_name, args.command)
    print(
        f"{args.command} requested for rollout {rollout.name} "
        f"({rollout.namespace}/{rollout.canary_name}); the daemon acts on its next tick"
    )
    return 0


def _cmd_release(args: argparse.Namespace) -> int:
    from autocanary.errors import ResourceNotFound

    env = _parse_env(args.env)
    rollout, kube = _rollout(args)
    stable = kube.read_deployment(rollout.namespace, rollout.stable)
    template = release_template(
        stable.template,
        image=args.image,
        container=args.container,
        version_label=rollout.version_label,
        version=args.version_value,
        env=env,
    )
    try:
        canary = kube.read_deployment(rollout.namespace, rollout.canary_name)
    except ResourceNotFound:
        body = canary_deployment(stable.raw, rollout, template)
        kube.create_deployment(rollout.namespace, body)
        print(f"created {rollout.namespace}/{rollout.canary_name} with {args.image}")
        return 0
    roles = revision.role_labels(rollout.role_labels, stable.selector, canary.selector)
    kube.replace_template(
        rollout.namespace,
        rollout.canary_name,
        revision.promoted_template(canary.template, template, roles),
    )
    print(f"released {args.image} to {rollout.namespace}/{rollout.canary_name}")
    return 0


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise AutocanaryError(f"--env expects NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def release_template(
    stable_template: dict[str, Any],
    *,
    image: str,
    container: str | None,
    version_label: str,
    version: str | None,
    env: dict[str, str],
) -> dict[str, Any]:
    """The stable's pod template with a new image (and version label, env) for the canary."""
    template = json.loads(json.dumps(stable_template))
    containers = template.get("spec", {}).get("containers") or []
    if not containers:
        raise AutocanaryError("the stable Deployment's pod template has no containers")
    target = containers[0]
    if container is not None:
        matches = [c for c in containers if c.get("name") == container]
        if not matches:
            names = [c.get("name") for c in containers]
            raise AutocanaryError(f"no container {container!r} in the pod template; it has {names}")
        target = matches[0]
    target["image"] = image
    for name, value in env.items():
        variables = [v for v in target.setdefault("env", []) if v.get("name") != name]
        target["env"] = [*variables, {"name": name, "value": value}]
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    if version is None and version_label in labels:
        version = revision.version_of({"spec": {"containers": [{"image": image}]}}, version_label)
    if version is not None:
        labels[version_label] = version
    return dict(template)


def canary_deployment(
    stable: dict[str, Any], rollout: RolloutConfig, template: dict[str, Any]
) -> dict[str, Any]:
    """A new canary Deployment beside ``stable``: its spec, 0 replicas, role labels ``canary``."""
    selector = dict(stable["spec"]["selector"].get("matchLabels") or {})
    role_keys = [k for k in rollout.role_labels if k in selector]
    if not role_keys:
        raise AutocanaryError(
            f"cannot create {rollout.canary_name}: the stable's selector {selector} has none "
            "of the "
            f"role labels {rollout.role_labels}, so the canary's pods would be the stable's. "
            "Create the canary Deployment yourself (see deploy/example/)"
        )
    for key in role_keys:
        selector[key] = "canary"
        template["metadata"]["labels"][key] = "canary"
    spec = {
        k: v for k, v in stable["spec"].items() if k not in ("replicas", "selector", "template")
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": rollout.canary_name,
            "namespace": rollout.namespace,
            "labels": dict(stable["metadata"].get("labels") or {}),
        },
        "spec": {
            **spec,
            "replicas": 0,
            "selector": {"matchLabels": selector},
            "template": template,
        },
    }


def _cmd_status(args: argparse.Namespace) -> int:
    config, kube = _cluster_config(args)
    rollouts = _selected(config, args)
    while True:
        rows = [rollout_status(kube, r) for r in rollouts]
        if args.output == "json" and args.watch:
            for row in rows:  # NDJSON: a consumer reads one object per line as it comes
                print(json.dumps(row, default=str), flush=True)
        elif args.output == "json":
            print(json.dumps(rows, indent=2, default=str))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
            print(format_status(rows), flush=True)
        if not args.watch:
            # A rollout that could not be read is an error, for scripts as for people.
            return 1 if any(row["phase"] == "error" for row in rows) else 0
        time.sleep(args.every)


def rollout_status(kube: Any, rollout: RolloutConfig) -> dict[str, Any]:
    """One rollout's status as a dict (for the table and for ``-o json``)."""
    row: dict[str, Any] = {"rollout": rollout.name, "namespace": rollout.namespace}
    try:
        canary = kube.read_deployment(rollout.namespace, rollout.canary_name)
        stable = kube.read_deployment(rollout.namespace, rollout.stable)
        raw = kube.read_state(canary).text
        st = state_codec.loads(raw) if raw else state_codec.RolloutState()
    except AutocanaryError as e:
        row.update(phase="error", error=str(e))
        return row
    last = st.verdicts[-1] if st.verdicts else None
    row.update(
        phase=st.phase,
        step=f"{st.step + 1}/{len(rollout.plan)}" if st.phase in state_codec.ACTIVE_PHASES else "-",
        canary=f"{canary.ready}/{canary.replicas}",
        stable=f"{stable.ready}/{stable.replicas}",
        versions=f"{st.canary_version or '-'} vs {st.stable_version or '-'}",
        revision=st.revision,
        failures=st.failures,
        inconclusive=st.inconclusive,
        lastVerdict=(
            {"at": last.at.isoformat(), "verdict": last.verdict, "checks": last.checks}
            if last
            else None
        ),
        message=st.message,
        commandPending=canary.annotations.get(state_codec.COMMAND_ANNOTATION),
    )
    if rollout.gateway is not None:
        row["route"] = _route_status(kube, rollout)
    return row


def _route_status(kube: Any, rollout: RolloutConfig) -> dict[str, Any]:
    """A gateway rollout's HTTPRoute weights as read now (or why they cannot be)."""
    gw = rollout.gateway
    assert gw is not None
    label = route_math.describe(gw, rollout.namespace)
    try:
        obj = kube.read_httproute(gw.namespace or rollout.namespace, gw.http_route)
    except ResourceNotFound:
        obj = None
    except AutocanaryError as e:
        return {"route": label, "problem": str(e)}
    view = route_math.read(obj, gw, rollout.namespace)
    if view.problem is not None:
        return {"route": label, "problem": view.problem}
    return {
        "route": label,
        "stableWeight": view.stable_weight,
        "canaryWeight": view.canary_weight,
        "abRule": view.ab,
    }


def format_status(rows: Sequence[dict[str, Any]]) -> str:
    """A table of rollouts, one line each, with the last verdict's checks underneath."""
    header = ("ROLLOUT", "NAMESPACE", "PHASE", "STEP", "CANARY", "STABLE", "VERSIONS", "MESSAGE")
    lines = [header]
    details: dict[int, list[str]] = {}
    for i, row in enumerate(rows):
        if row["phase"] == "error":
            lines.append(
                (row["rollout"], row["namespace"], "error", "-", "-", "-", "-", row["error"])
            )
            continue
        lines.append(
            (
                row["rollout"],
                row["namespace"],
                row["phase"],
                row["step"],
                row["canary"],
                row["stable"],
                row["versions"],
                row["message"],
            )
        )
        route = row.get("route")
        if route:
            details[i + 1] = [
                f"    {route['route']}: {route['problem']}"
                if "problem" in route
                else f"    {route['route']}: stable {route['stableWeight']}, canary "
                f"{route['canaryWeight']}" + (", A/B rule on" if route["abRule"] else "")
            ]
        verdict = row.get("lastVerdict")
        if verdict:
            details.setdefault(i + 1, []).extend(
                [
                    f"    {name}: {c['verdict']} value={_fmt(c.get('value'))} "
                    f"threshold {c['threshold']}"
                    for name, c in verdict["checks"].items()
                ]
            )
    widths = [max(len(str(line[k])) for line in lines) for k in range(len(header) - 1)]
    out = []
    for i, line in enumerate(lines):
        cells = [str(v).ljust(w) for v, w in zip(line[:-1], widths, strict=True)]
        out.append("  ".join([*cells, str(line[-1])]).rstrip())
        out.extend(details.get(i, []))
    return "\n".join(out)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _backtest_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "What would this config have decided? Replays the rollout's analysis at each interval "
        "of past releases (queries evaluated at past times, the daemon's own schedule and "
        "decisions; pods Ready at once) and prints the timeline and decision. See the "
        "README, 'Tuning thresholds with backtest'."
    )
    p.add_argument(
        "-c",
        "--config",
        default=os.environ.get("AUTOCANARY_CONFIG", LOCAL_CONFIG),
        help="config file",
    )
    p.add_argument("--rollout", help="rollout to replay (default: the only one)")
    p.add_argument("--from", dest="start", metavar="T1", help="release start: ISO 8601, now-2h")
    p.add_argument("--to", dest="end", metavar="T2", help="window end (no tick after it)")
    p.add_argument("--canary-version", help="the canary's version label value")
    p.add_argument("--stable-version", help="the stable's version label value")
    p.add_argument("--name", dest="release_name", help="release name (default: canary version)")
    p.add_argument(
        "--releases",
        metavar="FILE",
        help="YAML list of {name,from,to,canaryVersion,"
        "stableVersion} instead of the four flags above",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[VARIANT:]PATH=VALUE",
        help="config override, e.g. analysis.checks.error-rate.max=2%% (repeatable; "
        "a VARIANT: prefix groups overrides into named variants)",
    )
    p.add_argument("--prometheus", help="Prometheus URL (default: the config's)")
    p.add_argument("--replicas", type=int, default=10, help="stable replicas (sizes %% steps)")
    p.add_argument("-o", "--output", choices=["text", "table", "json"], default="text")
    p.add_argument("--plot", metavar="FILE.png", help="draw checks over time (needs [plot] extra)")


def _cmd_backtest(args: argparse.Namespace) -> int:
    from autocanary.backtest import command

    return command.run(args)


def _cmd_completion(args: argparse.Namespace) -> int:
    print(completion_script(args.shell, _parser(args.prog)))
    return 0


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    """A bash (or zsh, through bashcompinit) completion script for ``parser``'s commands.

    Completes command names, each command's options, the choices of options
    that have them, files after ``-c``/``--kubeconfig``, and rollout names
    where a command takes one (its first positional, ``--rollout``): the script
    asks ``autocanary __complete-rollouts`` with the options typed so far, so
    the names come from the same config the command would read (``-c``, else
    the daemon's ConfigMap, within ``-n``).
    """
    commands: dict[str, list[str]] = {}
    choices: dict[str, list[str]] = {}
    takes_rollout: list[str] = []
    valued: set[str] = set()  # options followed by a value, in any command
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in (getattr(action, "choices", None) or {}).items():
            options: list[str] = []
            for sub_action in sub._actions:
                options.extend(o for o in sub_action.option_strings if o.startswith("--"))
                if sub_action.option_strings and sub_action.nargs != 0:
                    valued.update(sub_action.option_strings)
                if sub_action.dest == "rollout" and not sub_action.option_strings:
                    takes_rollout.append(name)
                if sub_action.choices:
                    # Keyed by command and the word before: an option's values, or a
                    # positional's right after the command (completion's shells).
                    for before in sub_action.option_strings or [name]:
                        choices[f"{name}:{before}"] = [str(c) for c in sub_action.choices]
            commands[name] = sorted(set(options))
    cases = "\n".join(
        f'        {name}) opts="{" ".join(options)}" ;;'
        for name, options in sorted(commands.items())
    )
    choice_cases = "\n".join(
        f'        {option}) COMPREPLY=($(compgen -W "{" ".join(values)}" -- "$cur")); return ;;'
        for option, values in sorted(choices.items())
    )
    valued_options = "|".join(sorted(valued))
    rollout_commands = "|".join(sorted(takes_rollout))
    script = f"""# autocanary {shell} completion: source it, e.g.
#   source <(autocanary completion {shell})
_autocanary_rollouts() {{
    # The rollout names from the config the command would read (its -c, -n, ... so far).
    local names words=("${{COMP_WORDS[@]:at+1:COMP_CWORD-at-1}}")
    names=$("${{COMP_WORDS[0]}}" {COMPLETE_ROLLOUTS} "${{words[@]}}" 2>/dev/null)
    COMPREPLY=($(compgen -W "$names" -- "$cur"))
}}
_autocanary() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} cmd="" opts="" i at=0
    local given=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in
            -*) ;;
            autocanary) ;;
            *) cmd=${{COMP_WORDS[i]}}; at=$i; break ;;
        esac
    done
    case $prev in
        -c|--config|--kubeconfig|--releases|--plot) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --rollout) _autocanary_rollouts; return ;;
    esac
    case $cmd:$prev in
{choice_cases}
    esac
    if [ -z "$cmd" ]; then
        COMPREPLY=($(compgen -W "{" ".join(sorted(commands))} --version --help" -- "$cur"))
        return
    fi
    case $cmd in
        {rollout_commands})
            # The rollout is the command's one positional: offered until it is given.
            for ((i = at + 1; i < COMP_CWORD; i++)); do
                case ${{COMP_WORDS[i]}} in
                    {valued_options}) ((i++)) ;;
                    -*) ;;
                    *) given=1 ;;
                esac
            done
            case $prev in
                {valued_options}) ;;
                *) if [ $given = 0 ] && [[ $cur != -* ]]; then _autocanary_rollouts; return; fi ;;
            esac ;;
    esac
    case $cmd in
{cases}
    esac
    COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
}}
complete -F _autocanary autocanary kubectl-autocanary
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "completion": _cmd_completion,
    "backtest": _cmd_backtest,
    "run": _cmd_run,
    "validate": _cmd_validate,
    "schema": _cmd_schema,
    "status": _cmd_status,
    "release": _cmd_release,
    **dict.fromkeys(state_codec.COMMANDS, _cmd_manual),
}


if __name__ == "__main__":
    sys.exit(main())
