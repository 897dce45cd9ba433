"""A real Redis Cluster for distributed tests: `primaries * (1 + replicas)` private redis-server
processes on 127.0.0.1, joined by `redis-cli --cluster create`, in a temp folder of their own.

A test can move slots (`reshard`, or `start_reshard` and `finish_reshard` to run load
meanwhile), promote a replica (`failover`) or SIGKILL a node and wait for its replica to take
over (`kill`, `wait_for_failover_of`); `settle` waits out a change made by hand. Who is primary,
replica or owner of a slot is read from the nodes' live `CLUSTER NODES`, never assumed from
start-up: every such change rewrites it. Each wait ends only when every live node agrees, since
the nodes learn of a change by gossip, one after another.

A node needs its port and port + 10000 (its cluster bus), so ports are below 55536."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import free_port

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
SLOTS = 16384
BUS_PORT_OFFSET = 10000
PORT_MAX = 65535 - BUS_PORT_OFFSET  # the bus port must exist too
START_ATTEMPTS = 3  # a free port can be taken before the node binds it
START_S_MAX = 30.0  # one node answering PING
CREATE_S_MAX = 60.0  # `redis-cli --cluster create`
SETTLE_S_MAX = 60.0  # every node agreeing after a change
FAILOVER_S_MAX = 60.0
MANUAL_FAILOVER_RETRY_S = 6.0  # Redis gives up a manual failover after 5 s
RESHARD_S_MAX = 120.0
CLI_S_MAX = 10.0  # one redis-cli call
STOP_S_MAX = 10.0
POLL_S = 0.05
COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # redis-cli --cluster colours its output even into a file


@dataclass(eq=False)
class ClusterNode:
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    node_id: str = ""
    alive: bool = True


@dataclass(frozen=True)
class _Entry:
    """One line of CLUSTER NODES."""

    node_id: str
    flags: frozenset[str]
    master_id: str | None  # None for a primary
    slots: tuple[int, ...]


def cli(node: ClusterNode, *args: str) -> str:
    """redis-cli against one node (add "-c" to follow redirections), its output without the
    final newline. An error reply comes back as text ("ERR ...": redis-cli exits 0 on it); an
    unreachable node raises instead."""
    command = [REDIS_CLI, "-p", str(node.port), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CLI_S_MAX)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stdout}{done.stderr}")
    return done.stdout.removesuffix("\n")


def _parse_nodes(text: str) -> dict[str, _Entry]:
    entries = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        slots: list[int] = []
        for token in fields[8:]:
            if token.startswith("["):  # a slot being migrated or imported: not owned yet
                continue
            first, _, last = token.partition("-")
            slots.extend(range(int(first), int(last or first) + 1))
        master = None if fields[3] == "-" else fields[3]
        entries[fields[0]] = _Entry(
            fields[0], frozenset(fields[2].split(",")), master, tuple(slots)
        )
    return entries


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port(taken: set[int]) -> int:
    """A free port whose bus port is free too, clear of the other nodes' ports and buses."""
    while True:
        port = free_port()
        if port > PORT_MAX:
            continue
        clash = {port, port + BUS_PORT_OFFSET} & taken
        if not clash and _bindable(port + BUS_PORT_OFFSET):
            taken.update({port, port + BUS_PORT_OFFSET})
            return port


