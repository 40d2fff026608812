"""The boundary to Kubernetes, Prometheus and alert sinks; their errors are translated here."""
