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
- ``monitoring``: Prometheus and Alertmanager from the Debian packages
  (``PrometheusServer``, ``ScrapeTarget``, ``PodMonitor``, ``AlertmanagerServer``).
- ``kubesd``: Prometheus's Kubernetes pod discovery, which Debian's build lacks.
- ``stack``: the whole canary set-up of the e2e tests and the rehearsal.
- ``errors``: ``HarnessError``, raised when a service cannot be set up.
"""
