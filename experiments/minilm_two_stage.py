"""Two-stage uptraining of a converted MiniLM (issue 9): layer-local attention distillation,
then end-to-end distillation of all weights, printing the held-out embedding cosine as it goes.

    python experiments/minilm_two_stage.py KV LOSS LR TOKENS
    python experiments/minilm_two_stage.py 6 hidden 3e-5 200000

Stage 1: `convert(minilm, KV, "fit")` on 40K characters of Othello, then `uptrain` with
``loss="attention"`` (attention weights, AdamW 1e-3, 300K tokens). Stage 2: `uptrain` with
``LOSS`` on all weights at ``LR`` for ``TOKENS`` tokens. Training text: the calibration plays
minus Macbeth; quality: mean cosine of the embeddings of Macbeth's first 512 lines to the
original model's (as `experiments/conversion.py`).
"""

from __future__ import annotations

import sys
import time

import torch
from common import log, play

import headcount
from headcount.convert import convert, uptrain
from headcount.loaders.corpus import plays
from headcount.prune import Contrastive, embedding_cosine, sentence_pairs


def main() -> int:
    kv, loss2, lr2, tokens2 = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(2)
    m = headcount.load("minilm")
    train = "\n".join(play(p) for p in plays("calibration") if p != "macbeth")
    sentences = [a for a, _ in sentence_pairs(play("macbeth"))][:512]
    ref = m.embed(sentences)
    s = convert(m, kv, "fit", calibration=play("othello")[:40000])
    log(f"fit GQA-{kv}: cosine {embedding_cosine(s, ref, sentences):.4f}")
    t0 = time.time()
    obj = Contrastive(m, sentence_pairs(train), batch_size=16)
    uptrain(s, obj, teacher=m, loss="attention", params="attention", lr=1e-3, tokens=300_000)
    log(f"stage 1 (attention, 300K tokens): cosine {embedding_cosine(s, ref, sentences):.4f}, "
        f"{(time.time() - t0) / 60:.1f} min")

    def progress(step: int, loss: float, tokens: int, elapsed: float) -> None:
        if step % 100 == 0:
            q = embedding_cosine(s, ref, sentences)
            log(f"stage 2 step {step} tokens {tokens:,} loss {loss:.4f} cosine {q:.4f}")

    uptrain(s, obj, teacher=m, loss=loss2, params="all", lr=lr2, tokens=tokens2,
            progress=progress, seed=1)
    log(f"stage 2 ({loss2}, {tokens2:,} tokens): cosine {embedding_cosine(s, ref, sentences):.4f}, "
        f"{(time.time() - t0) / 60:.1f} min in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
