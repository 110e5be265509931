#!/usr/bin/env bash
# The README's Flickr8k results table: the whole chain on ../shared/data/flickr8k with the standard
# 6,000 / 1,000 / 1,000 splits, MobileNet v1 1.0 ImageNet features (the best encoder available offline:
# VGG16 weights cannot be had on these machines), merge / inject / attention, greedy and beam search.
#
#   bash benchmarks/flickr8k.sh [WORKDIR]        # default work/flickr8k; each stage skips when done
#
# Environment: ENCODERS (default "mobilenet $MAP_ENCODER": the feature sets to build), MAP_ENCODER (default
# mobilenet-conv: the 7x7 map attention / transformer rows read, e.g. mobilenet_v2-conv), EPOCHS (default 12; early stopping on dev loss usually ends sooner), EPOCHS_inject (default 24:
# inject's dev loss still fell at epoch 12), BATCH (default 64), BEAM (default 3),
# ARCHS ("merge inject attention transformer"), FLAGS_transformer (its sizes), SCST_ARCHS ("attention transformer":
# self-critical fine-tuning of those cross-entropy models, rows "<arch>-scst"), SCST_EPOCHS x SCST_STEPS steps
# (default 4 x 40: a bounded run, validated on dev CIDEr-D after each 40 steps), SCST_BATCH images per step
# (default 32, x 5 samples each), SCST_LR (default 5e-5, the flag's own default), SCST_NAME (model dir / row
# suffix, default scst). The README's longer row: SCST_ARCHS=transformer SCST_EPOCHS=12 SCST_NAME=scst-long.
# SEED (default 42: the training seed) and SUFFIX (default empty: appended to the model names, e.g. SUFFIX=-s7 for
# a second seed of the same systems). ENSEMBLE ("NAME=MEMBER MEMBER ...": model names under WORKDIR/models) adds an
# ensemble row; TUNED (model or ensemble names) adds, for each, a row decoded with the beam width and length
# penalty chosen on dev by benchmarks/tune_decoding.py (eval/NAME-tuned.jsonl; the choice in WORKDIR/tune-NAME.json).
# Tuning (epochs, early stopping, beam width) looks at the dev split only; test is scored once per row.
set -euo pipefail
cd "$(dirname "$0")/.."
CB=${CB:-.venv/bin/captionbeam}
SHARED=${SHARED:-../shared}
F8K=$SHARED/data/flickr8k
W=${1:-work/flickr8k}
EPOCHS=${EPOCHS:-12}
EPOCHS_inject=${EPOCHS_inject:-24}
BATCH=${BATCH:-64}
BEAM=${BEAM:-3}
ARCHS=${ARCHS-merge inject attention transformer}   # ARCHS= (empty): no cross-entropy rows
FLAGS_transformer=${FLAGS_transformer:---units 256 --embedding-dim 256 --layers 2 --heads 4 --ffn-units 1024 --dropout 0.3 --learning-rate 5e-4}
SCST_ARCHS=${SCST_ARCHS-attention transformer}   # SCST_ARCHS= (empty): no SCST rows
SCST_NAME=${SCST_NAME:-scst}
SCST_EPOCHS=${SCST_EPOCHS:-4}
SCST_STEPS=${SCST_STEPS:-40}
SCST_BATCH=${SCST_BATCH:-32}
SCST_LR=${SCST_LR:-5e-5}
SEED=${SEED:-42}
SUFFIX=${SUFFIX:-}
ENSEMBLE=${ENSEMBLE:-}
TUNED=${TUNED:-}
MAP_ENCODER=${MAP_ENCODER:-mobilenet-conv}
mkdir -p "$W/keras/models" "$W/logs" "$W/stages"
# Offline ImageNet weights: Keras looks in $KERAS_HOME/models before downloading.
cp -n "$SHARED"/models/keras/*.h5 "$W/keras/models/"
export KERAS_HOME=$(cd "$W/keras" && pwd)
SPLITS=(--split "train=$F8K/text/Flickr_8k.trainImages.txt" --split "dev=$F8K/text/Flickr_8k.devImages.txt"
        --split "test=$F8K/text/Flickr_8k.testImages.txt")

stage() {  # stage NAME COMMAND...: run unless $W/stages/NAME.done exists; log to $W/logs/NAME.log
  local name=$1; shift
  local done=$W/stages/$name.done
  if [ -e "$done" ]; then echo "== $name: done earlier ($done)"; return; fi
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" > "$W/logs/$name.log" 2>&1 || { echo "== $name FAILED: see $W/logs/$name.log"; tail -n 20 "$W/logs/$name.log"; exit 1; }
  grep -v -E "^(WARNING|I0000|W0000)|BatchElements statistics" "$W/logs/$name.log" | tail -n 8
  echo "$((SECONDS - t0))" > "$done"
  echo "== $name: $((SECONDS - t0)) s"
}

for enc in ${ENCODERS:-mobilenet $MAP_ENCODER}; do
  stage "features-$enc" \
    $CB features --images "$F8K/images/*.jpg" --output "$W/features-$enc" --encoder "$enc" \
      --weights imagenet --batch-size 64
  stage "captions-$enc" \
    $CB captions --captions "$F8K/text/Flickr8k.token.txt" "${SPLITS[@]}" --features "$W/features-$enc" \
      --output "$W/data-$enc" --clean basic --min-count 5
done

data_for() {  # the records an architecture reads: the 7x7 map for attention / transformer, pooled vectors otherwise
  case $1 in attention*|transformer*) echo "$W/data-$MAP_ENCODER";; *) echo "$W/data-mobilenet";; esac
}

evaluate_row() {  # evaluate_row MODEL_NAME: test split, greedy and beam $BEAM, scored once each
  local arch=$1 data; data=$(data_for "$1")
  for k in 1 "$BEAM"; do
    stage "evaluate-$arch-beam$k" \
      $CB evaluate --model-dir "$W/models/$arch" --data "$data" --split test --beam-size "$k" \
        --references "$F8K/text/Flickr8k.token.txt" --bleu-tokenizer basic --output "$W/eval/$arch-beam$k.jsonl" --json
    # BLEU on the classic tutorial's cleaned tokens (its clean_descriptions on both sides: no "a", no punctuation)
    stage "score-seed-$arch-beam$k" \
      $CB score --predictions "$W/eval/$arch-beam$k.jsonl" --references "$F8K/text/Flickr8k.token.txt" \
        --image-ids "$F8K/text/Flickr_8k.testImages.txt" --bleu-tokenizer seed --no-coco --json
  done
}

for arch in $ARCHS; do
  data=$(data_for "$arch")
  epochs_var=EPOCHS_$arch; epochs=${!epochs_var:-$EPOCHS}
  flags_var=FLAGS_$arch; flags=${!flags_var:-}
  # shellcheck disable=SC2086
  stage "train-$arch$SUFFIX" \
    $CB train --data "$data" --model-dir "$W/models/$arch$SUFFIX" --arch "$arch" --epochs "$epochs" \
      --batch-size "$BATCH" --early-stopping-patience 3 --log-every 200 --seed "$SEED" $flags
  evaluate_row "$arch$SUFFIX"
done

for arch in $SCST_ARCHS; do
  stage "train-$arch$SUFFIX-$SCST_NAME" \
    $CB train --objective scst --init-from "$W/models/$arch$SUFFIX" --data "$(data_for "$arch")" \
      --model-dir "$W/models/$arch$SUFFIX-$SCST_NAME" --epochs "$SCST_EPOCHS" --steps-per-epoch "$SCST_STEPS" \
      --batch-size "$SCST_BATCH" --samples 5 --learning-rate "$SCST_LR" --early-stopping-patience 0 --log-every 10 \
      --seed "$SEED"
  evaluate_row "$arch$SUFFIX-$SCST_NAME"
done

if [ -n "$ENSEMBLE" ]; then  # ENSEMBLE="NAME=MEMBER MEMBER ...": one directory, decoded as one model everywhere
  name=${ENSEMBLE%%=*}; members=()
  for m in ${ENSEMBLE#*=}; do members+=(--member "$W/models/$m"); done
  stage "ensemble-$name" $CB ensemble "${members[@]}" --output "$W/models/$name"
fi

for name in $TUNED; do  # decoding chosen on dev only, then the test split scored once with that choice
  stage "tune-$name" \
    .venv/bin/python benchmarks/tune_decoding.py --model-dir "$W/models/$name" --data "$(data_for "$name")" \
      --references "$F8K/text/Flickr8k.token.txt" --beams 1,2,3,5 --length-penalties 0,1 --output "$W/tune-$name.json"
  read -r beam lp < <(.venv/bin/python -c "import json,sys; c=json.load(open(sys.argv[1]))['chosen']; \
print(c['beam'], c['length_penalty'])" "$W/tune-$name.json")
  stage "evaluate-$name-tuned" \
    $CB evaluate --model-dir "$W/models/$name" --data "$(data_for "$name")" --split test --beam-size "$beam" \
      --length-penalty "$lp" --references "$F8K/text/Flickr8k.token.txt" --bleu-tokenizer basic \
      --output "$W/eval/$name-tuned.jsonl" --json
done

.venv/bin/python - "$W" <<'PY'
import json, pathlib, sys
w = pathlib.Path(sys.argv[1])
def last_json(path):
    lines = [l for l in path.read_text().splitlines() if l.startswith("{")] if path.exists() else []
    return json.loads(lines[-1]) if lines else {}
print("| model | decoding | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr-D | BLEU-1 / BLEU-4, tutorial tokens |")
print("|---|---|---|---|---|---|---|---|---|---|")
for f in sorted((w / "eval").glob("*.metrics.json")):
    m = json.loads(f.read_text()); c = m.get("coco", {})
    name = f.name[: -len(".metrics.json")]
    arch, dec = name.rsplit("-", 1)
    label = "greedy" if dec == "beam1" else "beam " + dec[4:]
    tune = w / f"tune-{arch}.json"
    if dec == "tuned" and tune.exists():
        choice = json.loads(tune.read_text())["chosen"]
        label = f"beam {choice['beam']}, length penalty {choice['length_penalty']:g} (chosen on dev)"
    seed = last_json(w / "logs" / f"score-seed-{name}.log")
    vals = [m.get(f"bleu{i}") for i in range(1, 5)] + [c.get("METEOR"), c.get("ROUGE_L"), c.get("CIDEr")]
    cells = ["-" if v is None else f"{v:.3f}" for v in vals] + [f"{seed['bleu1']:.3f} / {seed['bleu4']:.3f}" if seed else "-"]
    print(f"| {arch} | {label} | " + " | ".join(cells) + " |")
print()
print("| model | objective | epochs (steps) | training time | throughput | best dev |")
print("|---|---|---|---|---|---|")
for d in sorted((w / "models").glob("*/history.json")):
    h = json.loads(d.read_text()); eps = [e for e in h["epochs"] if e.get("epoch", 0) > 0]
    done = w / "stages" / f"train-{d.parent.name}.done"
    secs = int(done.read_text()) if done.exists() else sum(e.get("seconds", 0) for e in eps)
    if h.get("objective") == "scst":
        rate = sum(e["samples_per_s"] * e["seconds"] for e in eps) / max(sum(e["seconds"] for e in eps), 1e-9)
        best = max(e["val_cider"] for e in h["epochs"])
        print(f"| {d.parent.name} | SCST from {pathlib.Path(h['init_from']).name} | {len(eps)} ({eps[-1]['step'] if eps else 0}) "
              f"| {secs / 60:.0f} min | {rate:,.0f} sampled captions/s | CIDEr-D {best:.3f} (init {h['epochs'][0]['val_cider']:.3f}) |")
    else:
        rate = sum(e["tokens_per_s"] * e["seconds"] for e in eps) / max(sum(e["seconds"] for e in eps), 1e-9)
        print(f"| {d.parent.name} | cross-entropy | {len(eps)} ({eps[-1]['step'] if eps else 0}) | {secs / 60:.0f} min "
              f"| {rate:,.0f} tokens/s | loss {min(e['val_loss'] for e in eps):.3f} |")
PY
