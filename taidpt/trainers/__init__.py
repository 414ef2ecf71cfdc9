"""Trainers: one file per method; importing this package registers them all."""
from taidpt.trainers import zsclip  # noqa: F401
