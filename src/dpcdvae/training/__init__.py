"""dpcdvae.training: training of the model (Lightning module, device-resident loader, budget schedule,
callbacks, ``train``), the property predictor's training, and the ``train`` / ``train-property`` /
``export`` commands. The model itself is :mod:`dpcdvae.models`, model files :mod:`dpcdvae.models.checkpoint`."""
