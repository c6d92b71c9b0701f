"""Scale-out: rollout backends, sharding, weight sync, a sandbox pool and a DDP helper.

`local` (the default) plays a step's shards in turn in this process and never imports ray; `ray`
(`pip install 'tirl[ray]'`) plays them on rollout-worker actors. Results depend on the shard count
(`rollout.shards`), never on where shards run. Ray is imported only by `ray_backend.py`, and only
when a ray backend is built; vLLM and CUDA only by `vllm_nccl.py` (`weight_sync: nccl`), when used.
"""

from tirl.distributed.config import DistributedConfig, require_ray
from tirl.distributed.shards import Shard, cut_shards, merge_results, shard_seed

__all__ = ["DistributedConfig", "require_ray", "Shard", "cut_shards", "merge_results", "shard_seed"]
