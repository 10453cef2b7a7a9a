"""DINO / SPARO-DINO training: ``python -m sparo_clip.dino.train`` (or ``torchrun ... -m sparo_clip.dino.train``).

Our own loop on torch's DistributedDataParallel (the launch OpenCLIP's training uses, see docs/dino.md):
multi-crop views (lightly's ``DINOTransform``, or :mod:`sparo_clip.dino.tensor_crops` for small decoded images),
a student and an EMA teacher (``update_momentum``), lightly's ``DINOLoss`` and ``DINOProjectionHead``; DINO's
reference schedules (lr warm-up + cosine, weight decay 0.04 -> 0.4, teacher momentum 0.996 -> 1, teacher
temperature warm-up, last layer frozen for the first epoch), DINO's gradient clipping (each parameter's gradient
on its own, before the frozen last layer's is dropped), bf16 autocast, atomic checkpoints, resume from the
readable one with the highest recorded step, tqdm progress and JSON-lines logs. Every logged step records the
collapse diagnostics (:mod:`sparo_clip.dino.diagnostics`: H(t|x), H(mean t), KL) and a run that sits in a
collapse warns once, naming the step and the two entropies.

Failures: options, model, data, ``--output`` and ``--resume`` are checked before any work
(:func:`~sparo_clip.dino.options.check_args`, exit code 2); during the run, unreadable images and shards are
skipped with a warning naming them and counted (``skipped_images`` in log.jsonl; ``--strict`` stops instead),
and a non-finite loss, unusable data or a checkpoint that cannot be written end it with one line (exit code 1).
A run that fails before its first step takes back what it wrote; temporary files of interrupted checkpoint
writes are removed when the run starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sparo_clip.checkpoints.files import (
    atomic_save,
    load_checkpoint_file,
    newest_state,
    remove_orphan_temporaries,
)
from sparo_clip.dino.config import DinoCfg
from sparo_clip.dino.data import (
    DataError,
    MultiCropFolder,
    MultiCropShards,
    StepSampler,
    check_shards,
    collate_views,
    folder_images,
    hash_seed,
)
from sparo_clip.dino.diagnostics import CollapseMonitor, clip_per_parameter, target_stats
from sparo_clip.dino.lightly_api import require_lightly
from sparo_clip.dino.model import DinoNet
from sparo_clip.dino.options import (
    DinoRun,
    build_parser,
    check_args,
    checkpoint_paths,
    newest_checkpoint,
    run_config,
)
from sparo_clip.dino.tensor_crops import CropCfg, decode_images, multi_crop
from sparo_clip.errors import CheckpointError, NonFiniteLossError, SparoClipError, WriteError, one_line
from sparo_clip.inputs import FolderSnapshot

logger = logging.getLogger("sparo_clip.dino.train")


__all__ = ["checkpoint_paths", "latest_checkpoint", "main", "train"]


def latest_checkpoint(output: str | Path) -> Path | None:
    """The readable checkpoint of a run folder with the highest recorded step, or None."""
    path, _, _ = newest_checkpoint(output)
    return path


def _resume_state(args: DinoRun, out: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from: ``--resume FILE``, or with ``auto`` the readable one with the highest
    recorded step (never the newest by name), skipping files that fail to load whole."""
    if args.resume == "none":
        return None, None
    candidates = [Path(args.resume)] if args.resume != "auto" else None
    tried: set[Path] = set()
    while True:
        if candidates is None:
            paths = [p for p in checkpoint_paths(out) if p not in tried]
            path, _, skipped = newest_state(paths, "step")
            for p, why in skipped:
                logger.warning("skipping checkpoint %s: %s", p, why)
                tried.add(p)
        else:
            path = candidates[0]
        if path is None:
            return None, None
        try:
            return path, load_checkpoint_file(path, map_location="cpu")
        except CheckpointError as e:
            if candidates is not None:
                raise
            logger.warning("skipping checkpoint %s: %s", path, e)
            tried.add(path)


