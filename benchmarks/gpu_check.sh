#!/usr/bin/env bash
# The GPU readiness check: the tests marked `gpu`, then training, search-fitness and data-loading figures
# on one CUDA device, printed as one JSON summary (last line of stdout). About 6 minutes on an H100/H200;
# every stage has its own time limit and all share a 7.5-minute budget, so the whole stays under 8
# (a first-time pip install of missing dependencies comes on top).
#
#   bash benchmarks/gpu_check.sh            # from the repository root of a fresh copy
#
# Python: $NASBNN_PYTHON if set, else .venv/bin/python, else the first python3/python on PATH whose torch
# sees CUDA (a GPU machine usually has its own CUDA build of torch; scripts/setup.sh would install the
# CPU build). Missing runtime dependencies are installed with pip next to that torch, never torch itself.
# Without CUDA the summary says so and the script exits 2.
#
# GPU_CHECK_DRY=1 runs every stage on the CPU at toy sizes: a check of the script, not of a device.
# GPU_CHECK_SKIP="tests data" leaves stages out; GPU_CHECK_BUDGET=SECONDS changes the stages' budget.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nasbnn-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DRY=${GPU_CHECK_DRY:-0}
log() { echo "[gpu_check] $*" >&2; }

has_torch() { "$1" -c 'import torch' >/dev/null 2>&1; }
has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }

pick_python() {
  local c
  for c in ${NASBNN_PYTHON:-} "$ROOT/.venv/bin/python" "$(command -v python3 || true)" "$(command -v python || true)"; do
    if [ -n "$c" ] && [ -x "$c" ] && has_torch "$c" && { [ "$DRY" = 1 ] || has_cuda "$c"; }; then
      echo "$c"; return 0
    fi
  done
  return 1
}

any_torch() {
  local c
  for c in ${NASBNN_PYTHON:-} "$ROOT/.venv/bin/python" "$(command -v python3 || true)" "$(command -v python || true)"; do
    if [ -n "$c" ] && [ -x "$c" ] && has_torch "$c"; then echo "$c"; return 0; fi
  done
  return 1
}

PY=$(pick_python)
if [ -z "$PY" ] && [ -z "$(any_torch)" ]; then
  log "no python with torch; setting up .venv (scripts/setup.sh --dev)"
  timeout 600 bash scripts/setup.sh --dev >&2 || log "setup failed"
  PY=$(pick_python)
fi
if [ -z "$PY" ]; then
  any=$(any_torch)
  torch_info=$([ -n "$any" ] && "$any" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>/dev/null)
  printf '{"ok": false, "cuda": false, "reason": "no CUDA device visible to torch (%s)"}\n' "${torch_info:-no torch found}"
  exit 2
fi
log "python: $PY"

# runtime and test dependencies next to the existing torch (pip resolves only what is missing)
if ! "$PY" -c 'import nasbnn.cli, pytest, scipy, PIL, numba, omegaconf, pydantic, tqdm, simplejpeg' >/dev/null 2>&1; then
  # one requirement per line: environment markers contain spaces
  mapfile -t deps < <("$PY" - <<'EOF'
import re
text = open("pyproject.toml").read()
def block(name):  # the quoted requirements of `name = [...]` (tomllib needs Python 3.11)
    m = re.search(rf"^{name} = \[(.*?)\]\s*$", text, re.M | re.S)
    return re.findall(r'"([^"]+)"', re.sub(r"#.*", "", m.group(1))) if m else []
want = block("dependencies") + block("train") + [d for d in block("dev") if d.split(">")[0] in ("pytest", "scipy")]
print("\n".join(d for d in want if re.split(r"[<>=!~\[ ;]", d)[0] != "torch"))
EOF
)
  log "installing missing dependencies: ${deps[*]}"
  timeout 240 "$PY" -m pip install -q "${deps[@]}" >&2 || log "pip install failed; stages will report import errors"
fi

if [ "$DRY" = 1 ]; then
  DEV=cpu; TEST_ENV="NASBNN_GPU_TEST_DEVICE=cpu"; TRAIN_ARGS="--space tiny --batch 8 --steps 1 --warmup 1"
  SPACE_RES="space.name=tiny"; SYN_RES=16; SYN_TRAIN=1200; CALIB="search.calib_batches=2 search.calib_batch_size=64"
  SAMPLES=4; DATA_ARGS="--images 64 --batch 16 --rounds 1 --workers 0,1"
else
  DEV=cuda; TEST_ENV=""; TRAIN_ARGS="--space imagenet --batch 128 --steps 10 --warmup 3"
  SPACE_RES=""; SYN_RES=224; SYN_TRAIN=6000; CALIB="search.calib_batches=10 search.calib_batch_size=1024"
  SAMPLES=12; DATA_ARGS="--workers all --images 1024 --batch 64 --rounds 2"
