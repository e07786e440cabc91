"""Self-describing checkpoint folders: the adapter, the resolved config, tokenizer, metrics, curve,
and (for resuming) the optimizer, scheduler, RNG and data position. Written through a temp folder."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import KitError
from ..heads import mark_saved
from ..io import replace_folder

STATE = "trainer_state.pt"
KIT_CONFIG = "kit_config.json"


def save(
    folder,
    model,
    tokenizer,
    cfg,
    state: dict | None = None,
    extra_files: list | None = None,
    optimizer=None,
    scheduler=None,
    scaler=None,
) -> Path:
    """Write a checkpoint folder atomically (temp folder, then rename over the old one)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, model, tokenizer, cfg, state, extra_files, optimizer, scheduler, scaler)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_write_error(exc):
            raise
        raise KitError(
            f"could not save checkpoint {folder}: {getattr(exc, 'strerror', None) or exc}; "
            "the previous checkpoint is unchanged"
        ) from exc
    recover(folder)
    return replace_folder(tmp, folder)


def _is_write_error(exc: Exception) -> bool:
    """A failed write: OSError, or torch's / safetensors' own wrappers of one (a full disk, mostly)."""
    text = str(exc).lower()
    return isinstance(exc, OSError) or any(w in text for w in ("no space", "storagefull", "file write failed"))


def _write(tmp: Path, model, tokenizer, cfg, state, extra_files, optimizer, scheduler, scaler=None) -> None:
    import torch

    model.save_pretrained(tmp, safe_serialization=True)
    if cfg.head == "classifier":
        mark_saved(tmp)  # read by transformers + peft as a sequence-classification adapter
    tokenizer.save_pretrained(tmp)
    (tmp / KIT_CONFIG).write_text(
        json.dumps(
            {
                "base_model": cfg.model,
                "competition": cfg.competition,
                "chat_format": cfg.chat_format,
                "chat_template_kwargs": cfg.chat_template_kwargs,
                "train_config": asdict(cfg),
            },
            indent=2,
        )
    )
    for f in extra_files or []:
        if Path(f).exists():
            shutil.copy(f, tmp / Path(f).name)
    if state is not None:
        torch.save(
            {
                "state": state,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,  # fp16: the loss scale
                "rng": rng_state(),
            },
            tmp / STATE,
        )


def load_state(folder, model, optimizer, scheduler, scaler=None) -> dict | None:
    """Restore adapter weights, optimizer, scheduler, fp16 loss scaler and RNG from `folder`; the saved
    loop state, or None."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / STATE).is_file():
        return None
    saved = torch.load(folder / STATE, weights_only=False)
    set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    return saved["state"]


def recover(folder) -> Path:
    """Put back `.NAME.old` when a kill fell between save()'s two renames (the folder is then missing)."""
    folder = Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and (old / KIT_CONFIG).is_file():
        os.replace(old, folder)
    return folder


def saved_config(folder) -> dict | None:
    """The train config stored in a checkpoint folder (recovered first if a kill interrupted its save)."""
    path = recover(folder) / KIT_CONFIG
    return json.loads(path.read_text())["train_config"] if path.is_file() else None


def rng_state() -> dict:
    import torch

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s: dict) -> None:
    import torch

    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        # a run saved on 2 GPUs may resume on 1 (or the other way): restore the devices both have
        for i, state in enumerate(s["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, i)
