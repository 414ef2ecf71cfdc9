"""Trainers: one file per method; importing this package registers them all."""
from taidpt.trainers import (cocoop_ml, coop_ml, dualcoop, ensemble, linear_probe, taidpt,  # noqa: F401
                             zsclip)
