"""What the ``sdnet-tf`` commands do, apart from the core they use.

``train`` (SDNet's ``train_run``), ``evaluation`` (predictions against references),
``shape_eval`` (held-out evaluation of priors and U-Nets), ``figures`` (the paper's
figures), ``latent`` (z's capacity and the classifier), ``report`` (one page per run),
``quality`` (the quality control's calibration on a run) and ``summary`` (parameter
counts). The core (``models``, ``training``, ``data``, ``metrics``, ``inference``) never
imports from here (``tests/test_layering.py``).
"""
