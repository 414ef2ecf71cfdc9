"""One clear failure for every command: a short message on stderr (and in ``log.txt`` when one is
open, with the traceback), the traceback on stderr only with ``--debug``.

Exit codes: 2 for bad input or config (:data:`INPUT_ERRORS`, read-only folders), 1 for runtime
failures (anything else, a full disk included).
"""
from __future__ import annotations

import errno
import logging
import sys
import traceback
from typing import Callable

from taidpt.engine.checkpoint import UnsafeCheckpointError

logger = logging.getLogger("taidpt")

BAD_INPUT, RUNTIME_FAILURE = 2, 1
DEBUG_HINT = " (run with --debug for the traceback)"
# Errors that mean the input (flags, config, files, folders) is wrong: our own errors name what to
# fix; ValueError is what every config / data check raises, KeyError an unknown name (a config key,
# ConfigError, a trainer, a score head).
INPUT_ERRORS = (KeyError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                PermissionError, UnsafeCheckpointError)
_OS_FIXES = {
    errno.EACCES: "use a folder you can write to, or fix its permissions",
    errno.EPERM: "use a folder you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: use a folder on a writable one",
    errno.ENOSPC: "the disk is full: free some space there or use a folder on another disk",
    errno.EDQUOT: "the disk quota is exhausted: free some space or use another folder",
}


def exit_code(err: BaseException) -> int:
    """2 for bad input or config, 1 for a runtime failure."""
    if isinstance(err, INPUT_ERRORS) or (isinstance(err, OSError) and err.errno == errno.EROFS):
        return BAD_INPUT
    return RUNTIME_FAILURE


def describe(err: BaseException) -> str:
    """The one-paragraph message: ours as written; an OS error as what failed, the path and the fix."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        fix = _OS_FIXES.get(err.errno, "check the path")
        return f"{err.strerror}: {err.filename} ({fix})"
    text = str(err) or type(err).__name__
    return text if isinstance(err, INPUT_ERRORS) else f"{type(err).__name__}: {text}"


def _log_to_files(message: str, err: BaseException) -> None:
    """The message and the traceback into every log file of the ``taidpt`` logger (``log.txt``)."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None,
                               (type(err), err, err.__traceback__))
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_guarded(prog: str, work: Callable[[], int], debug: bool = False) -> int:
    """``work()``'s exit code; an exception becomes one ``PROG: error: ...`` line on stderr and
    in ``log.txt`` (with its traceback), the traceback on stderr with ``debug``, and exit 2 or 1."""
    try:
        return work()
    except Exception as err:  # noqa: BLE001 - the top of the command: every failure ends here
        message = describe(err)
        _log_to_files(message, err)
        if debug:
            traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
        print(f"{prog}: error: {message}{'' if debug else DEBUG_HINT}", file=sys.stderr)
        return exit_code(err)
