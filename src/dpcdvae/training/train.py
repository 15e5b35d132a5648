"""``dpcdvae train``: the training entry point (typed, importable; the CLI is a thin wrapper)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dpcdvae.config import apply_overrides, check_config_values, load_config
from dpcdvae.jsonio import dumps_strict

__all__ = ["train", "TrainResult"]


@dataclass
class TrainResult:
    out_dir: str
    epochs: int
    global_step: int
    minutes: float
    stopped_by: str
    crystals_per_s: float
    crystals_per_s_second_half: float
    peak_gpu_mem_gib: float | None
    last_train_loss: float | None
    last_val_loss: float | None
    best_val_loss: float | None
    model_path: str
    num_parameters: int
    world_size: int = 1
    budget_minutes: float | None = None       # the run's whole budget (train.max_minutes)
    trained_minutes_total: float | None = None  # over every invocation of the run (--resume)
    budget_done: bool = True                   # False: stopped by train.segment_minutes; --resume continues
    divergence_rollbacks: int = 0              # roll-backs of the divergence guard (training/guard.py), whole run
    ema_model_paths: list | None = None        # model_ema.pt (all weights averaged), model_ema_denoiser.pt
    resume_batch: int | None = None            # stopped inside epoch `epochs`: --resume continues it at this batch
    device_name: str | None = None
    static_step: dict | None = None          # train.static_shapes: buckets, fallbacks, compile failures


def _last_ckpt(out: Path) -> Path:
    return out / "checkpoints" / "last.ckpt"


def _save_weights(out: Path, model, cfg: dict, ema) -> list[str] | None:
    """Write ``model.pt`` (the weights named by ``train.model_weights``) and, when a weight average
    was kept, all three forms: ``model_raw.pt`` (the trained weights), ``model_ema.pt`` (every
    parameter averaged) and ``model_ema_denoiser.pt`` (averaged denoiser, trained encoder and heads)."""
    from dpcdvae.models.checkpoint import save_model
    from dpcdvae.training.schedule import ema_state_dict

    choice = str(cfg["train"].get("model_weights") or "raw")  # raw | ema | ema_denoiser (schema-checked)
    if ema is None or not ema.shadow:
        save_model(out / "model.pt", model, cfg)
        return None
    states = {"raw": None, "ema": ema_state_dict(model, ema, ""), "ema_denoiser": ema_state_dict(model, ema, "denoiser.")}
    paths = []
    for name, state in states.items():
        paths.append(str(save_model(out / f"model_{name}.pt", model, cfg, state_dict=state)))
    save_model(out / "model.pt", model, cfg, state_dict=states[choice])
    return paths


def check_train_config(tcfg: dict) -> None:
    """Reject bad values of the ``train`` keys before any work starts (one line each): types, ranges
    and choices from the schema (:mod:`dpcdvae.config_schema`), then ``0 <= min_lr <= lr``."""
    from dpcdvae.config_schema import validate

    validate({"train": tcfg})
    if tcfg.get("cuda_graphs") and not tcfg.get("static_shapes"):
        raise ValueError("train.cuda_graphs needs train.static_shapes: true (CUDA graphs need fixed shapes)")
    lr, min_lr = tcfg.get("lr"), tcfg.get("min_lr")
    if lr is None or min_lr is None or float(min_lr) > float(lr):
        raise ValueError(f"train.lr and train.min_lr must be numbers with 0 <= min_lr <= lr, got "
                         f"{tcfg.get('lr')!r} and {tcfg.get('min_lr')!r}")


def _resume_config(out: Path, config: str | None, encoder: str | None, overrides: list[str] | None) -> dict:
    """The saved config of the run in ``out`` (plus ``overrides``); refuses an unreadable checkpoint
    or a ``config`` / ``encoder`` that differs from the run's."""
    from dpcdvae.errors import DPCDVAEError
    from dpcdvae.safeload import load_weights_only

    ckpt_path = _last_ckpt(out)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    hint = (f"the run cannot be resumed: restore {ckpt_path.name} from a copy, or start a new run with "
            "another --out")
    obj = load_weights_only(ckpt_path, "checkpoint", hint=hint)
    saved = obj.get("hyper_parameters", {}).get("config") if isinstance(obj, dict) else None
    if not isinstance(saved, dict):
        raise DPCDVAEError(f"--resume: {ckpt_path} is not a dpcdvae training checkpoint; {hint}")
    if config is not None and not _same_config(config, saved.get("name")):
        raise DPCDVAEError(f"--resume: the run in {out} was trained with --config {saved.get('name')}, not "
                           f"{config}; drop --config (a resumed run keeps its config) or choose another --out")
    run_encoder = saved.get("model", {}).get("encoder")
    if encoder is not None and encoder != run_encoder:
        raise DPCDVAEError(f"--resume: the run in {out} uses --encoder {run_encoder}, not {encoder}; drop --encoder "
                           "or choose another --out")
    return apply_overrides(saved, overrides)


