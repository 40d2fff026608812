"""The typed configuration: one YAML file, validated once at load.

Keys are camelCase as in Kubernetes manifests; unknown keys are errors.
:func:`load_config` reports every problem at once, each with file, line and
field path (see :mod:`autocanary.config.loader`). ``autocanary schema``
prints the JSON Schema of :class:`Config` for editor completion.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from autocanary import promql
from autocanary.config.redact import redact
from autocanary.config.units import format_duration, parse_duration, parse_percent
from autocanary.judge import SequentialConfig
from autocanary.latency import LATENCY_BUCKETS

# [0-9], not \d: \d matches any Unicode digit (full-width ones too).
_DURATION_PATTERN = r"^\s*([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+\s*$"
_PERCENT_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*%\s*$"
_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _DURATION_PATTERN, "examples": ["30s", "2m"]},
                {"type": "number", "minimum": 0, "description": "seconds"},
            ]
        }
    ),
]


def _fraction(value: object) -> float:
    fraction = parse_percent(value)
    if fraction < 0:
        raise ValueError(f"expected a non-negative percentage, got {value!r}")
    return fraction


def _name_check(kind: str, pattern: str, max_length: int, shape: str) -> Callable[[str], str]:
    """A validator: ``value`` must be a Kubernetes name of ``kind``, else a readable error."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if len(value) > max_length or not compiled.match(value):
            raise ValueError(
                f"expected {kind} ({shape}, at most {max_length} characters), got {value!r}"
            )
        return value

    return check


_LABEL_SHAPE = "lowercase letters, digits and '-', starting and ending with a letter or digit"
_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A DNS-1123 label: namespaces, and the names autocanary itself gives (rollouts, checks, sinks).
DnsLabel = Annotated[
    str,
    AfterValidator(_name_check("a Kubernetes name", _NAME_PATTERN, 63, _LABEL_SHAPE)),
    WithJsonSchema({"type": "string", "pattern": _NAME_PATTERN, "maxLength": 63}),
]
#: A DNS-1123 subdomain: Deployment and Lease names.
DnsSubdomain = Annotated[
    str,
    AfterValidator(
        _name_check("a Kubernetes object name", _SUBDOMAIN_PATTERN, 253, f"{_LABEL_SHAPE}, and '.'")
    ),
    WithJsonSchema({"type": "string", "pattern": _SUBDOMAIN_PATTERN, "maxLength": 253}),
]
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _label_key(value: str) -> str:
    # [prefix/]name: the prefix a DNS subdomain, the name at most 63 characters.
    prefix, _, name = value.rpartition("/")
    if (
        len(name) > 63
        or not _LABEL_NAME.match(name)
        or (prefix and (len(prefix) > 253 or not re.match(_SUBDOMAIN_PATTERN, prefix)))
        or (not prefix and "/" in value)
    ):
        raise ValueError(
            "expected a Kubernetes label key ([prefix/]name: the name at most 63 letters, "
            f"digits, '-', '_' or '.', starting and ending with a letter or digit), got {value!r}"
        )
    return value


LabelKey = Annotated[
    str,
    AfterValidator(_label_key),
    WithJsonSchema({"type": "string", "examples": ["version", "app.kubernetes.io/version"]}),
]


def at_least_a_second(value: timedelta, what: str) -> timedelta:
    """``value``, or a ValueError naming ``what`` (e.g. "an interval") if under a second."""
    if value < timedelta(seconds=1):
        raise ValueError(f"expected {what} of at least 1s, got {format_duration(value)}")
    return value


Fraction = Annotated[
    float,
    BeforeValidator(_fraction),
    PlainSerializer(lambda f: f"{f * 100:g}%", return_type=str),
    WithJsonSchema({"type": "string", "pattern": _PERCENT_PATTERN, "examples": ["20%"]}),
]


@dataclass(frozen=True)
class Percentage:
    """A share of the rollout's total replicas, e.g. 10% -> ``Percentage(0.1)``."""

    fraction: float

    def __str__(self) -> str:
        return f"{self.fraction * 100:g}%"


#: Deployment replica counts are int32.
_MAX_REPLICAS = 2**31 - 1


def _step_size(value: object) -> int | Percentage:
    expected = "expected a pod count (1, 2, ...) or a percentage of the total (10%, 50%, 100%)"
    if isinstance(value, Percentage):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{expected}, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{expected}; a step needs at least 1 canary pod, got {value}")
        if value > _MAX_REPLICAS:
            raise ValueError(
                f"expected at most {_MAX_REPLICAS} pods (a Deployment's limit), got {value}"
            )
        return value
    if isinstance(value, str):
        try:
            fraction = parse_percent(value)
        except ValueError:
            raise ValueError(f"{expected}, got {value!r}") from None
        if not 0 < fraction <= 1:
            raise ValueError(f"expected a percentage above 0% and at most 100%, got {value!r}")
        return Percentage(fraction)
    raise ValueError(f"{expected}, got {value!r}")


StepSize = Annotated[
    int | Percentage,
    BeforeValidator(_step_size),
    PlainSerializer(lambda v: v if isinstance(v, int) else str(v), return_type=int | str),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": _MAX_REPLICAS,
                    "description": "canary pods",
                },
                {"type": "string", "pattern": _PERCENT_PATTERN, "description": "share of total"},
            ]
        }
    ),
]


@dataclass(frozen=True)
class SecretSource:
    """Where a secret (a webhook URL) comes from: a literal, an env variable or a file.

    The value is read when used, never at load, and never logged.
    """

    literal: str | None = None
    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        """Where the secret comes from, safe to log (never the value itself)."""
        if self.env is not None:
            return f"env {self.env}"
        if self.file is not None:
            return f"file {self.file}"
        return "inline value"

    def resolve(self) -> str:
        """Read the secret now; raise ``ValueError`` naming the source when it is unavailable."""
        if self.env is not None:
            value = os.environ.get(self.env, "").strip()
            if not value:
                raise ValueError(f"environment variable {self.env} is not set or empty")
            return value
        if self.file is not None:
            try:
                value = Path(self.file).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ValueError(f"cannot read secret file {self.file}: {e.strerror}") from e
            if not value:
                raise ValueError(f"secret file {self.file} is empty")
            return value
        assert self.literal is not None
        return self.literal


def _secret_ref(source: SecretSource) -> dict[str, str]:
    return {"env": source.env} if source.env is not None else {"file": source.file or ""}


def _secret_source(value: object) -> SecretSource:
    expected = "expected a URL string, {env: VARIABLE} or {file: /path/to/secret}"
    if isinstance(value, SecretSource):
        return value
    if isinstance(value, str) and value.strip():
        if not re.match(r"^https?://", value.strip()):
            raise ValueError(f"expected an http:// or https:// URL, got {redact(value)!r}")
        return SecretSource(literal=value.strip())
    if isinstance(value, dict) and len(value) == 1:
        ((key, ref),) = value.items()
        if key in ("env", "file") and isinstance(ref, str) and ref.strip():
            return SecretSource(**{key: ref.strip()})
    shown = redact(value) if isinstance(value, str) else type(value).__name__
    raise ValueError(f"{expected}, got {shown!r}")


Secret = Annotated[
    SecretSource,
    BeforeValidator(_secret_source),
    PlainSerializer(
        lambda s: (
            s.literal if s.literal is not None else ({"env": s.env} if s.env else {"file": s.file})
        ),
        return_type=Any,
    ),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "uri"},
                {"type": "object", "properties": {"env": {"type": "string"}}, "required": ["env"]},
                {
                    "type": "object",
                    "properties": {"file": {"type": "string"}},
                    "required": ["file"],
                },
            ]
        }
    ),
]


