"""A real Flower deployment on 127.0.0.1 for the tests: one SuperLink, SuperNodes, `flwr run`. No tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from fedsqueeze.flower import FlowerSettings
from fedsqueeze.flower.deploy import child_env, flower_exe, write_app, write_connection

TESTS = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pgid_alive(pgid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(d.name))
    return pids


class Stack:
    """SuperLink + SuperNodes, each in its own process group, killed (group-wide) in ``close``."""

    def __init__(
        self,
        root: Path,
        n: int,
        hang: dict[int, Path] | None = None,
        *,
        node_env: dict[int, dict[str, str]] | None = None,
        link_env: dict[str, str] | None = None,
    ) -> None:
        self.root, self.procs, self.port = root, {}, free_port()
        self.env = child_env({"PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                              "FLWR_HOME": str(root / "flwr-home"),
                              "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"})  # fmt: skip
        link = [flower_exe("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port)]
        self.start("link", [*link, "--disable-runtime-dependency-installation"], link_env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the SuperLink accepts connections (~2 s on 2 cores)
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.2)
        self.node_extra: dict[int, dict[str, str]] = {}
        for p in range(n):
            extra = {"FSQ_TEST_HANG_MARKER": str(hang[p])} if hang and p in hang else {}
            extra.update((node_env or {}).get(p, {}))
            self.node_extra[p] = extra
            self.start_node(p)

    def start_node(self, p: int) -> None:
        """(Re)start the SuperNode of partition ``p`` (state dir ``root/state<p>``, a fresh port)."""
        self.start(f"node{p}", [flower_exe("flower-supernode"), "--insecure",
                                "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
                                "--node-config", f'partition-id={p} state-dir="{self.root / f"state{p}"}"'],
                   self.node_extra.get(p))  # fmt: skip

    def start(self, name: str, cmd: list[str], extra: dict[str, str] | None = None) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115  (a restart appends)
        self.procs[name] = subprocess.Popen(
            cmd,
            env={**self.env, **(extra or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str, *, hard: bool = False) -> None:
        """Stop ``name``'s process group: SIGTERM, then SIGKILL after 3 s (``hard``: SIGKILL at once)."""
        proc = self.procs[name]
        for sig in (signal.SIGKILL,) if hard else (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 3
            while pgid_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not pgid_alive(proc.pid):
                break
        proc.wait(timeout=5)

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        left = {name: pgid_alive(p.pid) for name, p in self.procs.items()}
        assert not any(left.values()), f"processes left behind: {left}"

    def flwr_run(
        self, settings: FlowerSettings, timeout: float, client_app: str | None = None
    ) -> subprocess.CompletedProcess:
        """``flwr run`` of ``settings`` to the end; ``client_app``: ``module:attr`` of another ClientApp."""
        return subprocess.run(
            self.flwr_command(settings, client_app), env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def flwr_command(self, settings: FlowerSettings, client_app: str | None = None) -> list[str]:
        app = write_app(self.root / "app", settings)
        if client_app is not None:  # the FAB's shim imports that ClientApp instead of fedsqueeze's
            mod, _, attr = client_app.partition(":")
            shim = app / "fedsqueeze_flower_app.py"
            text = shim.read_text().replace("clientapp = _client.app", f"clientapp = _hostile.{attr}")
            shim.write_text(f"import {mod} as _hostile\n" + text)
        write_connection(self.root / "flwr-home", "t", f"127.0.0.1:{self.port}", insecure=True)
        return [flower_exe("flwr"), "run", str(app), "t", "--stream"]


def sent_log(root: Path, p: int) -> list[dict]:
    path = root / f"state{p}" / "sent.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
