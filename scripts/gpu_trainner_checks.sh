#!/usr/bin/env bash
# gpu_trainner_checks.sh — prove the plugin in traiNNer-redux's real train.py / test.py /
# convert_to_onnx.py on a GPU machine (no network needed): multi-GPU DDP training with
# torchrun, bf16 AMP, channels_last, EMA, gradient accumulation, pretrain loading, tiled
# validation on Set5 + Set14, resume from a training state, test.py and ONNX export.
#
# usage (repository root): scripts/gpu_trainner_checks.sh NGPU PRETRAIN.safetensors
# expects .ref/trainner-src, .ref/tools (train_shim.py), .whl-tr (+ .whl-onnx for
# convert_to_onnx.py), .ref/hr/{T91,Set5,Set14}; writes logs and results to $OUT.
set -u
NGPU=$1; PRETRAIN=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
ROOT=$(pwd); OUT=${OUT:-./trainner-checks}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}; export PYTHONUNBUFFERED=1
SHIM=$ROOT/.ref/tools/train_shim.py
step() { echo "== $*" | tee -a "$OUT/steps.txt"; }
check() { if [[ $1 -eq 0 ]]; then echo "   ok: $2" | tee -a "$OUT/steps.txt"; else echo "   FAILED ($1): $2" | tee -a "$OUT/steps.txt"; fi; }