def _readable_defaults(schema: JsonDict, model: type[Any]) -> None:
    """Show duration defaults as configs write them (``30s``).

    Pydantic encodes a timedelta default as ISO 8601 (``PT30S``), which the
    loader rightly rejects, so an editor would suggest an invalid value.
    """
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return
    for name, info in model.model_fields.items():
        prop = properties.get(info.alias or name)
        if isinstance(info.default, timedelta) and isinstance(prop, dict):
            prop["default"] = format_duration(info.default)
        # A percentage (Fraction) is a string like 20% in the schema, as in configs.
        elif (
            isinstance(info.default, float)
            and isinstance(prop, dict)
            and prop.get("pattern") == _PERCENT_PATTERN
        ):
            prop["default"] = f"{info.default * 100:g}%"


class Model(BaseModel):
    """Base of every config model: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        # .inf and .nan are valid YAML floats, but no threshold or ratio means them.
        allow_inf_nan=False,
        json_schema_extra=_readable_defaults,
    )


# ---------------------------------------------------------------- Prometheus


class PrometheusConfig(Model):
    """How to reach Prometheus."""

    url: str = Field(description="Base URL of the Prometheus HTTP API, e.g. http://prometheus:9090")
    timeout: Duration = Field(
        default=timedelta(seconds=10), description="Per-query timeout; a slow query is inconclusive"
    )
    bearer_token_file: str | None = Field(
        default=None, description="File holding a bearer token sent with every query"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"expected an http:// or https:// URL, got {redact(value)!r}")
        return value.rstrip("/")


# ---------------------------------------------------------------- alerts


class AlertKind(StrEnum):
    """The transitions an alert sink can hear (``on:``), spelled as the config spells them."""

    RELEASE_DETECTED = "releaseDetected"
    STEP_ADVANCED = "stepAdvanced"
    ANALYSIS_FAILED = "analysisFailed"
    INCONCLUSIVE = "inconclusive"
    PAUSED = "paused"
    RESUMED = "resumed"
    PROGRESS_DEADLINE_EXCEEDED = "progressDeadlineExceeded"
    ROLLED_BACK = "rolledBack"
    PROMOTED = "promoted"


class SinkBase(Model):
    """What every alert sink has: a name, which transitions it hears, delivery limits."""

    name: DnsLabel = Field(description="Unique sink name, used by rollouts")
    on: list[AlertKind] = Field(
        default_factory=lambda: [AlertKind.ROLLED_BACK, AlertKind.PAUSED],
        min_length=1,
        description="Transitions sent to this sink; rollbacks and pauses by default",
    )
    timeout: Duration = Field(default=timedelta(seconds=5), description="Per-attempt timeout")
    retries: int = Field(default=3, ge=0, le=10, description="Retries after a failed attempt")


_URL_DESCRIPTION = (
    "The URL: a string, {env: VARIABLE} or {file: /path}; read when sending, never logged"
)


class WebhookSink(SinkBase):
    """POSTs the documented JSON alert payload to a URL."""

    type: Literal["webhook"] = Field(description="webhook: the documented JSON payload")
    url: Secret = Field(description=_URL_DESCRIPTION)


class SlackSink(SinkBase):
    """POSTs a Slack incoming-webhook message."""

    type: Literal["slack"] = Field(description="slack: an incoming-webhook message")
    url: Secret = Field(description=_URL_DESCRIPTION)


class AlertmanagerSink(SinkBase):
    """POSTs alerts to Alertmanager's v2 API (labels rollout, namespace, reason, severity)."""

    type: Literal["alertmanager"] = Field(description="alertmanager: its v2 API")
    url: Secret = Field(description=_URL_DESCRIPTION)
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on every alert")

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        bad = [name for name in labels if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", name)]
        if bad:
            raise ValueError(
                f"invalid Prometheus label name(s) {bad}: use letters, digits and underscores"
            )
        return labels


Sink = Annotated[WebhookSink | SlackSink | AlertmanagerSink, Field(discriminator="type")]


class AlertsConfig(Model):
    """Alert sinks. Kubernetes Events are always written besides these."""

    sinks: list[Sink] = Field(
        default_factory=list, description="Where alerts go: webhook, slack, alertmanager"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> AlertsConfig:
        _require_unique([s.name for s in self.sinks], "alert sink name")
        return self


# ---------------------------------------------------------------- daemon


class LeaderElectionConfig(Model):
    """Lease-based leader election so several replicas can run and only one acts."""

    enabled: bool = Field(default=True, description="Hold a Lease; only the holder acts")
    lease_name: DnsSubdomain = Field(default="autocanary", description="The Lease's name")
    namespace: DnsLabel | None = Field(
        default=None, description="Lease namespace; default $POD_NAMESPACE, else 'default'"
    )
    lease_duration: Duration = Field(
        default=timedelta(seconds=15), description="A silent leader's Lease is free after this"
    )
    renew_deadline: Duration = Field(
        default=timedelta(seconds=10),
        description="A leader that could not renew for this long stops acting",
    )
    retry_period: Duration = Field(
        default=timedelta(seconds=2), description="How often to try to take or renew the Lease"
    )
    shards: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Rollouts are split into this many shards, one Lease each "
        "(<leaseName>-shard-<i>); each replica holds a fair share and acts on its shards' "
        "rollouts only. 1: one Lease named leaseName, its holder acts on every rollout. "
        "Change it with every replica stopped: replicas counting differently map rollouts "
        "to different Leases",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElectionConfig:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("expected retryPeriod < renewDeadline < leaseDuration")
        if self.shards > 1 and not self.enabled:
            raise ValueError(
                f"shards: {self.shards} needs enabled: true (a replica acts only on the shards "
                "whose Leases it holds)"
            )
        return self


class DaemonConfig(Model):
    """The daemon process itself."""

    listen: str = Field(
        # All interfaces: in-cluster, kubelet probes and Prometheus reach the pod IP.
        default="0.0.0.0:8080",
        pattern=r"^[^:\s]*:[0-9]{1,5}$",
        description="host:port for /metrics, /healthz and /readyz (port 0: any free port)",
    )
    leader_election: LeaderElectionConfig = Field(
        default_factory=LeaderElectionConfig, description="Which replica acts"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="json, console, or auto (console on a terminal)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe log level written"
    )
    workers: int = Field(
        # Ticks mostly wait for the API server and Prometheus: a release's tick holds a
        # thread for several calls, and the idle rollouts due meanwhile need the others.
        # A wave of 100 releases at 1,000 rollouts (bench/scale.py): the last one's state
        # written 3.4 s after its change with 16, 1.5 s with 64, for 17 MiB more.
        default=64,
        ge=1,
        le=256,
        description="Threads that run ticks, however many rollouts there are: a rollout "
        "waits for a free one when all are busy (slow queries)",
    )
    settled_resync: Duration = Field(
        # A settled rollout's tick decides nothing new unless its Deployments change, and the
        # watch says when they do: at every interval, ten thousand of them were most of
        # what an idle daemon cost.
        default=timedelta(minutes=5),
        description="How often a rollout with no release in flight is read again when its "
        "Deployments' watch told of no change (a new template, a command, a new replica "
        "count or a Deployment created or deleted ticks it at once); never more often than "
        "its interval",
    )

    @field_validator("settled_resync")
    @classmethod
    def _resync_at_least_a_second(cls, value: timedelta) -> timedelta:
        return at_least_a_second(value, "a resync")

    @field_validator("listen")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        port = int(value.rpartition(":")[2])
        if port > 65535:
            raise ValueError(f"expected a port from 0 to 65535, got {port} in {value!r}")
        return value


# ---------------------------------------------------------------- analysis


_NUMBER = re.compile(r"^\s*-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\s*$")


def _threshold(value: object) -> object:
    # Error rates read better as percentages ("1%") and latencies as durations
    # ("500ms"); both compare as plain numbers (a fraction, seconds).
    if not isinstance(value, str) or _NUMBER.match(value):
        return value
    if value.strip().endswith("%"):
        return parse_percent(value)
    try:
        return parse_duration(value).total_seconds()
    except ValueError:
        raise ValueError(
            f"expected a number, a percentage (1%) or a duration (500ms), got {value!r}"
        ) from None


Threshold = Annotated[
    float,
    BeforeValidator(_threshold),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "pattern": _PERCENT_PATTERN, "examples": ["1%"]},
                {"type": "string", "pattern": _DURATION_PATTERN, "examples": ["500ms"]},
            ]
        }
    ),
]


