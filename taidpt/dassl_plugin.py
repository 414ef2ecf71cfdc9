"""One import line makes taidpt's trainers available to a stock Dassl / CoOp ``train.py``::

    import taidpt.dassl_plugin  # noqa: F401 - anywhere among the script's imports

Importing it runs :func:`taidpt.dassl_bridge.install`: every taidpt trainer and alias is in
Dassl's ``TRAINER_REGISTRY`` (``--trainer TaIDPT``, ``Caption_distill_double``, ``DualCoOp``,
``ZeroshotCLIP_dense``, ...), Dassl's config accepts taidpt's keys under every trainer spelling
(also after Dassl's ``clean_cfg``), the chosen taidpt trainer gets CLIP's preprocessing and the
multi-label evaluator unless the config says otherwise, and its log (loss, progress, mAP) goes
to the host's stdout and ``log.txt``. See :mod:`taidpt.dassl_bridge` for how.
"""
from taidpt.dassl_bridge import install

TRAINERS_ADDED = install()