def _until(unmet: Callable[[], str | None], timeout_s: float, what: str) -> None:
    """Polls `unmet` (None once the condition holds, else why not) until it holds; raises with
    the last reason after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reason = unmet()
        except (RuntimeError, subprocess.TimeoutExpired) as error:  # a node busy or gone
            reason = str(error)
        if reason is None:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout_s} s: {reason}")
        time.sleep(POLL_S)


@dataclass
class RedisCluster:
    nodes: list[ClusterNode]
    folder: Path  # the nodes' cluster config files and logs, and reshard logs
    _reshards: dict[int, tuple[subprocess.Popen[bytes], Path]] = field(
        default_factory=dict, repr=False
    )

    @property
    def seed_url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def primaries(self) -> list[ClusterNode]:
        """The live nodes the cluster calls primary, slots or not."""
        view = self._view()
        return [n for n in self._live() if view[n.node_id].master_id is None]

    def replicas_of(self, node: ClusterNode) -> list[ClusterNode]:
        view = self._view()
        return [n for n in self._live() if view[n.node_id].master_id == node.node_id]

    def slots_of(self, node: ClusterNode) -> list[int]:
        return list(self._view()[node.node_id].slots)

    def node_for_slot(self, slot: int) -> ClusterNode:
        for entry in self._view().values():
            if slot in entry.slots:
                return self._node(entry.node_id)
        raise LookupError(f"no node serves slot {slot}")

    def failover(self, replica: ClusterNode) -> None:
        """CLUSTER FAILOVER on `replica`, and waits until every live node sees it primary and
        its former primary its replica."""
        former = self._view()[replica.node_id].master_id
        if former is None:
            raise ValueError(f"node {replica.port} is not a replica")

        def unmet() -> str | None:
            for node in self._live():
                entries = _parse_nodes(cli(node, "cluster", "nodes"))
                if entries[replica.node_id].master_id is not None:
                    return f"node {node.port} still sees {replica.port} as a replica"
                if entries[former].master_id != replica.node_id:
                    return f"node {node.port} does not see the former primary as its replica"
            return self._unsettled()

        deadline = time.monotonic() + FAILOVER_S_MAX
        while True:
            if (reply := cli(replica, "cluster", "failover").strip()) != "OK":
                raise RuntimeError(f"CLUSTER FAILOVER on {replica.port}: {reply}")
            try:
                _until(unmet, min(MANUAL_FAILOVER_RETRY_S, deadline - time.monotonic()), "")
                return
            except RuntimeError as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"failover to {replica.port}: {error}") from None

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL: the node dies at once, as a crashed machine would."""
        node.process.kill()
        node.process.wait(timeout=STOP_S_MAX)
        node.alive = False

    def wait_for_failover_of(self, dead: ClusterNode, timeout_s: float = FAILOVER_S_MAX) -> None:
        """Until live primaries serve every slot (so none of `dead`'s former ones) and every
        live node says cluster_state:ok and agrees on who serves what."""
        if dead.alive:
            raise ValueError(f"node {dead.port} is alive")
        _until(self._unsettled, timeout_s, f"no failover of node {dead.port}")

    def start_reshard(
        self, source: ClusterNode, target: ClusterNode, slots: int
    ) -> subprocess.Popen[bytes]:
        """`redis-cli --cluster reshard` in the background, its output in a file (a pipe no one
        reads could stall it); `finish_reshard` waits for it."""
        log = self.folder / f"reshard-{len(self._reshards)}.log"
        command = [REDIS_CLI, "--cluster", "reshard", f"127.0.0.1:{self._live()[0].port}"]
        command += ["--cluster-from", source.node_id, "--cluster-to", target.node_id]
        command += ["--cluster-slots", str(slots), "--cluster-yes"]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self._reshards[process.pid] = (process, log)
        return process

    def finish_reshard(self, process: subprocess.Popen[bytes]) -> None:
        """Waits for a `start_reshard` to end well, then for every node to agree."""
        log = self._reshards[process.pid][1]
        try:
            process.wait(timeout=RESHARD_S_MAX)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_S_MAX)
            output = COLOUR.sub("", log.read_text(errors="replace"))
            raise RuntimeError(f"reshard still running after {RESHARD_S_MAX} s: {output}") from None
        if process.returncode != 0:
            output = COLOUR.sub("", log.read_text(errors="replace"))
            raise RuntimeError(f"reshard failed ({process.returncode}): {output}")
        self.settle()

    def reshard(self, source: ClusterNode, target: ClusterNode, slots: int) -> None:
        self.finish_reshard(self.start_reshard(source, target, slots))

    def settle(self, timeout_s: float = SETTLE_S_MAX) -> None:
        """Until every live node agrees (see `_unsettled`): after a change made by hand, such
        as CLUSTER SETSLOT, which the other nodes learn by gossip."""
        _until(self._unsettled, timeout_s, "the nodes did not agree")

    def _live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive]

    def _node(self, node_id: str) -> ClusterNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def _view(self) -> dict[str, _Entry]:
        """CLUSTER NODES as the first live node sees it."""
        return _parse_nodes(cli(self._live()[0], "cluster", "nodes"))

    def _unsettled(self) -> str | None:
        """Why the cluster is not settled yet, or None: each live node says cluster_state:ok,
        knows every node, and all agree on who serves each slot (a live primary, every slot)
        and on the live nodes' roles; each replica of a live primary has synced with it (one
        that never did refuses to fail over: its data counts as too old)."""
        live = {n.node_id for n in self._live()}
        agreed: tuple[list[str], dict[str, str | None]] | None = None
        for node in self._live():
            info = cli(node, "cluster", "info")
            if "cluster_state:ok" not in info:
                return f"node {node.port} is not ok: {info.splitlines()[0]}"
            entries = _parse_nodes(cli(node, "cluster", "nodes"))
            if set(entries) != {n.node_id for n in self.nodes}:
                return f"node {node.port} knows {len(entries)} of {len(self.nodes)} nodes"
            owners = [""] * SLOTS
            for entry in entries.values():
                for slot in entry.slots:
                    owners[slot] = entry.node_id
            if not set(owners) <= live:
                return f"node {node.port} sees slots unserved or served by a dead node"
            master = entries[node.node_id].master_id
            if master in live and "master_link_status:up" not in cli(node, "info", "replication"):
                return f"replica {node.port} has not synced with its primary"
            roles = {i: entries[i].master_id for i in live}
            if agreed is None:
                agreed = (owners, roles)
            elif agreed != (owners, roles):
                return f"node {node.port} disagrees with node {self._live()[0].port}"
        return None

    def _shape(self, primaries: int, replicas: int) -> str | None:
        """Why the live view is not `primaries` primaries of `replicas` replicas each, or None."""
        masters = self.primaries()
        counts = sorted(len(self.replicas_of(m)) for m in masters)
        if counts != [replicas] * primaries:
            return f"{len(masters)} primaries with {counts} replicas"
        return None


