"""The training loop behind pruning recovery (`recover`) and conversion uptraining
(`headcount.uptrain`): AdamW with linear warm-up and cosine decay, gradient clipping and
accumulation, distillation and/or the objective's own loss, budgets in steps, tokens or minutes,
and atomic, resumable checkpoints.

Legend: B batch, T positions, V vocabulary, C model dim.

Losses: ``kl`` = KL(teacher || student) of the next-token distributions at every position
(Hinton et al. 2015 at temperature 1) for decoders, 1 - cosine of the pooled sentence embeddings
for encoders; ``ce`` = the objective's own loss (next-token cross-entropy for
`LanguageModeling`, the in-batch contrastive loss for `Contrastive`); ``kl+ce`` their sum.
``hidden`` = layer-wise distillation of every token's hidden state (the output of each layer,
as in TinyBERT, Jiao et al. 2020, and Patient KD, Sun et al. 2019): the mean over layers of
``||h_student - h_teacher||^2 / ||h_teacher||^2`` over the real tokens, a per-token target with
C numbers per token per layer where ``kl`` on an encoder gives one cosine per sentence;
``kl+hidden`` adds ``kl`` to it. ``attention`` = layer-local distillation of the attention
blocks: each student attention layer gets the *teacher's* input to that layer and is trained to
reproduce the teacher's attention output (the same normalised squared error, summed over the
real tokens, averaged over layers), so every layer learns at once from its own exact target, as
in layer-wise reconstruction for compression (Hubara et al. 2021; Frantar & Alistarh 2022 do it
in closed form). On MiniLM it reaches a higher embedding cosine than ``kl`` in a third of the
time (EXPERIMENTS.md, section 2); only attention weights receive gradients. The
``hidden`` and ``attention`` losses need a teacher with the same number of layers and width.

A checkpoint (``checkpoint_dir/uptrain.pt``) holds the model and optimizer states, the
batch-order generator and the global torch RNG, the step, tokens, losses, the schedule length and
a fingerprint of everything that shapes the run (config, hyper-parameters, data). It is written
to a temporary file and renamed over the previous one (``os.replace``), so an interruption at any
moment leaves the last complete checkpoint. A resumed run replays the same batches with the same
learning rates and reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from headcount.distributed.process import World
from headcount.errors import CheckpointError, ConfigError, ShapeError
from headcount.models import Decoder, Encoder
from headcount.prune.objectives import Batch, Objective, at_least_fp32, pooled

Loss = Literal["kl", "ce", "kl+ce", "hidden", "kl+hidden", "attention"]
LOSSES: tuple[str, ...] = ("kl", "ce", "kl+ce", "hidden", "kl+hidden", "attention")
Params = Literal["all", "attention"]
Progress = Callable[[int, float, int, float], None]  # step, loss, tokens, elapsed seconds
CHECKPOINT = "uptrain.pt"
FORMAT = "headcount-uptrain"
VERSION = 1


@dataclass
class TrainResult:
    steps: int  # optimizer steps taken in total (a resumed run counts the earlier ones)
    tokens: int  # tokens fed to the model in total
    seconds: float  # training time in total
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    tokens_seen: list[int] = field(default_factory=list)  # cumulative tokens after each step
    resumed_from: int | None = None  # the step of the checkpoint this run continued from
    stopped_by: str = ""  # "steps", "tokens" or "minutes"


def distill_loss(student: Decoder | Encoder, teacher: Decoder | Encoder, batch: Batch) -> Tensor:
    """KL(teacher || student) per token (decoders) or 1 - cos of embeddings (encoders)."""
    if isinstance(student, Decoder):
        ids = batch.ids.to(student.embed.weight.device)
        return _kl(student(ids).logits, teacher, ids)
    assert isinstance(teacher, Encoder) and batch.mask is not None
    with torch.no_grad():
        te = pooled(teacher, batch.ids, batch.mask)  # (N, C)
    se = pooled(student, batch.ids, batch.mask)
    return 1.0 - (se * te).sum(-1).mean()


def hidden_loss(student: Decoder | Encoder, teacher: Decoder | Encoder, batch: Batch) -> Tensor:
    """Mean over layers of ``||h_s - h_t||^2 / ||h_t||^2`` summed over the real tokens of ``batch``.

    ``h`` is each layer's output ``(B, T, C)`` (captured with forward hooks, so any layer type
    works); padded positions (``batch.mask`` False) are left out. 0 when student equals teacher.
    """
    device = _first_param(student).device
    ids = batch.ids.to(device)
    mask = None if batch.mask is None else batch.mask.to(device)
    with torch.no_grad():
        th = _layer_outputs(teacher, ids, mask)
    sh = _layer_outputs(student, ids, mask)
    if len(sh) != len(th):
        raise ConfigError(
            f"hidden-state distillation pairs layers: the student has {len(sh)}, "
            f"the teacher {len(th)}"
        )
    m = None if mask is None else mask[..., None].to(torch.float32)  # (B, T, 1)
    total = sh[0].new_zeros((), dtype=torch.float32)
    for s_h, t_h in zip(sh, th, strict=True):
        if s_h.shape != t_h.shape:
            raise ShapeError(
                f"hidden-state distillation needs equal shapes, got {tuple(s_h.shape)} and "
                f"{tuple(t_h.shape)}"
            )
        d2 = (at_least_fp32(s_h) - at_least_fp32(t_h)).pow(2)  # (B, T, C)
        t2 = at_least_fp32(t_h).pow(2)
        if m is not None:
            d2, t2 = d2 * m, t2 * m
        total = total + d2.sum() / t2.sum().clamp(min=1e-12)
    return total / len(sh)


def attention_loss(student: Decoder | Encoder, teacher: Decoder | Encoder, batch: Batch) -> Tensor:
    """Mean over layers of ``||attn_s(x_t) - attn_t(x_t)||^2 / ||attn_t(x_t)||^2`` over real tokens.

    ``x_t`` is the teacher's input to each attention layer, captured with the arguments the
    teacher's layer passed (masks, positions), and the student's attention layer is called with
    the same arguments: a layer-local target, so the layers train independently of each other.
    """
    device = _first_param(student).device
    ids = batch.ids.to(device)
    mask = None if batch.mask is None else batch.mask.to(device)
    calls: list[tuple[tuple[Any, ...], dict[str, Any], Tensor]] = []

    def grab(_m: torch.nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        calls.append((args, kwargs, out[0] if isinstance(out, tuple) else out))

    t_attn = teacher.attention_layers()
    s_attn = student.attention_layers()
    if len(s_attn) != len(t_attn):
        raise ConfigError(
            f"attention distillation pairs layers: the student has {len(s_attn)}, "
            f"the teacher {len(t_attn)}"
        )
    handles = [a.register_forward_hook(grab, with_kwargs=True) for a in t_attn]
    try:
        with torch.no_grad():
            teacher(ids, attention_mask=mask) if isinstance(teacher, Encoder) else teacher(ids)
    finally:
        for h in handles:
            h.remove()
    m = None if mask is None else mask[..., None].to(torch.float32)  # (B, T, 1)
    total = ids.new_zeros((), dtype=torch.float32)
    for attn, (args, kwargs, target) in zip(s_attn, calls, strict=True):
        out = attn(*args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        d2 = (at_least_fp32(out) - at_least_fp32(target)).pow(2)  # (B, T, C)
        t2 = at_least_fp32(target).pow(2)
        if m is not None:
            d2, t2 = d2 * m, t2 * m
        total = total + d2.sum() / t2.sum().clamp(min=1e-12)
    return total / len(s_attn)


def _first_param(model: torch.nn.Module) -> Tensor:
    return next(model.parameters())


def _layer_outputs(model: Decoder | Encoder, ids: Tensor, mask: Tensor | None) -> list[Tensor]:
    """Every layer's output hidden states ``(B, T, C)`` for one forward pass of ``model``."""
    outs: list[Tensor] = []

    def grab(_m: torch.nn.Module, _inp: Any, out: Any) -> None:
        outs.append(out[0] if isinstance(out, tuple) else out)

    handles = [layer.register_forward_hook(grab) for layer in model.layers]
    try:
        if isinstance(model, Encoder):
            model(ids, attention_mask=mask)
        else:
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return outs


