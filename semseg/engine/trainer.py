"""Iteration-based training as an MMSegmentation 1.x config describes it.

One ``Trainer`` runs on one process or, under ``torchrun``, on many (DDP; rank 0 logs and saves).
Resuming is exact: the checkpoint holds model, optimizer, schedulers, AMP scaler, iteration, the
position in the sample stream and the RNG states, and each sample's augmentation is seeded by its
position in the stream, so a resumed run ends with the same weights as one that was never stopped.
"""

from __future__ import annotations

import contextlib
import pickle
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import cv2
import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from semseg import threads
from semseg.build import build
from semseg.config import Config
from semseg.config_check import check_config
from semseg.data.loader import build_train_stream
from semseg.engine import distributed
from semseg.engine.checkpoint import (
    check_integrity,
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
    write_text_atomic,
)
from semseg.engine.evaluate import build_eval_loader, build_metric, evaluate
from semseg.engine.logging import Progress, RunLogger, memory_mb
from semseg.engine.optim import build_optim_wrapper
from semseg.engine.pretrained import load_pretrained_backbone, pretrained_prefix, pretrained_source
from semseg.engine.schedulers import build_schedulers
from semseg.evaluation import format_table

CHECKPOINT_PATTERN = re.compile(r"iter_(\d+)\.pth$")


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as tensors and plain containers (loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run a block without moving the Python, NumPy and torch generators. A DataLoader draws its base seed
    from torch's generator when it starts; loading data or validating inside this block keeps training's
    random draws (dropout) the same whether or not the run was resumed there."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def apply_env_cfg(env_cfg: dict) -> None:
    """``env_cfg``: ``cudnn_benchmark``, ``mp_cfg`` (``mp_start_method``, ``opencv_num_threads``)."""
    torch.backends.cudnn.benchmark = bool(env_cfg.get("cudnn_benchmark", False))
    mp_cfg = env_cfg.get("mp_cfg") or {}
    if "opencv_num_threads" in mp_cfg:
        cv2.setNumThreads(int(mp_cfg["opencv_num_threads"]))
    method = mp_cfg.get("mp_start_method")
    if method and torch.multiprocessing.get_start_method(allow_none=True) is None:
        torch.multiprocessing.set_start_method(method)


def resume_candidates(work_dir: Path) -> list[Path]:
    """Checkpoints to resume from, newest (highest iteration) first: the work dir's ``iter_N.pth`` files and
    the one ``last_checkpoint`` names. The pointer is written after its checkpoint, so a run killed between
    the two leaves it one checkpoint behind: the iteration in the name decides, not the pointer."""
    found = {path.resolve(): (n, path) for n, path in iter_checkpoints(work_dir)}
    pointer = work_dir / "last_checkpoint"
    if pointer.is_file():
        target = Path(pointer.read_text().strip())
        match = CHECKPOINT_PATTERN.search(target.name)
        if match and target.is_file():
            found.setdefault(target.resolve(), (int(match.group(1)), target))
    return [path for _, path in sorted(found.values(), key=lambda item: item[0], reverse=True)]


def read_training_checkpoint(path: Path) -> dict:
    """A checkpoint :meth:`Trainer.state` wrote, checked whole (zip CRCs) and read with ``weights_only``.

    Raises:
        RuntimeError: the file is truncated, damaged or holds anything but tensors and plain containers.
        KeyError: it is a weights file, not a training checkpoint.
    """
    if path.is_file() and path.stat().st_size == 0:
        raise RuntimeError(f"checkpoint {path} is empty (0 bytes)")
    check_integrity(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message goes on to suggest weights_only=False: the one thing not to do with this file
        named = re.search(r"GLOBAL (\S+)", str(error))
        if named is None:
            raise RuntimeError(f"cannot read checkpoint {path} to resume from: it is not a file torch.save wrote "
                               "(truncated or corrupt?)") from error
        raise RuntimeError(f"checkpoint {path} holds more than tensors and plain containers, so it was not "
                           f"unpickled (a semseg checkpoint never does; it could run code): it names the global "
                           f"{named.group(1)}") from error
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeError(f"cannot read checkpoint {path} to resume from: {first}") from error
    missing = [k for k in ("state_dict", "optimizer", "param_schedulers", "meta", "rng")
               if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise KeyError(f"{path} is not a semseg training checkpoint (it has no {', '.join(missing)}): to start "
                       "from its weights, set load_from to it without resuming")
    return checkpoint


def _loss_terms(names: list[str], values: list[float], extra: str = "") -> str:
    """`` (decode.loss_ce=nan, aux.loss_ce=0.41, ...; non-finite: decode.loss_ce<extra>)``."""
    bad = [name for name, value in zip(names, values, strict=True) if not np.isfinite(value)]
    every = ", ".join(f"{name}={value:.4g}" for name, value in zip(names, values, strict=True))
    return f" ({every}" + (f"; non-finite: {', '.join(bad)}" if bad else "") + f"{extra})"


def iter_checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """The ``iter_N.pth`` files of a work dir as ``(N, path)``, oldest first."""
    return sorted((int(m.group(1)), p) for p in work_dir.glob("iter_*.pth") if (m := CHECKPOINT_PATTERN.search(p.name)))


class Trainer:
    """Train (and validate) the model of ``cfg`` in ``work_dir``.

    Args:
        cfg: the resolved config (``model``, ``train_dataloader``, ``optim_wrapper``, ``param_scheduler``,
            ``train_cfg``, ``default_hooks``, ``randomness``, ``load_from``, ``resume``, ...).
        work_dir: where checkpoints, logs and the dumped config go.
        resume: ``True`` resumes from the newest complete checkpoint in ``work_dir`` (if any): one that
            fails to read or its CRC check is reported and the one before it is used; a path resumes from
            that checkpoint.
        amp: mixed precision (float16 with dynamic loss scaling on GPUs, bfloat16 on CPUs).
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``; default: CUDA when available (under torchrun, the local GPU).

        The speed options below are off by default; off, training is exactly what it was without them.
        channels_last: model weights and input batches in ``torch.channels_last`` memory format (NHWC
            convolutions; faster with bf16/fp16 and on most GPUs; float results differ in rounding).
        fused_optimizer: a fused (CUDA) or foreach (otherwise) optimizer step, unless the config's
            optimizer sets ``fused`` or ``foreach`` (see ``build_optim_wrapper``).
        check_finite_every: 1 (default) checks the loss for NaN/inf every iteration, before the optimizer
            step: every process stops in the iteration where a loss became non-finite, with the weights of
            the one before. This costs one host-device synchronization per iteration on GPUs. With N > 1
            the check runs without synchronizing: the first non-finite iteration is noted on the device,
            and every N iterations (and before each log, validation and checkpoint) all processes look
            at it and stop together; the error names that first iteration. Weights stepped after it are
            never saved.
        compile: ``torch.compile`` the training forward (``True``, or a dict of ``torch.compile``
            keyword arguments such as ``dict(mode='max-autotune')``). The first iteration, which
            compiles, is logged on its own and left out of the iteration time.

    Faults: every checkpoint is written to a temporary file, flushed and renamed, so a kill at any moment
    leaves only complete checkpoints under their names (and a temporary file, removed on resume).
    A checkpoint that cannot be written (a full disk) stops training with an ``OSError`` naming it and the
    previous checkpoint, which is left intact: stopping costs at most the iterations since that checkpoint,
    while training on without checkpoints could lose all of them when the run ends. A non-finite loss
    stops training naming the iteration and the loss terms; weights that are not finite are never saved,
    so the last checkpoint written is one whose losses were finite. With float16 AMP, steps the loss scaler
    skips (inf/NaN gradients) are not faults: each is logged, and their count is in the train log records.
    """

    def __init__(self, cfg: Config, work_dir: str | Path, resume: bool | str | Path = False, amp: bool = False,
                 device: str | None = None, *, channels_last: bool = False, fused_optimizer: bool = False,
                 check_finite_every: int = 1, compile: bool | dict = False):
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        if resume is False and cfg.get("resume"):
            # As in MMSegmentation: `resume=True` in the config resumes from `load_from` when it is set.
            resume = cfg.get("load_from") or True
        self.resume = resume
        self.amp = amp
        # called as on_iteration(iteration, max_iters) after each iteration on rank 0 (a progress display)
        self.on_iteration: Callable[[int, int], None] | None = None
        self.rank, self.world_size, self.device = distributed.init_distributed(
            device, dist_cfg=(cfg.get("env_cfg") or {}).get("dist_cfg"))
        self.is_main = self.rank == 0
        self.logger = RunLogger(self.work_dir, enabled=self.is_main)
        for note in check_config(cfg, training=True, world_size=self.world_size, amp=amp):
            self.logger.info(note)

        apply_env_cfg(cfg.get("env_cfg") or {})
        randomness = cfg.get("randomness") or {}
        seed = randomness.get("seed")
        if seed is None:
            seed = distributed.broadcast_object(int(np.random.SeedSequence().entropy % 2**31))
        self.seed = int(seed)
        seed_everything(self.seed + (self.rank if randomness.get("diff_rank_seed") else 0),
                        randomness.get("deterministic", False))

        train_cfg = cfg.get("train_cfg") or {}
        if train_cfg.get("type", "IterBasedTrainLoop") != "IterBasedTrainLoop":
            raise NotImplementedError(f"train_cfg type {train_cfg.get('type')!r}: only IterBasedTrainLoop is supported")
        self.max_iters = int(train_cfg["max_iters"])
        self.val_interval = int(train_cfg.get("val_interval", self.max_iters))
        hooks = cfg.get("default_hooks") or {}
        checkpoint_hook = hooks.get("checkpoint") or {}
        self.checkpoint_interval = int(checkpoint_hook.get("interval", self.max_iters))
        self.max_keep_ckpts = int(checkpoint_hook.get("max_keep_ckpts", -1))
        self.save_best = checkpoint_hook.get("save_best")
        self.log_interval = int((hooks.get("logger") or {}).get("interval", 50))

        if check_finite_every < 1:
            raise ValueError(f"check_finite_every must be >= 1, got {check_finite_every}")
        if compile is not False and not (compile is True or isinstance(compile, dict)):
            raise TypeError(f"compile must be a bool or a dict of torch.compile arguments, got {compile!r}")
        self.channels_last = channels_last
        self.check_finite_every = check_finite_every
        self.compile = compile
        self.first_iter_time: float | None = None  # seconds, compilation included (set by train())
        self._bad_iter: torch.Tensor | None = None  # check_finite_every > 1: first non-finite iteration, 0: none
        self._bad_values: torch.Tensor | None = None  # and its total loss and loss terms
        self._loss_names: list[str] = []

        self.module = build("segmentor", cfg.model.to_dict()).to(self.device)
        if channels_last:  # before the optimizer and DDP see the parameters
            self.module.to(memory_format=torch.channels_last)
        # what trains: the module, or its DDP wrapper once the weights are loaded, or that compiled
        self.model = self.module

        optim_cfg = cfg.optim_wrapper.to_dict()
        if amp:
            optim_cfg["type"] = "AmpOptimWrapper"
            optim_cfg.setdefault("dtype", "float16" if self.device.type == "cuda" else "bfloat16")
        self.optim_wrapper = build_optim_wrapper(self.module, optim_cfg, fused_optimizer=fused_optimizer)
        scheduler_cfg = cfg.get("param_scheduler") or []
        self.schedulers = build_schedulers(
            scheduler_cfg.to_dict() if hasattr(scheduler_cfg, "to_dict") else scheduler_cfg,
            self.optim_wrapper, self.max_iters)

        self.iter = 0
        self.best_score: float | None = None
        self.best_path: Path | None = None
        self.last_good: Path | None = None
        self.skipped_steps = 0  # float16 AMP: optimizer steps the loss scaler skipped (inf/NaN gradients)
        self._scaler_skips = 0  # the optimizer wrapper's count when last looked at
        self.val_loader = None
        self.last_scores: dict | None = None
        self.dataset_meta: dict | None = None

    # ----------------------------------------------------------------------------------------------- state
    def state(self) -> dict:
        """Everything a resume needs; every process must call it (it gathers each one's RNG states)."""
        return {
            "meta": {"iter": self.iter, "seed": self.seed, "best_score": self.best_score,
                     "best_path": str(self.best_path) if self.best_path else None,
                     "dataset_meta": self.dataset_meta, "amp_skipped_steps": self.skipped_steps},
            "state_dict": self.module.state_dict(),
            "optimizer": self.optim_wrapper.state_dict(),
            "param_schedulers": self.schedulers.state_dict(),
            "rng": distributed.all_gather_object(rng_state()),  # one entry per rank
        }

    def load_state(self, path: Path, checkpoint: dict | None = None) -> None:
        """Continue from a checkpoint :meth:`state` wrote (``checkpoint``: its contents, if already read)."""
        if checkpoint is None:
            checkpoint = read_training_checkpoint(path)
        self.module.load_state_dict(checkpoint["state_dict"])
        self.optim_wrapper.load_state_dict(checkpoint["optimizer"])
        self.schedulers.load_state_dict(checkpoint["param_schedulers"])
        meta = checkpoint["meta"]
        self.iter = int(meta["iter"])
        self.seed = int(meta["seed"])
        self.best_score = meta.get("best_score")
        self.best_path = Path(meta["best_path"]) if meta.get("best_path") else None
        self.skipped_steps = int(meta.get("amp_skipped_steps", 0))
        states = checkpoint["rng"]
        if len(states) != self.world_size:
            self.logger.info(f"resuming on {self.world_size} process(es) from a run on {len(states)}: random "
                             "streams continue from rank 0's, so the run is not bit-identical to one never stopped")
        set_rng_state(states[self.rank] if len(states) == self.world_size else states[0])
        self.last_good = path

    def save(self) -> Path:
        """Write ``iter_N.pth`` atomically, point ``last_checkpoint`` at it, then drop the oldest beyond
        ``max_keep_ckpts`` (only once the new one is complete)."""
        path = self.work_dir / f"iter_{self.iter}.pth"
        state = self._checkpoint_state()
        error = None
        if self.is_main:
            try:
                save_checkpoint(state, path)
            except OSError as e:
                error = self._write_error(path, e)
            else:
                try:
                    write_text_atomic(self.work_dir / "last_checkpoint", str(path.resolve()))
                except OSError as e:  # --resume goes by the names of the checkpoints, not by this pointer
                    self.logger.info(f"warning: {path} is written, but last_checkpoint could not be updated: {e}")
                if self.max_keep_ckpts > 0:
                    for _, old in iter_checkpoints(self.work_dir)[:-self.max_keep_ckpts]:
                        old.unlink(missing_ok=True)
        self._raise_write_error(error)  # every process stops (no barrier left waiting for rank 0)
        self.last_good = path
        return path

    def _checkpoint_state(self) -> dict:
        """:meth:`state`, after checking that the weights are finite: a checkpoint is never written with weights
        spoilt under a finite loss (a diverging run's BatchNorm statistics overflow before its loss does; an
        inf gradient spoils parameters the loss of the same iteration did not see)."""
        tensors = {k: v for k, v in self.module.state_dict().items() if v.is_floating_point()}
        finite = torch.stack([torch.isfinite(v).all() for v in tensors.values()])
        # every process learns of it (buffers may differ between processes), so that none waits in state()
        if distributed.all_reduce_sum((~finite).sum().float()) > 0:
            bad = [k for k, ok in zip(tensors, finite.tolist(), strict=True) if not ok]
            named = f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}" if bad else "on another process"
            kept = f"; the last good checkpoint is {self.last_good}" if self.last_good else ""
            message = (f"weights became non-finite at iteration {self.iter} ({named}) while the loss was still "
                       f"finite (diverging training, or inf/NaN gradients); no checkpoint written, training "
                       f"stopped{kept}")
            self.logger.info(message)
            raise FloatingPointError(message)
        return self.state()

    def _write_error(self, path: Path, error: OSError) -> str:
        """The message for a checkpoint that could not be written (logged on rank 0)."""
        kept = (f"the previous checkpoint {self.last_good} is intact" if self.last_good
                else "no earlier checkpoint of this run exists")
        message = (f"cannot write checkpoint {path}: {error.strerror or error}; nothing was written under its "
                   f"name and {kept}. Training stopped at iteration {self.iter}: free space (or fix the work dir) "
                   "and continue with --resume")
        self.logger.info(message)
        return message

    def _raise_write_error(self, error: str | None) -> None:
        error = distributed.broadcast_object(error)
        if error is not None:
            raise OSError(error)

    # ------------------------------------------------------------------------------------------------ loop
    def _start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            self.cfg.dump(self.work_dir / (Path(self.cfg.filename).name if self.cfg.filename else "config.py"))
        resume_from, checkpoint = self._choose_resume() if self.resume else (None, None)
        if resume_from is not None:
            self.load_state(resume_from, checkpoint)
            self.logger.info(f"resumed from {resume_from} at iteration {self.iter}")
        elif self.cfg.get("load_from"):
            load_checkpoint(self.module, self.cfg.load_from, strict=False)
            self.logger.info(f"loaded weights from {self.cfg.load_from}")
        elif source := pretrained_source(self.cfg.model.to_dict()):
            prefix = pretrained_prefix(self.cfg.model.to_dict())
            load_pretrained_backbone(self.module.backbone, source, prefix=prefix)
            self.logger.info(f"loaded pretrained backbone weights {source}")
        if self.world_size > 1:  # DDP starts every process from rank 0's parameters and buffers
            self.model = DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.get("find_unused_parameters", False),
            )
        if self.compile is not False:
            self.model = torch.compile(self.model, **(self.compile if isinstance(self.compile, dict) else {}))

    def _choose_resume(self) -> tuple[Path | None, dict | None]:
        """The checkpoint to resume from (rank 0 decides, so that every process continues from the same one)
        and, on rank 0, its contents; ``(None, None)`` when the work dir has none.

        ``resume=True`` takes the newest checkpoint that reads whole; each newer one that does not is reported.
        """
        chosen = checkpoint = problem = None
        if self.is_main:
            removed = remove_partial_writes(self.work_dir)
            if removed:
                self.logger.info(f"removed {len(removed)} partly written checkpoint file(s) an interrupted run left: "
                                 + ", ".join(p.name for p in removed))
            if self.resume is not True:
                chosen = Path(self.resume)
            else:
                candidates = resume_candidates(self.work_dir)
                unreadable = []
                for path in candidates:
                    try:
                        checkpoint = read_training_checkpoint(path)
                    except (RuntimeError, KeyError) as error:
                        reason = error.args[0] if isinstance(error, KeyError) else str(error)
                        unreadable.append(f"{path.name} ({reason})")
                        self.logger.info(f"warning: {reason}; trying the checkpoint before it")
                        continue
                    chosen = path
                    break
                if candidates and chosen is None:
                    problem = (f"no checkpoint in {self.work_dir} can be resumed from: {'; '.join(unreadable)}. "
                               "Move them away to train from the start")
                elif chosen is None:
                    self.logger.info(f"no checkpoint in {self.work_dir} to resume from: training from the start")
                else:
                    self.logger.info(f"resuming from {chosen}, the newest complete checkpoint"
                                     + (f" ({len(unreadable)} newer one(s) unreadable)" if unreadable else ""))
        chosen, problem = distributed.broadcast_object((None if chosen is None else str(chosen), problem))
        if problem is not None:
            raise RuntimeError(problem)
        if chosen is None:
            return None, None
        chosen = Path(chosen)
        if not chosen.is_file():
            shared = " (resuming on several machines needs a shared work dir)" if self.world_size > 1 else ""
            raise FileNotFoundError(f"checkpoint to resume from not found: {chosen}{shared}")
        return chosen, checkpoint

    def train(self) -> torch.nn.Module:
        """Run until ``max_iters``; returns the (unwrapped) model."""
        self._start()
        dataloader_cfg = self.cfg.train_dataloader.to_dict()
        # page-locked batches copy to the GPU asynchronously; the config's own setting wins
        dataloader_cfg.setdefault("pin_memory", self.device.type == "cuda")
        with rng_preserved():
            loader, dataset = build_train_stream(dataloader_cfg, seed=self.seed,
                                                 start=self.iter * dataloader_cfg["batch_size"])
            self._build_val_loader()  # now, so that a mistake in the val set shows before training
        self.dataset_meta = getattr(dataset, "metainfo", None)
        batches = iter(loader)
        self.optim_wrapper.initialize_count_status(self.iter, self.max_iters)
        progress = Progress(self.iter, self.max_iters)
        self.logger.info(f"training {self.max_iters} iterations on {self.world_size} process(es), device {self.device}")
        if threads.chosen():
            self.logger.info(threads.chosen())
        self.model.train()
        try:
            self._loop(batches, progress)
        finally:
            self.logger.close()
        return self.module

    def _loop(self, batches: Iterator[dict], progress: Progress) -> None:
        first_iter = self.iter + 1
        while self.iter < self.max_iters:
            with rng_preserved():  # the loader's first batch draws its base seed: not part of training's draws
                batch = next(batches)
            progress.mark_data()
            self._check_labels(batch)
            inputs, labels = self.module.data_preprocessor(
                [image.to(self.device, non_blocking=True) for image in batch["inputs"]],
                [label.to(self.device, non_blocking=True) for label in batch["gt_sem_seg"]], training=True)
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with self._compile_errors(self.iter + 1 == first_iter):
                with self.optim_wrapper.optim_context(self.model):
                    losses = self.model(inputs, labels)
                loss = sum(value for key, value in losses.items() if "loss" in key)
                if self.check_finite_every == 1:
                    self._stop_if_non_finite(losses, loss)
                else:
                    self._note_non_finite(losses, loss)
                self.optim_wrapper.update_params(loss)
            lr = self.optim_wrapper.get_lr()["lr"][0]  # the rate this iteration trained at (mmengine logs it)
            self.schedulers.step()
            self.iter += 1
            self._count_skipped_step()
            progress.mark_iter()
            if self.on_iteration is not None and self.is_main:
                self.on_iteration(self.iter, self.max_iters)
            log_now = self.iter % self.log_interval == 0 or self.iter == self.max_iters
            validate_now = self.iter % self.val_interval == 0 or self.iter == self.max_iters
            save_now = self.iter % self.checkpoint_interval == 0 or self.iter == self.max_iters
            if self.check_finite_every > 1 and (self.iter % self.check_finite_every == 0 or log_now
                                                or validate_now or save_now):
                self._stop_if_noted_non_finite()
            if log_now:
                self._log_train(losses, progress, lr)
            # validate first, so that a checkpoint written at this iteration knows the best score so far
            if validate_now:
                self.validate()
            if save_now:
                self.save()
            if self.iter == first_iter:
                # the first iteration compiles (torch.compile) and warms up caches: report it on its own and
                # keep it out of the steady-state time per iteration and the ETA
                self.first_iter_time = progress.iter_times[-1]
                what = "torch.compile's compilation included" if self.compile is not False else "warm-up included"
                self.logger.info(f"first iteration: {self.first_iter_time:.3f} s ({what}); the iteration time "
                                 "logged from now on leaves it out")
                progress = Progress(self.iter, self.max_iters)

    @contextlib.contextmanager
    def _compile_errors(self, first: bool) -> Iterator[None]:
        """Turn a failure of torch.compile's first compilation into an error that says so and how to avoid it."""
        if not first or self.compile is False:
            yield
            return
        try:
            yield
        except Exception as error:
            if not type(error).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            raise RuntimeError(f"torch.compile failed on this machine ({type(error).__name__}: "
                               f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); train "
                               "without compile, or choose another backend, e.g. compile=dict(backend='aot_eager')"
                               ) from error

    def _stop_if_non_finite(self, losses: dict, loss: torch.Tensor) -> None:
        """Every process learns of a non-finite loss anywhere, so all stop together (none waits in backward).

        One host-device synchronization (the loss's finiteness summed over processes)."""
        non_finite = distributed.all_reduce_sum((~torch.isfinite(loss.detach())).float())
        if non_finite > 0:
            if torch.isfinite(loss):
                self._non_finite_stop(f"another process's loss became non-finite at iteration {self.iter + 1}")
            values = torch.stack([v.detach().float() for v in losses.values()]).tolist()
            self._non_finite_stop(f"loss became {loss.item()} at iteration {self.iter + 1}"
                                  + _loss_terms(list(losses), values))

    def _note_non_finite(self, losses: dict, loss: torch.Tensor) -> None:
        """Remember on the device the first iteration whose loss is non-finite, with its values; no sync."""
        values = torch.stack([loss.detach().float(), *(v.detach().float() for v in losses.values())])
        if self._bad_iter is None:
            self._bad_iter = torch.zeros((), dtype=torch.long, device=values.device)
            self._bad_values = torch.zeros_like(values)
            self._loss_names = list(losses)
        first = (self._bad_iter == 0) & ~torch.isfinite(values[0])
        self._bad_iter = torch.where(first, self.iter + 1, self._bad_iter)
        self._bad_values = torch.where(first, values, self._bad_values)

    def _stop_if_noted_non_finite(self) -> None:
        """Stop every process if any noted a non-finite loss since the run started (one sync, one all-reduce)."""
        if self._bad_iter is None:
            return
        if distributed.all_reduce_sum((self._bad_iter > 0).float()) == 0:
            return
        mine = int(self._bad_iter)
        firsts = [i for i in distributed.all_gather_object(mine) if i > 0]
        found = f"; found at iteration {self.iter} (check_finite_every={self.check_finite_every})"
        if mine:
            total, *terms = self._bad_values.tolist()
            self._non_finite_stop(f"loss became {total} at iteration {mine}"
                                  + _loss_terms(self._loss_names, terms, found))
        self._non_finite_stop(f"another process's loss became non-finite at iteration {min(firsts)} ({found[2:]})")

    def _non_finite_stop(self, cause: str) -> NoReturn:
        """Log and raise the error that ends a run whose loss became non-finite, naming the checkpoint kept."""
        kept = (f"; the last good checkpoint is {self.last_good}" if self.last_good
                else "; no checkpoint was written before it")
        message = f"{cause}; training stopped{kept}"
        self.logger.info(message)
        raise FloatingPointError(message)

    def _check_labels(self, batch: dict) -> None:
        """Label values must be classes or ``ignore_index``; name the file of any that is not."""
        num_classes, ignore_index = self.module.num_classes, self.module.ignore_index
        for label, meta in zip(batch["gt_sem_seg"], batch["meta"], strict=True):
            bad = (label != ignore_index) & ((label < 0) | (label >= num_classes))
            if bad.any():
                values = sorted(set(label[bad].unique().tolist()))[:10]
                source = meta.get("seg_map_path") or meta.get("img_path") or "a generated sample"
                raise ValueError(f"label map {source} has values {values} outside the {num_classes} classes "
                                 f"(0..{num_classes - 1}) and ignore_index {ignore_index}")

    def _count_skipped_step(self) -> None:
        """float16 AMP: note and log an optimizer step the loss scaler skipped (inf/NaN gradients)."""
        skipped = getattr(self.optim_wrapper, "skipped_steps", 0)
        if skipped == self._scaler_skips:
            return
        self.skipped_steps += skipped - self._scaler_skips
        self._scaler_skips = skipped
        scale = self.optim_wrapper.loss_scaler.get_scale()
        self.logger.info(f"iteration {self.iter}: float16 gradients held inf/NaN, the optimizer step was skipped and "
                         f"the loss scale lowered to {scale:g} ({self.skipped_steps} step(s) skipped in this run)")

    def _log_train(self, losses: dict, progress: Progress, lr: float) -> None:
        # one host-device synchronization for all the values
        values = distributed.mean_over_processes(losses)  # keys agreed by name: a rank's extra key cannot block
        record = {"lr": lr, **values, "time": progress.time_per_iter, "data_time": progress.data_time,
                  "memory": memory_mb(self.device)}
        if getattr(self.optim_wrapper, "loss_scaler", None) is not None:
            record.update(loss_scale=self.optim_wrapper.loss_scaler.get_scale(), skipped_steps=self.skipped_steps)
        self.logger.record("train", self.iter, record)
        terms = "  ".join(f"{k}: {v:.4f}" for k, v in values.items())
        self.logger.info(f"Iter(train) [{self.iter:>{len(str(self.max_iters))}}/{self.max_iters}]  lr: {lr:.4e}  "
                         f"eta: {progress.eta}  time: {progress.time_per_iter:.3f}  "
                         f"data_time: {progress.data_time:.3f}  memory: {record['memory']}  {terms}")

    def _build_val_loader(self):
        """The val loader (built once), or None when the config has no ``val_dataloader``."""
        if self.val_loader is None and self.cfg.get("val_dataloader"):
            self.val_loader = build_eval_loader(self.cfg.val_dataloader.to_dict(), seed=self.seed)
        return self.val_loader

    def validate(self) -> dict | None:
        """Score the val set (if the config has one); keep the best checkpoint by ``save_best``.

        Every process first takes rank 0's buffers (BatchNorm statistics, which DDP only syncs at the next
        forward), so the score is that of the model rank 0 saves.
        """
        with rng_preserved():
            loader = self._build_val_loader()
            if loader is None:
                return None
            distributed.broadcast_buffers(self.module)
            metric = build_metric(self.cfg.get("val_evaluator"), loader.dataset)
            scores = evaluate(self.module, loader, metric, self.device)
        summary = {k: v for k, v in scores.items() if k != "per_class"}
        self.logger.record("val", self.iter, summary)
        self.logger.info("per class results:\n" + format_table(scores["per_class"]))
        self.logger.info(f"Iter(val) [{self.iter}]  " + "  ".join(f"{k}: {v:.2f}" for k, v in summary.items()))
        if self.save_best:
            key = self.save_best
            if key == "auto":  # mmengine would take the first metric (aAcc); the class mean is what users want
                key = next((name for name in ("mIoU", "mDice", "mFscore") if name in summary), "mIoU")
            if key not in summary:
                raise KeyError(f"default_hooks.checkpoint.save_best={key!r} is not among the validation metrics "
                               f"{sorted(summary)} (val_evaluator.iou_metrics decides which are computed)")
            score = summary[key]
            if self.best_score is None or score > self.best_score:
                previous = self.best_path
                self.best_score = score
                self.best_path = self.work_dir / f"best_{key}_iter_{self.iter}.pth"
                state = self._checkpoint_state()
                error = None
                if self.is_main:
                    try:
                        save_checkpoint(state, self.best_path)
                    except OSError as e:
                        error = self._write_error(self.best_path, e)
                    if error is None and previous is not None and previous != self.best_path:
                        previous.unlink(missing_ok=True)
                self._raise_write_error(error)
                self.logger.info(f"best {key} {score:.2f} at iteration {self.iter}")
        self.last_scores = summary
        self.model.train()
        return scores