def _same_config(a: str, b: str | None) -> bool:
    if b is None or a == b:
        return True  # (a run saved without a name cannot be compared)
    pa, pb = Path(a), Path(b)
    return pa.suffix in (".yaml", ".yml") and pa.is_file() and pb.is_file() and pa.resolve() == pb.resolve()


def train(
    config: str | None = None,
    out: Path | str = "runs/perov_5",
    encoder: str | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    cache_dir: Path | str | None = None,
    devices: int = 1,
    strategy: str = "auto",
    accelerator: str = "auto",
    limit: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train DP-CDVAE.

    Args:
        config: preset name (``perov_5``, ``carbon_24``, ``mp_20``, ``tiny``) or a YAML path
            (None: ``perov_5``, or with ``resume`` the run's own; another one is refused then).
        out: run directory: ``checkpoints/{last,best}.ckpt``, ``logs/`` (CSV), ``config.json``,
            ``model.pt`` (self-contained weights + config) and ``train_summary.json``.
        encoder: ``dime``, ``dime+na``, ``dime+gine`` or ``dime+na+gine`` (overrides the preset).
        overrides: dotted ``key=value`` overrides (``model.latent_dim=128``).
        resume: continue from ``out/checkpoints/last.ckpt`` (its config is used; ``overrides`` still
            apply). The time budget ``train.max_minutes`` counts over all invocations of the run, and
            the schedule continues where it stopped; ``--set train.segment_minutes=M`` stops one
            invocation after M minutes, ``--set train.max_minutes=B`` with a larger B extends the budget
            (the cosine schedule then stretches to the new end). A stop inside an epoch resumes exactly:
            the same epoch continues at the next batch (``TrainResult.resume_batch``) with the same data
            order, global step and random state, and the partial epoch is not validated
            (:class:`~dpcdvae.training.callbacks.TimeBudget`).
        cache_dir: tensor cache (``dpcdvae data prepare``); default ``DPCDVAE_CACHE`` or ~/.cache/dpcdvae.
        devices, strategy, accelerator: passed to Lightning (``--devices 2 --strategy ddp``; docs/MULTIGPU.md).
            Under DDP every rank runs this function (Lightning relaunches the command line); only global
            rank 0 writes ``model.pt`` and ``train_summary.json``; the result's ``crystals_per_s`` counts
            all ranks.
        limit: use only the first ``limit`` training crystals (demos, tests).
        progress: show a progress bar.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    from dpcdvae.models.build import build_model
    from dpcdvae.training.callbacks import EMACallback, Throughput, TimeBudget
    from dpcdvae.training.datamodule import CrystalDataModule
    from dpcdvae.training.lightning import DPCDVAEModule

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit must be an integer >= 1, got {limit!r}")
    if isinstance(devices, int) and devices < 1 and devices != -1:
        raise ValueError(f"--devices must be >= 1 (or -1 for all), got {devices}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder for the run")
    ckpt_path: Path | None = None
    if resume:
        ckpt_path = _last_ckpt(out)
        cfg = _resume_config(out, config, encoder, overrides)
    else:
        if _last_ckpt(out).exists():
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        cfg = load_config(config or "perov_5", overrides, encoder=encoder)
    dataset = cfg.get("data", {}).get("dataset") if isinstance(cfg.get("data"), dict) else None
    if isinstance(dataset, str):  # a custom dataset is registered from its cache record (dpcdvae.data.custom)
        from dpcdvae.data.custom import register_custom

        register_custom(dataset, cache_dir)
    check_config_values(cfg)
    check_train_config(cfg["train"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(dumps_strict(cfg) + "\n")

    if devices != 1 or "ddp" in str(strategy):
        # NVLink multicast (NVLS) can take shared GPUs out of service; keep it off unless the user chose.
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    pl.seed_everything(int(cfg["train"]["seed"]), workers=True, verbose=False)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    dm = CrystalDataModule(cfg, cache_dir, limit=limit)
    dm.load()
    largest = int(dm.train_set.num_atoms.max()) if len(dm.train_set) else 0
    if largest > int(cfg["data"]["max_atoms"]):
        raise ValueError(f"{cfg['data']['dataset']} has cells of {largest} atoms but data.max_atoms is "
                         f"{cfg['data']['max_atoms']}; pass --set data.max_atoms={largest}")
    model = build_model(cfg, dm.scalers)
    tcfg = cfg["train"]
    if tcfg.get("compile") and not tcfg.get("cuda_graphs") and torch.cuda.is_available():  # cuda_graphs compiles the step
        from dpcdvae.training.compile import compile_model

        compile_model(model)
    # a stop inside an epoch is saved there, at the stop batch, and becomes last.ckpt (TimeBudget doc)
    stop_ckpt = out / "checkpoints" / "stop.ckpt"
    budget = TimeBudget(tcfg.get("max_minutes"), tcfg.get("segment_minutes"), stop_checkpoint=stop_ckpt)
    fixed_atoms = None  # train.static_atom_sigmas: one atom bucket for nearly every batch (one compile)
    if tcfg.get("static_shapes") and tcfg.get("static_atom_sigmas") is not None and len(dm.train_set):
        from dpcdvae.data.padding import one_bucket_atoms

        fixed_atoms = one_bucket_atoms(dm.train_set.num_atoms, int(cfg["data"]["batch_size"]),
                                       float(tcfg["static_atom_sigmas"]))
    module = DPCDVAEModule(model, cfg, budget, max_atoms=largest or None, fixed_atoms=fixed_atoms)
    throughput = Throughput()
    # Checkpoints after each validation, or (``train.checkpoint_minutes``) on a wall-clock cadence: a
    # 175 MB checkpoint pair every 5 s costs a fast run several percent of its budget.
    every = tcfg.get("checkpoint_minutes")
    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_loss", mode="min",
                           save_top_k=1, save_last=True,
                           train_time_interval=timedelta(minutes=float(every)) if every else None)
    callbacks = [best, throughput, LearningRateMonitor(logging_interval="epoch")]
    ema = None
    if float(tcfg.get("ema_decay") or 0.0) > 0.0:
        ema = EMACallback(float(tcfg["ema_decay"]), float(tcfg.get("ema_start") or 0.0))
        callbacks.append(ema)
    guard = None
    if tcfg.get("divergence_factor"):
        from dpcdvae.training.guard import DivergenceGuard

        guard = DivergenceGuard(float(tcfg["divergence_factor"]), float(tcfg.get("divergence_lr_scale") or 0.7),
                                ema=ema.ema if ema is not None else None)
        callbacks.append(guard)
    callbacks.append(budget)  # after the weight average: a mid-epoch stop snapshot holds the stop step's average
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=tcfg["precision"] if torch.cuda.is_available() else "32-true",
        max_epochs=int(tcfg["max_epochs"]),
        check_val_every_n_epoch=int(tcfg["check_val_every_n_epoch"]),
        log_every_n_steps=int(tcfg["log_every_n_steps"]),
        logger=CSVLogger(str(out), name="logs"),  # a new version_k per call: resumed runs keep old logs
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=str(out),
    )
    t0 = time.monotonic()
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
    minutes = (time.monotonic() - t0) / 60.0
    # Always leave an exact resumable state. A stop inside an epoch was saved at its stop batch (the state
    # after fit would mark the partial epoch finished); otherwise save now. Under DDP both must run on every
    # rank (Lightning writes on rank 0 and ends with a barrier).
    if budget.stopped_mid_epoch:
        if trainer.is_global_zero:
            os.replace(stop_ckpt, _last_ckpt(out))
        trainer.strategy.barrier("dpcdvae_stop_checkpoint")
    else:
        trainer.save_checkpoint(_last_ckpt(out))
    model_path = out / "model.pt"
    ema_paths: list[str] | None = None
    if trainer.is_global_zero:
        ema_paths = _save_weights(out, model, cfg, ema.ema if ema is not None else None)
    def _metric(name: str) -> float | None:
        v = trainer.callback_metrics.get(name)
        return float(v) if v is not None else None

    budget_done = budget.clock.budget_s is None or budget.clock.elapsed_s() >= budget.clock.budget_s - 1e-6
    if budget.triggered:
        stopped = "time budget" if budget_done else "segment"
    elif trainer.current_epoch >= int(tcfg["max_epochs"]):
        stopped = "max_epochs"
    else:
        stopped = "other"
    tp = throughput.summary()
    result = TrainResult(
        out_dir=str(out), epochs=int(budget.stop["epoch"] if budget.stopped_mid_epoch else trainer.current_epoch),
        global_step=int(trainer.global_step),
        minutes=minutes, stopped_by=stopped,
        # ranks step in lock-step on equal shards, so all ranks together do world_size x rank 0's rate
        crystals_per_s=float(tp["crystals_per_s"]) * trainer.world_size,
        crystals_per_s_second_half=float(tp["crystals_per_s_second_half"]) * trainer.world_size,
        peak_gpu_mem_gib=tp["peak_gpu_mem_gib"], last_train_loss=_metric("train_loss_epoch"),
        last_val_loss=_metric("val_loss"),
        best_val_loss=float(best.best_model_score) if best.best_model_score is not None else None,
        model_path=str(model_path), num_parameters=sum(p.numel() for p in model.parameters()),
        world_size=int(trainer.world_size),
        budget_minutes=float(tcfg["max_minutes"]) if tcfg.get("max_minutes") else None,
        trained_minutes_total=budget.clock.elapsed_s() / 60.0, budget_done=stopped != "segment",
        ema_model_paths=ema_paths, divergence_rollbacks=len(guard.rollbacks) if guard is not None else 0,
        resume_batch=int(budget.stop["batches_done"]) if budget.stopped_mid_epoch else None,
        device_name=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        static_step=module.static_step.summary() if module.static_step is not None else None,
    )
    if trainer.is_global_zero:
        (out / "train_summary.json").write_text(dumps_strict(asdict(result)) + "\n")
    return result
