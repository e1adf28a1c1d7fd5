"""Uptraining on tiny seeded models: the loss falls, an interrupted run resumes from its last
checkpoint to the same weights as an uninterrupted one, checkpoints are never half-written, and
bad input is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import headcount.prune.training as training
from headcount.convert import convert, uptrain
from headcount.errors import CheckpointError, ConfigError
from headcount.nn import key_padding_mask
from headcount.prune import Contrastive, LanguageModeling
from headcount.prune.objectives import Batch
from headcount.prune.training import attention_loss, distill_loss, hidden_loss
from tests.prune.conftest import tiny_decoder, tiny_encoder


@pytest.fixture
def ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 40, (384,), generator=g)


def _student_teacher():
    teacher = tiny_decoder()
    return convert(teacher, 1, "mean"), teacher


def _run(ids, tmp: Path | None = None, **kw):
    student, teacher = _student_teacher()
    args = dict(teacher=teacher, tokens=12 * 32, lr=3e-3, warmup=2, batch_size=2, window=16)
    args.update(kw)
    res = uptrain(student, ids, checkpoint_dir=tmp, **args)  # type: ignore[arg-type]
    return student, res


def test_distillation_and_cross_entropy_lower_the_loss(ids) -> None:
    student, teacher = _student_teacher()
    obj = LanguageModeling(ids, window=16, batch_size=4)
    batch = Batch(ids[:64].view(4, 16))
    with torch.no_grad():
        kl0 = float(distill_loss(student, teacher, batch))
        ce0 = float(obj.loss(student, batch))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen: list[tuple[int, float, int, float]] = []
    res = uptrain(
        student,
        ids,
        teacher=teacher,
        tokens=20 * 64,
        lr=3e-3,
        warmup=2,
        window=16,
        progress=lambda *a: seen.append(a),
    )
    with torch.no_grad():
        kl1 = float(distill_loss(student, teacher, batch))
    assert kl1 < 0.5 * kl0
    assert res.steps == 20 and res.tokens == 20 * 64 and res.stopped_by == "tokens"
    assert len(res.losses) == 20 and res.tokens_seen == [64 * (i + 1) for i in range(20)]
    assert [s[0] for s in seen] == list(range(1, 21)) and seen[-1][2] == 20 * 64
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert not student.training and all(p.requires_grad for p in student.parameters())
    # cross-entropy on the text alone, attention weights only, with gradient accumulation
    frozen = {k: v.clone() for k, v in student.state_dict().items() if ".attn." not in k}
    res = uptrain(
        student,
        ids,
        tokens=8 * 64,
        lr=3e-3,
        warmup=1,
        window=16,
        batch_size=2,
        grad_accum=2,
        params="attention",
    )
    with torch.no_grad():
        assert float(obj.loss(student, batch)) < ce0
    assert res.steps == 8 and res.tokens == 8 * 2 * 2 * 16
    assert all(torch.equal(student.state_dict()[k], v) for k, v in frozen.items())


def test_encoder_uptrains_toward_its_teacher() -> None:
    teacher = tiny_encoder()
    student = convert(teacher, 1, "mean")
    g = torch.Generator().manual_seed(2)
    batches = [
        Batch(torch.randint(0, 40, (8, 12), generator=g), torch.ones(8, 12, dtype=torch.bool), 4)
        for _ in range(4)
    ]
    obj = Contrastive.from_batches(batches)
    with torch.no_grad():
        d0 = float(distill_loss(student, teacher, batches[0]))
    res = uptrain(student, obj, teacher=teacher, tokens=30 * 96, lr=3e-3, warmup=2)
    with torch.no_grad():
        assert float(distill_loss(student, teacher, batches[0])) < 0.5 * d0
    assert res.steps == 30
    uptrain(student, obj, teacher=teacher, loss="kl+ce", tokens=96, lr=1e-3)


def _hidden_reference(student, teacher, ids, mask) -> float:
    """The layer-wise loss computed by hand in float64: run the layers one by one."""
    total = 0.0
    xs = [m.embeddings(ids, None).double() for m in (student, teacher)]
    kpm = key_padding_mask(mask)  # as Encoder.forward hands it to the layers
    for ls, lt in zip(student.double().layers, teacher.double().layers, strict=True):
        xs = [ls(xs[0], kpm, False)[0], lt(xs[1], kpm, False)[0]]
        m = mask[..., None].double()
        total += float(((xs[0] - xs[1]) ** 2 * m).sum() / (xs[1] ** 2 * m).sum())
    student.float(), teacher.float()
    return total / len(student.layers)


def test_hidden_state_distillation_matches_a_hand_computed_loss_and_trains() -> None:
    teacher = tiny_encoder()
    student = convert(teacher, 1, "mean")
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[1, 7:] = False  # a padded row: its padding must not count
    batch = Batch(torch.randint(0, 40, (4, 12), generator=g), mask, 2)
    with torch.no_grad():
        h0 = float(hidden_loss(student, teacher, batch))
        assert float(hidden_loss(teacher, teacher, batch)) == 0.0
        ref = _hidden_reference(student, teacher, batch.ids, mask)
    assert h0 == pytest.approx(ref, rel=1e-4) and h0 > 0
    obj = Contrastive.from_batches([batch] * 3)
    res = uptrain(student, obj, teacher=teacher, loss="hidden", tokens=20 * 43, lr=3e-3, warmup=2)
    with torch.no_grad():
        assert float(hidden_loss(student, teacher, batch)) < 0.5 * h0
    assert res.steps == 20
    uptrain(student, obj, teacher=teacher, loss="kl+hidden", tokens=43, lr=1e-3)
    # decoders: every layer's output too, and a teacher of another depth is refused
    dteacher = tiny_decoder()
    dstudent = convert(dteacher, 1, "mean")
    dbatch = Batch(torch.randint(0, 40, (2, 16), generator=g))
    with torch.no_grad():
        assert float(hidden_loss(dstudent, dteacher, dbatch)) > 0
    uptrain(dstudent, dbatch.ids.flatten(), teacher=dteacher, loss="hidden", tokens=32, window=16)
    shallow = tiny_decoder(n_layers=1, n_heads=(6,), n_kv_heads=(2,))
    with pytest.raises(ConfigError, match="pairs the layers"):
        uptrain(
            dstudent, dbatch.ids.flatten(), teacher=shallow, loss="hidden", tokens=32, window=16
        )
    with pytest.raises(ConfigError, match="teacher"):
        uptrain(dstudent, dbatch.ids.flatten(), loss="hidden", tokens=32, window=16)


class Stop(Exception):
    pass


def _stop_after(k: int):
    def progress(step: int, loss: float, tokens: int, elapsed: float) -> None:
        if step == k:
            raise Stop

    return progress


@pytest.mark.parametrize("interrupt", [Stop, KeyboardInterrupt])
def test_an_interrupted_run_resumes_to_the_same_weights(ids, tmp_path: Path, interrupt) -> None:
    full, res_full = _run(ids, tmp_path / "a", checkpoint_every=4, loss="kl+ce")
    assert res_full.steps == 12 and (tmp_path / "a" / "uptrain.pt").exists()

    def stop(step: int, loss: float, tokens: int, elapsed: float) -> None:
        if step == 7:
            raise interrupt

    with pytest.raises(interrupt):
        _run(ids, tmp_path / "b", checkpoint_every=4, loss="kl+ce", progress=stop)
    ck = torch.load(tmp_path / "b" / "uptrain.pt", weights_only=True)
    assert ck["step"] == 4  # the last checkpoint before the interruption
    rng = torch.get_rng_state()
    resumed, res = _run(ids, tmp_path / "b", checkpoint_every=4, loss="kl+ce", resume=True)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is left alone
    assert res.resumed_from == 4 and res.steps == 12 and res.tokens == res_full.tokens
    assert res.losses == res_full.losses and res.tokens_seen == res_full.tokens_seen
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path / "b")) == ["uptrain.pt"]  # no temporary files left


def test_a_failed_write_leaves_the_previous_checkpoint(ids, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(Stop):
        _run(ids, tmp_path, checkpoint_every=2, progress=_stop_after(3))
    path = tmp_path / "uptrain.pt"
    good = path.read_bytes()
    real_save = torch.save

    def broken(obj, f, *a, **kw):  # writes half a checkpoint, then the disk "fails"
        real_save({"partial": torch.zeros(1000)}, f)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training.torch, "save", broken)
    with pytest.raises(OSError, match="No space"):
        _run(ids, tmp_path, checkpoint_every=2, resume=True)
    assert path.read_bytes() == good and sorted(os.listdir(tmp_path)) == ["uptrain.pt"]
    monkeypatch.setattr(training.torch, "save", real_save)
    _, res = _run(ids, tmp_path, checkpoint_every=2, resume=True)  # still resumes from step 2
    assert res.resumed_from == 2 and res.steps == 12


def test_bad_input(ids, tmp_path: Path) -> None:
    student, teacher = _student_teacher()
    for kw, message in [
        ({}, "give a training budget"),
        ({"tokens": 0}, "tokens must be a positive integer, got 0"),
        ({"tokens": -5}, "tokens must be a positive integer"),
        ({"minutes": 0}, "minutes must be > 0"),
        ({"minutes": -1.0}, "minutes must be > 0"),
        ({"tokens": 64, "loss": "mse"}, "loss must be one of kl, ce, kl\\+ce"),
        ({"tokens": 64, "params": "mlp"}, "params must be"),
        ({"tokens": 64, "grad_accum": 0}, "grad_accum must be a positive integer"),
        ({"tokens": 64, "lr": 0.0}, "lr must be > 0"),
        ({"tokens": 64, "resume": True}, "needs the checkpoint_dir"),
        ({"tokens": 64, "batch_size": 0}, "batch_size must be a positive integer"),
    ]:
        with pytest.raises(ConfigError, match=message):
            uptrain(student, ids, teacher=teacher, window=16, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="teacher="):
        uptrain(student, ids, loss="kl", tokens=64, window=16)
    with pytest.raises(ConfigError, match="differ"):
        uptrain(student, ids, teacher=tiny_encoder(), tokens=64, window=16)
    with pytest.raises(ConfigError, match="objective batches itself"):
        uptrain(student, LanguageModeling(ids), tokens=64, batch_size=2)
    _run(ids, tmp_path, tokens=64)
    with pytest.raises(ConfigError, match="holds the checkpoint of an earlier run"):
        _run(ids, tmp_path, tokens=64)
    with pytest.raises(CheckpointError, match=r"different run \(lr: 0.003 then, 0.001 now"):
        _run(ids, tmp_path, tokens=64, lr=1e-3, resume=True)
    (tmp_path / "uptrain.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        _run(ids, tmp_path, tokens=64, resume=True)


def test_attention_distillation_matches_a_hand_computed_loss_and_trains() -> None:
    """Each student attention layer sees the teacher's input to that layer (layer-local)."""
    teacher = tiny_encoder()
    student = convert(teacher, 1, "mean")
    g = torch.Generator().manual_seed(4)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[2, 6:] = False
    batch = Batch(torch.randint(0, 40, (3, 10), generator=g), mask, 1)
    with torch.no_grad():
        a0 = float(attention_loss(student, teacher, batch))
        assert float(attention_loss(teacher, teacher, batch)) == 0.0
        # by hand in float64: the teacher's layers one by one, each student attention on the
        # teacher's own input to that layer
        kpm, m = key_padding_mask(mask), mask[..., None].double()
        x = teacher.double().embeddings(batch.ids, None)
        ref = 0.0
        for lt, ls in zip(teacher.layers, student.double().layers, strict=True):
            t_out, s_out = lt.attn(x, attention_mask=kpm), ls.attn(x, attention_mask=kpm)
            ref += float(((s_out - t_out) ** 2 * m).sum() / (t_out**2 * m).sum())
            x = lt(x, kpm, False)[0]
        teacher.float(), student.float()
    assert a0 == pytest.approx(ref / len(teacher.layers), rel=1e-4) and a0 > 0
    before = {k: v.clone() for k, v in student.state_dict().items() if ".attn." not in k}
    obj = Contrastive.from_batches([batch] * 3)
    uptrain(student, obj, teacher=teacher, loss="attention", tokens=20 * 26, lr=3e-3, warmup=2)
    with torch.no_grad():
        assert float(attention_loss(student, teacher, batch)) < 0.5 * a0
    assert all(torch.equal(student.state_dict()[k], v) for k, v in before.items())
    # decoders (positions and RoPE go through the captured arguments)
    dteacher = tiny_decoder()
    dstudent = convert(dteacher, 1, "mean")
    dbatch = Batch(torch.randint(0, 40, (2, 16), generator=g))
    with torch.no_grad():
        d0 = float(attention_loss(dstudent, dteacher, dbatch))
    ids = dbatch.ids.flatten()
    uptrain(dstudent, ids, teacher=dteacher, loss="attention", tokens=10 * 32, window=16, lr=3e-3)
    with torch.no_grad():
        assert 0 < float(attention_loss(dstudent, dteacher, dbatch)) < d0


