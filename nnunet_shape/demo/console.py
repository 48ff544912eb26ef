"""The demo's console: nnU-Net's console scripts run with progress bars, their log parsed.

:func:`parse_progress` and :func:`is_console_line` read nnU-Net's output line by line (regular
expressions on its log format); :class:`Stages` draws ``[k/N] stage`` bars (tqdm on a terminal,
plain lines otherwise) and records each stage's wall time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_CONSOLE_LINE", "parse_progress", "is_console_line", "nnunet_environment", "StageFailed",
    "stream_command", "StageRecord", "PlainBar", "Stages", "line_handler", "console_script",
]

_TQDM = re.compile(r"^(?P<desc>[^|]*?):?\s*\d+%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)")
_EPOCH_START = re.compile(r": Epoch (?P<epoch>\d+)\s*$")
_EPOCH_END = re.compile(r": Epoch time: ")
_PREDICT_DONE = re.compile(r"^done with (?P<case>\S+)")
#: nnUNetv2_predict -npp 0 -nps 0 (sequential, no worker processes) prints this before each case
_PREDICT_SEQUENTIAL_CASE = re.compile(r"^perform_everything_on_device: ")
_VALIDATION_CASE = re.compile(r": predicting (?P<case>\S+)")
#: longer lines (configuration dumps) go to the log only
MAX_CONSOLE_LINE = 240


def parse_progress(line: str) -> tuple[str, Any] | None:
    """Recognise the progress signals in nnU-Net's output.

    Returns ``("tqdm", (description, done, total))`` for a tqdm bar update,
    ``("epoch_start", epoch)``, ``("epoch_end", None)``, ``("predicted", case)`` (nnUNetv2_predict),
    ``("predicting", None)`` (a case starts in nnUNetv2_predict's sequential mode, ``-npp 0 -nps 0``,
    which names no case) or ``("validating", case)`` (final validation of nnUNetv2_train); None
    otherwise.
    """
    text = line.strip()
    match = _TQDM.match(text)
    if match:
        return "tqdm", (match["desc"].strip(), int(match["done"]), int(match["total"]))
    match = _EPOCH_START.search(text)
    if match:
        return "epoch_start", int(match["epoch"])
    if _EPOCH_END.search(text):
        return "epoch_end", None
    match = _PREDICT_DONE.match(text)
    if match:
        return "predicted", match["case"]
    if _PREDICT_SEQUENTIAL_CASE.match(text):
        return "predicting", None
    match = _VALIDATION_CASE.search(text)
    if match:
        return "validating", match["case"]
    return None


#: nnU-Net's boilerplate (citation banner, trainer lookup, deprecation warnings): log file only
_NOISE = re.compile(
    r"^(#+|Please cite|Isensee, F\.|INFO: You are using the old nnU-Net|Trainer '.*' not found in|"
    r"Searching (in|for)|Inspecting module|Found class|Using trainer|.*FutureWarning|warnings\.warn|"
    r"Unable to plot network|No module named 'hiddenlayer'|perform_everything_on_device|"
    r"I am process \d+ out of|sending off prediction|.*: $)")


def is_console_line(line: str) -> bool:
    """Lines worth echoing: not blank, not a tqdm bar (the stage bar shows progress), not
    nnU-Net's boilerplate, not a configuration dump longer than :data:`MAX_CONSOLE_LINE`
    characters. Everything goes to the stage's log file anyway."""
    text = line.strip()
    if not text or len(text) > MAX_CONSOLE_LINE or _TQDM.match(text) is not None:
        return False
    # nnU-Net prefixes its log lines with a timestamp: judge the message
    message = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ?", "", text)
    return bool(message) and _NOISE.match(message) is None


def nnunet_environment(work: str | os.PathLike, n_proc_da: int | None = None) -> dict[str, str]:
    """Environment for nnU-Net's console scripts: data folders under ``work``, nnunet-shape's
    trainers (``nnUNet_extTrainer``), no torch.compile, one export worker, unbuffered output.

    ``n_proc_da`` sets ``nnUNet_n_proc_DA`` -- for training only: the planner crashes with 0.
    """
    from nnunet_shape.cli import trainers_directory

    work = Path(work).resolve()
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(work / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
        "nnUNet_results": str(work / "nnUNet_results"),
        "nnUNet_extTrainer": trainers_directory(),
        "nnUNet_compile": "false",
        "nnUNet_def_n_proc": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    })
    env.pop("nnUNet_n_proc_DA", None)
    if n_proc_da is not None:
        env["nnUNet_n_proc_DA"] = str(int(n_proc_da))
    return env


