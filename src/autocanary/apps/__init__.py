"""Programs shipped beside the daemon: the test page (a demo app), the probe (synthetic traffic)."""