def test_quantised_weights_in_the_trained_scope_are_refused(ids) -> None:
    """Packed GGUF blocks and int8 weights are frozen buffers: training them is refused by name,
    not silently skipped while the rest trains."""
    from gguf import GGMLQuantizationType, quantize

    from headcount.kernels.packed import PackedLinear, PackedWeight
    from headcount.models.quant import quantize_int8

    student, teacher = _student_teacher()
    quantize_int8(student)
    with pytest.raises(ConfigError, match=r"layers\.0\.attn\.qkv_proj holds int8"):
        uptrain(student, ids, teacher=teacher, tokens=32, window=16)
    student, teacher = _student_teacher()
    mlp = student.layers[1].mlp.down  # (24, 32): K = 32, one Q4_1 block a row
    rows = quantize(mlp.weight.detach().numpy(), GGMLQuantizationType.Q4_1)
    student.layers[1].mlp.down = PackedLinear(
        PackedWeight.from_gguf(rows, int(GGMLQuantizationType.Q4_1), 32)
    )
    with pytest.raises(ConfigError, match=r"layers\.1\.mlp\.down holds packed GGUF"):
        uptrain(student, ids, teacher=teacher, tokens=32, window=16, params="all")
    # attention-only training leaves the packed MLP alone and runs
    res = uptrain(student, ids, teacher=teacher, tokens=32, window=16, params="attention")
    assert res.steps >= 1
