"""A partition belongs to its node: with a partition binding, a SuperNode's partition id counts only from the
public key (or the node id) the partition is bound to, on first contact or by a partition map; refused claims
land in the row's ``dropped`` with their reason, and the binding survives ``--resume``. Without one, a
restarted node replaces the old id (as before). The facts of flwr 1.41 the binding relies on are pinned
against Flower's own LinkState."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

pytest.importorskip("flwr")

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo

from fedsqueeze.errors import ConfigError
from fedsqueeze.fl.checkpoint import load_checkpoint
from fedsqueeze.flower import FlowerSettings
from fedsqueeze.flower.binding import identity_of, key_fingerprint, parse_partition_map, read_partition_map
from fedsqueeze.flower.job_strategy import _NodeMap
from support.flower import FakeGrid, make_config

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("task_identity"),
]


def new_key() -> tuple[bytes, str]:
    """A SuperNode key: its public key as the SuperLink stores it (PEM) and as its ``.pub`` file (OpenSSH)."""
    pub = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ssh = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return pem, f"{ssh} node@site"


KA, KB, KC = new_key(), new_key(), new_key()


class KeyedGrid(FakeGrid):
    """Authenticated SuperNodes: ``nodes`` maps a node id to (the partition id it claims, its PEM key);
    ``get_nodes`` gives the keys as Flower's ``NodeInfo``. ``plan[r]`` replaces the nodes after round
    ``r - 1`` trained (restarts, a SuperLink that lost its state and re-registered the keys)."""

    def __init__(self, settings, nodes, plan=None, kill_round=None) -> None:
        super().__init__(settings, 0)
        self.plan, self.kill_round = plan or {}, kill_round
        self.set_nodes(nodes)

    def set_nodes(self, nodes) -> None:
        self.nodes = dict(nodes)
        run_config = self.settings.to_run_config()
        self.ctx = {
            n: Context(7, n, {"partition-id": p}, RecordDict(), run_config) for n, (p, _) in nodes.items()
        }

    def get_nodes(self):
        return [NodeInfo(node_id=n, public_key=pem) for n, (_, pem) in self.nodes.items()]

    def send_and_receive(self, msgs, *, timeout=None):
        msgs = list(msgs)
        out = super().send_and_receive(msgs, timeout=timeout)
        train = [m for m in msgs if m.metadata.message_type == "train"]
        r = int(train[0].content.config_records["config"]["server-round"]) if train else None
        if r is not None and r == self.kill_round:
            raise RuntimeError("the ServerApp died")
        if r is not None and r + 1 in self.plan:
            self.set_nodes(self.plan[r + 1])
        return out


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def refusals(row) -> dict[int, str]:
    return {d["node"]: d["reason"] for d in row["dropped"] if "node" in d}


def bound(out) -> dict[str, str]:
    return load_checkpoint(out)["flower"]["partition_keys"]


FIRST = {100: (0, KA[0]), 101: (1, KB[0]), 102: (2, KC[0])}
SWAPPED = {200: (1, KA[0]), 201: (0, KB[0]), 102: (2, KC[0])}  # new node ids, same keys, swapped partitions
HONEST = {300: (0, KA[0]), 301: (1, KB[0]), 102: (2, KC[0])}


def test_two_nodes_that_swap_partition_ids_are_refused_and_the_honest_mapping_stays(tmp_path):
    from fedsqueeze.flower.server_app import run_rounds

    settings = FlowerSettings(make_config(n=3, k=3, rounds=3), round_timeout=5, bind_partitions=True)
    grid = KeyedGrid(settings, FIRST, plan={2: SWAPPED, 3: HONEST})
    run_rounds(grid, settings, tmp_path / "out")
    r1, r2, r3 = rows(tmp_path / "out")
    fa, fb, fc = (key_fingerprint(k[0]) for k in (KA, KB, KC))
    assert r1["kept"] == [0, 1, 2] and not refusals(r1)
    # Round 2: each swapped claim names the key the partition belongs to; the third node trains on.
    assert refusals(r2) == {
        200: f"claim refused: node 200 (key {fa}) claims partition 1, which belongs to key {fb}",
        201: f"claim refused: node 201 (key {fb}) claims partition 0, which belongs to key {fa}",
    }
    assert {(d["client"], d["reason"]) for d in r2["dropped"] if "node" not in d} == {
        (0, "no SuperNode serves this partition"),
        (1, "no SuperNode serves this partition"),
    }
    assert r2["kept"] == [2]
    # Round 3: the same keys, back under their own partitions (with new node ids), keep them.
    assert r3["kept"] == [0, 1, 2] and not refusals(r3)
    assert bound(tmp_path / "out") == {"0": fa, "1": fb, "2": fc}


def test_the_binding_survives_resume_even_without_the_flag(tmp_path):
    from fedsqueeze.flower.server_app import run_rounds

    cfg = make_config(n=3, k=3, rounds=2)
    first = FlowerSettings(cfg, round_timeout=5, bind_partitions=True)
    with pytest.raises(RuntimeError, match="died"):
        run_rounds(KeyedGrid(first, FIRST, kill_round=2), first, tmp_path / "out")
    # A new ServerApp, the flag forgotten, the two nodes back with swapped partition ids.
    again = FlowerSettings(cfg, round_timeout=5, resume=True)
    run_rounds(KeyedGrid(again, SWAPPED), again, tmp_path / "out")
    r1, r2 = rows(tmp_path / "out")
    assert r1["kept"] == [0, 1, 2]
    assert sorted(refusals(r2)) == [200, 201] and r2["kept"] == [2]


def answer_queries(nodes, digest):
    """A grid that only answers ``query`` messages: node id -> (claimed partition, PEM key or b"")."""

    class QueryGrid:
        def get_node_ids(self):
            return list(nodes)

        def get_nodes(self):
            return [NodeInfo(node_id=n, public_key=pem) for n, (_, pem) in nodes.items()]

        def send_and_receive(self, msgs, *, timeout=None):
            info = {
                n: ConfigRecord({"partition-id": p, "digest": digest, "durable": True})
                for n, (p, _) in nodes.items()
            }
            return [Message(RecordDict({"node": info[m.metadata.dst_node_id]}), reply_to=m) for m in msgs]

    return QueryGrid()


def node_map(settings):
    from fedsqueeze.flower.job_strategy import binding_of

    return _NodeMap(settings.digest, settings.config.data.num_clients, binding_of(settings))


def test_a_partition_map_admits_only_its_identities_each_to_its_own_partition():
    mapping = json.dumps({KA[1]: 0, "102": 2, key_fingerprint(KB[0]): 1})  # .pub text, node id, fingerprint
    settings = FlowerSettings(make_config(n=3), partition_map=mapping)
    nodes = node_map(settings)
    grid = answer_queries({100: (0, KA[0]), 101: (2, KB[0]), 102: (2, b""), 103: (1, KC[0])}, settings.digest)
    assert sorted(nodes.refresh(grid, 5)) == [0, 2]
    assert nodes.by_partition == {0: 100, 2: 102}
    fb, fc = key_fingerprint(KB[0]), key_fingerprint(KC[0])
    assert {d["node"]: (d["client"], d["reason"]) for d in nodes.take_refused()} == {
        101: (2, f"claim refused: node 101 (key {fb}) claims partition 2; partition-map gives it 1"),
        103: (1, f"claim refused: node 103 (key {fc}) claims partition 1 and is not in partition-map"),
    }
    assert nodes.take_refused() == []
    assert nodes.refresh(grid, 5) == []  # refused nodes are not asked again while they stay online


def test_first_contact_binding_needs_a_public_key_and_one_partition_per_key():
    settings = FlowerSettings(make_config(n=3), bind_partitions=True)
    nodes = node_map(settings)
    grid = answer_queries({100: (0, KA[0]), 101: (1, KA[0]), 102: (2, b"")}, settings.digest)
    assert nodes.refresh(grid, 5) == [0]
    reasons = {d["node"]: d["reason"] for d in nodes.take_refused()}
    assert "its key holds partition 0" in reasons[101]
    assert (
        reasons[102]
        == "claim refused: node 102 has no public key: binding partitions needs SuperNode authentication"
    )


def test_without_a_binding_a_restarted_node_replaces_the_old_id():
    settings = FlowerSettings(make_config(n=2))
    nodes = node_map(settings)
    assert sorted(nodes.refresh(answer_queries({100: (0, KA[0]), 101: (1, KB[0])}, settings.digest), 5)) == [
        0,
        1,
    ]
    # another key claims partition 0 under a new node id: it takes the partition over (today's behaviour)
    assert nodes.refresh(
        answer_queries({100: (0, KA[0]), 101: (1, KB[0]), 102: (0, KC[0])}, settings.digest), 5
    ) == [0]
    assert nodes.by_partition == {0: 102, 1: 101} and nodes.take_refused() == []


def test_a_node_refused_then_offline_is_asked_again_when_it_returns():
    settings = FlowerSettings(make_config(n=2), bind_partitions=True)
    nodes = node_map(settings)
    nodes.refresh(answer_queries({100: (0, KA[0]), 101: (0, KB[0])}, settings.digest), 5)
    assert [d["node"] for d in nodes.take_refused()] == [101]
    nodes.refresh(answer_queries({100: (0, KA[0])}, settings.digest), 5)  # 101 went offline
    assert nodes.refresh(answer_queries({100: (0, KA[0]), 101: (1, KB[0])}, settings.digest), 5) == [1]


def test_partition_map_settings_round_trip_and_refuse_bad_maps_in_one_line(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({KA[1]: 0, KB[0].decode(): 1, "node:7": 2}))
    text = read_partition_map(str(path))
    assert json.loads(text) == {key_fingerprint(KA[0]): 0, key_fingerprint(KB[0]): 1, "node:7": 2}
    settings = FlowerSettings(make_config(n=3), bind_partitions=True, partition_map=text)
    assert FlowerSettings.from_run_config(settings.to_run_config()) == settings
    assert identity_of(KA[1]) == key_fingerprint(KA[0])  # the .pub file's key is the registered PEM key
    bad = {
        "{": "partition-map is not valid JSON",
        "[0]": "partition-map must be a JSON object",
        json.dumps({"not a key": 0}): "is no OpenSSH or PEM public key",
        json.dumps({KA[1]: 3}): "not a partition (one of 0..2)",
        json.dumps({KA[1]: 0, "5": 0}): "gives partition 0 to both",
    }
    for value, msg in bad.items():
        with pytest.raises(ConfigError, match=re.escape(msg)) as err:
            dataclasses.replace(settings, partition_map=value)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="bind-partitions must be true or false"):
        FlowerSettings.from_run_config({**settings.to_run_config(), "bind-partitions": "maybe"})
    with pytest.raises(ConfigError, match="--partition-map"):
        read_partition_map(str(tmp_path / "missing.json"))
    assert parse_partition_map("") == {}


def test_flower_keeps_an_authenticated_nodes_id_and_shows_its_key_to_the_serverapp():
    """What the binding relies on in flwr 1.41: a SuperNode registered with its public key (``flwr supernode
    register``) gets its node id back each time it activates with that key, Fleet API self-registration is
    refused under ``--enable-supernode-auth``, and the LinkState's ``NodeInfo`` (what ``grid.get_nodes()``
    returns) carries the registered key."""
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
    from flwr.proto.fleet_pb2 import ActivateNodeRequest, RegisterNodeFleetRequest
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.error import FlowerError
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager
    from flwr.superlink.servicer.fleet import fleet_handlers

    state = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()
    node = state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, KA[0], HEARTBEAT_DEFAULT_INTERVAL)
    activate = ActivateNodeRequest(public_key=KA[0], heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL)
    assert fleet_handlers.activate_node(activate, state).node_id == node
    state.deactivate_node(node)  # the SuperNode stops, then starts again with the same key
    assert fleet_handlers.activate_node(activate, state).node_id == node
    assert state.get_node_info(node_ids=[node])[0].public_key == KA[0]
    with pytest.raises(FlowerError):
        fleet_handlers.register_node(RegisterNodeFleetRequest(public_key=KB[0]), state, True)
