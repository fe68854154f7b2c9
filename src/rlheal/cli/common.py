"""What every `rlheal` command shares: `--quiet`, `--verbose` and `--debug`, the libraries' own output off by
default, and expected failures as one line (what is wrong and what to do).

`command(func)` wraps a command: it adds the three options to its signature, sets up the output before the
command runs and turns its errors into `error: ...` on standard error with exit status 2 (the command line or
a config is wrong) or 1 (the work could not be done). `--debug` lets the traceback through instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer

_OUTPUT = {"quiet": False}
# click's exception classes, as typer raises them (it may bundle its own click)
USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
LIBRARIES = ("transformers", "trl", "datasets", "accelerate", "huggingface_hub", "torch", "tokenizers", "safetensors")
_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
COMMON_OPTIONS = {
    "quiet": Annotated[bool, typer.Option("--quiet", "-q", help="Only the stage lines and the final summary "
                                          "(no progress bars).")],
    "verbose": Annotated[bool, typer.Option("--verbose", help="Also the libraries' own output (transformers, TRL "
                                            "and datasets bars, trainer logs, their warnings).")],
    "debug": Annotated[bool, typer.Option("--debug", help="On an error, show the traceback instead of one line.")],
}


def show_bars() -> bool:
    """Whether progress bars are wanted (not `--quiet`)."""
    return not _OUTPUT["quiet"]


def configure_output(quiet: bool = False, verbose: bool = False) -> None:
    """Set up this process's output: bars unless `quiet`; the libraries' bars, logs and warnings off unless
    `verbose` (environment variables for libraries not yet imported, their switches for those that are)."""
    _OUTPUT["quiet"] = quiet
    if verbose:
        for name in _QUIET_ENV:
            os.environ.pop(name, None)
    else:
        os.environ.update(_QUIET_ENV)
    level = logging.WARNING if verbose else logging.ERROR
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(level)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(level)
        (hf_logging.enable_progress_bar if verbose else hf_logging.disable_progress_bar)()
    if "datasets" in sys.modules:
        import datasets

        (datasets.enable_progress_bars if verbose else datasets.disable_progress_bars)()
    warnings.resetwarnings()
    if not verbose:
        warnings.filterwarnings("ignore", module=rf"^({'|'.join(map(re.escape, LIBRARIES))})(\.|$)")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.showwarning = _one_line_warning


def _one_line_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    from rlheal.progress import note

    note(f"warning: {message}", style="yellow")


def usage_errors() -> tuple[type[Exception], ...]:
    """Errors that mean the command line or a config is wrong (exit status 2)."""
    from pydantic import ValidationError

    from rlheal.config import ConfigError
    from rlheal.evaluate import EvalConfigError
    from rlheal.study import StudyConfigError
    from rlheal.tracking import TrackerError
    from rlheal.train.schedule import ScheduleError
    from rlheal.train.sft import SFTConfigError
    from rlheal.train.sweep import SweepError
    from rlheal.yaml_input import YamlInputError

    return (ConfigError, StudyConfigError, SFTConfigError, EvalConfigError, SweepError, ScheduleError, YamlInputError,
            TrackerError, ValidationError)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` (literally) on standard error; returns the Exit to raise."""
    from rlheal.progress import note

    note(f"error: {message}", style="red")
    return typer.Exit(code)


def one_line(exc: BaseException) -> str:
    """The message of `exc` on one line (a pydantic error's lines joined)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` as an rlheal command: with `--quiet`, `--verbose` and `--debug`, and one-line errors."""
    signature = inspect.signature(func, eval_str=True)

    @functools.wraps(func)
    def run(*args: Any, quiet: bool = False, verbose: bool = False, debug: bool = False, **kwargs: Any) -> Any:
        configure_output(quiet=quiet, verbose=verbose)
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit, CLICK_ERROR):
            raise
        except KeyboardInterrupt:
            if debug:
                raise
            raise fail("interrupted; run the same command again to resume", 130) from None
        except Exception as exc:  # noqa: BLE001 - the one place where every failure becomes one line
            if debug:
                raise
            if isinstance(exc, usage_errors()):
                raise fail(one_line(exc), 2) from None
            if isinstance(exc, RuntimeError | ValueError | OSError) and type(exc).__module__.startswith("rlheal"):
                raise fail(one_line(exc), 1) from None
            raise fail(f"{type(exc).__name__}: {one_line(exc)[:300]} (unexpected: rerun with --debug for the "
                       "traceback)", 1) from None

    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=kind)
             for name, kind in COMMON_OPTIONS.items()]
    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    return run
