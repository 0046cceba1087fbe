"""What a script shows on the terminal: quiet TensorFlow defaults, progress bars, and
a filter that keeps TensorFlow's native log lines away from the user.

Importing this module sets the quiet defaults in the environment (every script
imports it, through settings, before TensorFlow or tqdm, both of which read
their settings when first imported). `quiet_native_logs` keeps TensorFlow's
native log lines (CUDA probing on CPU machines, absl) away from the user unless
`--verbose` is given or `TF_CPP_MIN_LOG_LEVEL` is set.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

TF_LOG_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# Marks a TF_CPP_MIN_LOG_LEVEL that this module set (also in child processes, which
# inherit the environment), so that only a level the user set counts as theirs.
QUIET_MARK_VARIABLE = "CNN_SENTINEL_QUIET_TF"
QUIET_TF_LOG_LEVEL = "2"
if TF_LOG_VARIABLE not in os.environ:
    os.environ[TF_LOG_VARIABLE] = os.environ[QUIET_MARK_VARIABLE] = QUIET_TF_LOG_LEVEL
# The user's own TensorFlow log level, if any: it always wins over ours.
USER_TF_LOG_LEVEL = (
    None
    if os.environ.get(QUIET_MARK_VARIABLE) == os.environ[TF_LOG_VARIABLE]
    else os.environ[TF_LOG_VARIABLE]
)
# Seconds between progress-bar redraws when stderr is a file or pipe (a log gets a
# line every few seconds, not hundreds per minute); tqdm reads TQDM_MININTERVAL.
NON_TERMINAL_REDRAW_S = 5.0


def _stderr_is_terminal() -> bool:
    try:
        return os.isatty(sys.__stderr__.fileno())
    except (AttributeError, OSError, ValueError):
        return False


# Decided once, before run_script may put a pipe on file descriptor 2.
STDERR_IS_TERMINAL = _stderr_is_terminal()
if not STDERR_IS_TERMINAL:
    os.environ.setdefault("TQDM_MININTERVAL", str(NON_TERMINAL_REDRAW_S))

# Native log lines of TensorFlow, XLA and absl: "I0000 00:00:1795.1 123 file.cc:31] ...",
# the older "2025-01-01 12:00:00.1: W file.cc:31] ...", and two absl/CPU notices.
# FATAL (F) lines are never dropped.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\s:]+:\d+\]"
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow)"
)


def progress_bar(iterable=None, **options):
    """A tqdm progress bar that redraws every NON_TERMINAL_REDRAW_S seconds when
    stderr is not a terminal (options as tqdm's, e.g. desc, unit, total, disable)."""
    from tqdm import tqdm

    if not STDERR_IS_TERMINAL:
        options.setdefault("mininterval", NON_TERMINAL_REDRAW_S)
    return tqdm(iterable, **options)


class NativeLogFilter:
    """Drop TensorFlow's native log lines written to file descriptor 2.

    C++ code writes to fd 2 directly, before and after TensorFlow reads any
    setting, so fd 2 becomes a pipe read by a thread that forwards every other
    line to the real stderr. Python's own `sys.stderr` (error sentences,
    tracebacks, progress bars) is pointed straight at the real stderr, so it
    never waits on the thread; so is faulthandler.
    """

    def __init__(self):
        self.real_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        sys.stderr.flush()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.read_fd = read_fd
        self.saved_stderr = sys.stderr
        sys.stderr = os.fdopen(
            os.dup(self.real_fd),
            "w",
            buffering=1,
            encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
            errors="backslashreplace",
        )
        with contextlib.suppress(Exception):
            import faulthandler

            faulthandler.enable(file=sys.stderr)
        self.thread = threading.Thread(target=self._forward, name="native-log-filter", daemon=True)
        self.thread.start()

    def _forward(self) -> None:
        pending = b""
        while True:
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = re.split(rb"(?<=[\n\r])", pending)
            kept = b"".join(line for line in lines if not NATIVE_LOG_LINE.match(line))
            # A part line (a progress bar redraw) goes out at once unless it starts
            # like a log line, which then waits for its end.
            if pending and not re.match(rb"^(?:[IWE]\d|\d{4}-|WARNING: All|To enable)", pending):
                kept, pending = kept + pending, b""
            if kept:
                os.write(self.real_fd, kept)
        if pending and not NATIVE_LOG_LINE.match(pending):
            os.write(self.real_fd, pending)

    def close(self) -> None:
        """Put the real stderr back on fd 2 and forward what is still in the pipe."""
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(self.real_fd, 2)  # closes this process's write end of the pipe
        self.thread.join(timeout=2.0)
        sys.stderr = self.saved_stderr


def quiet_native_logs(argv: list[str]) -> NativeLogFilter | None:
    """Keep TensorFlow's native log lines from the user, unless `--verbose` is in argv
    (then TensorFlow logs everything) or the user set TF_CPP_MIN_LOG_LEVEL (theirs wins)."""
    if "--verbose" in argv:
        if USER_TF_LOG_LEVEL is None:
            # Unmarked, so child processes (demo.py's steps) log everything too.
            os.environ[TF_LOG_VARIABLE] = "0"
            os.environ.pop(QUIET_MARK_VARIABLE, None)
        return None
    if USER_TF_LOG_LEVEL is not None:
        return None
    try:
        return NativeLogFilter()
    except OSError:
        return None
