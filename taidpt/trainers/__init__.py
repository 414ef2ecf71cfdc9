"""Trainers: one file per method; importing this package registers them all."""
from taidpt.trainers import dualcoop, linear_probe, taidpt, zsclip  # noqa: F401
