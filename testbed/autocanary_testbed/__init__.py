"""test bed: real services on 127.0.0.1 for tests and the rehearsal; never imported by the daemon.

Modules:

- ``procs``: starting, waiting on and stopping local processes (``ManagedProcess``,
  ``ProcessGroup``, ``free_port``).
- ``controlplane``: etcd, kube-apiserver, controller-manager, scheduler and KWOK
  (``ControlPlane``, ``find_binaries``).
- ``monitoring``: Prometheus and Alertmanager from the Debian packages
  (``PrometheusServer``, ``ScrapeTarget``, ``AlertmanagerServer``).
- ``errors``: ``HarnessError``, raised when a service cannot be set up.
"""
