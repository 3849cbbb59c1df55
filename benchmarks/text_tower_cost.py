"""Cost of fine-tuning the text tower: training samples/s of the CTR model with a frozen tower
(precomputed text vectors only) against text_tower=lora and text_tower=top_layers, on the same
slice of synthetic samples, one torch thread, the same batches. Prints each ratio to frozen.

    .venv/bin/python benchmarks/text_tower_cost.py [--quick]

The forward/backward step is what differs between the settings; Ray Train adds the same
per-batch overhead to each, so this measures the loop's compute without it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    ap.add_argument("--samples", type=int, default=None, help="training samples per setting")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=32)
    args = ap.parse_args()
    n_samples = args.samples or (128 if args.quick else 1024)

    from rank_helpers import build_case, sample_tables

    from ltray.config import RankConfig, load_config
    from ltray.data.synthetic import generate
    from ltray.rank import FeatureBuilder
    from ltray.rank.model import CTRModel, bce_loss
    from ltray.rank.text_tower import ItemTokens, load_tokenizer

    torch.set_num_threads(1)
    small = load_config(overrides=["data.synthetic.n_items=600", "data.synthetic.n_users=300",
                                   "data.synthetic.interactions_per_user=25"])
    data = generate(small.data.synthetic)
    base = RankConfig(id_buckets=4096, text_dim=16, text_tower_max_length=args.max_length)
    ctx, train_pos, val_pos, cands, history = build_case(data, context_fraction=0.6)
    train, _ = sample_tables(ctx, train_pos, val_pos, cands, history, base)
    train = train.iloc[:n_samples]
    builder = FeatureBuilder(base).fit(ctx, np.flatnonzero(ctx.item_pop > 0), table=train)
    feats = builder.build(ctx, train)
    labels = train["label"].to_numpy(np.float32).copy()
    tokens = ItemTokens.from_texts(data.items["text"].tolist(), load_tokenizer(None), args.max_length)
    print(f"{len(train)} samples, batch {args.batch}, max_length {args.max_length}, "
          f"mean item tokens {tokens.lengths.mean():.1f}, 1 torch thread")

    settings = [("frozen", {}), ("lora", {"lora_rank": 8}), ("top_layers", {"text_tower_layers": 1}),
                ("top_layers", {"text_tower_layers": 2})]
    rows = []
    for mode, extra in settings:
        cfg = base.model_copy(update={"text_tower": mode, **extra})
        torch.manual_seed(0)
        model = CTRModel.for_features(builder.spec(), cfg, sparse_embeddings=True)
        opts = model.optimizers(cfg.lr, cfg.weight_decay, tower_lr=cfg.text_tower_lr)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        model.train()
        t0 = time.perf_counter()
        for start in range(0, len(train), args.batch):
            sl = slice(start, start + args.batch)
            extra_in = ()
            if model.text_tower is not None:
                extra_in = tokens.batch(train["item_idx"].to_numpy()[sl])
            logits = model(torch.from_numpy(feats["user_hash"][sl]), torch.from_numpy(feats["item_hash"][sl]),
                           torch.from_numpy(feats["dense"][sl]), *extra_in)
            loss = bce_loss(logits, torch.from_numpy(labels[sl]))
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
        secs = time.perf_counter() - t0
        label = mode + (f"({extra['text_tower_layers']})" if "text_tower_layers" in extra else "")
        rows.append((label, trainable, len(train) / secs))
    frozen_rate = rows[0][2]
    print(f"{'setting':<14}{'trainable params':>18}{'samples/s':>12}{'vs frozen':>11}")
    for label, trainable, rate in rows:
        print(f"{label:<14}{trainable:>18,}{rate:>12.1f}{rate / frozen_rate:>10.4f}x")


if __name__ == "__main__":
    main()
