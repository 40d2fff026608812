"""autocanary: metrics-driven progressive delivery for Kubernetes."""
