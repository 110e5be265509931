"""The deployable system end to end (issue 22): the model that `evaluate` scored captions new photos through
`captionbeam bulk` and through its export, and both give the captions `evaluate` gave for the same images.

    python benchmarks/flickr8k_deploy.py --model-dir M --predictions EVAL.jsonl --images-dir DIR \
        [--limit 200] [--beam-size 3] [--length-penalty 0] [--work DIR]

``EVAL.jsonl`` is `captionbeam evaluate --output` for the test split with the same decoding. The first
``--limit`` of its images are copied (as a user's new photos) into ``WORK/photos``; `bulk` captions them
(features computed from the JPEGs by the model's own encoder: the path new photos take) and the export
(one SavedModel, image bytes in) captions the same bytes. Prints the agreement with `evaluate` and the
rates, and the first disagreements. Features in `evaluate` came from the `features` job: the same encoder
and preprocessing, so captions differ only where float rounding flips a near-tie.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import time


def read_jsonl(path: str):
    from captionbeam.model import jsonl
    with open(path) as f:
        return jsonl.loads(f.read(), source=path)


def agreement(reference: dict, other: dict):
    ids = sorted(set(reference) & set(other))
    same = [i for i in ids if reference[i] == other[i]]
    return len(same), len(ids), [(i, reference[i], other[i]) for i in ids if reference[i] != other[i]]


def run_bulk(cb: str, model_dir: str, photos: str, out: str, beam: int, lp: float) -> float:
    t0 = time.monotonic()
    subprocess.run([cb, "bulk", "--images", f"{photos}/*.jpg", "--model-dir", model_dir, "--output", out,
                    "--beam-size", str(beam), "--length-penalty", str(lp), "--log-level", "WARNING"], check=True)
    return time.monotonic() - t0


def bulk_captions(out: str) -> dict:
    rows = [r for f in sorted(glob.glob(f"{out}/captions/*.jsonl")) for r in read_jsonl(f)]
    return {r["image_id"]: r["caption"] for r in rows}


def export_captions(cb: str, model_dir: str, export_dir: str, paths, beam: int, lp: float, batch: int = 32):
    subprocess.run([cb, "export", "--model-dir", model_dir, "--output", export_dir, "--beam-size", str(beam),
                    "--length-penalty", str(lp), "--overwrite", "--log-level", "WARNING"], check=True)
    import tensorflow as tf
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    captions, t0 = {}, time.monotonic()
    for i in range(0, len(paths), batch):
        chunk = paths[i:i + batch]
        out = serve(images=tf.constant([open(p, "rb").read() for p in chunk]))
        for p, c, ok in zip(chunk, out["captions"].numpy(), out["valid"].numpy()):
            if ok:
                captions[os.path.splitext(os.path.basename(p))[0]] = c.decode()
    return captions, time.monotonic() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--predictions", required=True, help="evaluate's predictions (JSON lines) for the test split")
    p.add_argument("--images-dir", required=True, help="where <image_id>.jpg are (../shared/data/flickr8k/images)")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--length-penalty", type=float, default=0.0)
    p.add_argument("--work", default="work/deploy")
    p.add_argument("--captionbeam", default=os.path.join(os.path.dirname(sys.executable), "captionbeam"))
    args = p.parse_args(argv)
    rows = read_jsonl(args.predictions)[: args.limit]
    evaluated = {os.path.splitext(r["image_id"])[0]: r["caption"] for r in rows}
    photos = os.path.join(args.work, "photos")
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(photos)
    for iid in evaluated:   # ids are file names without the extension
        shutil.copyfile(os.path.join(args.images_dir, iid + ".jpg"), os.path.join(photos, iid + ".jpg"))
    paths = sorted(glob.glob(f"{photos}/*.jpg"))

    seconds = run_bulk(args.captionbeam, args.model_dir, photos, os.path.join(args.work, "bulk"),
                       args.beam_size, args.length_penalty)
    bulk = {os.path.splitext(k)[0]: v for k, v in bulk_captions(os.path.join(args.work, "bulk")).items()}
    same, n, diff = agreement(evaluated, bulk)
    print(f"bulk: {len(bulk)} of {len(paths)} photos captioned in {seconds:.0f} s "
          f"({len(paths) / seconds:.1f} images/s incl. start-up); same caption as evaluate: {same}/{n}")
    for i, a, b in diff[:5]:
        print(f"  {i}: evaluate {a!r} | bulk {b!r}")

    served, seconds = export_captions(args.captionbeam, args.model_dir, os.path.join(args.work, "export"), paths,
                                      args.beam_size, args.length_penalty)
    same, n, diff = agreement(evaluated, served)
    print(f"export: {len(served)} of {len(paths)} photos captioned in {seconds:.0f} s "
          f"({len(paths) / seconds:.1f} images/s); same caption as evaluate: {same}/{n}")
    for i, a, b in diff[:5]:
        print(f"  {i}: evaluate {a!r} | export {b!r}")
    same, n, _ = agreement(bulk, served)
    print(f"bulk vs export: {same}/{n} identical; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
