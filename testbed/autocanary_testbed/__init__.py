"""test bed: real services on 127.0.0.1 for tests and the rehearsal; never imported by the daemon.

Modules:

- ``procs``: starting, waiting on and stopping local processes (``ManagedProcess``,
  ``ProcessGroup``, ``free_port``).
- ``controlplane``: etcd, kube-apiserver, controller-manager (with the
  endpoint-slice controller), scheduler and KWOK (``ControlPlane``, ``find_binaries``).
- ``network``: pod IPs and the loopback addresses pods listen on (``PodNetwork``).
- ``kwok_stages``: KWOK's pod stages, split between pods KWOK alone plays and pods
  a pod runner runs.
- ``podrunner``: the kubelet of a namespace: a process per pod, on its pod IP,
  readiness from its probe, termination with a grace period (``PodRunner``).
- ``kubeproxy``: a Service's EndpointSlices drive a ``serviceproxy.ServiceProxy``
  (``ServiceEndpoints``).
- ``monitoring``: Prometheus (with ``kubernetes_sd_configs`` for pod monitors) and
  Alertmanager (``PrometheusServer``, ``ScrapeTarget``, ``PodMonitor``,
  ``AlertmanagerServer``, ``prometheus_access``).
- ``binaries``: where the control-plane and Prometheus builds are (``find_binaries``,
  ``find_prometheus``).
- ``stack``: the whole canary set-up of the e2e tests and the rehearsal.
- ``errors``: ``HarnessError``, raised when a service cannot be set up.
"""
