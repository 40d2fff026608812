"""KWOK stages for pods, in two kinds: pods KWOK alone plays, and pods a pod runner runs.

KWOK's own ``fast`` stages make a pod Running and Ready the moment it is
scheduled, and delete it the moment its deletion is asked for. That is right
for pods nothing runs (most integration tests only need Deployments to become
available). For pods a :class:`~autocanary_testbed.podrunner.PodRunner` runs,
it would be friendlier than any cluster: a pod would be Ready (and in its
Service's EndpointSlice) before its process listens, and gone before its
process has drained. So pods marked with :data:`RUNNER_ANNOTATION` (set at
admission in the namespaces a runner serves) get stages of their own:

- scheduled: Running with a pod IP, but not Ready; the runner (as the
  kubelet's prober) sets Ready once the readiness probe passes;
- being deleted: removed only when the grace period is over; the runner (as
  the kubelet) removes it earlier, once its process has exited.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPLACED_STAGES", "RUNNER_ANNOTATION", "write_pod_stages"]

#: Pod annotation marking pods run by a pod runner (added by an admission policy).
RUNNER_ANNOTATION = "testbed.autocanary.io/pod-runner"
#: The stage files from KWOK's ``fast`` set that :func:`write_pod_stages` replaces.
REPLACED_STAGES = frozenset({"pod-ready.yaml", "pod-delete.yaml"})

_RUNNER = f'.metadata.annotations["{RUNNER_ANNOTATION}"]'

# The addresses part of the status, as in KWOK's own pod-ready stage.
_POD_IPS = (
    "{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) "
    '( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}'
)
_ADDRESSES = """\
      {{ $hostIPs := NodeIPsWith .spec.nodeName }}
      {{ with $hostIPs }}
      hostIP: {{ index . 0 | Quote }}
      hostIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      POD_IPS
      {{ with $podIPs }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
""".replace("POD_IPS", _POD_IPS)


def _status(ready: str, reason: str) -> str:
    return (
        """\
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "READY"
        type: Ready
        REASON
      - lastTransitionTime: {{ $now | Quote }}
        status: "READY"
        type: ContainersReady
        REASON
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ $now | Quote }}
        status: "READY"
        type: {{ .conditionType | Quote }}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: LOWER
        restartCount: 0
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
""".replace("READY", ready)
        .replace("LOWER", ready.lower())
        .replace("REASON", f"reason: {reason}" if reason else "")
        + _ADDRESSES
    )


def _ready_stage(name: str, runner: bool) -> str:
    operator = "Exists" if runner else "DoesNotExist"
    status = _status("False", "ContainersNotReady") if runner else _status("True", "")
    return f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: {name}
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
    - key: '{_RUNNER}'
      operator: '{operator}'
  next:
    statusTemplate: |
{status}"""


def _delete_stage(name: str, runner: bool) -> str:
    operator = "Exists" if runner else "DoesNotExist"
    # A runner's pod is removed at the end of its grace period at the latest, as a
    # kubelet kills a container that outlives it; the runner removes it sooner.
    delay = (
        """
  delay:
    durationMilliseconds: 0
    durationFrom:
      expressionFrom: '.metadata.deletionTimestamp'"""
        if runner
        else ""
    )
    return f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: {name}
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
    - key: '{_RUNNER}'
      operator: '{operator}'{delay}
  next:
    delete: true
"""


def write_pod_stages(directory: Path) -> list[Path]:
    """Write the pod stages (ready and delete, for both kinds of pod); return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    stages = {
        "pod-ready.yaml": _ready_stage("pod-ready", runner=False),
        "pod-running-not-ready.yaml": _ready_stage("pod-running-not-ready", runner=True),
        "pod-delete.yaml": _delete_stage("pod-delete", runner=False),
        "pod-delete-after-grace.yaml": _delete_stage("pod-delete-after-grace", runner=True),
    }
    paths = []
    for name, text in stages.items():
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths
