"""The long-running daemon: scheduling, the per-rollout tick, startup checks, own metrics, logs."""
