"""What each rank runs in the distributed tests (see `launch.run_ranks`).

``python -m tests.distributed.workers NAME OUT ARGS...``: joins the group from the environment,
runs the scenario, writes ``OUT/rank{r}.pt``. Errors go to stderr with exit code 3.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from headcount.distributed import DistributedError, World, init, shutdown

torch.set_num_threads(1)

TEXT = (
    "Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace from day to day, to the "
    "last syllable of recorded time; and all our yesterdays have lighted fools the way to dusty "
    "death. Out, out, brief candle! Life's but a walking shadow, a poor player, that struts and "
    "frets his hour upon the stage, and then is heard no more. It is a tale told by an idiot, "
    "full of sound and fury, signifying nothing."
)


def analysis_model(**overrides: object) -> torch.nn.Module:
    """A tiny Llama-shaped decoder (GQA, MHA, MQA layers) over ASCII characters."""
    from tests.heads.conftest import CharTokenizer
    from tests.prune.conftest import tiny_decoder

    model = tiny_decoder(vocab_size=128, max_len=64, **overrides)
    model.set_tokenizer(CharTokenizer())  # type: ignore[arg-type]
    return model


def analysis_config(tokens: int) -> object:
    from headcount.heads import AnalysisConfig

    return AnalysisConfig(chunk_len=24, max_tokens=tokens, induction_seqs=5, induction_len=6)


def run_analyze(world: World, tokens: str) -> dict:
    from headcount.heads import analyze

    res = analyze(analysis_model(), TEXT, config=analysis_config(int(tokens)), world=world)  # type: ignore[arg-type]
    return {"scores": res.scores, "meta": res.meta, "patterns": len(res.patterns)}


def importance_objective(tokens: int, window: int) -> object:
    from headcount.prune import LanguageModeling

    g = torch.Generator().manual_seed(1)
    return LanguageModeling(torch.randint(0, 40, (tokens,), generator=g), window=window)


def run_importance(world: World, tokens: str, window: str) -> dict:
    from headcount.prune import head_importance
    from tests.prune.conftest import tiny_decoder

    imp = head_importance(
        tiny_decoder(),
        importance_objective(int(tokens), int(window)),
        world=world,  # type: ignore[arg-type]
    )
    return {"heads": imp.heads, "groups": imp.groups, "n": imp.n_examples}


def run_dies(world: World) -> dict:
    """Rank 1 dies before the all_reduce; the others must fail, not hang."""
    if world.rank == 1:
        os._exit(17)
    world.all_sum([torch.ones(3)])
    return {}


def run_stalls(world: World) -> dict:
    """Rank 1 stays alive but never joins the all_reduce: the others time out."""
    if world.rank == 1:
        import time

        time.sleep(world.timeout + 4)  # then it fails too: the peer is gone
    world.all_sum([torch.ones(3)])
    return {}


def run_mismatch(world: World) -> dict:
    world.check_same("configuration", {"chunk": 512 if world.rank == 0 else 256})
    return {}


def run_sum(world: World) -> dict:
    t = torch.full((2, 3), float(world.rank + 1), dtype=torch.float64)
    world.all_sum([t])
    return {"sum": t, "part": list(world.part(5))}


# ----------------------------------------------------------------------------- tensor parallel
def tp_model(kind: str) -> torch.nn.Module:
    """``llama``: 2 layers of 9 query heads over 3 KV groups (SmolLM2's shape, tiny);
    ``pruned``: the same with heads removed, groups of different sizes per layer."""
    from tests.prune.conftest import tiny_decoder

    model = tiny_decoder(n_layers=2, n_heads=9, n_kv_heads=3, d_ff=48, max_len=32)
    if kind == "pruned":
        from headcount.prune import remove_heads

        keep = [torch.ones(9, dtype=torch.bool) for _ in range(2)]
        keep[0][[0, 3, 4, 8]] = False  # groups of 2, 1, 2 query heads
        keep[1][[0, 1, 3, 4]] = False  # groups of 1, 1, 3
        model = remove_heads(model, keep)
    return model


def tp_ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 40, (2, 12), generator=g)  # (B, T)


def tp_logits(model: torch.nn.Module) -> dict:
    """Logits of a prefill of all 12 ids, and of a prefill of 8 then 4 cached decode steps."""
    ids = tp_ids()
    with torch.no_grad():
        full = model(ids).logits  # (B, 12, V)
        cache = model.new_cache(batch_size=2, max_len=16)
        steps = [model(ids[:, :8], cache=cache).logits]
        for t in range(8, 12):
            steps.append(model(ids[:, t : t + 1], cache=cache).logits)
    kv = [c.k.shape[1] for c in cache]  # KV heads this rank caches, per layer
    return {"prefill": full, "decode": torch.cat(steps, dim=1), "kv_heads": kv}


def run_tp(world: World, kind: str, split: str) -> dict:
    from headcount.distributed.tensor_parallel import shard_heads

    model = shard_heads(tp_model(kind), world, split=split)  # type: ignore[arg-type]
    out = tp_logits(model)
    out["heads"] = [list(a.heads) for a in model.attention_layers()]  # type: ignore[attr-defined]
    return out


def run_tp_analyze(world: World) -> dict:
    """Analysis of the model of `analysis_model` (d_ff 48) sharded over the ranks."""
    from headcount.distributed.tensor_parallel import analyze_sharded, shard_heads

    model = shard_heads(analysis_model(d_ff=48), world)  # type: ignore[arg-type]
    res = analyze_sharded(model, TEXT, world, config=analysis_config(60))
    return {"scores": res.scores, "kv_groups": res.kv_groups, "roles": res.roles}


# ---------------------------------------------------------------------------------- training
class Stop(Exception):
    """Raised by a progress callback to interrupt training after a given step."""


def train_setup(kind: str) -> tuple:
    """A float64 student, its teacher and the training data for `train_args`.

    ``decoder``: a GQA->MQA converted tiny decoder distilled with ``kl+ce`` on windows of 12 tokens,
    batches of 3 rows (2 ranks take 2 and 1 rows, 3 ranks one each; the last batch has 2 rows);
    ``encoder``: a tiny encoder with ``hidden`` distillation (whole batches per rank) on padded
    sentence pairs, 3 batches per step."""
    from headcount.convert import convert
    from headcount.prune import Contrastive, LanguageModeling
    from headcount.prune.objectives import Batch
    from tests.prune.conftest import tiny_decoder, tiny_encoder

    g = torch.Generator().manual_seed(7)
    if kind == "decoder":
        teacher = tiny_decoder(torch.float64)
        data = LanguageModeling(torch.randint(0, 40, (12 * 8,), generator=g), 12, 3)
        return convert(teacher, 1, "mean"), teacher, data
    teacher = tiny_encoder(torch.float64)
    batches = []
    for _ in range(4):
        ids = torch.randint(0, 40, (6, 10), generator=g)
        mask = torch.arange(10)[None] < torch.randint(4, 11, (6, 1), generator=g)  # padded
        batches.append(Batch(ids, mask, 3))
    return convert(teacher, 1, "mean"), teacher, Contrastive.from_batches(batches)


def train_args(kind: str) -> dict:
    common = dict(steps=6, lr=1e-2, warmup=2, seed=3, checkpoint_every=3)
    if kind == "decoder":
        return dict(common, loss="kl+ce", grad_accum=2)
    return dict(common, loss="hidden", grad_accum=3, weight_decay=0.01)


def run_train(world: World, kind: str, ckpt: str, resume: str, stop: str) -> dict:
    """Train `train_setup(kind)`; ``stop`` > 0 interrupts after that step (the checkpoint of
    that step written); ``die`` > 0 ... see `run_train_dies`."""
    from headcount.prune.training import train

    student, teacher, data = train_setup(kind)

    def progress(step: int, loss: float, tokens: int, elapsed: float) -> None:
        if step == int(stop):
            raise Stop

    try:
        res = train(
            student,
            teacher,
            data,
            checkpoint_dir=ckpt,
            resume=resume == "resume",
            progress=progress,
            world=world,
            **train_args(kind),
        )
        out = {"losses": res.losses, "steps": res.steps, "resumed_from": res.resumed_from}
    except Stop:
        out = {"stopped": True}
    out["state"] = student.state_dict()
    return out


def run_train_dies(world: World) -> dict:
    """Rank 1 dies in the middle of training (after its second step)."""
    from headcount.prune.training import train

    student, teacher, data = train_setup("decoder")

    def progress(step: int, loss: float, tokens: int, elapsed: float) -> None:
        if step == 2 and world.rank == 1:
            os._exit(17)

    train(student, teacher, data, progress=progress, world=world, **train_args("decoder"))
    return {}


SCENARIOS = {
    "train": run_train,
    "train_dies": run_train_dies,
    "tp_analyze": run_tp_analyze,
    "analyze": run_analyze,
    "importance": run_importance,
    "dies": run_dies,
    "stalls": run_stalls,
    "mismatch": run_mismatch,
    "sum": run_sum,
    "tp": run_tp,
}


def main() -> int:
    name, out, *args = sys.argv[1:]
    try:
        world = init()
        try:
            result = SCENARIOS[name](world, *args)
            torch.save(result, Path(out) / f"rank{world.rank}.pt")
        finally:
            shutdown()
    except DistributedError as exc:
        print(f"DistributedError: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    code = main()  # an unexpected exception propagates as usual (traceback, exit status 1)
    # The group is left and the result saved: exit without interpreter finalisation, where gloo's
    # threads can race the teardown (SIGABRT, "terminate called without an active exception":
    # seen once, a rank of 3 on a loaded 2-core machine; the race of pytorch/pytorch#179291).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
