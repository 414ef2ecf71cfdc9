"""Small engine utilities: seeding, running averages, logging set-up."""
from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from collections import defaultdict
from typing import Dict, Iterator, List

import numpy as np
import torch


def set_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class AverageMeter:
    def __init__(self) -> None:
        self.sum = 0.0
        self.count = 0
        self.val = 0.0

    def update(self, value: float, n: int = 1) -> None:
        self.val = float(value)
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / max(self.count, 1)


class MetricMeter:
    """Running averages of named scalars, printed as ``name val (avg)``."""

    def __init__(self) -> None:
        self.meters: Dict[str, AverageMeter] = defaultdict(AverageMeter)

    def update(self, values: Dict[str, float]) -> None:
        for name, value in values.items():
            self.meters[name].update(value.item() if torch.is_tensor(value) else value)

    def __str__(self) -> str:
        return " ".join(f"{k} {m.val:.4f} ({m.avg:.4f})" for k, m in self.meters.items())


class _StdoutHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stdout`` is when a record is emitted (a host or a test
    harness may replace and close the stream that was current at set-up)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logger(output_dir: str = "", level: int = logging.INFO) -> logging.Logger:
    """Log ``taidpt.*`` to stdout and, when ``output_dir`` is given, to ``output_dir/log.txt``."""
    logger = logging.getLogger("taidpt")
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S")
    stream = _StdoutHandler()
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, "log.txt"), mode="a")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


class _HoldHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held_log_records(name: str = "taidpt") -> Iterator[List[logging.LogRecord]]:
    """Hold what logger ``name`` logs inside the block (e.g. while the config is assembled, before
    ``log.txt`` exists) and yield the list of records, for :func:`replay_log_records` once the
    handlers are set. If the block raises, the records are replayed to the handlers there were."""
    logger = logging.getLogger(name)
    saved = logger.handlers[:], logger.propagate, logger.level
    hold = _HoldHandler()
    logger.handlers, logger.propagate = [hold], False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    try:
        yield hold.records
    except BaseException:
        logger.handlers, logger.propagate, _ = saved
        logger.setLevel(saved[2])
        replay_log_records(hold.records)
        raise
    logger.handlers, logger.propagate, _ = saved
    logger.setLevel(saved[2])


def replay_log_records(records: List[logging.LogRecord]) -> None:
    """Hand held records to their loggers' current handlers (in order, with their own times)."""
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
