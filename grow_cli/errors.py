"""Typed errors raised by the library and translated once, at the CLI edge, into one line and an exit code.

Every message says what was expected, what was found and, where possible, what to run next. The library never
calls `sys.exit`; `grow_cli.cli` maps `GrowError.exit_code` to the process exit status.
"""

from grow_cli.signals import stopped_by


class GrowError(Exception):
    """Base class for every error a user can cause; the CLI prints `error: <message>` without a traceback."""

    exit_code = 1
    every_rank = False  # found alike by every process of a launch, wherever it arises: printed once (launch.py)


class UsageError(GrowError):
    """The command line asks for something impossible (e.g. fewer layers than the source)."""

    exit_code = 2
    every_rank = True  # made of the arguments, which every process shares


class OptionError(UsageError):
    """One option has an impossible value or contradicts another; `option` is its name as a Python field and recipe
    key (e.g. `dus_overlap`), or None when no single option is at fault."""

    def __init__(self, option: str | None, message: str):
        super().__init__(message)
        self.option = option


class CheckpointError(GrowError):
    """The source checkpoint is missing, unreadable, truncated, or contradicts its config.json."""


class ArchitectureError(GrowError):
    """The architecture is unknown, or the checkpoint's tensors do not match its definition."""


class OutputError(GrowError):
    """The output folder cannot be written (exists without --force, lies inside the source, ...)."""


class VerificationError(GrowError):
    """A method that claims exact function preservation failed the numeric check."""


class HubError(GrowError):
    """The Hugging Face Hub refused or failed a request (authentication, network, missing repo)."""


class DataError(GrowError):
    """Training or evaluation data is missing, empty or malformed."""


class TrainingError(GrowError):
    """Training stopped because it cannot continue (e.g. a non-finite loss)."""


class Interrupted(TrainingError):
    """Ctrl-C or SIGTERM (`signum`): a checkpoint was saved; `what` says where, `advice` how to continue (`--resume
    auto` for train-stage, rerunning the recipe for `grow family`). The message names the signal and the exit status
    is the shell's for it, 130 or 143: supervisors (Slurm, systemd, Kubernetes) read 143 as their own SIGTERM."""

    every_rank = True  # the processes agree on the step to stop at and save together

    def __init__(self, signum: int, what: str, advice: str):
        super().__init__(f"{stopped_by(signum)} {what}. {advice}")
        self.signum, self.what = signum, what
        self.exit_code = 128 + signum


def one_line(message: object, limit: int | None = None) -> str:
    """A library's message (often several lines: a traceback-like report, a table of causes) as the single line grow
    prints, its lines joined and cut to `limit` characters (when given); an exception without a message gives its
    type's name."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())[:limit]
    return text or (type(message).__name__ if isinstance(message, BaseException) else "")


def shown(number: float) -> str:
    """A number as a message shows it: a whole one with its thousands separated (1,024), or past 10**15 in short
    e-notation (2e+99) — `--depth-factor 2e99` was answered with all 79 digits of the layer count it made, and
    `--max-tokens 2e99` with 100; any other number as Python writes it (0.1, nan)."""
    if isinstance(number, int) and not isinstance(number, bool):
        return f"{number:,}" if abs(number) < 10**15 else f"{number:.3g}"
    return str(number)


def counted(number: int, noun: str) -> str:
    """`number` and `noun` as a message says them, the noun plural unless the number is one: "1 layer", "4 layers",
    "1,207,909 documents" (never "1 documents" or "file(s)")."""
    return f"{shown(number)} {noun}{'' if number == 1 else 's'}"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as a short phrase: the first line of its message (a library's headline, before its details),
    cut to `limit` characters at a word, with "…" where it was cut; its type's name when it has no message. A
    headline that ends in a colon introduces its next lines (transformers' "Couldn't instantiate the backend
    tokenizer from one of:" lists what it looked for), so the message is read on, as one line."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    if not lines:
        return type(exc).__name__
    text = " ".join(line for line in lines if line) if lines[0].endswith(":") else lines[0]
    if len(text) > limit:
        cut = text[: limit - 1]
        text = (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(",;:") + "…"
    return text


def failure(exc: BaseException, limit: int = 200) -> str:
    """An exception raised by code not ours (a model class, a config class) as one short phrase: its type, which
    says what kind of failure it was where the message alone may not ("KeyError: 'rope_type'"), and `first_line`."""
    return f"{type(exc).__name__}: {first_line(exc, limit)}" if str(exc).strip() else type(exc).__name__
