"""Two processes meet through :class:`~mmfuse.cache.TorchPeers` and process 1 misses the second meeting (it sleeps
past the timeout): what process 0 does then, without any encoder or cache around it. Started by
``test_cache_peers.py`` with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` and ``MMFUSE_PEER_TIMEOUT``.

Process 0 prints the :class:`~mmfuse.cache.PeerError` on stderr and exits with status 5 while process 1 still
sleeps, as a script ending on the error would; process 1 then finds process 0 gone and exits too.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    import torch.distributed as dist

    from mmfuse.cache import PeerError, TorchPeers

    dist.init_process_group("gloo")
    peers = TorchPeers(dist.get_rank(), dist.get_world_size())
    peers.meet("request", "the test's request", "the first meeting")
    if peers.rank == 1:
        time.sleep(3 * peers.timeout)
    try:
        peers.meet("request", "the test's request", "the second meeting")
    except PeerError as e:
        print(f"PeerError: {e}", file=sys.stderr, flush=True)
        return 5
    return 0


if __name__ == "__main__":
    sys.exit(main())