def _kl(logits: Tensor, teacher: Decoder | Encoder, ids: Tensor) -> Tensor:
    with torch.no_grad():
        t = F.log_softmax(at_least_fp32(teacher(ids).logits), dim=-1)  # (B, T, V)
    s = F.log_softmax(at_least_fp32(logits), dim=-1)  # (B, T, V)
    return F.kl_div(s.flatten(0, 1), t.flatten(0, 1), log_target=True, reduction="batchmean")


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of ``lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def batch_tokens(batch: Batch) -> int:
    return int(batch.ids.numel() if batch.mask is None else batch.mask.sum())


def train(
    model: Decoder | Encoder,
    teacher: Decoder | Encoder | None,
    data: Objective,
    *,
    steps: int | None = None,
    tokens: int | None = None,
    minutes: float | None = None,
    loss: Loss = "kl",
    params: Params = "all",
    lr: float = 3e-4,
    warmup: int = 10,
    weight_decay: float = 0.0,
    grad_accum: int = 1,
    clip: float = 1.0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
    world: World | None = None,
) -> TrainResult:
    """Train ``model`` in place on the batches of ``data`` (cycled, shuffled per epoch with
    ``seed``; ``grad_accum`` batches per optimizer step) until the first budget runs out:
    ``steps`` optimizer steps, ``tokens`` tokens or ``minutes`` of training. The cosine schedule
    spans the steps the budget allows (estimated from the first steps' speed when only
    ``minutes`` is given). See the module docstring for losses and checkpoints.

    ``world`` (from `headcount.distributed.init`, under torchrun): data-parallel training with the
    same batches, steps and result as one process (`headcount.distributed.data_parallel`), every
    rank calling `train` with the same arguments; checkpoints are then sharded
    (`headcount.distributed.checkpoint`) and resume with any number of processes.
    """
    _check(model, teacher, steps, tokens, minutes, loss, params, lr, warmup, grad_accum, clip)
    if checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs the checkpoint_dir of the run to continue")
    batches = list(data.batches())
    if not batches:
        raise ShapeError("the training data yields no batches")
    per_step = grad_accum * sum(batch_tokens(b) for b in batches) / len(batches)
    total = steps
    if tokens is not None:
        by_tokens = max(math.ceil(tokens / per_step), 1)
        total = by_tokens if total is None else min(total, by_tokens)
    fingerprint = _fingerprint(
        model, teacher, batches, loss, params, lr, warmup, weight_decay, grad_accum, clip, seed
    )
    fingerprint.update(steps=steps, tokens=tokens)
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT
    found = None if path is None else _found(path)
    if found is not None and not resume:
        raise ConfigError(
            f"{found} holds the checkpoint of an earlier run; pass resume=True to continue it, "
            "or choose another checkpoint_dir"
        )
    parallel = None
    if world is not None and world.distributed:
        from headcount.distributed.data_parallel import DataParallel

        parallel = DataParallel(world, model, data, loss, grad_accum, fingerprint)
        world.check_same("checkpoint to resume", str(found) if resume else None)
    _check_dense(model, params)
    trainable = [
        p
        for n, p in model.named_parameters()
        if params == "all" or ".attn." in n or n.startswith("attn.")
    ]
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    if teacher is not None:
        teacher.eval()
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    result = TrainResult(0, 0, 0.0)
    order: list[int] = []
    devices = [d.index for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    with torch.random.fork_rng(devices=devices):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)
        if resume and found is not None:
            order, total = _restore(found, fingerprint, model, opt, gen, result, world)
        if parallel is not None:
            parallel.start(model, result.seconds)
        budget_s = None if minutes is None else minutes * 60.0
        start_step, t0, saved = result.steps, time.perf_counter(), result.steps
        model.train()
        try:
            while True:
                elapsed = (  # rank 0's clock under torchrun: every rank stops after the same step
                    result.seconds + time.perf_counter() - t0
                    if parallel is None
                    else parallel.clock
                )
                if steps is not None and result.steps >= steps:
                    result.stopped_by = "steps"
                elif tokens is not None and result.tokens >= tokens:
                    result.stopped_by = "tokens"
                elif budget_s is not None and elapsed >= budget_s:
                    result.stopped_by = "minutes"
                if result.stopped_by:
                    break
                if total is None and result.steps - start_step == 3 and budget_s is not None:
                    speed = (elapsed - result.seconds) / 3  # seconds per step
                    total = result.steps + max(int((budget_s - elapsed) / speed), 1)
                for g in opt.param_groups:
                    g["lr"] = lr_at(result.steps, total or 1_000_000, lr, warmup)
                opt.zero_grad(set_to_none=True)
                step_loss, step_tokens = 0.0, 0
                for i in range(grad_accum):
                    if not order:
                        order = torch.randperm(len(batches), generator=gen).tolist()
                    batch = batches[order.pop()]
                    step_tokens += batch_tokens(batch)
                    part, weight = (batch, 1.0) if parallel is None else parallel.share(batch, i)
                    if part is None:  # another rank's batch (or rows)
                        continue
                    value = _loss(model, teacher, data, part, loss) / grad_accum
                    if weight != 1.0:  # this rank's share of the batch's loss
                        value = value * weight
                    value.backward()
                    step_loss += float(value.detach())
                if parallel is not None:  # gradients and loss summed over ranks
                    clock = result.seconds + time.perf_counter() - t0
                    step_loss = parallel.sync(trainable, step_loss, clock)
                torch.nn.utils.clip_grad_norm_(trainable, clip)
                opt.step()
                result.steps += 1
                result.tokens += step_tokens
                result.losses.append(step_loss)
                result.tokens_seen.append(result.tokens)
                now = result.seconds + time.perf_counter() - t0
                if path is not None and result.steps % checkpoint_every == 0:
                    _save(path, fingerprint, model, opt, gen, order, total, result, now, world)
                    saved = result.steps
                if progress is not None:
                    progress(result.steps, step_loss, result.tokens, now)
            if path is not None and saved != result.steps:
                now = result.seconds + time.perf_counter() - t0
                _save(path, fingerprint, model, opt, gen, order, total, result, now, world)
        finally:
            model.eval()
            for p, f in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(f)
    result.seconds += time.perf_counter() - t0
    return result


