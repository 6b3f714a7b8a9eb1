"""What every method shares: the file format and atomic I/O, the ``<name>`` prompt syntax, tokens, model families,
base-model loading, the UNet's noise predictor and the model configs. Nothing here imports a method."""
