"""Trainers: one file per method; importing this package registers them all."""
from taidpt.trainers import cocoop_ml, coop_ml, dualcoop, linear_probe, taidpt, zsclip  # noqa: F401