#: What a built-in check measures, hence how its thresholds must be written.
_UNITS: dict[str, Literal["ratio", "duration", "rate"]] = {
    "error-rate": "ratio",
    "latency": "duration",
    "request-rate": "rate",
}


def _written_as(value: object) -> Literal["number", "percent", "duration", "other"]:
    if isinstance(value, bool):
        return "other"
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.match(value)):
        return "number"
    if isinstance(value, str) and value.strip().endswith("%"):
        return "percent"
    if isinstance(value, str):
        try:
            parse_duration(value)
        except ValueError:
            return "other"
        return "duration"
    return "other"


def _over_100_percent(value: object) -> bool:
    try:
        return parse_percent(value) > 1
    except ValueError:
        return False


def unit_problem(template: str | None, value: object) -> str | None:
    """Why ``value`` cannot be a threshold of the built-in ``template``, or None.

    An error rate is a ratio (``1%``, or a number below 1), a latency a
    duration (``500ms``), a request rate a number of requests per second.
    Bare numbers that would mean something absurd (``max: 1`` is an error
    rate of 100%, ``max: 500`` a latency of 500 s) are refused with the
    likely intended spelling, as are units of another kind.
    """
    unit = _UNITS.get(template or "")
    written = _written_as(value)
    if unit is None or written == "other":
        return None
    number: float | None = None
    if written == "number":
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        if not math.isfinite(number):
            return None  # refused as not finite, whatever the unit
    if unit == "ratio":
        if written == "duration":
            return f"{template} is a ratio: write a percentage like 1%, not a duration ({value!r})"
        if written == "percent" and _over_100_percent(value):
            return f"{template} is a ratio: at most 100%, got {value!r}"
        if number is not None and number >= 1:
            return (
                f"{template} is a ratio between 0 and 1, so {number:g} would mean "
                f"{number * 100:g}% of requests failing; write {number:g}% for {number:g} "
                "percent, or 100% if that is really meant"
            )
    if unit == "duration":
        if written == "percent":
            return f"{template} is a duration: write 500ms or 0.5s, not a percentage ({value!r})"
        seconds = number if number is not None else parse_duration(value).total_seconds()
        # histogram_quantile never answers above the largest finite bucket boundary.
        if seconds > LATENCY_BUCKETS[-1]:
            hint = f"; a bare number is seconds: did you mean {number:g}ms?" if number else ""
            return (
                f"{template} from the built-in histograms never exceeds "
                f"{LATENCY_BUCKETS[-1]:g}s (their largest bucket), so {value!r} can never "
                f"be crossed{hint}"
            )
    if unit == "rate" and written in ("percent", "duration"):
        return f"{template} is in requests per second: write a number, not {value!r}"
    if number is not None and number < 0:
        return f"{template} cannot be negative, got {number:g}"
    return None


def _in_unit(unit: str, value: float) -> str | float:
    if unit == "ratio":
        return f"{value * 100:.12g}%"
    if unit == "duration":
        return f"{value * 1000:.12g}ms"
    return value


class RelativeThreshold(Model):
    """Compare the canary with the same query over the stable version."""

    tolerance: Fraction = Field(description="Allowed worsening relative to stable, e.g. 20%")
    direction: Literal["higher-is-worse", "lower-is-worse"] = Field(
        default="higher-is-worse",
        description="higher-is-worse: canary <= stable x (1 + tolerance) + margin; "
        "lower-is-worse: canary >= stable x (1 - tolerance) - margin",
    )
    margin: Threshold = Field(
        default=0.0,
        ge=0,
        description="Absolute allowance on top of the tolerance, so 0 errors on the stable "
        "does not make a single canary error a failure",
    )


class CheckConfig(Model):
    """One analysis check: a query (built-in template or PromQL) and its threshold."""

    name: DnsLabel = Field(description="Unique within the rollout; names the check in alerts")
    template: promql.TemplateName | None = Field(
        default=None, description="Built-in query: error-rate, latency or request-rate"
    )
    query: str | None = Field(
        default=None, description="PromQL with {{ variables }}; must return one series"
    )
    quantile: float | None = Field(
        default=None, gt=0, lt=1, description="latency only: the quantile, default 0.99"
    )
    source: promql.Source | None = Field(
        default=None, description="Traffic source for built-ins; default analysis.source"
    )
    min: Threshold | None = Field(
        default=None,
        description="Lowest passing value: a number, a percentage (error rates) "
        "or a duration (latencies)",
    )
    max: Threshold | None = Field(
        default=None,
        description="Highest passing value: a number, a percentage (error rates) "
        "or a duration (latencies)",
    )
    relative: RelativeThreshold | None = Field(
        default=None, description="Compare with the same query over the stable version"
    )

    @property
    def absolute(self) -> CheckConfig | None:
        """This check by its absolute thresholds alone; None for a comparison only.

        What judges it where the stable serves nobody (see ``rollout.decision``).
        """
        if self.relative is None:
            return self
        if self.min is None and self.max is None:
            return None
        return self.model_copy(update={"relative": None})

    @model_serializer(mode="wrap")
    def _thresholds_in_unit(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Written back in the check's unit, so a dumped config validates again
        # (an error rate of 1.0 must read 100%, not the refused bare 1).
        data = handler(self)
        unit = _UNITS.get(self.template or "")
        if unit is None or not isinstance(data, dict):
            return data
        for key in ("min", "max"):
            if isinstance(data.get(key), float):
                data[key] = _in_unit(unit, data[key])
        relative = data.get("relative")
        if isinstance(relative, dict) and isinstance(relative.get("margin"), float):
            relative["margin"] = _in_unit(unit, relative["margin"])
        return data

    @field_validator("min", "max", mode="before")
    @classmethod
    def _bound_in_unit(cls, value: object, info: ValidationInfo) -> object:
        problem = unit_problem(info.data.get("template"), value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("relative", mode="before")
    @classmethod
    def _margin_in_unit(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, dict) and "margin" in value:
            problem = unit_problem(info.data.get("template"), value["margin"])
            if problem:
                raise ValueError(f"margin: {problem}")
        return value

    @field_validator("query")
    @classmethod
    def _query_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            problem = promql.syntax_problem(value)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CheckConfig:
        if (self.template is None) == (self.query is None):
            raise ValueError("a check needs exactly one of 'template' or 'query'")
        if self.quantile is not None and self.template != "latency":
            raise ValueError("'quantile' applies only to template: latency")
        if self.source is not None and self.template is None:
            raise ValueError("'source' applies only to built-in templates")
        if self.min is None and self.max is None and self.relative is None:
            raise ValueError("a check needs a threshold: 'min', 'max' and/or 'relative'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min}) is above 'max' ({self.max})")
        if self.query is not None:
            unknown = promql.unknown_variables(self.query)
            if unknown:
                raise ValueError(
                    f"unknown template variable(s) {', '.join(sorted(unknown))} in query; "
                    f"known: {', '.join(promql.VARIABLES)}"
                )
        return self

    @property
    def effective_quantile(self) -> float:
        """The latency quantile, defaulting to p99."""
        return 0.99 if self.quantile is None else self.quantile


def _seconds(value: object) -> object:
    # Latency thresholds are bucket boundaries; "250ms" and 0.25 both mean 0.25 s.
    if isinstance(value, str):
        return parse_duration(value).total_seconds()
    return value


BucketBoundary = Annotated[
    float,
    BeforeValidator(_seconds),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "description": "seconds"},
                {"type": "string", "pattern": _DURATION_PATTERN, "examples": ["250ms"]},
            ]
        }
    ),
]


