"""Trainers: one file per method; importing this package registers them all."""
from taidpt.trainers import linear_probe, zsclip  # noqa: F401
