"""Processes that fill one feature cache together (``accelerate launch --num_processes N``): who they are and how
they meet.

:meth:`FeatureCache.across(peers) <mmfuse.cache.FeatureCache.across>` splits the inputs no shard holds yet among the
processes (each content key belongs to one process, by its hash), each process encodes and writes its own, and all
of them meet after every round of one shard per process (:meth:`Peers.meet`) before reading the complete cache.
At each meeting every process says which request it is at (a digest of the encoder's cache identity and the
request's content keys): processes that asked for different features (another split, encoder or cache setting) stop
at once with a :class:`PeerError` naming each one's request, instead of waiting for the timeout.

:class:`TorchPeers` meets over ``torch.distributed`` (the process group ``accelerate launch`` or ``torchrun`` set
up): on a CPU-side gloo group of its own, so it works under NCCL too, whose every wait ends after ``timeout``
seconds. A process that dies is noticed by the others at once (its sockets close); one that hangs, after the
timeout. Either way the others stop with a :class:`PeerError` that says which meeting failed, instead of waiting
forever. The gloo groups made here are destroyed when the process exits (:func:`_end_groups`): a group left with
a timed-out send would otherwise abort the process at exit. The cache layer does not import accelerate
(``docs/architecture.md``): the engine, which does, says the rank and the process count.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import zlib
from typing import Any

DEFAULT_TIMEOUT_S = 600.0
"""Seconds a process waits for the others at one meeting: one round is one shard (``shard_examples`` inputs) per
process, ~25 s of EfficientNet-Lite0 images on a 2-core CPU, so ten minutes means a peer is gone or stuck."""

TIMEOUT_ENV = "MMFUSE_PEER_TIMEOUT"
"""Environment variable that overrides :data:`DEFAULT_TIMEOUT_S` (seconds)."""


class PeerError(RuntimeError):
    """Another process of the run died or did not reach a meeting in time, or the processes asked for different
    features; this process stops instead of hanging."""


def peer_timeout() -> float:
    """The wait at one meeting: ``$MMFUSE_PEER_TIMEOUT`` seconds, else :data:`DEFAULT_TIMEOUT_S`.

    Raises:
        ValueError: the variable is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds; set it to e.g. 600, or unset it")
    return value


class Peers:
    """The processes of one run that share a cache folder: this one's ``rank`` among ``world``.

    A subclass implements the meetings (:meth:`gather`, which :meth:`meet` and the feature cache use, and
    :meth:`wait`, :meth:`most`); every process must call them in the same order.

    Raises:
        ValueError: a rank outside ``0 .. world - 1``.
    """

    def __init__(self, rank: int, world: int) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of {world} processes: the rank must be in 0..{world - 1}")
        self.rank = rank
        self.world = world

    def owns(self, key: str) -> bool:
        """Whether this process encodes the input of content key ``key``: by a checksum of the key, so every process
        agrees without talking, and any subset of keys (what a half-filled cache lacks) splits about evenly."""
        return zlib.crc32(key.encode("utf-8")) % self.world == self.rank

    def wait(self, what: str) -> None:
        """Returns once every process has called ``wait`` (the ``what``: for the error message).

        Raises:
            PeerError: a process died, or did not come within the timeout.
        """
        raise NotImplementedError

    def most(self, n: int, what: str) -> int:
        """The largest ``n`` any process passes (a meeting too).

        Raises:
            PeerError: as :meth:`wait`.
        """
        raise NotImplementedError

    def gather(self, item: Any, what: str) -> list[Any]:
        """Every process's ``item`` (small and picklable), in rank order: a meeting too.

        Raises:
            PeerError: as :meth:`wait`.
        """
        raise NotImplementedError

    def meet(self, request: str, about: str, what: str, item: Any = None) -> list[Any]:
        """A meeting (:meth:`gather`) at which each process also says which cache request it is at: ``request``, a
        short digest of it (the encoder's cache identity and the request's content keys), and ``about``, the same
        in words; returns every process's ``item``, in rank order.

        Raises:
            PeerError: as :meth:`wait`; or, at once, the processes are not at the same request (a process asked for
                another split, encoder or cache setting than the others): the message names each process's.
        """
        said = self.gather((request, about, item), what)
        if any(r != request for r, _, _ in said):
            ranks: dict[tuple[str, str], list[int]] = {}
            for rank, (r, a, _) in enumerate(said):
                ranks.setdefault((r, a), []).append(rank)
            each = "; ".join(
                f"process{'es' if len(rs) > 1 else ''} {', '.join(map(str, rs))}: {a}" for (_, a), rs in ranks.items()
            )
            raise PeerError(
                f"process {self.rank} of {self.world}: the processes asked the feature cache for different features "
                f"at {what} ({each}). Every process must make the same feature requests in the same order: start "
                f"them all with the same command, config and overrides (a script of its own that calls "
                f"FeatureCache.get under accelerate launch must make the same calls, with the same examples, in "
                f"every process). The shards written so far are kept in the cache"
            )
        return [i for _, _, i in said]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world={self.world})"


