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


PIPELINE_OVERWRITE = ("start again instead of continuing: remove what earlier runs wrote in OUT (the state, every "
                      "step's outputs, the reports) and nothing else")


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
    """Runs steps in order against a state file ``work/state_name``; used as ``with Pipeline(...) as p:`` (or by a
    bare ``run``), which locks the work folder (``WORK.lock``, `vargface.locks`) so one run at a time writes it.

    ``settings`` (JSON-able) are stored with the state: a work folder holding a run with other settings is
    refused, so a rerun never mixes two configurations. ``what`` names the pipeline in messages (e.g. 'demo').
    ``outputs`` are the files it writes besides its steps' (reports). The state records every output a step was
    started for; ``overwrite`` removes those, the steps' and ``outputs``, and the state, and nothing else: a
    folder that holds no state of this pipeline is never emptied, with or without ``overwrite``."""

    def __init__(self, work, state_name, settings, what, overwrite=False, dry_run=False, hint="", outputs=()):
        self.work, self.settings, self.what, self.dry_run = work, settings, what, dry_run
        self.overwrite, self.outputs = overwrite and not dry_run, list(outputs)
        self.state_path = os.path.join(work, state_name)
        self.hint = hint or "choose another output folder"
        self.state, self.previous, self.lock, self.parser, self.entered = None, None, None, None, False

    def __enter__(self):
        from vargface.locks import OutputLock

        if not self.dry_run:
            self.lock = OutputLock(self.work, what=f"another {self.what} runs in {self.work}").acquire()
        try:
            self.state = self._open()
            if self.previous is not None:  # --overwrite: what the previous run recorded, the reports, its state
                recorded = [os.path.join(self.work, p) for p in self.previous.get("outputs", [])]
                self._remove(recorded + self.outputs + [self.state_path])
                self.overwrite = False  # done: a second `with` continues this run
        except BaseException:
            self.__exit__()
            raise
        self.entered = True
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
        self.lock, self.entered = None, False

    def _open(self):
        """The state to continue (a fresh one under ``overwrite``; the old one is kept in ``previous``). A work
        folder this run may not continue is refused; a dry run says so and shows the commands of a fresh run."""
        work = self.work
        if os.path.exists(work) and not os.path.isdir(work):
            raise VargfaceError(f"{work}: exists and is not a directory")
        fresh = {"settings": self.settings, "steps": {}, "outputs": []}
        state = None
        if os.path.isfile(self.state_path):
            try:
                with open(self.state_path) as f:
                    state = json.load(f)
                if not isinstance(state["steps"], dict):
                    raise ValueError("'steps' is not an object")
                outputs = state.get("outputs")
                state["outputs"] = [p for p in outputs if isinstance(p, str)] if isinstance(outputs, list) else []
            except (OSError, ValueError, KeyError, TypeError) as error:
                if not self.overwrite:
                    return self._refused(f"{self.state_path}: unreadable {self.what} state ({error})", fresh)
                state = {}
        elif os.path.isdir(work) and os.listdir(work):
            from vargface.errors import summarize

            return self._refused(f"{work}: exists and is not a {self.what} output (it holds "
                                 f"{summarize(sorted(os.listdir(work)), sep=', ')})", fresh,
                                 hint="choose another --out (a folder without this state is never emptied, "
                                      "not even with --overwrite)")
        if self.overwrite:
            self.previous = state or {}
            return fresh
        if state is not None and state.get("settings") != self.settings:
            return self._refused(f"{work} holds a {self.what} run with other settings ({self.state_path})", fresh)
        return {**fresh, **state} if state is not None else fresh

    def _refused(self, reason, fresh, hint=None):
        """A work folder this run may not use: an error, or in a dry run a note before the commands of a fresh
        run (what another folder, or --overwrite, would run)."""
        hint = hint or self.hint
        if not self.dry_run:
            raise VargfaceError(f"{reason}; {hint}")
        print(f"(dry run) {reason}: a real run there is refused ({hint}); the commands of a fresh run:", flush=True)
        return fresh

    def _own(self, paths):
        """``paths`` inside the work folder, relative to it (nothing outside it is ever the pipeline's to remove)."""
        inside = (os.path.relpath(os.path.abspath(p), os.path.abspath(self.work)) for p in paths)
        return sorted({p for p in inside if p != "." and not p.startswith(os.pardir)})

    def _remove(self, paths):
        """Remove those of ``paths`` that lie in the work folder."""
        remove_outputs(os.path.join(self.work, p) for p in self._own(paths))

    # -- state -----------------------------------------------------------------------------------------------
    def done(self, name):
        return name in self.state["steps"]

    def result(self, name):
        return self.state["steps"][name]["result"]

    def seconds(self, name):
        return self.state["steps"][name]["seconds"]

    def record(self, outputs):
        """Note in the state that these outputs are the pipeline's (what --overwrite later removes)."""
        known, new = set(self.state["outputs"]), set(self._own(outputs))
        if not new <= known:
            self.state["outputs"] = sorted(known | new)
            self._save_state()

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
        if not self.entered:
            with self:
                return self.run(steps)
        if self.previous is not None:  # --overwrite: these steps' outputs too (states older than the record)
            self._remove([output for step in steps for output in step.outputs])
            self.previous = None
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
            remove_outputs(step.outputs)  # leftovers of an interrupted attempt
        self.record(step.outputs)
        tic = time.time()
        printed = [self.vargface(argv, capture=step.capture) for argv in commands]
        result = step.result(printed) if step.result else None
        self.state["steps"][step.name] = {"seconds": time.time() - tic, "result": result}
        self._save_state()
        return result


def remove_outputs(paths):
    """Remove each file or folder of ``paths`` that exists."""
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


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
