"""tracer: shrink a container image to the files its application really uses, and prove it."""

__version__ = "0.1.0"
