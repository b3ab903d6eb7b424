"""Check sparring's PairRM against the logits llm-blender publishes for its README example.

    python -m sparring.judges.pairrm_check MODEL_DIR [--device cuda] [--dtype fp32] [--tolerance 1e-3]

MODEL_DIR is a local copy of llm-blender/PairRM or llm-blender/PairRM-hf (or either hub id, if the local
Hugging Face cache holds it). The example and its logits are those of the PairRM-hf section of llm-blender's
README (github yuchenlin/LLM-Blender; also `pairrm_to_hf.ipynb`, whose cell output shows the same numbers
from both checkpoints): sources ["hello!", "I love you!"], candidates A ["hi!", "I hate you!"] and
B ["f**k off!", "I love you, too!"], logits [1.9003021717071533, -1.2547134160995483] (fp32; the
llm-blender `compare` path, fp16 on CUDA, printed [1.9, -1.255]). Exit status: 0 when every logit is within
the tolerance, 1 when one is not, 2 when the checkpoint cannot be loaded.

This cannot be run in sparring's tests or on its development machine: it needs the real 1.74 GB weights,
which those never download. Run it once on a machine that has them, with the default fp32.
"""

from __future__ import annotations

import argparse
import sys

from sparring.errors import UserError

README_EXAMPLE = (
    ["hello!", "I love you!"],
    ["hi!", "I hate you!"],
    ["f**k off!", "I love you, too!"],
)
PUBLISHED_LOGITS = (1.9003021717071533, -1.2547134160995483)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparring.judges.pairrm_check", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="llm-blender/PairRM or PairRM-hf checkpoint directory (or hub id)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="fp32", help="fp32 (default, as published), bf16 or fp16")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed |ours − published|")
    args = parser.parse_args(argv)

    import torch

    from sparring.judges.pairrm_model import load_pairrm

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = load_pairrm(args.model_dir, device=device, dtype=args.dtype)
    except UserError as exc:
        print(f"pairrm_check: error: {exc}", file=sys.stderr)
        return exc.exit_code
    ours = model.pair_logits(*README_EXAMPLE, batch_size=len(README_EXAMPLE[0]))
    print(f"checkpoint: {model.path} ({model.layout}), device {device}, dtype {model.dtype}")
    print(f"{'source':<14}{'A':<14}{'B':<20}{'sparring':>20}{'published':>20}{'|diff|':>12}")
    worst = 0.0
    for source, a, b, got, want in zip(*README_EXAMPLE, ours, PUBLISHED_LOGITS, strict=True):
        diff = abs(float(got) - want)
        worst = max(worst, diff)
        print(f"{source!r:<14}{a!r:<14}{b!r:<20}{float(got):>20.10f}{want:>20.10f}{diff:>12.2e}")
    ok = worst <= args.tolerance
    print(
        f"largest |diff| {worst:.2e} {'<=' if ok else '>'} tolerance {args.tolerance:g}: {'OK' if ok else 'MISMATCH'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