if [[ ${SKIP_WHEELS:-0} != 1 ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site-tr ${WHEELS:-.whl-tr}/*.whl $(ls .whl-onnx/*.whl 2>/dev/null) 2>&1 | grep -v "root" || true
  export PYTHONPATH=/tmp/site-tr
fi
# this checkout's package and single-file modules (python -m hybridmoe ...)
export PYTHONPATH="$PWD:$PWD/traiNNer/archs:$PWD/traiNNer/losses${PYTHONPATH:+:$PYTHONPATH}"

step "data: T91 training pairs, Set5 + Set14 validation (x2, MATLAB bicubic)"
D=/tmp/tc-data
"$PY" -m hybridmoe make-pairs .ref/hr/T91 --out $D/train --scale 2 --min-lr-size 64 --overwrite >/dev/null; check $? pairs
"$PY" -m hybridmoe make-pairs .ref/hr/Set5 --out $D/set5 --scale 2 --min-lr-size 1 --overwrite >/dev/null
"$PY" -m hybridmoe make-pairs .ref/hr/Set14 --out $D/set14 --scale 2 --min-lr-size 1 --overwrite >/dev/null

step "traiNNer-redux work copy + hybridmoe install-trainner install"
TR=/tmp/tc-trainner; rm -rf $TR; cp -r .ref/trainner-src $TR
"$PY" -m hybridmoe install-trainner install $TR > "$OUT/install.txt" 2>&1; check $? install
"$PY" -m hybridmoe install-trainner check $TR >> "$OUT/install.txt" 2>&1; check $? "install check"
mkdir -p $TR/datasets && ln -sfn $D $TR/datasets/data

step "configs derived from options/train/HybridMoE/2x_HybridMoE_S_fidelity.yml"
"$PY" - "$PRETRAIN" "$NGPU" <<'PY'
import os, sys, yaml
pre, ngpu = sys.argv[1], int(sys.argv[2])
cfg = yaml.safe_load(open("options/train/HybridMoE/2x_HybridMoE_S_fidelity.yml"))
cfg["name"] = "tc_2x_hybridmoe_s"
cfg["find_unused_parameters"] = False  # every parameter gets a gradient each step
tr = cfg["datasets"]["train"]
tr.update(dataroot_gt=["datasets/data/train/hr"], dataroot_lq=["datasets/data/train/lr"],
          batch_size_per_gpu=8, accum_iter=2, num_worker_per_gpu=2)
val = cfg["datasets"].pop("val")
for key, folder in (("val_set5", "set5"), ("val_set14", "set14")):
    cfg["datasets"][key] = dict(val, name=folder, dataroot_gt=[f"datasets/data/{folder}/hr"],
                                dataroot_lq=[f"datasets/data/{folder}/lr"])
cfg["path"]["pretrain_network_g"] = pre
cfg["train"].update(total_iter=300, scheduler={"type": "MultiStepLR", "milestones": [200], "gamma": 0.5})
cfg["train"]["optim_g"]["lr"] = 2e-4
cfg["val"].update(val_freq=150, tile_size=64, tile_overlap=16)
cfg["logger"].update(print_freq=50, save_checkpoint_freq=150, use_tb_logger=False)
smoke = os.environ.get("CPU_SMOKE") == "1"  # dry run of this script on a CPU machine
if smoke:
    cfg.update(use_amp=False, num_gpu=0)
    tr.update(num_worker_per_gpu=0, persistent_workers=False, prefetch_factor=None,
              pin_memory=False, batch_size_per_gpu=2, lq_size=32)
    cfg["train"].update(total_iter=4)
    cfg["val"].update(val_freq=2, tile_size=0)
    del cfg["datasets"]["val_set14"]
    cfg["logger"].update(print_freq=1, save_checkpoint_freq=2)
yaml.safe_dump(cfg, open("/tmp/tc-train.yml", "w"), sort_keys=False)
cfg["train"]["total_iter"] = 6 if smoke else 400
yaml.safe_dump(cfg, open("/tmp/tc-resume.yml", "w"), sort_keys=False)
t = yaml.safe_load(open("options/test/HybridMoE/2x_HybridMoE_S.yml"))
t["name"] = "tc_2x_hybridmoe_s_test"
t["datasets"] = {"val": {"name": "Set14", "type": "pairedimagedataset",
                         "dataroot_gt": ["datasets/data/set14/hr"], "dataroot_lq": ["datasets/data/set14/lr"]}}
t["path"]["pretrain_network_g"] = "experiments/tc_2x_hybridmoe_s/models/net_g_ema_latest.safetensors"
t["val"].update(metrics_enabled=True, save_img=False, tile_size=0)
if smoke:
    t.update(use_amp=False, num_gpu=0)
yaml.safe_dump(t, open("/tmp/tc-test.yml", "w"), sort_keys=False)
for dt in ("fp32", "fp16"):
    o = yaml.safe_load(open("options/onnx/HybridMoE/2x_HybridMoE_S.yml"))
    o["name"] = f"tc_onnx_{dt}"
    o["path"]["pretrain_network_g"] = t["path"]["pretrain_network_g"]
    o["onnx"].update(dtype=dt, shape="1x3x40x44" if dt == "fp32" else "1x3xHxW")
    yaml.safe_dump(o, open(f"/tmp/tc-onnx-{dt}.yml", "w"), sort_keys=False)
PY
check $? configs
cp /tmp/tc-*.yml "$OUT/" 2>/dev/null

cd $TR
if [[ $NGPU -gt 1 ]]; then LAUNCH=(torchrun --nproc-per-node "$NGPU" "$SHIM" train.py --launcher pytorch)
else LAUNCH=("$PY" "$SHIM" train.py); fi
step "train: ${LAUNCH[*]} (300 iterations, pretrain loaded)"
timeout 400 "${LAUNCH[@]}" -opt /tmp/tc-train.yml > "$OUT/train_stdout.txt" 2>&1; check $? train
cp experiments/tc_2x_hybridmoe_s/train_*.log "$OUT/train.log" 2>/dev/null
grep -q "End of training" "$OUT/train.log"; check $? "End of training in the log"
grep -qE "World size \(gpu number\): +$NGPU\b" "$OUT/train.log"; check $? "world size $NGPU in the log"
! grep -q "Grad strides do not match" "$OUT/train_stdout.txt"; check $? "no DDP gradient-stride warning"
step "resume from the training state (total_iter 400, --auto_resume)"
timeout 300 "${LAUNCH[@]}" -opt /tmp/tc-resume.yml --auto_resume > "$OUT/resume_stdout.txt" 2>&1; check $? resume
ls -t experiments/tc_2x_hybridmoe_s/train_*.log | head -1 | xargs -I{} cp {} "$OUT/resume.log"
grep -q "Resuming training from epoch" "$OUT/resume.log"; check $? "resumed from a training state"
step "test.py on Set14"
timeout 200 "$PY" "$SHIM" test.py -opt /tmp/tc-test.yml > "$OUT/test_stdout.txt" 2>&1; check $? test.py
for dt in fp32 fp16; do
  step "convert_to_onnx.py ($dt)"
  if [[ ! -d $ROOT/.whl-onnx ]]; then echo "   skipped: no .whl-onnx (convert_to_onnx.py needs modelopt)" | tee -a "$OUT/steps.txt"; continue; fi
  timeout 200 "$PY" "$SHIM" convert_to_onnx.py -opt /tmp/tc-onnx-$dt.yml > "$OUT/onnx_$dt.txt" 2>&1; check $? "convert_to_onnx $dt"
done
ls -la onnx 2>/dev/null | tee -a "$OUT/steps.txt"
cd "$ROOT"
step "expert usage of the trained model on Set14"
"$PY" -m hybridmoe moe-usage $TR/experiments/tc_2x_hybridmoe_s/models/net_g_ema_latest.safetensors \
  .ref/hr/Set14 --device cuda --json "$OUT/usage.json" --overwrite 2>&1 | tee -a "$OUT/steps.txt"
cp $TR/experiments/tc_2x_hybridmoe_s/models/net_g_ema_latest.safetensors "$OUT/tc_2x_hybridmoe_s.safetensors" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$OUT" --exclude=logs.tar.gz --exclude='*.safetensors' . 2>/dev/null
cat "$OUT/steps.txt"
