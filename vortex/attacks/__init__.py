"""Model inversion attacks on the z sent at each split.

    base.py      the Attack interface (fit on what the attacker has, then invert z), the registry,
                 AttackConfig
    prepare.py   what the attacker does to z first: per-dimension standardisation and the residual
                 from the nearest class-like cluster, so rescaling z cannot hide what it holds
    decoder.py   decoders z -> x built from z's shape, trained with early stopping (black box):
                 the `decoder` and `enhanced` attacks
    optimize.py  rMLE: optimise x' so edge(x') matches z, with a total-variation prior (white box)
    enhance.py   the strengthened attacker's parts: feature normalisation, FFT amplitude, attention
    metrics.py   per-image MSE, PSNR, SSIM and cosine on [0, 1] images
    sweep.py     attack many splits with shared feature extraction; attack.json

The package imports nothing heavy, so `vortex --help` stays fast: import from the modules.
"""
