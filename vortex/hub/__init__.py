"""Checkpoints and the Hugging Face Hub: directory layout, halves, model cards, publish and pull, loading
the --model argument."""