def _check(
    model: Decoder | Encoder,
    teacher: Decoder | Encoder | None,
    steps: int | None,
    tokens: int | None,
    minutes: float | None,
    loss: str,
    params: str,
    lr: float,
    warmup: int,
    grad_accum: int,
    clip: float,
) -> None:
    if steps is None and tokens is None and minutes is None:
        raise ConfigError("give a training budget: tokens and/or minutes")
    for name, value in (("steps", steps), ("tokens", tokens)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value <= 0
        ):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"minutes must be > 0, got {minutes}")
    if loss not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if "kl" in loss or "hidden" in loss or loss == "attention":
        if teacher is None:
            raise ConfigError(f"loss {loss!r} distils toward a teacher: pass teacher=")
        if type(model) is not type(teacher):
            raise ConfigError(
                f"student {type(model).__name__} and teacher {type(teacher).__name__} differ"
            )
    if "hidden" in loss or loss == "attention":
        assert teacher is not None
        s_shape = (len(model.layers), model.config.d_model)
        t_shape = (len(teacher.layers), teacher.config.d_model)
        if s_shape != t_shape:
            raise ConfigError(
                f"loss {loss!r} pairs the layers of student and teacher: the student has "
                f"{s_shape[0]} layers of width {s_shape[1]}, the teacher {t_shape[0]} of {t_shape[1]}"
            )
    if params not in ("all", "attention"):
        raise ConfigError(f"params must be 'all' or 'attention', got {params!r}")
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be a non-negative number of steps, got {warmup!r}")
    if not isinstance(grad_accum, int) or isinstance(grad_accum, bool) or grad_accum < 1:
        raise ConfigError(f"grad_accum must be a positive integer, got {grad_accum!r}")
    if not clip > 0:
        raise ConfigError(f"clip must be > 0, got {clip}")


