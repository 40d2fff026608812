"""Judging an interval's metrics: threshold checks, the sequential judge's glue, verdicts."""
