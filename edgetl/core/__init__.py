"""edgetl.core."""
