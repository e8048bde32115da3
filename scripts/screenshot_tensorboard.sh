#!/usr/bin/env bash
# Regenerate the TensorBoard screenshots in docs/images/ (developer tool; no test runs it).
#
#   scripts/screenshot_tensorboard.sh            # from the repository root
#
# 1. trains experiment=vanishing_gradients (sigmoid, tanh, relu; 8 hidden layers) into a
#    temporary directory, never inside the repository;
# 2. copies the sigmoid and relu event files into a two-run logdir, so that TensorBoard gives
#    the two runs contrasting colours (orange and blue) -- the data are not changed;
# 3. serves it with TensorBoard on 127.0.0.1 only, and drives headless Chromium with
#    playwright-core: Custom Scalars -> gradients -> grad_ratio, smoothing 0, outliers not
#    ignored, chart expanded, y axis switched to log; and Images -> gradient_flow at actual size;
# 4. shrinks the PNGs with pngquant (or Pillow), then stops TensorBoard.
#
# Needs: chromium (Debian: apt-get install -y chromium), node + npm (playwright-core is installed
# into the temporary directory, not into the project), pngquant optional.
# Environment: PY (python with mlpkit; default .venv/bin/python), TB (tensorboard binary),
# EPOCHS (default 10), PORT (default 6006), CHROMIUM (default /usr/bin/chromium).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
TB=${TB:-$ROOT/.venv/bin/tensorboard}
EPOCHS=${EPOCHS:-10}
PORT=${PORT:-6006}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
OUT=$ROOT/docs/images
WORK=$(mktemp -d /tmp/mlpkit_shot.XXXXXX)
mkdir -p "$OUT"

# 1. the experiment (about 15 s on a CPU)
(cd "$WORK" && "$PY" "$ROOT/train.py" -m experiment=vanishing_gradients \
    hydra.sweep.dir="$WORK/multirun" trainer.max_epochs="$EPOCHS")

# 2. a logdir with only the two runs to compare
for run in sigmoid relu; do
    mkdir -p "$WORK/view/$run"
    cp "$WORK"/multirun/$run/events.out.tfevents.* "$WORK/view/$run/"
done

# 3. TensorBoard on loopback only, stopped on exit
"$TB" --logdir "$WORK/view" --host 127.0.0.1 --port "$PORT" >"$WORK/tensorboard.log" 2>&1 &
TB_PID=$!
trap 'kill $TB_PID 2>/dev/null || true' EXIT
for _ in $(seq 60); do
    curl -sf "http://127.0.0.1:$PORT/data/runs" | grep -q relu && break
    sleep 1
done

(cd "$WORK" && npm init -y >/dev/null && npm i --silent playwright-core >/dev/null)
cat >"$WORK/shot.js" <<'EOF'
const { chromium } = require('playwright-core');
const [url, out, exe] = [process.argv[2], process.argv[3], process.argv[4]];
(async () => {
  const browser = await chromium.launch({ executablePath: exe, args: ['--no-sandbox', '--disable-gpu'] });
  // Custom Scalars -> gradients -> grad_ratio, every layer one line, log y axis
  let page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.goto(url + '/#custom_scalars');
  await page.waitForTimeout(5000);
  const smoothing = page.locator('input[type=number]').first();
  await smoothing.fill('0');
  await smoothing.press('Enter');
  await page.locator('paper-checkbox', { hasText: 'Ignore outliers' }).click();
  const card = page.locator('tf-custom-scalar-margin-chart-card, tf-custom-scalar-multi-line-chart-card')
    .filter({ has: page.locator('text=grad_ratio') }).first();
  await card.locator('paper-icon-button[icon=fullscreen]').click();
  await card.locator('paper-icon-button[icon=line-weight]').click();   // toggle y-axis log scale
  await page.waitForTimeout(1000);
  await card.locator('paper-icon-button[icon=settings-overscan]').click();  // fit domain to data
  await page.waitForTimeout(2000);
  await card.scrollIntoViewIfNeeded();
  await page.screenshot({ path: out + '/tensorboard_grad_ratio.png' });
  await page.close();
  // Images -> gradient_flow, relu and sigmoid side by side at actual size
  page = await browser.newPage({ viewport: { width: 1840, height: 670 } });
  await page.goto(url + '/#images&tagFilter=gradient_flow');
  await page.waitForTimeout(5000);
  await page.locator('paper-checkbox', { hasText: 'Show actual image size' }).click();
  await page.waitForTimeout(2000);
  await page.screenshot({ path: out + '/tensorboard_gradient_flow.png' });
  await browser.close();
})();
EOF
(cd "$WORK" && node shot.js "http://127.0.0.1:$PORT" "$OUT" "$CHROMIUM")

# 4. shrink (each image must stay under 400 KB)
for f in "$OUT"/tensorboard_grad_ratio.png "$OUT"/tensorboard_gradient_flow.png; do
    if command -v pngquant >/dev/null; then
        pngquant --force --skip-if-larger --quality 70-95 --output "$f" "$f" || true
    else
        "$PY" -c "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').quantize(256).save(sys.argv[1], optimize=True)" "$f" || true
    fi
    ls -l "$f"
done
echo "run data and TensorBoard log kept in $WORK"