fi

BUDGET_END=$((SECONDS + ${GPU_CHECK_BUDGET:-450}))  # all stages together: 7.5 minutes
stage() {  # stage NAME LIMIT_S CMD...: stdout to $WORK/NAME.out, stderr to $WORK/NAME.err, status to $WORK/NAME.rc
  local name=$1 limit=$2; shift 2
  case " ${GPU_CHECK_SKIP:-} " in *" $name "*) log "stage $name skipped (GPU_CHECK_SKIP)"; return;; esac
  local left=$((BUDGET_END - SECONDS))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -lt 10 ]; then log "stage $name skipped: time budget spent"; return; fi
  log "stage $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
  echo $? >"$WORK/$name.rc"
  echo $((SECONDS - t0)) >"$WORK/$name.s"
}

stage tests 150 env $TEST_ENV "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider --junitxml="$WORK/tests.xml"
stage train_fp32 60 "$PY" benchmarks/bench_train.py --device "$DEV" $TRAIN_ARGS --amp off
stage train_bf16 60 "$PY" benchmarks/bench_train.py --device "$DEV" $TRAIN_ARGS --amp bf16
# A supernet trained for a minute on generated 224-pixel data (ImageNet is not on the machine): search
# fitness costs the same per image whatever the weights; Kendall's tau here is a smoke figure only.
SUP=(--config imagenet device="$DEV" out="$WORK/sup" data.name=synthetic data.synthetic.num_classes=10
     data.synthetic.resolution=$SYN_RES data.synthetic.num_train=$SYN_TRAIN data.synthetic.num_test=64
     data.holdout_per_class=100 data.batch_size=128 data.eval_batch_size=256 train.epochs=1 train.eval_images=64
     train.checkpoint_every=100000 $SPACE_RES)
[ "$DRY" = 1 ] && SUP+=(data.batch_size=16 train.epochs=0.05)
stage supernet 90 "$PY" -m nasbnn train-supernet "${SUP[@]}" --no-progress
stage search 80 "$PY" benchmarks/bench_search.py --checkpoint "$WORK/sup/checkpoint.pt" --device "$DEV" \
  --samples "$SAMPLES" --fast-calib 1 --fast-val 200 --config imagenet data.eval_batch_size=256 $CALIB
if [ -f benchmarks/bench_data.py ]; then
  stage data 70 "$PY" benchmarks/bench_data.py $DATA_ARGS
fi

"$PY" - "$WORK" "$DRY" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

work, dry = Path(sys.argv[1]), sys.argv[2] == "1"


def stage(name):
    if not (work / f"{name}.rc").exists():
        return {"ran": False}
    rc = int((work / f"{name}.rc").read_text())
    out = {"rc": rc, "seconds": int((work / f"{name}.s").read_text())}
    if rc == 124:
        out["timed_out"] = True
    lines = [ln for ln in (work / f"{name}.out").read_text().splitlines() if ln.startswith("{")]
    if lines:
        out["result"] = json.loads(lines[-1])
    elif rc != 0:
        out["error"] = (work / f"{name}.err").read_text().strip().splitlines()[-3:]
    return out


summary = {"ok": True, "dry_run_on_cpu": dry}
try:
    import torch

    summary["torch"] = torch.__version__
    summary["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
except Exception as exc:  # reported, not fatal: the stages say what failed
    summary["torch"] = f"unusable: {exc}"
tests = stage("tests")
xml = work / "tests.xml"
if xml.exists():
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
    tests.update(counts, failed=failed)
summary["gpu_tests"] = tests
for name in ("train_fp32", "train_bf16", "supernet", "search", "data"):
    summary[name] = stage(name)
search = summary["search"].get("result")
if search:
    full = search["full_protocol"]
    per_image = full["seconds_per_candidate"] / (full["calib_images"] + full["val_images"])
    # the official protocol: BN recalibration on 10 x 2048 training images, top-1 on 50,000 held-out images
    search["imagenet_protocol_seconds_per_candidate_estimate"] = round(per_image * (20480 + 50000), 2)
fp, bf = (summary[k].get("result", {}).get("images_per_s") for k in ("train_fp32", "train_bf16"))
if fp and bf:
    summary["bf16_speedup"] = round(bf / fp, 2)
summary["ok"] = all(summary[k].get("rc", 0) == 0 for k in ("gpu_tests", "train_fp32", "train_bf16", "supernet",
                                                          "search", "data"))
print(json.dumps(summary))
sys.exit(0 if summary["ok"] else 1)
EOF
