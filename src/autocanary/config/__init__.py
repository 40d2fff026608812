"""The configuration: typed models validated at load, the YAML loader, durations and redaction."""
