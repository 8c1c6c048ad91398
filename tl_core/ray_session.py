"""Ray as every command uses it: one connection, never waited for without a bound, and SIGTERM still meaning what the
command says it means.

Which Ray: Ray's own rule for ray.init() without an address: $RAY_ADDRESS ("local": a new instance on this machine),
else the record that the last `ray start` on this machine left (ray_current_cluster in Ray's temporary directory,
which follows $RAY_TMPDIR, then $TMPDIR), else a new instance on this machine. ray.init() waits without end at an
address where no Ray answers: it retries the connection every few seconds and takes no SIGTERM (seen: 5 minutes on
the record of a `ray start` that had been killed, until SIGKILL). So check() first makes sure, within CHECK_SECONDS,
that a gRPC server (Ray's GCS, or the Ray Client server of a ray:// address) answers there, and otherwise says in one
line which address, where it came from and what to do. Against a gRPC server that is not Ray's, ray.init() gives up
by itself (20 s, ConnectionError).

ray.init() replaces the process's SIGTERM handler with its own (sys.exit(15)): a command that started Ray would then
end on a scheduler's SIGTERM with status 15, without its resume hint. connect() keeps the command's handler
(jobs/cli.py: SIGTERM is taken as Ctrl-C), also while ray.init() itself runs.
"""
import dataclasses
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import ray

CHECK_SECONDS = 5.0  # to open a connection, then to complete gRPC's handshake: a live cluster answers in milliseconds
# How long a command waits for a joined cluster to grow to what it asks for (its autoscaler asked for it), then gives up.
RESOURCE_WAIT_SECONDS = 600.0


class RayUnreachable(ConnectionError):
    """No Ray answers at the address a command would join (an OSError: exit status 2 in jobs/cli.py)."""


@dataclasses.dataclass(frozen=True)
class RayAddress:
    """The Ray a command joins: address (None: a new instance on this machine; "auto": whichever Ray finds running
    here) and where that came from, for messages."""
    address: str | None
    source: str
    record: Path | None = None  # the `ray start` record it was read from

    @property
    def joins(self) -> bool:
        return self.address not in (None, "auto")


def ray_address() -> RayAddress:
    """The Ray that ray.init() would join, by Ray's rule (above)."""
    from ray._common.utils import get_ray_address_file  # Ray's modules take seconds: imported when Ray is asked about

    given = os.environ.get("RAY_ADDRESS", "").strip()
    if given and given != "auto":
        return RayAddress(None if given == "local" else given, f"RAY_ADDRESS={given}")
    record = Path(get_ray_address_file(None))
    try:
        recorded = record.read_text().strip()
    except FileNotFoundError:
        recorded = ""
    except OSError as error:
        raise RayUnreachable(f"cannot read Ray's record of its cluster on this machine, {record}: {error.strerror}; "
                             "set RAY_ADDRESS to the cluster to join, or RAY_ADDRESS=local to start Ray here") from None
    if recorded:
        return RayAddress(recorded, f"the record {record} that `ray start` left on this machine", record)
    return RayAddress("auto" if given else None, "RAY_ADDRESS=auto" if given else "no address given")


def _host_and_port(address: str) -> tuple[str, int]:
    """Where ray.init() connects for address: a ray:// (Ray Client) address as written, a cluster (GCS) address
    with localhost replaced by this machine's address, as Ray does."""
    if "://" in address:
        parts = urlsplit(address)
        if parts.hostname and parts.port:
            return parts.hostname, parts.port
    else:
        from ray._private.services import canonicalize_bootstrap_address  # as above

        host, _, port = canonicalize_bootstrap_address(address).rpartition(":")
        if host and port.isdigit():
            return host.strip("[]"), int(port)
    raise ValueError("not host:port")


def check(seconds: float = CHECK_SECONDS) -> RayAddress:
    """The Ray a command will join, after making sure it answers (within about 2 x seconds); RayUnreachable if it does
    not. Nothing to check for a new instance on this machine, or once this process is connected."""
    target = ray_address()
    if ray.is_initialized() or not target.joins:
        return target
    if target.record is None:
        advice = "start that cluster, correct RAY_ADDRESS, or set RAY_ADDRESS=local to start a new Ray on this machine"
    else:
        advice = (f"start that cluster again (`ray start --head`); if it is gone, clear its record with `ray stop` "
                  f"(which also ends every Ray process on this machine) or `rm {target.record}`, or set "
                  "RAY_ADDRESS=local to start a new Ray on this machine")
    try:
        host, port = _host_and_port(target.address)
    except ValueError:
        raise RayUnreachable(f"Ray address {target.address!r} ({target.source}) is not host:port or ray://host:port; "
                             f"{advice}") from None
    try:
        socket.create_connection((host, port), timeout=seconds).close()
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
        raise RayUnreachable(f"no Ray answers at {target.address} ({target.source}): connecting to {host}:{port}: "
                             f"{reason.lower()}; {advice}") from None
    if not _answers_grpc(f"{host}:{port}", seconds):
        raise RayUnreachable(f"no Ray answers at {target.address} ({target.source}): {host}:{port} accepts connections "
                             f"but does not answer as Ray within {seconds:g} s; {advice}")
    return target


