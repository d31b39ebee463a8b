"""The `vortex` command: every parser, and the demo."""
