"""vortex: find where a vision model may be split without leaking its input."""

__version__ = "0.1.0"

__all__ = ["__version__", "from_pretrained", "VortexModel", "VortexCallback"]


def __getattr__(name: str):
    """`vortex.from_pretrained`, `vortex.VortexModel` and `vortex.VortexCallback` without importing torch,
    transformers and huggingface_hub at `import vortex`."""
    if name == "from_pretrained":
        from vortex.hub.repo import from_pretrained

        return from_pretrained
    if name == "VortexModel":
        from vortex.hub.model import VortexModel

        return VortexModel
    if name == "VortexCallback":
        from vortex.training.callback import VortexCallback

        return VortexCallback
    raise AttributeError(f"module 'vortex' has no attribute '{name}'")
