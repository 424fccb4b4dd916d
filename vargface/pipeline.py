"""Resumable pipelines of `vargface` commands: the runner under `vargface demo` and `vargface recipe`.

A step is a name, a title, the `vargface` command lines it runs and the outputs it owns. Each command is printed
first as a shell line (``$ vargface ...``) that can be copied and rerun alone, then runs through the real CLI
parser in this process, so a bad input surfaces as the subcommand's own `VargfaceError`. A finished step is
recorded in a JSON state file in the work folder and skipped on a rerun. A step that did not finish is redone:
its outputs are removed first, except for a training step whose prefix already holds a training state
(``PREFIX-state.json`` from `vargface train`, ``PREFIX-lineage.json`` from `vargface distill`), which continues
with ``--resume`` where it stopped."""
import contextlib
import io
import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from vargface.errors import VargfaceError
from vargface.train.run_files import RunFiles


@dataclass
class Step:
    """One resumable unit of a pipeline.

    ``commands``: `vargface` argv lists run in order. ``outputs``: files/folders removed before a fresh attempt.
    ``resume``: the training prefix whose saved state turns a redo into ``--resume``. ``result``: called with the
    captured stdout of every command (when ``capture``) and returns a JSON value kept in the state; it may raise
    `VargfaceError` to fail the step (e.g. a budget check)."""
    name: str
    title: str
    commands: List[List[str]]
    outputs: Sequence[str] = ()
    resume: Optional[str] = None
    capture: bool = False
    result: Optional[Callable[[List[str]], object]] = None


def shell_line(argv):
    return "vargface " + shlex.join(argv)


class Pipeline:
    """Runs steps in order against a state file ``work/state_name``.

    ``settings`` (JSON-able) are stored with the state: a work folder holding a run with other settings is
    refused, so a rerun never mixes two configurations. ``what`` names the pipeline in messages (e.g. 'demo')."""

    def __init__(self, work, state_name, settings, what, overwrite=False, dry_run=False, hint=""):
        self.work, self.settings, self.what, self.dry_run = work, settings, what, dry_run
        self.state_path = os.path.join(work, state_name)
        self.hint = hint or "choose another output folder"
        if overwrite and os.path.isdir(work) and not dry_run:
            shutil.rmtree(work)
        if os.path.exists(work) and not os.path.isdir(work):
            raise VargfaceError(f"{work}: exists and is not a directory")
        self.state = {"settings": settings, "steps": {}}
        if os.path.isfile(self.state_path):
            try:
                with open(self.state_path) as f:
                    state = json.load(f)
                steps = state["steps"]
                if not isinstance(steps, dict):
                    raise ValueError("'steps' is not an object")
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise VargfaceError(f"{self.state_path}: unreadable {what} state ({error}); {self.hint}") from None
            if state.get("settings") != settings:
                raise VargfaceError(f"{work} holds a {what} run with other settings ({self.state_path}); "
                                    f"{self.hint}")
            self.state = state
        elif os.path.isdir(work) and os.listdir(work):
            raise VargfaceError(f"{work}: exists and is not a {what} output; {self.hint}")
        self.parser = None

    # -- state -----------------------------------------------------------------------------------------------
    def done(self, name):
        return name in self.state["steps"]

    def result(self, name):
        return self.state["steps"][name]["result"]

    def seconds(self, name):
        return self.state["steps"][name]["seconds"]

    def _save_state(self):
        from vargface.atomic import atomic_path

        os.makedirs(self.work, exist_ok=True)
        with atomic_path(self.state_path) as tmp, open(tmp, "w") as f:
            json.dump(self.state, f, indent=1)

    # -- running ---------------------------------------------------------------------------------------------
    def vargface(self, argv, capture=False):
        """Print `vargface ARGV` and run it through the real CLI parser; returns captured stdout if asked."""
        from vargface.cli import build_parser

        print("$ " + shell_line(argv), flush=True)
        self.parser = self.parser or build_parser()
        args = self.parser.parse_args(argv)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer) if capture else contextlib.nullcontext():
            code = args.func(args)
        if code:
            raise VargfaceError(f"`vargface {argv[0]}` exited with {code}")
        return buffer.getvalue()

    def run(self, steps):
        """Run every step not yet finished; returns {name: result}. A failing step stops the run (its error
        propagates) and is not recorded, so the next run starts at it."""
        results = {}
        for number, step in enumerate(steps, 1):
            progress = f"[{number}/{len(steps)}] "
            try:
                results[step.name] = self.run_step(step, progress)
            except VargfaceError as error:
                raise VargfaceError(f"{progress}{step.title}: {error} (finished steps are kept: rerun the same "
                                    f"{self.what} to continue from this step)") from None
        return results

    def run_step(self, step, progress=""):
        finished = self.state["steps"].get(step.name)
        if finished is not None:
            print(f"\n== {progress}{step.title}: done in an earlier run ({finished['seconds']:.0f} s), skipped",
                  flush=True)
            return finished["result"]
        resuming = bool(step.resume) and RunFiles(step.resume).has_resumable_state()
        commands = [argv + ["--resume"] for argv in step.commands] if resuming else step.commands
        print(f"\n== {progress}{step.title}" + (" (continuing the interrupted run)" if resuming else ""), flush=True)
        if self.dry_run:
            for argv in commands:
                print("$ " + shell_line(argv), flush=True)
            return None
        if not resuming:
            for output in step.outputs:  # leftovers of an interrupted attempt
                if os.path.isdir(output):
                    shutil.rmtree(output)
                elif os.path.exists(output):
                    os.remove(output)
        tic = time.time()
        printed = [self.vargface(argv, capture=step.capture) for argv in commands]
        result = step.result(printed) if step.result else None
        self.state["steps"][step.name] = {"seconds": time.time() - tic, "result": result}
        self._save_state()
        return result


def write_json(path, text):
    """Check that ``text`` is JSON and write it atomically to ``path``; returns the parsed value."""
    from vargface.atomic import atomic_path

    try:
        value = json.loads(text)
    except ValueError as error:
        raise VargfaceError(f"{path}: the command printed no JSON ({error})") from None
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
    return value