_GROUPS: dict[tuple[int, float], Any] = {}


def _end_groups() -> None:
    """Destroys the gloo groups :class:`TorchPeers` made, when the process exits (registered with ``atexit`` at
    the first one), before the interpreter tears down what they hold.

    A group whose meeting timed out keeps the send it could not finish. Left to the interpreter's own teardown,
    gloo then ended the process with ``terminate called without an active exception`` (SIGABRT, exit status
    134) after our :class:`PeerError` was said, in about half the runs while the late peer still lived (a minimal
    two-process script: 2 runs of 4; its test in ``test_cache_peers``, four tries a run: both runs failed; two slow
    peers tests failed so in CI). Destroyed here first: 22 of 22 runs of that script and the 20 tries of 5 runs of
    its test ended with their own status. The process group the caller made (``accelerate launch``'s) is theirs
    to destroy, and is left alone."""
    import torch.distributed as dist

    while _GROUPS:
        _, group = _GROUPS.popitem()
        with contextlib.suppress(Exception):  # the process is ending: a group already gone is no news
            dist.destroy_process_group(group)


class TorchPeers(Peers):
    """:class:`Peers` over the initialised ``torch.distributed`` process group, meeting on a gloo group of their
    own whose waits end after ``timeout`` seconds (default :func:`peer_timeout`).

    Making one is itself collective (the gloo group is created by every process): make it at the same point of
    the program in every process.

    Raises:
        ValueError: ``torch.distributed`` is not initialised, or its world is not ``world``.
    """

    def __init__(self, rank: int, world: int, *, timeout: float | None = None) -> None:
        import torch.distributed as dist

        super().__init__(rank, world)
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                f"{world} processes share the feature cache, but torch.distributed is not initialised; start them "
                "with accelerate launch (or torchrun)"
            )
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise ValueError(
                f"process {rank} of {world} by the caller is process {dist.get_rank()} of {dist.get_world_size()} "
                "in torch.distributed"
            )
        self.timeout = peer_timeout() if timeout is None else float(timeout)
        key = (id(dist.group.WORLD), self.timeout)  # a group per process group (a test may make several)
        if key not in _GROUPS:
            if not _GROUPS:
                atexit.register(_end_groups)
            _GROUPS[key] = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=self.timeout))
        self._group = _GROUPS[key]

    def wait(self, what: str) -> None:
        import torch.distributed as dist

        try:
            dist.monitored_barrier(
                group=self._group, timeout=datetime.timedelta(seconds=self.timeout), wait_all_ranks=True
            )
        except RuntimeError as e:
            raise self._error(what, e) from e

    def most(self, n: int, what: str) -> int:
        import torch
        import torch.distributed as dist

        value = torch.tensor([n], dtype=torch.long)
        try:
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._group)
        except RuntimeError as e:
            raise self._error(what, e) from e
        return int(value)

    def gather(self, item: Any, what: str) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(out, item, group=self._group)
        except RuntimeError as e:
            raise self._error(what, e) from e
        return out

    def _error(self, what: str, error: RuntimeError) -> PeerError:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return PeerError(
            f"process {self.rank} of {self.world}: another process died or did not reach {what} within "
            f"{self.timeout:g} s ({first[:300]}); see that process's output for why. The shards written so far are "
            f"kept in the cache, so a rerun encodes only the rest; a slow but healthy run can wait longer with "
            f"{TIMEOUT_ENV}=<seconds>"
        )
