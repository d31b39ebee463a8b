"""Measurement: split points (torch.fx and forward hooks), streaming class statistics, the GPZ rule,
entropy bounds and the probe. Imports only the utilities below it: no Accelerate, no Hub, no CLI."""
