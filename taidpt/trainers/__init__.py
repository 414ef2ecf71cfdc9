"""Trainers: one file per method; importing this package registers them all."""
from taidpt.trainers import linear_probe, taidpt, zsclip  # noqa: F401