class Schedules:
    """DINO's per-step schedules (lr, weight decay, teacher momentum) and per-epoch teacher temperature."""

    def __init__(self, args: DinoRun, steps_per_epoch: int) -> None:
        self.lightly = require_lightly()
        self.args, self.spe = args, steps_per_epoch
        self.total = args.epochs * steps_per_epoch
        self.warmup = min(int(args.warmup_epochs * steps_per_epoch), self.total - 1)
        self.peak = args.lr * args.global_batch / 256

    def lr(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * step / self.warmup
        return self.lightly.cosine_schedule(
            step - self.warmup, self.total - self.warmup, self.peak, self.args.min_lr
        )

    def wd(self, step: int) -> float:
        return self.lightly.cosine_schedule(step, self.total, self.args.wd, self.args.wd_end)

    def momentum(self, step: int) -> float:
        return self.lightly.cosine_schedule(step, self.total, self.args.momentum_teacher, 1.0)

    def teacher_temp(self, epoch: int) -> float:
        a, n = self.args, self.args.warmup_teacher_temp_epochs
        if epoch >= n:
            return a.teacher_temp
        return a.warmup_teacher_temp + (a.teacher_temp - a.warmup_teacher_temp) * epoch / max(1, n - 1)


def param_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Weights decay; biases, norms and 1-d parameters (queries of a head are 2-d and decay) do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def _dist_setup() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _loader(args: DinoRun, cfg: DinoCfg, rank: int, start_step: int, total: int) -> tuple[Any, int]:
    if args.augment == "tensor":
        return TensorViews(args, cfg, rank, start_step, total), 0
    lightly = require_lightly()
    transform = lightly.DINOTransform(
        global_crop_size=cfg.global_crop_size,
        global_crop_scale=args.global_crop_range,
        local_crop_size=cfg.local_crop_size,
        local_crop_scale=args.local_crop_range,
        n_local_views=args.local_crops,
        cj_prob=args.color_jitter,
        random_gray_scale=args.grayscale,
        solarization_prob=args.solarize,
        gaussian_blur=(1.0, 0.1, 0.5) if args.blur else (0.0, 0.0, 0.0),
    )
    if args.dataset_type == "folder":
        paths = folder_images(args.train_data)
        if len(paths) < args.global_batch:
            raise DataError(
                f"--train-data has {len(paths)} images, fewer than one global batch ({args.global_batch})"
            )
        sampler = StepSampler(len(paths), args.global_batch, rank, args.world, args.seed, start_step, total)
        dataset, spe = MultiCropFolder(paths, transform, args.seed), len(paths) // args.global_batch
        kw: dict[str, Any] = {"sampler": sampler}
    else:
        dataset = MultiCropShards(check_shards(args.train_data), transform, args.seed, rank, start_step)
        spe, kw = max(1, args.train_num_samples // args.global_batch), {}
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, drop_last=True,
        persistent_workers=False, pin_memory=args.device.startswith("cuda"), collate_fn=collate_views, **kw,
    )  # fmt: skip
    return loader, spe


class TensorViews:
    """The batches of ``--augment tensor``: the ImageFolder decoded once, each step's views cropped from it.

    Step s takes the same slice of the same seeded per-epoch permutation as :class:`StepSampler`, and its views
    come from a generator seeded by (seed, step) over the whole global batch (each process keeps its part), so
    the views do not depend on the number of processes or on a resume. Yields ``(views, reasons)`` as the
    loader does (the reasons of images skipped at decoding come with the first batch).
    """

    def __init__(self, args: DinoRun, cfg: DinoCfg, rank: int, start_step: int, total: int) -> None:
        paths = folder_images(args.train_data)
        self.images, self.skipped = decode_images(paths, cfg.global_crop_size, strict=args.strict)
        if len(self.images) < args.global_batch:
            raise DataError(
                f"--train-data has {len(self.images)} readable images, fewer than one global batch ({args.global_batch})"
            )
        self.crops = CropCfg(
            cfg.global_crop_size, cfg.local_crop_size, args.local_crops, args.global_crop_range,
            args.local_crop_range, 0.5, args.color_jitter, args.grayscale, args.solarize,
        )  # fmt: skip
        self.sampler = StepSampler(len(self.images), args.global_batch, 0, 1, args.seed, start_step, total)
        self.local, self.rank, self.seed, self.start = args.batch_size, rank, args.seed, start_step

    def __iter__(self):
        order = iter(self.sampler)
        step, reasons = self.start, list(self.skipped)
        while True:
            index = [i for _, i in (next(order, None) for _ in range(self.sampler.gb)) if i is not None]
            if len(index) < self.sampler.gb:
                return
            gen = torch.Generator().manual_seed(hash_seed(self.seed, "views", step))
            views = multi_crop(self.images[torch.tensor(index)], self.crops, gen)
            part = slice(self.rank * self.local, (self.rank + 1) * self.local)
            yield [v[part] for v in views], reasons
            step, reasons = step + 1, []


def steps_per_epoch(args: DinoRun) -> int:
    if args.dataset_type == "folder":
        return len(folder_images(args.train_data)) // args.global_batch
    return max(1, args.train_num_samples // args.global_batch)


class _Skips:
    """Unreadable images and shards met by this process: warned about by name and counted (or, --strict, fatal)."""

    def __init__(self, strict: bool) -> None:
        self.strict, self.count = strict, 0

    def note(self, reasons: list[str]) -> None:
        for reason in reasons:
            if self.strict:
                raise DataError(f"{reason} (--strict; without it unreadable images are skipped)")
            logger.warning("skipping: %s", reason)
            self.count += 1


MAX_EMPTY_BATCHES = 50  # batches in a row without a readable image before a shard stream gives up


def _next_views(data_iter: Any, skips: _Skips, step: int, endless: bool) -> list[torch.Tensor]:
    """The next batch of views with at least one readable image (a batch may lose its unreadable ones)."""
    empty = 0
    while True:
        try:
            views, reasons = next(data_iter)
        except StopIteration:
            raise DataError(f"the data ran out at step {step} (images were skipped as unreadable)") from None
        skips.note(reasons)
        if views is not None:
            return views
        empty += 1
        if not endless:
            raise DataError(
                f"every image of the batch for step {step} is unreadable (e.g. {reasons[0]}): check the data"
            )
        if empty >= MAX_EMPTY_BATCHES:
            raise DataError(
                f"{empty} batches in a row for step {step} held no readable image (e.g. {reasons[0]}): check "
                "the data"
            )


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from e


class Progress:
    """Steps trained by a run in this process (0 when it failed before its first step)."""

    def __init__(self) -> None:
        self.steps = 0


def train(args: DinoRun, cfg: DinoCfg, progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) the training described by checked ``args``; returns a summary."""
    lightly = require_lightly()
    world, rank, local = args.world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if args.device == "cuda" else args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(args.output)
    spe = steps_per_epoch(args)
    if spe < 1:
        raise DataError(f"--train-data is smaller than one global batch ({args.global_batch})")
    sched = Schedules(args, spe)
    total = sched.total if args.max_steps is None else min(sched.total, args.max_steps)

    torch.manual_seed(args.seed)
    student = DinoNet(cfg, freeze_last_layer=args.freeze_last_layer).to(device)
    teacher = DinoNet(cfg).to(device)
    teacher.load_state_dict(student.state_dict())
    lightly.deactivate_requires_grad(teacher)
    teacher.eval()
    criterion = lightly.DINOLoss(
        output_dim=cfg.head.output_dim, warmup_teacher_temp=args.warmup_teacher_temp, teacher_temp=args.teacher_temp,
        warmup_teacher_temp_epochs=max(1, args.warmup_teacher_temp_epochs), student_temp=args.student_temp,
        center_momentum=args.center_momentum,
    ).to(device)  # fmt: skip
    optimizer = torch.optim.AdamW(param_groups(student), lr=0.0)
    meta = run_config(args, cfg)

    start = 0
    path, ckpt = _resume_state(args, out)
    if ckpt is not None:
        if ckpt.get("dino_cfg") != meta["dino_cfg"]:
            raise CheckpointError(
                f"--resume: {path} was trained with another model config; use another --output"
            )
        student.load_state_dict(ckpt["student"])
        teacher.load_state_dict(ckpt["teacher"])
        optimizer.load_state_dict(ckpt["optimizer"])
        criterion.center.copy_(ckpt["center"])
        start = int(ckpt["step"])
        logger.info("resumed from %s at step %d", path, start)
    model = DistributedDataParallel(student) if world > 1 else student
    if rank == 0:
        for orphan in remove_orphan_temporaries(out / "checkpoints"):
            logger.warning("removed %s, the temporary file of an interrupted checkpoint write", orphan)
        _write_text(out / "config.json", json.dumps(meta, indent=2) + "\n")
    loader, _ = _loader(args, cfg, rank, start, total)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.precision == "amp_bf16"
        else contextlib.nullcontext()
    )
    try:
        log = (out / "log.jsonl").open("a") if rank == 0 else None
    except OSError as e:
        raise WriteError(f"cannot write {out / 'log.jsonl'}: {e.strerror or e}") from e
    bar = tqdm(total=total, initial=start, desc="dino", unit="step", disable=rank != 0)
    step, last_loss, t0 = start, float("nan"), time.perf_counter()
    skips, skipped_all = _Skips(args.strict), 0
    monitor, stats = CollapseMonitor(), None
    data_iter = iter(loader)
    try:
        while step < total:
            views = _next_views(data_iter, skips, step, endless=args.dataset_type != "folder")
            views = [v.to(device, non_blocking=True) for v in views]
            epoch = step // spe
            lr, wd, m, tt = sched.lr(step), sched.wd(step), sched.momentum(step), sched.teacher_temp(epoch)
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = lr
                if i == 0:
                    group["weight_decay"] = wd
            with autocast:
                with torch.no_grad():
                    t_out = teacher(views[:2])
                s_out = model(views)
            if log is not None and ((step + 1) % args.log_every == 0 or step + 1 == total):
                # the loss pairs each teacher view with the student's other global view; the centre is the
                # one this step's loss uses (the loss moves it afterwards)
                stats = target_stats(torch.cat(t_out[:2]).float(), torch.cat([s_out[1], s_out[0]]).float(),
                                     criterion.center, tt, args.student_temp)  # fmt: skip
            loss = criterion([t.float() for t in t_out], [s.float() for s in s_out], teacher_temp=tt)
            if not math.isfinite(loss.item()):
                raise NonFiniteLossError(
                    f"the training loss is {loss.item()} at step {step}: stopped before saving non-finite weights "
                    "(lower --lr or use --precision fp32)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms = clip_per_parameter(student.parameters(), args.clip_grad or float("inf"))
            grad_norm = math.sqrt(sum(n * n for n in norms))  # before clipping, over every parameter
            student.head.cancel_last_layer_gradients(epoch)
            optimizer.step()
            with torch.no_grad():
                lightly.update_momentum(student, teacher, m)
            reduced = torch.stack(
                [loss.detach().float(), torch.tensor(float(skips.count), device=loss.device)]
            )
            if world > 1:  # the mean loss, and the images skipped by every process
                dist.all_reduce(reduced)
                reduced[0] /= world
            step, last_loss, skipped_all = step + 1, reduced[0].item(), int(reduced[1].item())
            if progress is not None:
                progress.steps += 1
            bar.update()
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if log is not None and (step % args.log_every == 0 or step == total):
                row = {"step": step, "epoch": epoch, "loss": last_loss, "lr": lr, "wd": wd, "momentum": m,
                       "teacher_temp": tt, "grad_norm": float(grad_norm), "skipped_images": skipped_all,
                       "seconds": time.perf_counter() - t0}  # fmt: skip
                if stats is not None:
                    row |= stats.to_dict()
                    warning = monitor.observe(step, stats)
                    if warning:
                        logger.warning("%s", warning)
                        row["collapse_warning"] = warning
                    bar.set_postfix(
                        loss=f"{last_loss:.4f}", h_t=f"{stats.h_target:.2f}", h_mean=f"{stats.h_mean:.2f}"
                    )
                log.write(json.dumps(row) + "\n")
                log.flush()
            if rank == 0 and (step % args.save_every == 0 or step == total):
                ckpt = {**meta, "step": step, "student": student.state_dict(), "teacher": teacher.state_dict(),
                        "optimizer": optimizer.state_dict(), "center": criterion.center.detach().cpu()}  # fmt: skip
                atomic_save(ckpt, out / "checkpoints" / f"step_{step:08d}.pt")
                for old in checkpoint_paths(out)[args.keep :]:
                    old.unlink(missing_ok=True)
    finally:  # the progress line ends before any error line
        bar.close()
        if log is not None:
            log.close()
    if world > 1:
        dist.barrier()
    return {"steps": step, "loss": last_loss, "skipped_images": skipped_all, "output": str(out)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    world, rank, _ = _dist_setup()
    try:
        cfg = check_args(args, world)
        run = DinoRun.from_args(args)
        if args.dataset_type == "webdataset":
            check_shards(args.train_data)
        else:
            steps = steps_per_epoch(args)
            if steps < 1:
                raise DataError(f"--train-data is smaller than one global batch ({args.global_batch})")
    except (ValueError, ImportError) as e:
        print(f"sparo-dino train: error: {one_line(e)}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(run_config(run, cfg), indent=2))
        return 0
    snapshot = FolderSnapshot(args.output, restore=("config.json",)) if rank == 0 else None
    if world > 1:
        backend = "nccl" if args.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    summary, progress = None, Progress()
    try:
        summary = train(run, cfg, progress)
    except SparoClipError as e:
        print(f"sparo-dino train: error: {one_line(e)}", file=sys.stderr)
        return 1
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
        if summary is None and snapshot is not None and progress.steps == 0:
            snapshot.take_back()  # failed before its first step: nothing of this run is worth keeping
    if rank == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
