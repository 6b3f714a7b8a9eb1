"""One resumable training checkpoint per run, in safetensors (no pickle): model weights,
optimizer state, and a JSON ``meta`` string (step, config, optimizer param groups)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(
    path: str | Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    meta: dict,
    moments_dtype: torch.dtype = torch.float32,
) -> None:
    """Write ``modules`` and ``optimizer`` to ``path`` atomically (temp file + rename).

    ``moments_dtype``: storage dtype of floating optimizer state (bfloat16 halves a checkpoint
    that is committed to git; it is cast back to the parameters' dtype on load).
    """
    tensors = {}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"model.{name}.{k}"] = v.detach().contiguous()
    state = optimizer.state_dict()
    for idx, st in state["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            if t.is_floating_point() and t.dim() > 0:
                t = t.to(moments_dtype)
            tensors[f"optim.{idx}.{k}"] = t.detach().contiguous()
    meta = {**meta, "param_groups": state["param_groups"]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    tmp.replace(path)


def load_checkpoint(
    path: str | Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None, optional: tuple[str, ...] = ()
) -> dict:
    """Restore ``modules`` (and ``optimizer``) from ``path``; returns the ``meta`` dict with
    ``"missing"``: the names in ``optional`` the file holds no weights for (left untouched)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    tensors = load_file(str(path))
    meta["missing"] = []
    for name, module in modules.items():
        prefix = f"model.{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sd and name in optional:
            meta["missing"].append(name)
            continue
        if not sd:
            raise ValueError(f"checkpoint {path} holds no weights for {name!r}")
        module.load_state_dict(sd)
    if optimizer is not None:
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                state.setdefault(int(idx), {})[key] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta
