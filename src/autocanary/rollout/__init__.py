"""One rollout's life: state, steps, revisions, the pure ``decide()``, what an interval reads."""