def _start_node(folder: Path, taken: set[int], node_timeout_ms: int) -> ClusterNode:
    for _ in range(START_ATTEMPTS):
        port = _cluster_port(taken)
        command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        command += ["--cluster-enabled", "yes"]
        command += ["--cluster-config-file", str(folder / f"nodes-{port}.conf")]
        command += ["--cluster-node-timeout", str(node_timeout_ms)]
        command += ["--save", "", "--appendonly", "no"]
        # A replica's first sync would otherwise wait 5 s for more replicas to share it.
        command += ["--repl-diskless-sync-delay", "0"]
        log = folder / f"redis-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        node = ClusterNode(port, process)
        deadline = time.monotonic() + START_S_MAX
        while process.poll() is None and time.monotonic() < deadline:
            with suppress(RuntimeError, subprocess.TimeoutExpired):
                if cli(node, "ping").strip() == "PONG":
                    node.node_id = cli(node, "cluster", "myid").strip()
                    return node
            time.sleep(POLL_S)
        process.kill()
        process.wait(timeout=STOP_S_MAX)
    raise RuntimeError(f"redis-server did not start: {log.read_text(errors='replace')}")


@contextmanager
def running_redis_cluster(
    primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000
) -> Iterator[RedisCluster]:
    """A settled cluster (every slot served, every node agreeing); its processes SIGKILLed and
    folder removed afterwards. A short node timeout keeps failovers to seconds."""
    folder = Path(tempfile.mkdtemp(prefix="sk-redis-cluster-"))
    cluster = RedisCluster([], folder)
    taken: set[int] = set()
    try:
        for _ in range(primaries * (1 + replicas)):
            cluster.nodes.append(_start_node(folder, taken, node_timeout_ms))
        command = [REDIS_CLI, "--cluster", "create"]
        command += [f"127.0.0.1:{n.port}" for n in cluster.nodes]
        command += ["--cluster-replicas", str(replicas), "--cluster-yes"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CREATE_S_MAX)
        except subprocess.TimeoutExpired as error:
            partial = error.stdout  # bytes, despite text=True
            text = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
            output = COLOUR.sub("", text or "")
            raise RuntimeError(f"redis-cli --cluster create hung: {output}") from None
        output = COLOUR.sub("", done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {output}")
        _until(
            lambda: cluster._unsettled() or cluster._shape(primaries, replicas),
            SETTLE_S_MAX,
            f"the cluster did not settle (create said: {output})",
        )
        yield cluster
    finally:
        for process, _ in cluster._reshards.values():
            process.kill()
            process.wait(timeout=STOP_S_MAX)
        for node in cluster.nodes:
            node.process.kill()
            node.process.wait(timeout=STOP_S_MAX)
        shutil.rmtree(folder, ignore_errors=True)
