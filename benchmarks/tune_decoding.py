"""Choose beam width and length penalty on the **dev** split only (issue 22.4).

    python benchmarks/tune_decoding.py --model-dir M --data D --references CAPTIONS \
        [--beams 1,2,3,5] [--length-penalties 0,0.5,1] [--output FILE.json]

Decodes dev once per (beam width, length penalty) with ``captionbeam evaluate`` (one process at a time:
the machine has 2 cores), scores BLEU-4 and CIDEr-D against the original references, prints a table and
writes the grid plus the choice (highest dev CIDEr-D, ties to the smaller beam) as JSON. Greedy decoding
ignores the length penalty, so it is decoded once. The test split is never read here.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple


def parse_floats(text: str) -> List[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def grid(beams: Sequence[int], penalties: Sequence[float]) -> List[Tuple[int, float]]:
    """(beam, penalty) pairs; greedy once (the penalty only ranks beam hypotheses)."""
    pairs = []
    for b in beams:
        for p in ([0.0] if b == 1 else penalties):
            pairs.append((b, p))
    return pairs


def choose(rows: Sequence[Dict]) -> Dict:
    """The row with the highest dev CIDEr-D; ties go to the smaller beam, then the smaller penalty."""
    return max(rows, key=lambda r: (round(r["cider_d"], 4), -r["beam"], -r["length_penalty"]))


def evaluate(cb: str, args, beam: int, penalty: float, out_dir: str) -> Dict:
    out = os.path.join(out_dir, f"dev-beam{beam}-lp{penalty}.jsonl")
    cmd = [cb, "evaluate", "--model-dir", args.model_dir, "--data", args.data, "--split", args.split,
           "--beam-size", str(beam), "--length-penalty", str(penalty), "--references", args.references,
           "--bleu-tokenizer", "basic", "--coco-metrics", "bleu,cider", "--output", out, "--json",
           "--log-level", "WARNING"] + (["--limit", str(args.limit)] if args.limit else [])
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"evaluate failed (beam {beam}, length penalty {penalty}):\n{proc.stderr[-2000:]}")
    report = json.loads([l for l in proc.stdout.splitlines() if l.startswith("{")][-1])
    from captionbeam.model import jsonl
    with open(out) as f:
        lengths = [len(r["caption"].split()) for r in jsonl.loads(f.read(), source=out)]
    return {"beam": beam, "length_penalty": penalty, "bleu4": report["bleu4"],
            "cider_d": report["coco"]["CIDEr"], "mean_words": sum(lengths) / max(len(lengths), 1),
            "seconds": round(time.monotonic() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--references", required=True)
    p.add_argument("--split", default="dev")
    p.add_argument("--beams", default="1,2,3,5")
    p.add_argument("--length-penalties", default="0,0.5,1")
    p.add_argument("--limit", type=int, help="decode only the first N dev images (smoke runs)")
    p.add_argument("--output", help="write the grid and the choice as JSON here")
    p.add_argument("--captionbeam", default=os.path.join(os.path.dirname(sys.executable), "captionbeam"))
    args = p.parse_args(argv)
    if args.split == "test":
        p.error("--split test: decoding choices are made on dev; the test split is scored once per row")
    pairs = grid([int(b) for b in parse_floats(args.beams)], parse_floats(args.length_penalties))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (b, lp) in enumerate(pairs, 1):
            rows.append(evaluate(args.captionbeam, args, b, lp, tmp))
            r = rows[-1]
            print(f"[{i}/{len(pairs)}] beam {b} lp {lp}: BLEU-4 {r['bleu4']:.3f} CIDEr-D {r['cider_d']:.3f} "
                  f"({r['mean_words']:.1f} words, {r['seconds']:.0f} s)", flush=True)
    best = choose(rows)
    print(f"\n{args.split} split, {args.model_dir}")
    print("| beam | length penalty | BLEU-4 | CIDEr-D | mean words |")
    print("|---|---|---|---|---|")
    for r in rows:
        mark = " **(chosen)**" if r is best else ""
        print(f"| {r['beam']} | {r['length_penalty']:g} | {r['bleu4']:.3f} | {r['cider_d']:.3f}{mark} | "
              f"{r['mean_words']:.1f} |")
    print(f"load average: {os.getloadavg()[0]:.1f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"split": args.split, "model_dir": args.model_dir, "grid": rows, "chosen": best}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