class StageFailed(RuntimeError):
    """A demo stage failed; the message names the stage, the command and its log."""


def console_script(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def stream_command(args: Sequence[str], env: Mapping[str, str], log_file: Path,
                   on_line: Callable[[str], None], stage: str) -> None:
    """Run a console script, write all its output to ``log_file`` and hand every line (tqdm's
    carriage-return updates included: text mode splits on ``\\r``) to ``on_line``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(args) + "\n")
        process = subprocess.Popen(list(args), env=dict(env), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert process.stdout is not None
        try:
            for line in process.stdout:
                log.write(line)
                tail = (tail + [line.rstrip()])[-40:]
                on_line(line.rstrip("\n"))
        finally:
            process.stdout.close()
            code = process.wait()
    if code != 0:
        raise StageFailed(f"demo stage '{stage}' failed: {' '.join(args)} exited with code {code}; "
                          f"full log: {log_file}\n--- last lines ---\n" + "\n".join(tail[-25:]))


@dataclass
class StageRecord:
    name: str
    seconds: float
    note: str = ""


class PlainBar:
    """Progress for a non-terminal (CI logs, pipes): one line per update instead of tqdm's
    carriage-return redraws. Implements the subset of tqdm's API the demo uses."""

    def __init__(self, total: int | None, desc: str, unit: str):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix = ""
        self.started = time.monotonic()
        self._shown = -1
        print(f"{desc}: started", flush=True)

    def _line(self) -> str:
        of = f"/{self.total}" if self.total else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        return f"{self.desc}: {self.n}{of} {self.unit}{extra}, {time.monotonic() - self.started:.0f} s"

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def refresh(self) -> None:
        if self.n != self._shown:
            self._shown = self.n
            print(self._line(), flush=True)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        pass


class Stages:
    """``[k/N] name`` progress bars with elapsed time; records the wall time of every stage.

    ``fancy`` uses tqdm bars (a terminal); otherwise :class:`PlainBar` lines.
    """

    def __init__(self, total: int, fancy: bool = True):
        self.total = total
        self.index = 0
        self.records: list[StageRecord] = []
        self.fancy = fancy
        self.start = time.monotonic()

    @contextmanager
    def stage(self, name: str, total: int | None, unit: str = "step") -> Iterator[Any]:
        from tqdm import tqdm

        self.index += 1
        description = f"[{self.index}/{self.total}] {name}"
        if self.fancy:
            bar: Any = tqdm(total=total, desc=description, unit=unit, leave=True, dynamic_ncols=True,
                            file=sys.stdout, mininterval=0.5)
        else:
            bar = PlainBar(total, description, unit)
        started = time.monotonic()
        try:
            yield bar
        finally:
            bar.close()
        seconds = time.monotonic() - started
        self.records.append(StageRecord(name, seconds))
        self.echo(f"{description}: {seconds:.0f} s (total {time.monotonic() - self.start:.0f} s)")

    def skipped(self, name: str, note: str) -> None:
        self.index += 1
        self.records.append(StageRecord(name, 0.0, note))
        self.echo(f"[{self.index}/{self.total}] {name}: {note}")

    def echo(self, text: str) -> None:
        from tqdm import tqdm

        if self.fancy:
            tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)


def line_handler(bar: Any, echo: Callable[[str], None], kind: str) -> Callable[[str], None]:
    """Progress and echo for one command: ``kind`` is "plan", "train" or "predict".

    For "plan", nnU-Net's consecutive tqdm bars (fingerprint, then preprocessing) fill one stage
    bar one after the other.
    """
    phases: dict[str, int] = {}  # tqdm description -> its total, in order of appearance

    def handle(line: str) -> None:
        event = parse_progress(line)
        if event is not None:
            name, value = event
            if name == "tqdm" and kind == "plan":
                description, done, total = value
                phases.setdefault(description, total)
                order = list(phases)
                offset = sum(phases[d] for d in order[: order.index(description)])
                bar.n = min(offset + done, bar.total) if bar.total else offset + done
                bar.set_postfix_str(description, refresh=False)
                bar.refresh()
            elif name == "epoch_start" and kind == "train":
                bar.set_postfix_str(f"epoch {value}", refresh=True)
            elif name == "epoch_end" and kind == "train":
                bar.update(1)
            elif name == "validating" and kind == "train":
                bar.set_postfix_str(f"final validation: {value}", refresh=True)
            elif name in ("predicted", "predicting") and kind == "predict":
                # sequential mode: the count of cases started (their prediction takes a second)
                bar.update(1)
        if is_console_line(line):
            echo(line.rstrip())

    return handle
