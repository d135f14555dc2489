"""Training the phantom dual encoders with the losses of Ko & Park (CVPR 2025).

``python -m explorer train --config FILE`` runs :func:`explorer.training.trainer.train`.
"""
