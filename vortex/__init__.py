"""vortex: find where a vision model may be split without leaking its input."""

__version__ = "0.1.0"

__all__ = ["__version__", "from_pretrained"]


def __getattr__(name: str):
    """`vortex.from_pretrained` without importing torch and huggingface_hub at `import vortex`."""
    if name == "from_pretrained":
        from .hub import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'vortex' has no attribute '{name}'")
