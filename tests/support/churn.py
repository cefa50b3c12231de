"""Flower under churn: fedsqueeze's Flower job on a real loopback deployment (one SuperLink, N SuperNodes,
each a real process group) while a seeded chaos schedule SIGKILLs and restarts SuperNodes mid-round and
SIGKILLs the ServerApp once; the job then finishes with ``--resume``. Afterwards the same job runs in-process
(:class:`ReplayGrid`) with exactly the drops the deployment recorded, and the two final adapters are
compared. Used by ``tests/churn_main.py`` (the benchmark) and ``tests/test_flower_churn.py``. No tests.

What the replay must reproduce, per round and sampled client whose reply the server did not use:

* ``absent``: the server had no SuperNode for the partition (``no SuperNode serves this partition``): no
  message, no downlink charged;
* ``trained``: the node trained and saved its error-feedback state of that round (a reply logged in its
  ``sent.jsonl``, or an ``ef-*-r<round>.pt`` version seen in its state dir), but the reply never counted
  (the node was killed before it arrived, or it came after the round timeout): the replay trains the client
  and discards the reply, so the client's residual advances as it did on the real node;
* ``lost``: anything else (killed before it trained, a message to a dead node id): no reply.

Every dropped client is resynced densely the next time it is sampled, in both runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsqueeze.config import RunConfig
from fedsqueeze.config.loading import load_config
from fedsqueeze.flower import FlowerSettings
from fedsqueeze.seeding import sample_clients

from .deployment import Stack, pgid_alive
from .flower import FakeGrid

NO_NODE = "no SuperNode serves this partition"
_EF_FILE = re.compile(r"^ef-.*-p(\d+)-r(-?\d+)\.pt$")
# smoke preset, sized for churn: enough partitions for N nodes, a compressed downlink (drops force resyncs)
DEFAULT_SET = ("downlink.name=topk", "downlink.options.density=0.2", "fl.downlink_window=3")


@dataclasses.dataclass(frozen=True)
class Kill:
    """SIGKILL the SuperNode of ``partition`` ``delay_s`` after round ``round`` started; restart it right away
    (``restart = "immediately"``) or when the next round starts (``"next round"``)."""

    round: int
    partition: int
    delay_s: float
    restart: str
    sampled: bool  # the partition is among the round's sampled clients


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The seeded chaos schedule: node kills, and one ServerApp SIGKILL ``server_delay_s`` into round
    ``server_round``."""

    kills: tuple[Kill, ...]
    server_round: int
    server_delay_s: float


def churn_config(nodes: int, rounds: int, clients: int, overrides: Sequence[str] = DEFAULT_SET) -> RunConfig:
    """The ``smoke`` preset with ``nodes`` partitions, ``clients`` per round and ``rounds`` rounds."""
    sets = [f"data.num_clients={nodes}", f"fl.clients_per_round={clients}", f"fl.rounds={rounds}"]
    return load_config("smoke", [*sets, *overrides])