def _check_dense(model: Decoder | Encoder, params: str) -> None:
    """Refuse to train a model whose weights in the trained scope are quantised (packed GGUF
    blocks or int8: frozen buffers with no gradient), instead of silently training the rest."""
    from headcount.kernels.packed import PackedWeight
    from headcount.models.quant import Int8Weight

    for name, mod in model.named_modules():
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, (PackedWeight, Int8Weight)):
            continue
        if params == "all" or ".attn." in f".{name}.":
            kind = "packed GGUF" if isinstance(weight, PackedWeight) else "int8"
            raise ConfigError(
                f"training needs dense weights, but {name} holds {kind} quantised weights (frozen); "
                "load the model with dtype=torch.float32 (or bfloat16) to train it"
            )


def _loss(
    model: Decoder | Encoder,
    teacher: Decoder | Encoder | None,
    data: Objective,
    batch: Batch,
    kind: str,
) -> Tensor:
    if isinstance(model, Decoder) and kind == "kl+ce":  # one student forward for both
        assert teacher is not None
        ids = batch.ids.to(model.embed.weight.device)
        logits = model(ids).logits  # (B, T, V)
        ce = F.cross_entropy(at_least_fp32(logits[:, :-1].flatten(0, 1)), ids[:, 1:].flatten())
        return _kl(logits, teacher, ids) + ce
    parts = []
    if "kl" in kind:
        assert teacher is not None
        parts.append(distill_loss(model, teacher, batch))
    if "hidden" in kind:
        assert teacher is not None
        parts.append(hidden_loss(model, teacher, batch))
    if kind == "attention":
        assert teacher is not None
        parts.append(attention_loss(model, teacher, batch))
    if "ce" in kind:
        parts.append(data.loss(model, batch))
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