class SequentialAnalysisConfig(Model):
    """The sequential, anytime-valid comparison of canary against stable (docs/STATISTICS.md).

    Errors and latency (share of requests slower than each threshold) are
    tested as odds ratios canary vs stable: rollback as soon as harm is proven
    with error below ``alpha``, promotion only once safety is proven with error
    below ``beta``. Holds still apply as minimum times.
    """

    alpha: float = Field(default=0.05, gt=0, lt=1, description="Bound on false rollbacks")
    beta: float = Field(default=0.05, gt=0, lt=1, description="Bound on false promotions")
    tolerance: Fraction = Field(
        default=0.2, description="Error odds ratios up to 1 + tolerance count as harmless"
    )
    safe_ratio: float = Field(
        default=1.5, gt=1, description="Safety means error odds proven below this ratio"
    )
    latency_tolerance: Fraction = Field(
        default=0.2,
        description="A canary up to this much slower than the stable counts as harmless "
        "(tested exactly at bucket pairs; the bucket layout may widen it, see status)",
    )
    latency_thresholds: list[BucketBoundary] = Field(
        default_factory=list,
        description="The stable's histogram bucket boundaries to test latency at (e.g. [250ms])",
    )
    latency_quantiles: list[float] = Field(
        default_factory=list,
        description="Or: take the boundaries nearest these stable quantiles at release start",
    )
    critical_error_excess: Fraction | None = Field(
        default=None,
        description="Roll back at once when the canary's error share exceeds the stable's by "
        "more than this (None: off)",
    )
    critical_min_errors: int = Field(
        default=20, ge=1, description="...once the canary has at least this many errors"
    )
    noise_floor: float = Field(
        default=0.2,
        ge=0,
        le=5,
        description="Least poll-to-poll noise (sd of the log odds ratio) the judge allows for",
    )
    max_duration: Duration = Field(
        default=timedelta(hours=1),
        description="No decision by then (from release start): the inconclusive policy applies",
    )

    @model_validator(mode="after")
    def _judge_accepts(self) -> SequentialAnalysisConfig:
        # The judge validates its own settings; run it here so a bad value is a config error.
        SequentialConfig(**self.judge_settings())
        return self

    def judge_settings(self) -> dict[str, Any]:
        """Keyword arguments for :class:`autocanary.judge.SequentialConfig`."""
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "tolerance": self.tolerance,
            "safe_ratio": self.safe_ratio,
            "latency_tolerance": self.latency_tolerance,
            "latency_thresholds": tuple(sorted(set(self.latency_thresholds))),
            "latency_quantiles": tuple(self.latency_quantiles),
            "critical_error_excess": self.critical_error_excess,
            "critical_min_errors": self.critical_min_errors,
            "noise_floor": self.noise_floor,
        }


_METRIC_PATTERN = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
_LABEL_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"


class AppMetricsConfig(Model):
    """The application's own metrics, as its Prometheus instrumentation library names them.

    A request counter with a label holding the status code or class, and a
    request-duration histogram. A series is tied to the canary or the stable
    by a label Prometheus carries from the pod (``versionLabel``, e.g. via a
    PodMonitor's ``podTargetLabels``), or by the pod it was scraped from
    (``podLabel``: the daemon lists each Deployment's pods at every analysis).
    """

    requests: str = Field(
        pattern=_METRIC_PATTERN, description="The request counter, e.g. http_requests_total"
    )
    status_label: str = Field(
        default="code",
        pattern=_LABEL_PATTERN,
        description="The counter's label holding the status code (500) or class (5xx)",
    )
    error_status: str = Field(
        default="5..",
        min_length=1,
        description="Regex of statusLabel values that are errors; 5.. matches 500 and 5xx",
    )
    duration: str = Field(
        pattern=_METRIC_PATTERN,
        description="The request-duration histogram, without _bucket, "
        "e.g. http_request_duration_seconds",
    )
    version_label: str | None = Field(
        default=None,
        pattern=_LABEL_PATTERN,
        description="Series label holding the version; default the rollout's versionLabel "
        "(with - and . as _, as Prometheus relabels pod labels)",
    )
    pod_label: str | None = Field(
        default=None,
        pattern=_LABEL_PATTERN,
        description="Or: series label holding the pod name (e.g. pod); the daemon matches "
        "it against each Deployment's pods, read at every analysis",
    )

    @field_validator("error_status")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a regular expression: {e}") from None
        return value

    @model_validator(mode="after")
    def _one_tie(self) -> AppMetricsConfig:
        if self.version_label is not None and self.pod_label is not None:
            raise ValueError("tie series to a version by 'versionLabel' or by 'podLabel', not both")
        return self


#: Traefik's name of a Kubernetes Gateway backend Service: ``<namespace>-<Service>-http-<port>``
#: up to v3.6, ``<router>-svc-<namespace>-<Service>-<backend index>`` from v3.7.
_TRAEFIK_BACKEND = (
    "({{ namespace }}-{{ service }}-http-[0-9]+|.*-svc-{{ namespace }}-{{ service }}-[0-9]+)"
    "@kubernetesgateway"
)


