"""Training: the recipe, the soft-target loss, the levers, the GPZ controller, the Accelerate loop and
the HF Trainer callback."""
