"""Training in several processes under `torchrun`, with DDP over the parameters that train.

One process (`runtime.processes: 1`, the default) changes nothing. With more, the training and
evaluation stages relaunch themselves under `torchrun` (`torch.distributed.run`): on this machine
alone, or as one of `runtime.nodes` machines that meet at node 0's `runtime.rendezvous`.
Evaluation deals the same generation batches one process would make to the ranks in turn and
gathers the predictions back in input order, so they equal one process's. Every process loads the
model and takes an equal slice of each global batch; DDP all-reduces the gradients of the trainable
parameters only: NeFT's deltas, LoRA's adapters, or everything for full FT and the probe. Frozen
base weights have no gradient, so nothing of theirs is communicated.

With `runtime.strategy: fsdp`, FSDP2 shards every weight over the processes instead (what a
full-FT probe of a 7B model needs to fit); rank 0 gathers the full state dict to save, so the
saved files have the one-process format.

Equal to one process: the loss is a mean over the global batch's labelled tokens, but a rank sees
only its slice, and DDP averages gradients over ranks. So each rank scales its slice's mean loss by
world_size x its tokens / the global batch's tokens (one all-reduce; `neft.training.backward_on_batch`),
which makes DDP's average the gradient of the global mean. Validation runs whole on every rank (the same number everywhere);
rank 0 alone writes checkpoints, logs and results.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.fsdp import fully_shard
from torch.distributed.run import get_args_parser
from torch.distributed.run import run as torchrun

from neft.errors import RANK_ERRORS_VARIABLE, UserError

if TYPE_CHECKING:
    from neft.config import RuntimeConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: its rank among `world_size` (1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Ranks:
        """What torchrun set: RANK, WORLD_SIZE and LOCAL_RANK (absent in a plain process)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's contiguous slice of a global batch (the batch size is a multiple of the world size)."""
        if not self.distributed:
            return batch
        return {name: tensor.tensor_split(self.world_size)[self.rank] for name, tensor in batch.items()}

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks, on every rank (one all-reduce; none in one process)."""
        if not self.distributed:
            return values
        totals = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(totals)
        return totals.tolist()


ONE_PROCESS = Ranks()


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """Join the job's process group (gloo on CPU, NCCL on CUDA) for the block; nothing with one
    process, or where the caller already joined one (and will leave it).

    A block that ends normally waits at a barrier first. FSDP2 keeps gloo's worker threads alive
    past `destroy_process_group`, and a worker destroys a finished all-gather's work, dropping its
    Python-owned tensors, just after the rank that waited on it moves on. A rank that went straight
    to interpreter shutdown was now and then aborted there ("terminate called without an active
    exception": the worker's decref waits for the GIL during finalization, as a core dump showed; 2
    of about 190 launches of the FSDP test script under load). The barrier runs after all earlier
    work and takes a round trip to the other ranks: time for the worker to drop what it held. After
    an error there is no barrier: the other ranks may never reach it."""
    if not ranks.distributed or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank, world_size=ranks.world_size)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per process on CUDA (its local rank); the CPU is shared."""
    if device.type != "cuda" or not ranks.distributed:
        return device
    torch.cuda.set_device(ranks.local_rank)
    return torch.device("cuda", ranks.local_rank)


def gather_in_order(local: dict[int, T], ranks: Ranks) -> dict[int, T]:
    """Every rank's {position: item} merged, on every rank (one all_gather of Python objects)."""
    if not ranks.distributed:
        return local
    pieces: list[dict[int, T] | None] = [None] * ranks.world_size
    dist.all_gather_object(pieces, local)
    return {position: item for piece in pieces for position, item in (piece or {}).items()}


def wrap_for_training(model: torch.nn.Module, parameters: list[torch.nn.Parameter], ranks: Ranks, device: torch.device,
                      strategy: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """The module to train and its trainable parameters, for `strategy` with several ranks:

    - ddp: `model` under DDP, which reduces only the parameters that need a gradient;
    - fsdp: FSDP2 (`fully_shard`, one unit per decoder layer, then the root). Every parameter,
      frozen or not, is sharded over the ranks, NeFT's deltas and LoRA's adapters as ordinary
      parameters of their layers (their indices are buffers, which FSDP2 leaves whole), so nothing
      like a flat mask has to match a flat shard. fully_shard replaces parameters with sharded
      ones: the trainable ones are looked up again by name.

    One rank: `model` and `parameters` unchanged."""
    if not ranks.distributed:
        return model, parameters
    if strategy == "ddp":
        device_ids = [device.index] if device.type == "cuda" else None
        # Bucket views: the gradients live in DDP's reduction buckets rather than beside a copy there.
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True), parameters
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    trained = [names[id(parameter)] for parameter in parameters]
    # FSDP2 cannot shard an empty tensor: NeFT's delta of a layer where the mask chose no neuron of a kind.
    empty = {parameter for parameter in model.parameters() if parameter.numel() == 0}
    for layer in [module for module in model.modules() if type(module).__name__.endswith("DecoderLayer")]:
        fully_shard(layer, ignored_params=empty)
    fully_shard(model, ignored_params=empty)
    by_name = dict(model.named_parameters())
    return model, [by_name[name] for name in trained]


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A sharded (FSDP2) model's whole state dict, gathered to rank 0's CPU (empty on the other
    ranks); a collective, so every rank calls it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def relaunched(runtime: RuntimeConfig, module: str, args: list[str], result_file: Path) -> dict[str, Any] | None:
    """For a stage entry point (`python -m module args`): with more than one process in all, in a
    plain process, run the stage under torchrun (`runtime.processes` on this machine, joining the
    other nodes at `runtime.rendezvous`) and return the result rank 0 wrote to `result_file`; on a
    node other than 0, which does not hold it, a note saying so. A user error in the ranks is raised
    here, once, as the ranks left it (neft.errors.report_user_error); a crash raises torchrun's report.
    None where this process should do the work itself."""
    if runtime.processes * runtime.nodes == 1 or Ranks.from_environment().distributed:
        return None
    if runtime.nodes == 1:
        placement = ["--standalone"]
    else:
        # The static rendezvous: global ranks follow node_rank, so rank 0, the one that writes, is on node 0
        # (c10d's would number the nodes in the order they join).
        host, _, port = runtime.rendezvous.rpartition(":")
        placement = [f"--nnodes={runtime.nodes}", f"--node-rank={runtime.node_rank}", f"--master-addr={host}", f"--master-port={port}"]
    torchrun_args = get_args_parser().parse_args([*placement, f"--nproc-per-node={runtime.processes}", "-m", module, *args])
    # torchrun's own entry point, in this process, so that a failure comes back as an exception to sort
    # rather than as torchrun's exit status 1 and report.
    with tempfile.TemporaryDirectory(prefix="neft-rank-errors-") as rank_errors, _environment(RANK_ERRORS_VARIABLE, rank_errors):
        try:
            torchrun(torchrun_args)
        except ChildFailedError:
            messages = sorted({path.read_text() for path in Path(rank_errors).iterdir()})
            if messages:
                raise UserError("; ".join(messages)) from None
            raise
    if runtime.node_rank:
        return {"node_rank": runtime.node_rank, "result": f"written by node 0 to {result_file}"}
    return json.loads(result_file.read_text())


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    os.environ[name] = value
    try:
        yield
    finally:
        del os.environ[name]
