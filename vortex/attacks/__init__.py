"""Model inversion attacks on the z sent at each split.

    decoder.py   decoders z -> x built from z's shape, trained with early stopping (black box)
    optimize.py  rMLE: optimise x' so edge(x') matches z, with a total-variation prior (white box)
    enhance.py   the strengthened attacker's parts: feature normalisation, FFT amplitude, attention
    metrics.py   per-image MSE, PSNR, SSIM and cosine on [0, 1] images
    sweep.py     attack many splits with shared feature extraction; attack.json
    cli.py       `vortex attack`

The package imports nothing heavy, so `vortex --help` stays fast: import from the modules.
"""