def _answers_grpc(address: str, seconds: float) -> bool:
    """Whether a gRPC server completes its handshake at address within seconds (Ray's GCS and its Ray Client server
    are gRPC servers; a port that only accepts connections never does)."""
    import grpc  # as Ray's modules: only when an address is checked

    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=seconds)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def connect() -> None:
    """Join the Ray of check() (once per process), or start one on this machine."""
    if ray.is_initialized():
        return
    check()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        ray.init()
    except SystemExit as stop:
        if stop.code == signal.SIGTERM:  # ray.init's own handler: the command was asked to stop while Ray started
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGTERM, handler)


def _fits(bundles: list[dict], nodes: list[dict]) -> bool:
    """Whether every bundle fits a node of its own capacity and the bundles fit the nodes' totals together (the
    check a user makes by eye: one worker's CPUs and GPU on one machine, all workers in the cluster)."""
    totals, needed = sum(map(Counter, nodes), Counter()), sum(map(Counter, bundles), Counter())
    return all(any(all(node.get(name, 0) >= amount for name, amount in bundle.items()) for node in nodes)
               for bundle in bundles) and all(totals[name] >= amount for name, amount in needed.items())


def _describe(bundles: list[dict]) -> str:
    parts = ", ".join(f"{amount:g} {name}" for name, amount in bundles[0].items())
    return f"{len(bundles)} x ({parts})" if len(bundles) > 1 else f"({parts})"


def _capacity() -> list[dict]:
    return [{name: amount for name, amount in node["Resources"].items() if name in ("CPU", "GPU")}
            for node in ray.nodes() if node.get("Alive")]


def _described_nodes(nodes: list[dict], numbered: bool) -> str:
    return "; ".join((f"node {index + 1}: " if numbered else "") + ", ".join(f"{amount:g} {name}" for name, amount in
                                                                               sorted(node.items()))
                     for index, node in enumerate(nodes)) or "no node"


def require(bundles: list[dict], what: str, *, wait_seconds: float | None = None, log=print) -> None:
    """Before `what` asks Ray for bundles of resources ({"CPU": 2, "GPU": 1} per worker), once connected: a Ray that
    this command started on this machine, which cannot grow, is refused at once in one line (what was asked, what it
    has) if they cannot fit it; a joined cluster is asked to grow (its autoscaler: request_resources) and waited for
    at most wait_seconds, with a line every 30 s, then refused the same way. Ray itself would wait without end."""
    wait_seconds = RESOURCE_WAIT_SECONDS if wait_seconds is None else wait_seconds
    bundles = [{name: amount for name, amount in bundle.items() if amount} for bundle in bundles]
    nodes = _capacity()
    if _fits(bundles, nodes):
        return
    if ray_address().address is None:  # a new instance on this machine, with what this machine has
        raise ValueError(f"{what} asks Ray for {_describe(bundles)}, which the Ray this command started on this machine "
                         f"cannot give ({_described_nodes(nodes, numbered=True)}): ask for fewer workers, CPUs or GPUs, or join a "
                         "cluster that has them (RAY_ADDRESS)")
    from ray.autoscaler.sdk import request_resources  # as above

    request_resources(bundles=bundles)
    started = last_said = time.monotonic()
    try:
        while not _fits(bundles, nodes := _capacity()):
            waited = time.monotonic() - started
            if waited >= wait_seconds:
                raise ValueError(f"{what} asks Ray for {_describe(bundles)}; after {waited:.0f} s the cluster still has "
                                 f"only ({_described_nodes(nodes, numbered=False)}): ask for fewer workers, CPUs or GPUs, "
                                 "or check that the cluster can grow to that (max_workers and node types in its cluster.yaml)")
            if time.monotonic() - last_said >= 30:
                log(f"Waiting for the cluster to grow to {_describe(bundles)} for {what} ({waited:.0f} s of at most "
                    f"{wait_seconds:.0f} s)", flush=True)
                last_said = time.monotonic()
            time.sleep(2)
    finally:
        request_resources(bundles=[])  # the request is this command's: the autoscaler may scale down after it