def make_schedule(seed: int, cfg: RunConfig) -> Schedule:
    """From round 2 on, each round kills one of its sampled clients (probability 0.8) and one random node
    (0.4), 0.5 to 4 s after the round started; each victim restarts at once or at the next round's start.
    The ServerApp dies 1 to 3 s into a round of the middle third."""
    rng = random.Random(seed)
    n, k, rounds = cfg.data.num_clients, cfg.fl.clients_per_round, cfg.fl.rounds
    kills = []
    for r in range(2, rounds + 1):
        sampled = sample_clients(cfg.fl.seed, r, n, k)
        victims = []
        if rng.random() < 0.8:
            victims.append(rng.choice(sampled))
        if rng.random() < 0.4:
            victims.append(rng.choice([p for p in range(n) if p not in victims]))
        for p in victims:
            restart = rng.choice(["immediately", "next round"]) if r < rounds else "immediately"
            kills.append(Kill(r, p, round(rng.uniform(0.5, 4.0), 2), restart, p in sampled))
    lo = max(2, rounds // 3 + 1)
    server_round = rng.randint(lo, max(lo, rounds - rounds // 3))
    return Schedule(tuple(kills), server_round, round(rng.uniform(1.0, 3.0), 2))


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes (empty if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    return out


def _kind(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = b" ".join(cmd).decode(errors="replace")
    for kind in ("flwr-clientapp", "flwr-serverapp", "flower-supernode", "flower-superlink", "superexec"):
        if kind in text:
            return kind
    return Path(cmd[1].decode(errors="replace")).name if len(cmd) > 1 else "?"


class MemoryProbe:
    """Samples every process of the stack's groups: per node, the peak of the group's summed RSS and the
    peak VmHWM of each process kind (the SuperNode, its SuperExec, the ClientApp processes it spawns)."""

    def __init__(self) -> None:
        self.group_peak: dict[str, int] = {}
        self.hwm: dict[str, dict[str, int]] = {}
        self.clientapps: dict[str, set[int]] = {}

    def sample(self, stack: Stack) -> None:
        for name, proc in list(stack.procs.items()):
            total = 0
            extra = _link_pids(stack) if name == "link" else []
            for pid in [*pgid_alive(proc.pid), *extra]:
                st = _status(pid)
                if not st:
                    continue
                kind = _kind(pid)
                total += st.get("VmRSS", 0)
                per = self.hwm.setdefault(name, {})
                per[kind] = max(per.get(kind, 0), st.get("VmHWM", 0))
                if kind == "flwr-clientapp":
                    self.clientapps.setdefault(name, set()).add(pid)
            self.group_peak[name] = max(self.group_peak.get(name, 0), total)

    def report(self) -> dict[str, Any]:
        nodes = sorted((n for n in self.group_peak if n.startswith("node")), key=lambda n: int(n[4:]))
        per_node = {
            n: {
                "group_peak_rss_bytes": self.group_peak[n],
                "hwm_bytes": self.hwm.get(n, {}),
                "clientapp_processes_seen": len(self.clientapps.get(n, ())),
            }
            for n in nodes
        }
        peaks = [per_node[n]["group_peak_rss_bytes"] for n in nodes]

        def kind_max(kind: str) -> int:
            return max((self.hwm.get(n, {}).get(kind, 0) for n in nodes), default=0)

        return {
            "per_node": per_node,
            "node_group_peak_rss_bytes": {"median": int(statistics.median(peaks)), "max": max(peaks)},
            "supernode_hwm_bytes_max": kind_max("flower-supernode"),
            "superexec_hwm_bytes_max": kind_max("superexec"),
            "clientapp_hwm_bytes_max": kind_max("flwr-clientapp"),
            "superlink_group": {
                "peak_rss_bytes": self.group_peak.get("link", 0),
                "hwm_bytes": self.hwm.get("link", {}),
            },
        }


def _rows(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # being written
            break
    return rows


def _logfile(path: Path) -> Any:
    return open(path, "wb")


def _flwr_run(stack: Stack, settings: FlowerSettings, log: Path) -> subprocess.Popen:
    """``flwr run`` of the job (``settings.resume`` for the restart), its output into ``log``."""
    return subprocess.Popen(
        stack.flwr_command(settings), env=stack.env, stdout=_logfile(log), stderr=subprocess.STDOUT
    )


def _link_pids(stack: Stack) -> list[int]:
    """The SuperLink's SuperExec and the ServerApp processes it runs (their own process groups): the
    processes whose command line names the SuperLink's address."""
    needle = f"127.0.0.1:{stack.port}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmd and b"--runtime-api-address" in cmd and _status(int(d.name)):
                pids.append(int(d.name))
    return pids


def _serverapp_pids(stack: Stack) -> list[int]:
    return [pid for pid in _link_pids(stack) if _kind(pid) == "flwr-serverapp"]


def _scan_ef(root: Path, n: int, seen: dict[tuple[int, int], float]) -> None:
    """Record when each node's error-feedback version (partition, round) first appeared in its state dir."""
    now = time.monotonic()
    for p in range(n):
        d = root / f"state{p}"
        if d.is_dir():
            for f in d.iterdir():
                m = _EF_FILE.match(f.name)
                if m:
                    seen.setdefault((int(m.group(1)), int(m.group(2))), now)


def run_deployment(
    root: Path,
    cfg: RunConfig,
    schedule: Schedule,
    *,
    round_timeout: float,
    deadline_s: float,
    poll_s: float = 0.25,
    log: Any = print,
) -> dict[str, Any]:
    """Run the job on a fresh stack under ``schedule``; the ServerApp is killed once and the job finished
    with ``--resume``. Returns what happened (the kills as executed, the state versions seen, memory, times);
    the job's outputs are in ``root/out``. Every process of the stack is gone when this returns."""
    out, n = root / "out", cfg.data.num_clients
    settings = FlowerSettings(cfg, round_timeout=round_timeout, out_dir=str(out))
    pending = sorted(schedule.kills, key=lambda k: (k.round, k.delay_s))
    restarts: list[tuple[int, int, float]] = []  # (partition, restart when rows == this, at time)
    done_kills: list[dict[str, Any]] = []
    ef_seen: dict[tuple[int, int], float] = {}
    probe = MemoryProbe()
    started_at: dict[int, float] = {}  # round -> when the deployment saw it start (its previous row)
    t0 = time.monotonic()
    stack = Stack(root, n)
    server_kill: dict[str, Any] = {}
    cli: subprocess.Popen | None = None
    try:
        t_up = time.monotonic()
        cli = _flwr_run(stack, settings, root / "flwr-run-1.log")
        resumed = False
        last_rows = -1
        while True:
            now = time.monotonic()
            if now - t0 > deadline_s:
                raise TimeoutError(f"the job did not finish within {deadline_s:g} s ({len(_rows(out))} rows)")
            rows = len(_rows(out))
            if rows != last_rows:
                started_at.setdefault(rows + 1, now)
                last_rows = rows
            cur = rows + 1  # the round in progress (as far as the rows tell)
            # node kills due now (a kill of a round already over runs in the current one, noted as late)
            while pending and (
                pending[0].round < cur
                or (
                    pending[0].round == cur
                    and cur > 1
                    and cur in started_at
                    and now - started_at[cur] >= pending[0].delay_s
                )
            ):
                k = pending.pop(0)
                name = f"node{k.partition}"
                alive = bool(pgid_alive(stack.procs[name].pid))
                if alive:
                    stack.kill(name, hard=True)
                _scan_ef(root, n, ef_seen)
                rec = {
                    **dataclasses.asdict(k),
                    "executed_round": cur,
                    "was_alive": alive,
                    "at_s": round(now - t_up, 2),
                    "ef_saved_this_round": (k.partition, cur) in ef_seen,
                }
                done_kills.append(rec)
                log(
                    f"[churn] round {cur}: killed node {k.partition} "
                    f"({'sampled' if k.sampled else 'not sampled'}), restart {k.restart}"
                )
                if k.restart == "immediately":
                    stack.start_node(k.partition)
                else:
                    restarts.append((k.partition, cur, now))
            for item in [x for x in restarts if rows >= x[1]]:
                restarts.remove(item)
                if not pgid_alive(stack.procs[f"node{item[0]}"].pid):
                    stack.start_node(item[0])
                    log(f"[churn] round {cur}: restarted node {item[0]}")
            # the ServerApp kill
            if (
                not server_kill
                and cur == schedule.server_round
                and cur in started_at
                and now - started_at[cur] >= schedule.server_delay_s
            ):
                pids = _serverapp_pids(stack)
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                server_kill = {"round": cur, "at_s": round(now - t_up, 2), "pids": pids, "rows_before": rows}
                log(f"[churn] round {cur}: killed the ServerApp {pids}")
                time.sleep(2.0)
                if cli.poll() is None:  # `flwr run --stream` may wait on a run whose ServerApp is gone
                    cli.kill()
                cli.wait()
                server_kill["rows_after"] = len(_rows(out))
                settings = dataclasses.replace(settings, resume=True)
                cli = _flwr_run(stack, settings, root / "flwr-run-2.log")
                resumed = True
                started_at = {r: t for r, t in started_at.items() if r < cur}
                last_rows = -1
                continue
            probe.sample(stack)
            _scan_ef(root, n, ef_seen)
            if (out / "summary.json").is_file():
                break
            if cli.poll() is not None and not (out / "summary.json").is_file():
                if resumed or server_kill:
                    raise RuntimeError(
                        f"`flwr run` ended (code {cli.returncode}) without summary.json; see {root}"
                    )
                raise RuntimeError(f"`flwr run` ended early (code {cli.returncode}); see {root}")
            time.sleep(poll_s)
        wall = time.monotonic() - t_up
        try:
            cli.wait(timeout=30)
        except subprocess.TimeoutExpired:
            cli.kill()
            cli.wait()
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
            cli.wait()
        stack.close()  # asserts that no process of the stack is left
    _scan_ef(root, n, ef_seen)
    return {
        "kills": done_kills,
        "server_kill": server_kill,
        "ef_seen": ef_seen,
        "memory": probe.report(),
        "wall_s": wall,
    }


def trained_rounds(root: Path, n: int, ef_seen: dict[tuple[int, int], float]) -> set[tuple[int, int]]:
    """(partition, round) pairs for which a node saved its error-feedback state that later rounds build on:
    its ``sent.jsonl`` rows (logged after the state was saved) and the versions seen in its state dir, less
    those a later round's version appeared before (a late ClientApp of a dropped round that finished after
    the node's next round had loaded an older version: no later round used it)."""
    done = set(ef_seen)
    for p in range(n):
        path = root / f"state{p}" / "sent.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines():
                done.add((p, int(json.loads(line)["server-round"])))
    superseded = {
        (p, r)
        for (p, r), t in ef_seen.items()
        if any(q == p and r2 > r and t2 < t for (q, r2), t2 in ef_seen.items())
    }
    return done - superseded


def replay_script(
    rows: list[dict[str, Any]], trained: set[tuple[int, int]]
) -> dict[int, dict[str, list[int]]]:
    """Per round, the sampled clients the replay must treat as ``absent``, ``trained`` or ``lost``."""
    script = {}
    for row in rows:
        r = int(row["round"])
        s: dict[str, list[int]] = {"absent": [], "trained": [], "lost": []}
        for d in row["dropped"]:
            c = int(d["client"])
            if c in row["replied"]:
                continue  # screened after it arrived: the replay's reply is screened the same way
            kind = "absent" if d["reason"] == NO_NODE else "trained" if (c, r) in trained else "lost"
            s[kind].append(c)
        script[r] = s
    return script


class ReplayGrid(FakeGrid):
    """The fake grid, driven by a :func:`replay_script`: per round, ``absent`` partitions have no node, the
    ``lost`` ones get their message but never reply, the ``trained`` ones train and their reply is lost."""

    def __init__(
        self, settings: FlowerSettings, n: int, state_dir: Path, script: dict[int, dict[str, list[int]]]
    ):
        super().__init__(settings, n, state_dir)
        self.script, self.round = script, 1  # the round being configured (set by :func:`replay`)

    def _of(self, kind: str) -> set[int]:
        return set(self.script.get(self.round, {}).get(kind, ()))

    def get_node_ids(self):
        absent = self._of("absent")
        return [nid for nid in self.ctx if nid - 100 not in absent]

    def send_and_receive(self, msgs, *, timeout=None):
        msgs = list(msgs)
        train = [m for m in msgs if m.metadata.message_type == "train"]
        if not train:
            return super().send_and_receive(msgs, timeout=timeout)
        r = int(train[0].content.config_records["config"]["server-round"])
        if r != self.round:
            raise AssertionError(f"replay: train messages of round {r} while round {self.round} was expected")
        self.down = self._of("lost")
        out = list(super().send_and_receive(msgs, timeout=timeout))
        discard = self._of("trained")
        self.down = set()
        return [m for m in out if m.metadata.src_node_id - 100 not in discard]


def replay(settings: FlowerSettings, n: int, root: Path, script: dict[int, dict[str, list[int]]]) -> dict:
    """The job in-process over :class:`ReplayGrid` (fresh node state dirs), outputs in ``root/replay``."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedsqueeze.flower.server_app import run_rounds

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0  # flwr 1.41, outside an app
    from unittest import mock

    from fedsqueeze.flower.job_strategy import FederationStrategy

    plain = dataclasses.replace(settings, resume=False, out_dir="")
    grid = ReplayGrid(plain, n, root / "replay-nodes", script)
    configure = FederationStrategy.configure_train

    def configure_train(self: FederationStrategy, server_round: int, *args: Any) -> Any:
        grid.round = server_round  # before the node map's refresh asks for the nodes (a round whose
        return configure(self, server_round, *args)  # sampled partitions are all absent sends nothing)

    with mock.patch.object(FederationStrategy, "configure_train", configure_train):
        return run_rounds(grid, plain, root / "replay")


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Final adapters (every tensor, bitwise) and metrics rows (without timings; drops by client, as the
    reasons' wording differs between a real node and the replay) of two outputs."""
    import torch
    from safetensors.torch import load_file

    from support.loop import strip_times

    fa, fb = load_file(str(a / "final_params.safetensors")), load_file(str(b / "final_params.safetensors"))
    final_equal = fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)

    def norm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "dropped": sorted(int(d["client"]) for d in r["dropped"])} for r in strip_times(rows)]

    ra, rb = norm(_rows(a)), norm(_rows(b))
    diff = [r["round"] for r, s in zip(ra, rb, strict=False) if r != s]
    return {"final_equal": final_equal, "rows_equal": ra == rb and not diff, "rows_differ_in_rounds": diff}


def run_churn(
    root: Path,
    *,
    nodes: int = 20,
    rounds: int = 10,
    seed: int = 0,
    clients: int = 6,
    round_timeout: float = 45.0,
    overrides: Sequence[str] = DEFAULT_SET,
    deadline_s: float = 1800.0,
    log: Any = print,
    replay_only: bool = False,
) -> dict[str, Any]:
    """Deployment under the seeded chaos schedule (its record in ``root/deployment.json``), then the replay;
    returns the report (also written to ``root/churn.json``). ``replay_only``: replay the deployment already
    in ``root`` again."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = churn_config(nodes, rounds, clients, overrides)
    schedule = make_schedule(seed, cfg)
    record = root / "deployment.json"
    if replay_only:  # the deployment of an earlier call, from its record
        dep = json.loads(record.read_text())
        dep["ef_seen"] = {(p, r): t for p, r, t in dep["ef_seen"]}
    else:
        dep = run_deployment(root, cfg, schedule, round_timeout=round_timeout, deadline_s=deadline_s, log=log)
        saved = {**dep, "ef_seen": [[p, r, t] for (p, r), t in sorted(dep["ef_seen"].items())]}
        record.write_text(json.dumps(saved, indent=1) + "\n")
    settings = FlowerSettings(cfg, round_timeout=round_timeout, out_dir=str(root / "out"))
    rows = _rows(root / "out")
    trained = trained_rounds(root, nodes, dep["ef_seen"])
    script = replay_script(rows, trained)
    log("[churn] replaying in-process with the recorded drops")
    t = time.monotonic()
    replay(settings, nodes, root, script)
    replay_s = time.monotonic() - t
    cmp = compare(root / "out", root / "replay")
    per_round = [float(r["wall_s"]) for r in rows]
    missing = []  # sampled clients neither used nor dropped with a reason
    for r in rows:
        reasons = {int(d["client"]) for d in r["dropped"] if d.get("reason")}
        missing += [(r["round"], c) for c in r["clients"] if c not in r["kept"] and c not in reasons]
    report = {
        "nodes": nodes,
        "rounds": rounds,
        "seed": seed,
        "clients_per_round": clients,
        "round_timeout_s": round_timeout,
        "config_overrides": ["preset smoke", *list(overrides)],
        "kills": [
            {
                "node": k["partition"],
                "round": k["executed_round"],
                "scheduled_round": k["round"],
                "delay_s": k["delay_s"],
                "sampled": k["sampled"],
                "restart": k["restart"],
                "was_alive": k["was_alive"],
                "trained_before_kill": k["ef_saved_this_round"],
            }
            for k in dep["kills"]
        ],
        "serverapp_kill_round": dep["server_kill"].get("round"),
        "serverapp_kill": dep["server_kill"],
        "resumed": bool(dep["server_kill"]) and len(rows) == rounds,
        "drops": [
            {"round": r["round"], "sampled": r["clients"], "kept": r["kept"], "dropped": r["dropped"]}
            for r in rows
        ],
        "drops_without_reason": missing,
        "replay_script": {str(r): s for r, s in script.items()},
        "time_per_round_s": per_round,
        "time_per_round_summary_s": {
            "median": statistics.median(per_round),
            "mean": statistics.fmean(per_round),
            "max": max(per_round),
        },
        "deployment_wall_s": dep["wall_s"],
        "replay_wall_s": replay_s,
        "memory": dep["memory"],
        "final_equal_to_replay": cmp["final_equal"],
        "rows_equal_to_replay": cmp["rows_equal"],
        "rows_differ_in_rounds": cmp["rows_differ_in_rounds"],
    }
    (root / "churn.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