class GatewayMetricsConfig(Model):
    """The gateway's own per-backend metrics, for ``source: gateway``.

    Defaults are Traefik v3's: ``traefik_service_requests_total{service, code}``
    and ``traefik_service_request_duration_seconds``, where a Kubernetes
    Gateway backend's ``service`` label reads
    ``<namespace>-<Service>-http-<port>@kubernetesgateway`` (up to v3.6) or
    ``<router>-svc-<namespace>-<Service>-<backend index>@kubernetesgateway`` (v3.7).
    A series belongs to the canary or the stable by the backend Service it
    names (``gateway.canaryService``, ``gateway.stableService``).
    """

    requests: str = Field(
        default="traefik_service_requests_total",
        pattern=_METRIC_PATTERN,
        description="The gateway's per-backend request counter",
    )
    duration: str = Field(
        default="traefik_service_request_duration_seconds",
        pattern=_METRIC_PATTERN,
        description="The gateway's per-backend request-duration histogram, without _bucket",
    )
    status_label: str = Field(
        default="code", pattern=_LABEL_PATTERN, description="The counter's status-code label"
    )
    error_status: str = Field(
        default="5..", min_length=1, description="Regex of statusLabel values that are errors"
    )
    service_label: str = Field(
        default="service",
        pattern=_LABEL_PATTERN,
        description="The label naming the backend a series belongs to",
    )
    service_pattern: str = Field(
        default=_TRAEFIK_BACKEND,
        min_length=1,
        description="Regex of serviceLabel values of one backend Service ({{ service }}: the "
        "canary's or the stable's Service, {{ namespace }}: the rollout's namespace, where "
        "both Services are)",
    )

    @field_validator("error_status", "service_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(promql.render(value, {"namespace": "ns", "service": "svc"}))
        except re.error as e:
            raise ValueError(f"not a regular expression: {e}") from None
        except KeyError as e:
            raise ValueError(f"unknown template variable {e}; known: namespace, service") from None
        return value


class AnalysisConfig(Model):
    """How each interval is judged: threshold checks, the sequential judge, or both."""

    source: promql.Source = Field(
        default="probe",
        description="Where request counts come from: probe, testpage, app (analysis.app) or "
        "gateway (the gateway's per-backend metrics, strategy gateway only)",
    )
    app: AppMetricsConfig | None = Field(
        default=None, description="The app's own metrics, for source: app"
    )
    gateway: GatewayMetricsConfig | None = Field(
        default=None,
        description="The gateway's per-backend metrics, for source: gateway (default Traefik's)",
    )
    selector: str | None = Field(
        default=None,
        description="Label matchers selecting the rollout's series in the source metrics; "
        'default target="{{ rollout }}" (probe) or namespace="{{ namespace }}" (testpage)',
    )
    warmup: Duration = Field(
        default=timedelta(minutes=1),
        description="Ignore metrics this long after a step's pods are Ready (cold starts)",
    )
    window: Duration | None = Field(
        default=None,
        description="How far back each query looks ({{ window }}); default: the interval, or "
        "four scrapes of the rollout's series if longer (scrape interval read from Prometheus)",
    )
    min_requests: int = Field(
        default=20, ge=0, description="Fewer canary requests in an interval is inconclusive"
    )
    significance: Fraction = Field(
        # A window of a few hundred requests measures a healthy 1% anywhere from 0 to 2.5%:
        # checked on the measured rate, every healthy release at a 1% baseline rolled back.
        default=0.01,
        le=0.5,
        description="How sure an error-rate check must be before it fails: the errors it "
        "counted must be a number a rate at its threshold gives less often than this, at "
        "the requests of the window (a comparison takes the stable at the top of its own "
        "interval); 0 compares the measured rate alone",
    )
    failure_limit: int = Field(
        default=0,
        ge=0,
        description="Failed intervals tolerated per release; one more rolls back (one whose "
        "window overlaps the last counted failure's is the same evidence: it counts once)",
    )
    inconclusive_limit: int = Field(
        default=3, ge=0, description="Consecutive inconclusive intervals tolerated"
    )
    inconclusive_policy: Literal["pause", "rollback"] = Field(
        default="pause", description="Past inconclusiveLimit: pause or rollback, alerted either way"
    )
    checks: list[CheckConfig] = Field(
        default_factory=list, description="Threshold checks (hard guards with sequential)"
    )
    sequential: SequentialAnalysisConfig | None = Field(
        default=None, description="Enable the sequential canary-vs-stable judge"
    )

    @model_validator(mode="after")
    def _unique_checks(self) -> AnalysisConfig:
        if not self.checks and self.sequential is None:
            raise ValueError(
                "analysis needs at least one check, or 'sequential: {}' for the sequential judge"
            )
        _require_unique([c.name for c in self.checks], "check name")
        sources = {self.source} | {c.source for c in self.checks if c.source is not None}
        if "app" in sources and self.app is None:
            raise ValueError(
                "source 'app' needs 'app': the request counter, its status label and the "
                "duration histogram, e.g. {requests: http_requests_total, statusLabel: status, "
                "duration: http_request_duration_seconds}"
            )
        if self.sequential is not None and self.source not in ("app", "gateway"):
            # The built-in sources share one bucket layout; a threshold must be a boundary.
            off = [t for t in self.sequential.latency_thresholds if t not in LATENCY_BUCKETS]
            if off:
                raise ValueError(
                    f"sequential.latencyThresholds {off} are not bucket boundaries of the "
                    f"{self.source} histogram; pick from {list(LATENCY_BUCKETS)} (seconds)"
                )
        if self.selector is not None:
            unknown = promql.unknown_variables(self.selector) | (
                promql.variables_in(self.selector) & {"selector"}
            )
            if unknown:
                raise ValueError(f"unknown template variable(s) in selector: {sorted(unknown)}")
        return self

    @field_validator("window")
    @classmethod
    def _window_floor(cls, value: timedelta | None) -> timedelta | None:
        return None if value is None else at_least_a_second(value, "a window")

    @property
    def effective_selector(self) -> str:
        """The label matchers selecting this rollout's series in the traffic source."""
        if self.selector is None and self.source == "gateway":
            # The backend Service names the side; any series with a backend is the gateway's.
            return f'{(self.gateway or GatewayMetricsConfig()).service_label}=~".+"'
        return self.selector or promql.DEFAULT_SELECTORS[self.source]


# ---------------------------------------------------------------- rollouts


class StepConfig(Model):
    """One batch: how many canary pods, and the minimum observation time once Ready."""

    canary: StepSize = Field(description="Canary pods: a count, or a percentage of the total")
    hold: Duration = Field(
        default=timedelta(0), description="Minimum time at this step once its pods are Ready"
    )


def _default_steps() -> list[StepConfig]:
    return [
        StepConfig(canary=1, hold=timedelta(minutes=10)),
        StepConfig(canary=Percentage(0.1), hold=timedelta(minutes=2)),
        StepConfig(canary=Percentage(0.5), hold=timedelta(minutes=2)),
        StepConfig(canary=Percentage(1.0), hold=timedelta(minutes=2)),
    ]


class BlueGreenConfig(Model):
    """Blue/green: the new version at full size beside the old, switched at the Service."""

    active_service: DnsLabel = Field(
        description="The Service users reach. It selects one version by the version label; "
        "passing analysis switches that label to the new version in one write"
    )
    preview_service: DnsLabel = Field(
        description="A Service that reaches only the new version while it is judged (send "
        "probe traffic to it); autocanary sets its selector's version label"
    )
    preview_hold: Duration = Field(
        default=timedelta(minutes=5),
        description="Minimum time the new version is judged on the preview Service before "
        "the switch",
    )
    window: Duration = Field(
        default=timedelta(minutes=10),
        description="How long the old version stays up after the switch while analysis "
        "continues on live traffic; a failure in it switches back in one write",
    )

    @model_validator(mode="after")
    def _two_services(self) -> BlueGreenConfig:
        if self.active_service == self.preview_service:
            raise ValueError(SAME_SERVICE)
        return self


_HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"


class HeaderMatch(Model):
    """An HTTP request header and the exact value that sends a request to the canary."""

    name: str = Field(
        pattern=_HEADER_NAME_PATTERN, max_length=256, description="Header name, e.g. X-Canary"
    )
    value: str = Field(min_length=1, max_length=4096, description="Exact value, e.g. always")


class CookieMatch(Model):
    """A cookie and the exact value that sends a request to the canary."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", max_length=256, description="Cookie name"
    )
    value: str = Field(
        pattern=r"^[A-Za-z0-9!#$%&'()*+./:<=>?@\[\]^_`{|}~-]+$",
        max_length=4096,
        description="Exact value (cookie-value characters only)",
    )


class ABMatch(Model):
    """Requests that always reach the canary during a release (testers, internal users)."""

    header: HeaderMatch | None = Field(default=None, description="Match a request header")
    cookie: CookieMatch | None = Field(default=None, description="Or: match a cookie")

    @model_validator(mode="after")
    def _one(self) -> ABMatch:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("a match needs exactly one of 'header' or 'cookie'")
        return self


class GatewayConfig(Model):
    """Gateway API weights: the canary's share of traffic set in an HTTPRoute rule."""

    http_route: DnsSubdomain = Field(description="The HTTPRoute whose rule splits the traffic")
    namespace: DnsLabel | None = Field(
        default=None, description="The HTTPRoute's namespace; default the rollout's"
    )
    rule: int | DnsLabel = Field(
        default=0,
        description="Which rule of the HTTPRoute: its index (0 is the first) or its 'name'",
    )
    stable_service: DnsLabel = Field(
        description="The Service (a backendRef of the rule) selecting the stable's pods only"
    )
    canary_service: DnsLabel = Field(
        description="The Service (a backendRef of the rule) selecting the canary's pods only"
    )
    headroom: Fraction = Field(
        default=0.2,
        description="Extra canary capacity over its share: ceil(total x weight x (1 + headroom))",
    )
    match: ABMatch | None = Field(
        default=None,
        description="Requests matching this always reach the canary during the release (an "
        "extra rule autocanary adds to the HTTPRoute and removes at the end)",
    )

    @field_validator("rule", mode="before")
    @classmethod
    def _rule_ref(cls, value: object) -> object:
        if isinstance(value, bool) or (isinstance(value, int) and value < 0):
            raise ValueError(f"expected a rule index (0, 1, ...) or a rule name, got {value!r}")
        return value

    @field_validator("headroom")
    @classmethod
    def _headroom(cls, value: float) -> float:
        if value > 10:
            raise ValueError(f"expected a headroom of at most 1000%, got {value * 100:g}%")
        return value

    @model_validator(mode="after")
    def _two_services(self) -> GatewayConfig:
        if self.stable_service == self.canary_service:
            raise ValueError(SAME_BACKEND)
        return self

    @property
    def rule_label(self) -> str:
        """The rule in words: ``rule 0`` or ``rule 'main'``."""
        return f"rule {self.rule}" if isinstance(self.rule, int) else f"rule {self.rule!r}"


class RolloutConfig(Model):
    """One service released by canary: its two Deployments, steps and analysis."""

    name: DnsLabel = Field(description="Unique rollout name")
    namespace: DnsLabel = Field(description="Namespace of both Deployments")
    stable: DnsSubdomain = Field(description="The stable Deployment")
    canary: DnsSubdomain | None = Field(
        default=None, description="The canary Deployment; default <stable>-canary"
    )
    version_label: LabelKey = Field(
        default="version", description="Pod label naming the version; else the image tag is used"
    )
    role_labels: list[LabelKey] = Field(
        default_factory=lambda: ["track"],
        description="Pod labels that only mark stable/canary; ignored when comparing templates "
        "and kept on the stable at promotion",
    )
    interval: Duration = Field(default=timedelta(seconds=30), description="Analysis interval")
    progress_deadline: Duration = Field(
        default=timedelta(minutes=10), description="Time for a step's pods to become Ready"
    )
    max_restarts: int | None = Field(
        default=3,
        ge=0,
        description="A canary pod whose containers restarted more often fails the step at once "
        "(null: no limit); CrashLoopBackOff and image pull errors always do",
    )
    scale_down_stable: bool = Field(
        default=True, description="Keep the total constant (stable = total - canary); else surge"
    )
    steps: list[StepConfig] = Field(
        default_factory=_default_steps,
        min_length=1,
        description="Batches in order; counts never decrease (pods, or percentages of the total)",
    )
    strategy: Literal["canary", "blueGreen", "gateway"] = Field(
        default="canary",
        description="canary: the new version's share of one Service grows by steps; blueGreen: "
        "the whole new version beside the old, judged on a preview Service, then switched "
        "(see blueGreen); gateway: the steps are traffic weights in a Gateway API HTTPRoute "
        "(see gateway)",
    )
    blue_green: BlueGreenConfig | None = Field(
        default=None, description="The Services of a blueGreen rollout (required by it)"
    )
    gateway: GatewayConfig | None = Field(
        default=None, description="The HTTPRoute of a gateway rollout (required by it)"
    )
    analysis: AnalysisConfig = Field(description="How each interval is judged")
    alerts: list[str] | None = Field(
        default=None, description="Names of the alert sinks for this rollout; default all"
    )

    @field_validator("interval", "progress_deadline")
    @classmethod
    def _at_least_a_second(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        return at_least_a_second(
            value, "an interval" if info.field_name == "interval" else "a deadline"
        )

    @field_validator("steps")
    @classmethod
    def _steps_grow(cls, steps: list[StepConfig]) -> list[StepConfig]:
        # Counts and percentages are compared only with their own kind: 2 pods
        # before 10% is fine or not depending on the total, unknown until release.
        last: dict[type, tuple[int, int | Percentage]] = {}
        for i, step in enumerate(steps):
            size = step.canary
            kind = type(size)
            if kind in last:
                j, before = last[kind]
                if _size_value(size) < _size_value(before):
                    raise ValueError(
                        f"steps[{i}] ({size}) is smaller than steps[{j}] ({before}): "
                        "a canary grows from step to step"
                    )
            last[kind] = (i, size)
        return steps

    @property
    def window(self) -> timedelta:
        """How far back each query looks at least: ``analysis.window``, else the interval.

        The daemon fills ``analysis.window`` from the scrape interval when it is
        not configured (see :func:`autocanary.analysis.thresholds.default_window`).
        """
        return self.analysis.window or self.interval

    @property
    def canary_name(self) -> str:
        """The canary Deployment's name."""
        return self.canary or f"{self.stable}-canary"

    @property
    def scales_down_stable(self) -> bool:
        """Whether the stable shrinks as the canary grows (never for blue/green or gateway)."""
        return self.scale_down_stable and self.blue_green is None and self.gateway is None

    @property
    def plan(self) -> list[StepConfig]:
        """The steps a release goes through.

        A canary's are its ``steps``. Blue/green has two, each with the new
        version at the whole total beside the old (which is never scaled
        down): the preview (held ``previewHold``), then the live window after
        the switch (held ``window``), after which the release is promoted.
        """
        if self.blue_green is None:
            return self.steps
        whole = Percentage(1.0)
        return [
            StepConfig(canary=whole, hold=self.blue_green.preview_hold),
            StepConfig(canary=whole, hold=self.blue_green.window),
        ]

    @model_validator(mode="after")
    def _distinct(self) -> RolloutConfig:
        if self.canary_name == self.stable:
            raise ValueError(SAME_DEPLOYMENT)
        self._strategy_fits()
        self._gateway_source()
        self._judged_without_stable()
        if len(self.canary_name) > 253:
            raise ValueError(
                f"the default canary name {self.canary_name!r} is longer than 253 characters; "
                "set 'canary'"
            )
        holds = [step.hold for step in self.plan]
        # Only a warm-up the user wrote: the default is sized for the default holds.
        written = "warmup" in self.analysis.model_fields_set
        if written and max(holds) > timedelta(0) and self.analysis.warmup > max(holds):
            raise ValueError(
                f"analysis.warmup ({format_duration(self.analysis.warmup)}) is longer than "
                f"every step's hold (longest {format_duration(max(holds))}): no step would "
                "be judged on the metrics the warm-up is meant to wait for; lengthen the holds "
                "or shorten the warm-up"
            )
        return self

    def _strategy_fits(self) -> None:
        if self.blue_green is not None and self.strategy != "blueGreen":
            raise ValueError("'blueGreen' applies only to strategy: blueGreen")
        if self.gateway is not None and self.strategy != "gateway":
            raise ValueError("'gateway' applies only to strategy: gateway")
        if self.strategy == "canary":
            return
        if self.strategy == "gateway":
            self._gateway_fits()
            return
        if self.blue_green is None:
            raise ValueError(
                "strategy blueGreen needs 'blueGreen' with its activeService and previewService"
            )
        if all(check.absolute is None for check in self.analysis.checks):
            raise ValueError(
                "strategy blueGreen needs at least one check with an absolute threshold (min or "
                "max without relative): after the switch the old version has no traffic to be "
                "compared with, and the window is judged by absolute thresholds alone"
            )
        # Blue/green's plan is fixed (see `plan`): steps the user wrote would be ignored.
        for key in ("steps", "scale_down_stable"):
            if key in self.model_fields_set:
                raise ValueError(
                    f"'{to_camel(key)}' does not apply to strategy blueGreen: the new version "
                    "comes up whole beside the old (previewHold and window set the pace)"
                )

    def _judged_without_stable(self) -> None:
        # A step where the stable serves nobody is judged by absolute thresholds alone
        # (blue/green checks its own case above, with its own words); with only
        # comparisons and no sequential judge, it could never pass.
        analysis = self.analysis
        if (
            self.blue_green is not None
            or analysis.sequential is not None
            or any(check.absolute is not None for check in analysis.checks)
        ):
            return
        if self.gateway is not None:
            whole = [i for i, weight in enumerate(self.weights) if weight >= 100]
        elif self.scales_down_stable:
            whole = [
                i
                for i, step in enumerate(self.steps)
                if isinstance(step.canary, Percentage) and step.canary.fraction >= 1
            ]
        else:
            return
        if whole:
            raise ValueError(
                f"step {whole[0] + 1} sends every request to the canary, so the stable has no "
                "traffic to be compared with and the step is judged by absolute thresholds "
                "alone: add a check with an absolute threshold (min or max without relative), "
                "or end the steps below 100% (promotion follows the last step)"
            )

    def _gateway_source(self) -> None:
        analysis = self.analysis
        sources = {analysis.source} | {c.source for c in analysis.checks if c.source is not None}
        if "gateway" in sources and self.gateway is None:
            raise ValueError(
                "source 'gateway' reads the gateway's metrics per backend Service: it needs "
                "strategy gateway (with gateway.stableService and gateway.canaryService)"
            )
        if analysis.gateway is not None and "gateway" not in sources:
            raise ValueError("'analysis.gateway' applies only to source: gateway")

    def _gateway_fits(self) -> None:
        if self.gateway is None:
            raise ValueError(
                "strategy gateway needs 'gateway' with its httpRoute, stableService and "
                "canaryService"
            )
        if "scale_down_stable" in self.model_fields_set:
            raise ValueError(
                "'scaleDownStable' does not apply to strategy gateway: the stable keeps its "
                "capacity until promotion, and the HTTPRoute's weights set the traffic"
            )
        for _, problem in gateway_step_problems(self.steps):
            raise ValueError(problem)

    @property
    def weights(self) -> list[int]:
        """A gateway rollout's steps as the canary's traffic weight in percent (1 to 100)."""
        return [round(_size_value(step.canary) * 100) for step in self.steps]


def gateway_step_problems(
    steps: list[tuple[int, StepConfig]] | list[StepConfig],
) -> list[tuple[int, str]]:
    """Why ``steps`` cannot be a gateway rollout's traffic weights: (index, message) each.

    Each step is the canary's share of requests, a whole percentage from 1% to
    100% (an HTTPRoute's weights are integers), strictly growing: a pod count
    means nothing when the route, not the replicas, splits the traffic.
    """
    problems: list[tuple[int, str]] = []
    last: tuple[int, float] | None = None
    indexed = [s if isinstance(s, tuple) else (i, s) for i, s in enumerate(steps)]
    for i, step in indexed:
        size = step.canary
        if not isinstance(size, Percentage):
            problems.append(
                (
                    i,
                    f"steps[{i}]: strategy gateway's steps are traffic weights: write a percentage "
                    f"of requests ({size}%), not a pod count ({size})",
                )
            )
            continue
        percent = size.fraction * 100
        if abs(percent - round(percent)) > 1e-9:
            problems.append(
                (
                    i,
                    f"steps[{i}]: a traffic weight is a whole percentage from 1% to 100% "
                    f"(HTTPRoute weights are integers), got {size}",
                )
            )
            continue
        if last is not None and percent <= last[1]:
            problems.append(
                (
                    i,
                    f"steps[{i}] ({size}) is not above steps[{last[0]}] ({last[1]:g}%): traffic "
                    "weights grow strictly from step to step",
                )
            )
        last = (i, percent)
    return problems


# ---------------------------------------------------------------- declared rollouts

#: The label that marks a stable Deployment as declaring its rollout (value "true").
ROLLOUT_LABEL = "autocanary.io/rollout"
#: The annotation on that Deployment holding the rollout's settings (YAML or JSON, optional).
ROLLOUT_ANNOTATION = "autocanary.io/rollout"
#: Keys a declaration never sets: they are the annotated Deployment's own.
DECLARED_BY_THE_DEPLOYMENT = ("namespace", "stable")
#: Stands in for what each declaration brings when ``discovery.defaults`` is validated alone.
_PLACEHOLDER: dict[str, Any] = {
    "name": "defaults",
    "namespace": "defaults",
    "stable": "defaults",
    "analysis": {"checks": [{"name": "placeholder", "query": "vector(0)", "max": 1}]},
}


def merged_settings(defaults: dict[str, Any], declared: dict[str, Any]) -> dict[str, Any]:
    """``declared`` over ``defaults``: mappings merged key by key, anything else replaced.

    A declaration's ``analysis: {checks: [...]}`` thus keeps the defaults'
    warm-up and limits, and replaces their checks as a whole.
    """
    out = dict(defaults)
    for key, value in declared.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged_settings(out[key], value)
        else:
            out[key] = value
    return out


class DiscoveryConfig(Model):
    """Rollouts declared on their stable Deployments, found without editing this file."""

    enabled: bool = Field(
        default=False,
        description=f"Find Deployments labelled {ROLLOUT_LABEL}=true; each declares a rollout "
        f"(settings in its {ROLLOUT_ANNOTATION} annotation, over the defaults below)",
    )
    namespaces: list[DnsLabel] = Field(
        default_factory=list,
        description="Namespaces searched (a Role in each lets the daemon list Deployments); "
        "empty: every namespace (a ClusterRole)",
    )
    interval: Duration = Field(
        default=timedelta(seconds=10), description="How often the declarations are read again"
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="Rollout settings every declared rollout starts from (any rollout key but "
        "name, namespace and stable); its annotation overrides them",
    )

    @field_validator("interval")
    @classmethod
    def _at_least_a_second(cls, value: timedelta) -> timedelta:
        return at_least_a_second(value, "an interval")

    @field_validator("defaults")
    @classmethod
    def _valid_defaults(cls, defaults: dict[str, Any]) -> dict[str, Any]:
        own = [key for key in ("name", *DECLARED_BY_THE_DEPLOYMENT) if key in defaults]
        if own:
            raise ValueError(f"{own[0]!r} cannot have a default: each declaration has its own")
        try:
            RolloutConfig.model_validate(merged_settings(_PLACEHOLDER, defaults))
        except ValidationError as e:
            raise ValueError(
                "; ".join(
                    f"{_dotted(error['loc'])}: {error['msg'].removeprefix('Value error, ')}"
                    for error in e.errors()
                )
            ) from None
        return defaults


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _size_value(size: int | Percentage) -> float:
    return size.fraction if isinstance(size, Percentage) else float(size)


#: Messages shared by the model validators and :func:`cross_reference_problems`,
#: so a problem found by both is reported once.
SAME_DEPLOYMENT = "'canary' must name a different Deployment than 'stable'"
SAME_SERVICE = "'previewService' must name a different Service than 'activeService'"
SAME_BACKEND = "'canaryService' must name a different Service than 'stableService'"


def _known_sinks(rollout: RolloutConfig, info: ValidationInfo) -> RolloutConfig:
    # A validator on each rollout (not on Config) so the problem is located at
    # that rollout; `alerts` is declared before `rollouts`, so it is in info.data
    # unless it was invalid itself (then that error is reported instead).
    alerts = info.data.get("alerts")
    if not isinstance(alerts, AlertsConfig):
        return rollout
    sink_names = {s.name for s in alerts.sinks}
    for name in rollout.alerts or []:
        if name not in sink_names:
            raise ValueError(_unknown_sink(rollout.name, name, sink_names))
    return rollout


def _unknown_sink(rollout: object, sink: object, defined: set[str]) -> str:
    return (
        f"rollout {rollout!r} routes alerts to unknown sink {sink!r}; "
        f"defined sinks: {sorted(defined) or 'none'}"
    )


class Config(Model):
    """The whole autocanary configuration."""

    prometheus: PrometheusConfig = Field(description="Where the analysis queries go")
    alerts: AlertsConfig = Field(
        default_factory=AlertsConfig, description="Alert sinks besides Kubernetes Events"
    )
    daemon: DaemonConfig = Field(
        default_factory=DaemonConfig, description="The daemon process: HTTP, logs, leader election"
    )
    discovery: DiscoveryConfig = Field(
        default_factory=DiscoveryConfig,
        description="Rollouts declared on their stable Deployments (by label and annotation)",
    )
    rollouts: list[Annotated[RolloutConfig, AfterValidator(_known_sinks)]] = Field(
        default_factory=list,
        validate_default=True,
        description="The services released by canary (at least one, unless discovery is enabled)",
    )

    @field_validator("rollouts")
    @classmethod
    def _unique_rollouts(
        cls, rollouts: list[RolloutConfig], info: ValidationInfo
    ) -> list[RolloutConfig]:
        # An invalid discovery section is missing from info.data; its own error is reported.
        discovery = info.data.get("discovery")
        if not rollouts and isinstance(discovery, DiscoveryConfig) and not discovery.enabled:
            raise ValueError(
                "'rollouts' needs at least one rollout, unless discovery is enabled "
                "(rollouts declared on their Deployments)"
            )
        _require_unique([r.name for r in rollouts], "rollout name")
        _require_unique([f"{r.namespace}/{r.canary_name}" for r in rollouts], "canary Deployment")
        roles = _deployment_roles(
            [(r.name, r.namespace, r.stable, r.canary_name) for r in rollouts]
        )
        if roles:
            raise ValueError(roles[0][1])
        return rollouts

    def rollout(self, name: str) -> RolloutConfig:
        """The rollout called ``name``; ``KeyError`` listing the known ones otherwise."""
        for rollout in self.rollouts:
            if rollout.name == name:
                return rollout
        raise KeyError(
            f"no rollout {name!r} in the config; known: {[r.name for r in self.rollouts]}"
        )


def _require_unique(names: list[str], what: str) -> None:
    duplicate = _duplicates(names)
    if duplicate:
        raise ValueError(_duplicate(what, names[duplicate[0]]))


def _duplicates(names: list[Any]) -> list[int]:
    """Indexes of the names that appeared before."""
    seen: set[Any] = set()
    found = []
    for i, name in enumerate(names):
        if name in seen:
            found.append(i)
        seen.add(name)
    return found


def _duplicate(what: str, name: object) -> str:
    return f"duplicate {what} {name!r}"


def _deployment_roles(rollouts: list[tuple[str, str, str, str]]) -> list[tuple[int, str]]:
    """(rollout index, message) for each Deployment claimed twice: two rollouts cannot drive it.

    ``rollouts`` are (name, namespace, stable, canary); duplicate canaries are
    reported on their own, so only a second stable, or a stable that is
    another rollout's canary, is found here.
    """
    owner: dict[tuple[str, str], tuple[str, str]] = {}
    for name, namespace, _, canary in rollouts:
        owner.setdefault((namespace, canary), (name, "canary"))
    found = []
    for i, (name, namespace, stable, canary) in enumerate(rollouts):
        if owner[(namespace, canary)][0] != name:
            continue  # a duplicate canary, reported as such
        claimed = owner.get((namespace, stable))
        if claimed is not None and claimed[0] != name:
            found.append(
                (
                    i,
                    f"Deployment {namespace}/{stable} is the stable of rollout {name!r} and "
                    f"already the {claimed[1]} of rollout {claimed[0]!r}: one Deployment "
                    "belongs to one rollout",
                )
            )
        owner.setdefault((namespace, stable), (name, "stable"))
    return found


Loc = tuple[int | str, ...]


def cross_reference_problems(data: object) -> list[tuple[Loc, str]]:
    """Problems between fields, found on the raw data of a whole file: (location, message).

    Pydantic runs a model's own validators only once all its fields are
    valid, so these (canary equal to stable, an unknown sink, a duplicate
    name, one Deployment in two rollouts) would otherwise appear only after
    every other problem is fixed. The loader reports them in the same pass;
    the models check the same things, with the same messages, for data that
    does not come from a file.
    """
    if not isinstance(data, dict):
        return []
    found: list[tuple[Loc, str]] = []
    sinks = _dicts(_nested(data, "alerts", "sinks"))
    sink_names = [s.get("name") for _, s in sinks]
    for k in _duplicates(sink_names):
        found.append(
            (("alerts", "sinks", sinks[k][0], "name"), _duplicate("alert sink name", sink_names[k]))
        )
    known_sinks = {str(n) for n in sink_names if isinstance(n, str)}
    rollouts = _dicts(data.get("rollouts"))
    names = [r.get("name") for _, r in rollouts]
    for k in _duplicates(names):
        found.append((("rollouts", rollouts[k][0], "name"), _duplicate("rollout name", names[k])))
    identities = []
    for i, rollout in rollouts:
        stable, canary = rollout.get("stable"), rollout.get("canary")
        if isinstance(stable, str) and canary == stable:
            found.append((("rollouts", i, "canary"), SAME_DEPLOYMENT))
        alerts = rollout.get("alerts")
        if isinstance(alerts, list) and isinstance(_nested(data, "alerts"), dict | None):
            for k, sink in enumerate(alerts):
                if isinstance(sink, str) and sink not in known_sinks:
                    found.append(
                        (
                            ("rollouts", i, "alerts", k),
                            _unknown_sink(rollout.get("name"), sink, known_sinks),
                        )
                    )
        checks = _dicts(_nested(rollout, "analysis", "checks"))
        check_names = [c.get("name") for _, c in checks]
        for k in _duplicates(check_names):
            found.append(
                (
                    ("rollouts", i, "analysis", "checks", checks[k][0], "name"),
                    _duplicate("check name", check_names[k]),
                )
            )
        if rollout.get("strategy") == "gateway":
            found.extend(_gateway_steps_located(i, rollout.get("steps")))
        namespace = rollout.get("namespace")
        if all(isinstance(v, str) for v in (rollout.get("name"), namespace, stable)):
            canary_name = canary if isinstance(canary, str) else f"{stable}-canary"
            identities.append((i, (str(rollout["name"]), str(namespace), str(stable), canary_name)))
    canaries = [f"{ns}/{canary}" for _, (_, ns, _, canary) in identities]
    for k in _duplicates(canaries):
        found.append((("rollouts", identities[k][0]), _duplicate("canary Deployment", canaries[k])))
    for k, message in _deployment_roles([identity for _, identity in identities]):
        found.append((("rollouts", identities[k][0], "stable"), message))
    return found


def _gateway_steps_located(rollout: int, raw: object) -> list[tuple[Loc, str]]:
    """A gateway rollout's step problems, each at its step (steps valid on their own only)."""
    valid: list[tuple[int, StepConfig]] = []
    for k, step in _dicts(raw):
        try:
            valid.append((k, StepConfig.model_validate(step)))
        except ValidationError:
            continue  # reported by pydantic at that step
    return [
        (("rollouts", rollout, "steps", k, "canary"), message)
        for k, message in gateway_step_problems(valid)
    ]


def _nested(data: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _dicts(items: object) -> list[tuple[int, dict[str, Any]]]:
    if not isinstance(items, list):
        return []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]