# ------------------------------------------------------------------------------- checkpoints
def _fingerprint(
    model: Decoder | Encoder,
    teacher: Decoder | Encoder | None,
    batches: list[Batch],
    loss: str,
    params: str,
    lr: float,
    warmup: int,
    weight_decay: float,
    grad_accum: int,
    clip: float,
    seed: int,
) -> dict[str, Any]:
    h = hashlib.sha256()
    for b in batches:
        h.update(b.ids.to(torch.int64).contiguous().numpy().tobytes())
        if b.mask is not None:
            h.update(b.mask.to(torch.uint8).contiguous().numpy().tobytes())
        h.update(str(b.pairs).encode())
    return {
        "model": model.config.to_dict(),
        "teacher": None if teacher is None else teacher.config.to_dict(),
        "data": h.hexdigest(),
        "loss": loss,
        "params": params,
        "lr": lr,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "grad_accum": grad_accum,
        "clip": clip,
        "seed": seed,
    }


def _save(
    path: Path,
    fingerprint: dict[str, Any],
    model: Decoder | Encoder,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    order: list[int],
    total: int | None,
    result: TrainResult,
    seconds: float,
    world: World | None = None,
) -> None:
    """Write the checkpoint to a temporary file and rename it over ``path`` (atomic); under
    torchrun, the sharded checkpoint beside it (`headcount.distributed.checkpoint`)."""
    from headcount.distributed import checkpoint as sharded

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": fingerprint,
        "batch_rng": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "order": list(order),
        "total": total,
        "step": result.steps,
        "tokens": result.tokens,
        "losses": list(result.losses),
        "tokens_seen": list(result.tokens_seen),
        "seconds": seconds,
    }
    if world is not None and world.distributed:
        sharded.save(path.parent, payload, model, opt, world, legacy=path)
        return
    payload.update(model=model.state_dict(), optimizer=opt.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sharded.remove(path.parent)  # a sharded checkpoint this run resumed from is now older


def _found(path: Path) -> Path | None:
    """The checkpoint in ``path.parent`` to resume: the file ``path`` (one process) or a sharded
    folder (torchrun), the one written last when both are there (a run stopped between writing
    its own and deleting the other's)."""
    from headcount.distributed import checkpoint as sharded

    folder = sharded.find(path.parent)
    if folder is None or not path.exists():
        return folder if folder is not None else (path if path.exists() else None)
    return folder if (folder / sharded.LOOP).stat().st_mtime > path.stat().st_mtime else path


def _restore(
    path: Path,
    fingerprint: dict[str, Any],
    model: Decoder | Encoder,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    result: TrainResult,
    world: World | None = None,
) -> tuple[list[int], int | None]:
    """Load the checkpoint at ``path`` (a file, or a sharded checkpoint's folder) into the model,
    optimizer, RNGs and ``result``."""
    from headcount.distributed import checkpoint as sharded

    if path.is_dir():
        ck = sharded.read_loop(path)
    else:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(ck, dict) or ck.get("format") != FORMAT or ck.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a headcount training checkpoint of version {VERSION}")
    old = ck["fingerprint"]
    differ = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if differ:
        detail = "; ".join(
            f"{k}: {_short(old.get(k))} then, {_short(fingerprint.get(k))} now" for k in differ
        )
        raise CheckpointError(f"{path} was written by a different run ({detail})")
    if path.is_dir():
        sharded.load(path, model, opt, world or World())
    else:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
    gen.set_state(ck["batch_rng"])
    torch.set_rng_state(ck["torch_rng"])
    result.steps, result.tokens = int(ck["step"]), int(ck["tokens"])
    result.losses, result.tokens_seen = list(ck["losses"]), list(ck["tokens_seen"])
    result.seconds = float(ck["seconds"])
    result.resumed_from = result.steps
    return list(ck["order"]), ck["total"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
