"""Policy and proxy configuration files a path names must be regular files.

``open(2)`` on a FIFO blocks until a writer appears: a rules file, a Cedar policy file or a proxy
configuration path that is a named pipe would hang the server's start-up, its hot reload (on the
call path, under the reload lock) or ``securemcp policy check`` forever. Each attempt runs in a
thread with a deadline; a stuck thread is released by opening the FIFO's other end.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import request

from securemcp.policy.cedar import CedarPolicy
from securemcp.policy.rules import RulesPolicy

DEADLINE = 5.0


def finishes(path: Path, action: Callable[[], Any]) -> BaseException | None:
    """Run ``action``; fail the test if it blocks on the FIFO at ``path``. Returns its error."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
            outcome.append(None)
        except BaseException as exc:  # reported to the test
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(DEADLINE)
    if worker.is_alive():
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # release the blocked reader
        os.close(fd)
        worker.join(DEADLINE)
        pytest.fail(f"reading {path} blocked on a FIFO")
    return outcome[0]


@pytest.mark.parametrize(
    "load",
    [RulesPolicy.from_file, CedarPolicy.from_file],
    ids=["rules", "cedar"],
)
def test_a_fifo_policy_file_is_refused_at_start_up(tmp_path: Path, load: Any) -> None:
    fifo = tmp_path / "policy"
    os.mkfifo(fifo)
    error = finishes(fifo, lambda: load(fifo))
    assert isinstance(error, OSError)
    assert "not a regular file" in str(error)


def test_a_policy_file_replaced_by_a_fifo_keeps_the_previous_policy(tmp_path: Path) -> None:
    file = tmp_path / "policy.cedar"
    file.write_text('permit(principal, action, resource == Tool::"read");')
    policy = CedarPolicy.from_file(file)
    file.unlink()
    os.mkfifo(file)
    assert finishes(file, policy.reload) is None
    assert policy.evaluate(request("read")).allowed  # the previous policy stays in force


def test_policy_check_and_proxy_config_refuse_a_fifo(tmp_path: Path, capsys: Any) -> None:
    from securemcp.cli import main
    from securemcp.proxy.config import ProxyConfigError, load_config

    fifo = tmp_path / "policy.toml"
    os.mkfifo(fifo)
    codes: list[int] = []
    assert finishes(fifo, lambda: codes.append(main(["policy", "check", str(fifo)]))) is None
    assert codes == [2]
    assert "not a regular file" in capsys.readouterr().err
    error = finishes(fifo, lambda: load_config(fifo))
    assert isinstance(error, ProxyConfigError)
