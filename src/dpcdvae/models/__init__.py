"""dpcdvae.models: the DP-CDVAE model (``dpcdvae.py``), its builder (``build.py``), the property
predictor (``property.py``) and model files (``checkpoint.py``). Training is :mod:`dpcdvae.training`."""
