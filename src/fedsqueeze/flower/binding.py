"""A partition belongs to its node: which SuperNode identity may serve which data partition.

A SuperNode tells the server its partition id in its ``query`` reply (:mod:`.client_app`). Without a binding
the server believes it, and the latest node to claim a partition replaces the old one (a restarted node gets
a new node id without SuperNode authentication). With one (:class:`PartitionBinding`), a claim counts only
from the identity the partition belongs to:

* **first contact** (run-config key ``bind-partitions``): the first node key to claim partition ``p`` owns
  it; a later claim of ``p`` from another key, or a claim of a second partition by a key that owns one, is
  refused. The owner's key may come back under any node id (a restarted SuperNode, a SuperLink that lost its
  state) and keeps its partition;
* **a map** (run-config key ``partition-map``, :func:`parse_partition_map`): only the identities it lists
  may serve, each the partition it maps them to.

An identity is the SHA-256 fingerprint of the node's public key, as ``ssh-keygen -lf KEY.pub`` prints it
(``SHA256:<base64>``, :func:`key_fingerprint`), or ``node:<id>`` for a map entry naming a Flower node id.
The server reads each node's public key from ``grid.get_nodes()`` (Flower's ``NodeInfo.public_key``, the PEM
SubjectPublicKeyInfo the SuperLink registered the node with). It is an identity only under SuperNode
authentication (``flower-superlink --enable-supernode-auth``, nodes registered with ``flwr supernode
register`` and started with ``--auth-supernode-private-key``): without it every SuperNode start draws a fresh
key pair. The bound partitions travel in the job's checkpoint (:meth:`PartitionBinding.state_dict`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "KEY_PREFIX",
    "NODE_PREFIX",
    "PartitionBinding",
    "identity_of",
    "key_fingerprint",
    "parse_partition_map",
    "read_partition_map",
]

KEY_PREFIX = "SHA256:"  # a public key's fingerprint, as `ssh-keygen -l` prints it
NODE_PREFIX = "node:"  # a Flower node id (stable per key under SuperNode authentication)


def key_fingerprint(public_key: bytes) -> str:
    """The OpenSSH SHA-256 fingerprint (``SHA256:<base64>``, what ``ssh-keygen -lf KEY.pub`` prints) of a
    node's public key as Flower stores it (PEM SubjectPublicKeyInfo); bytes that are no PEM public key are
    fingerprinted as they are.

    Parameters
    ----------
    public_key
        ``NodeInfo.public_key`` of a SuperNode.

    Returns
    -------
    str
        ``"SHA256:"`` and the unpadded base64 of the SHA-256 of the key's OpenSSH wire blob.
    """
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(public_key)
        line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        blob = base64.b64decode(line.split()[1])
    except (ValueError, TypeError, IndexError):
        blob = public_key  # not a PEM key (e.g. a simulation's random bytes): its bytes are its identity
    return _fingerprint_of_blob(blob)


def _fingerprint_of_blob(blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return KEY_PREFIX + digest


def identity_of(text: str) -> str:
    """The identity a partition-map entry names (:class:`~fedsqueeze.ConfigError` if none).

    Parameters
    ----------
    text
        An OpenSSH public key line (the ``.pub`` file's text, e.g. ``ecdsa-sha2-nistp384 AAAA... node0``), a
        PEM public key, a fingerprint (``SHA256:...``) or a Flower node id (decimal, or ``node:<id>``).

    Returns
    -------
    str
        ``SHA256:<base64>`` or ``node:<id>``.
    """
    text = text.strip()
    if text.startswith(KEY_PREFIX) and len(text) > len(KEY_PREFIX):
        return text
    node = text.removeprefix(NODE_PREFIX)
    if node.isdigit():
        return f"{NODE_PREFIX}{int(node)}"
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_ssh_public_key(" ".join(text.split()[:2]).encode())
        line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"partition-map: {text[:40]!r} is no OpenSSH or PEM public key, SHA256: fingerprint or node id"
        ) from None
    return _fingerprint_of_blob(base64.b64decode(line.split()[1]))


def parse_partition_map(text: str, num_partitions: int | None = None) -> dict[str, int]:
    """A partition map from its JSON text: ``{identity: partition id}`` (:func:`identity_of` for the keys).

    Parameters
    ----------
    text
        A JSON object; ``""`` for no map.
    num_partitions
        The job's ``data.num_clients``: partition ids are ``0..num_partitions-1`` (``None``: any id >= 0).

    Returns
    -------
    dict
        Canonical identity -> partition id.

    Raises
    ------
    ConfigError
        Not a JSON object, a key that names no identity, a partition id out of range, an identity listed
        twice or a partition mapped to two identities.
    """
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"partition-map is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("partition-map must be a JSON object {public key or node id: partition id}")
    out: dict[str, int] = {}
    owner: dict[int, str] = {}
    for key, pid in raw.items():
        ident = identity_of(key)
        if not _is_partition(pid, num_partitions):
            span = "an id >= 0" if num_partitions is None else f"one of 0..{num_partitions - 1}"
            raise ConfigError(f"partition-map: {ident} maps to {pid!r}, not a partition ({span})")
        if ident in out:
            raise ConfigError(f"partition-map lists {ident} twice")
        if pid in owner:
            raise ConfigError(f"partition-map gives partition {pid} to both {owner[pid]} and {ident}")
        out[ident], owner[pid] = pid, ident
    return out


def _is_partition(pid: Any, num_partitions: int | None) -> bool:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        return False
    return num_partitions is None or pid < num_partitions


def read_partition_map(path: str) -> str:
    """The run-config value of a partition-map file (canonical JSON; ``""`` for no path).

    The file is a JSON object ``{identity: partition id}`` (:func:`identity_of`); the returned text maps the
    canonical identities, so the run config holds fingerprints, not whole keys."""
    if not path:
        return ""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--partition-map {path}: {exc.strerror or exc}") from None
    entries = parse_partition_map(text)  # the job's range is checked with its config (FlowerSettings)
    return json.dumps(dict(sorted(entries.items(), key=lambda kv: kv[1])))


def _named(ident: str) -> str:
    return f"key {ident}" if ident.startswith(KEY_PREFIX) else ident.replace(NODE_PREFIX, "node ")


class PartitionBinding:
    """Which identity each partition belongs to, and whether a node's claim of one counts.

    Parameters
    ----------
    first_contact
        Bind each partition to the key of the first node that claims it.
    partition_map
        Identity -> partition id (:func:`parse_partition_map`); when given, it is the binding and
        ``first_contact`` does not matter.

    Attributes
    ----------
    bound
        Partition id -> the identity it belongs to (what the checkpoint keeps).
    """

    def __init__(self, first_contact: bool = False, partition_map: Mapping[str, int] | None = None) -> None:
        self.map = dict(partition_map or {})
        self.first_contact = first_contact and not self.map
        self.bound: dict[int, str] = {p: ident for ident, p in self.map.items()}

    @property
    def enabled(self) -> bool:
        """Whether claims are checked at all (``False``: a restarted node replaces the old id)."""
        return self.first_contact or bool(self.map)

    def admit(self, node: int, public_key: bytes, pid: int) -> str | None:
        """Check (and, on first contact, record) node ``node``'s claim of partition ``pid``.

        Parameters
        ----------
        node
            The Flower node id that claims it.
        public_key
            Its ``NodeInfo.public_key`` (``b""`` when the grid gives none).
        pid
            The partition id it claims (already checked to be one of the job's).

        Returns
        -------
        str or None
            ``None`` when the claim counts, else why it is refused (one line).
        """
        if not self.enabled:
            return None
        fingerprint = key_fingerprint(public_key) if public_key else None
        who = f"node {node}" + (f" (key {fingerprint})" if fingerprint else "")
        if self.map:
            return self._check_map(node, fingerprint, who, pid)
        if fingerprint is None:
            return f"{who} has no public key: binding partitions needs SuperNode authentication"
        return self._check_first_contact(fingerprint, node, who, pid)

    def _check_map(self, node: int, fingerprint: str | None, who: str, pid: int) -> str | None:
        for ident in (fingerprint, f"{NODE_PREFIX}{node}"):
            if ident is not None and ident in self.map:
                mapped = self.map[ident]
                if mapped != pid:
                    return f"{who} claims partition {pid}; partition-map gives it {mapped}"
                return None
        return f"{who} claims partition {pid} and is not in partition-map"

    def _check_first_contact(self, fingerprint: str, node: int, who: str, pid: int) -> str | None:
        owner = self.bound.get(pid)  # a node id when a resumed job's map named one
        if owner is not None and owner not in (fingerprint, f"{NODE_PREFIX}{node}"):
            return f"{who} claims partition {pid}, which belongs to {_named(owner)}"
        held = [p for p, ident in self.bound.items() if ident == fingerprint and p != pid]
        if held:
            return f"{who} claims partition {pid}, but its key holds partition {held[0]}"
        self.bound[pid] = fingerprint
        return None

    # -- checkpoint --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, str]:
        """The bound partitions, ``{str(partition id): identity}``."""
        return {str(p): ident for p, ident in sorted(self.bound.items())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the partitions a checkpoint bound; they stay bound in the resumed job (first contact)
        unless a partition map is given, which then decides alone."""
        if self.map or not state:
            return
        self.bound = {int(p): str(ident) for p, ident in state.items()}
        self.first_contact = True
