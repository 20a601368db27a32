"""FSDP2 (``fully_shard``) for ``train.strategy: fsdp``: sharding, and saving and loading the shards of live models.

Each block the recipe names (:meth:`Recipe.blocks`, default: the children of every
``nn.ModuleList``) and then the whole model are sharded along dim 0 over all ranks. Checkpoints keep
the shards as they are: ``<model>_shard_rank<R>.safetensors`` (and ``ema_...``), ``optimizer_rank<R>.pt``
with plain local tensors, and ``fsdp_layout.json`` describing which keys are sharded on which dim, so
they load without pickle and resume exactly with the same world size; :func:`trainhub.training.checkpoint.consolidate`
reads them back as one ordinary state dict (``trainhub export``, or a single process loading them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainhub.training import checkpoint as ckpt



def is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if is_dtensor(t) else t


def shard(model: nn.Module, units: Iterable[nn.Module], device: torch.device, world: int, param_dtype: Optional[torch.dtype]) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def layout(model: nn.Module) -> dict[str, dict[str, Any]]:
    out = {}
    for k, v in model.state_dict().items():
        if is_dtensor(v):
            dims = [p.dim for p in v.placements if hasattr(p, "dim")]
            out[k] = {"dim": dims[0] if dims else None, "shape": list(v.shape)}
        else:
            out[k] = {"dim": None, "shape": list(v.shape)}
    return out


def local_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: local(v).detach().contiguous().cpu() for k, v in state.items()}


def save_shards(directory: Path, rank: int, models: dict[str, nn.Module], emas: dict[str, Any], optimizers: dict[str, torch.optim.Optimizer]) -> None:
    for name, m in models.items():
        save_file(local_state(m.state_dict()), str(directory / f"{name}_shard_rank{rank}.safetensors"))
    for name, ema in emas.items():
        save_file(local_state(ema.state_dict()), str(directory / ckpt.ema_file(name).replace(".safetensors", f"_shard_rank{rank}.safetensors")))
    torch.save({n: _local_optim_state(o.state_dict()) for n, o in optimizers.items()}, directory / f"optimizer_rank{rank}.pt")


def _local_optim_state(sd: dict[str, Any]) -> dict[str, Any]:
    return {"state": {i: {k: local(v).detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in st.items()} for i, st in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def write_layout(directory: Path, models: dict[str, nn.Module], world: int) -> None:
    ckpt.write_json_atomic(directory / ckpt.FSDP_LAYOUT, {"world_size": world, "models": {n: layout(m) for n, m in models.items()}})


@torch.no_grad()
def load_shards(directory: Path, rank: int, models: dict[str, nn.Module], emas: dict[str, Any], optimizers: dict[str, torch.optim.Optimizer]) -> None:
    for name, m in models.items():
        saved = load_file(str(directory / f"{name}_shard_rank{rank}.safetensors"))
        for k, v in m.state_dict().items():
            local(v).copy_(saved[k])
    for name, ema in emas.items():
        ema.load_state_dict(load_file(str(directory / ckpt.ema_file(name).replace(".safetensors", f"_shard_rank{rank}.safetensors"))))
    opt_state = torch.load(directory / f"optimizer_rank{rank}.pt", map_location="cpu", weights_only=True)
    for n, opt in optimizers.items():
        opt.load_state_dict(opt_state[n])
        for group in opt.param_groups:  # state tensors shaped like a sharded parameter become DTensors again
            for p in group["params"]:
                for k, v in opt.state.get(p, {}).items():
                    if is_dtensor(p) and isinstance(v, torch.Tensor) and v.shape == p.to_local().shape and v.dim() > 0:
                        from torch.distributed.tensor import DTensor

                        opt.state[p][k] = DTensor.from_local(v.to(p.device), p.device_mesh, p.placements, run_check=False,
                                                             shape=p.shape, stride=p.stride())
