"""Dagster Pipes for TorchX jobs: the launcher runs an AppDef inside a Pipes session whose
messages travel through a file the job and the Dagster process share (a stage folder on
every scheduler we support; docs/torchx.md), read only as whole lines."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dagster import (
    PipesEnvContextInjector,
    PipesFileMessageReader,
    PipesSession,
    open_pipes_session,
)


class WholeLineFileMessageReader(PipesFileMessageReader):
    """`PipesFileMessageReader` that hands on only whole lines. Dagster's tails the file
    with `readline()`, which returns a line the job is still writing as it stands; one
    such half-written message killed its reader thread, and the stage failed as having
    reported nothing."""

    def _reader_thread(self, handler, is_resource_complete) -> None:
        try:
            for line in whole_lines(self._path, is_resource_complete.is_set):
                handler.handle_message(json.loads(line))
        except Exception:
            handler.report_pipes_framework_exception(f"{type(self).__name__} reader thread", sys.exc_info())
            raise


def whole_lines(path: str | Path, should_stop: Callable[[], bool], poll_seconds: float = 0.01) -> Iterator[str]:
    """The lines appended to `path` until `should_stop()`, each only once its newline is
    written (after the stop, a last line without one is still given)."""
    pending = ""
    with open(path, encoding="utf-8") as stream:
        while True:
            chunk = stream.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    yield pending
                    pending = ""
            elif should_stop():
                rest = pending + stream.read()
                yield from (line for line in rest.splitlines(keepends=True) if line.strip())
                return
            else:
                time.sleep(poll_seconds)


def run_with_pipes(launch: Callable, context, build_app: Callable[[dict[str, str]], object],
                   messages: Path) -> tuple[str, PipesSession]:
    """Open a Pipes session reading `messages`, build the AppDef with the session's
    bootstrap environment (`build_app(env)`), run it with `launch(app)`; the job's handle
    and the session (its results and custom messages) once the job has ended."""
    messages.parent.mkdir(parents=True, exist_ok=True)
    with open_pipes_session(context=context, context_injector=PipesEnvContextInjector(),
                            message_reader=WholeLineFileMessageReader(str(messages))) as session:
        handle = launch(build_app(dict(session.get_bootstrap_env_vars())))
    return handle, session
