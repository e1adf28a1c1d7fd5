"""headcount on torch.distributed: data-parallel scoring and head-parallel (tensor-parallel)
attention, gloo on CPUs and NCCL on GPUs with the same code.

`process` (the process group, `World`) imports nothing else from headcount, so analysis and
importance take a ``world`` without an import cycle; `tensor_parallel` shards a `Decoder`'s
heads and is imported on its own: ``from headcount.distributed.tensor_parallel import shard_heads``.
"""

from headcount.distributed.process import (
    DistributedError,
    World,
    env_world_size,
    init,
    launched,
    shutdown,
)

__all__ = ["DistributedError", "World", "env_world_size", "init", "launched", "shutdown"]
