"""edgetl.workstation."""
