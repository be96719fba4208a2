#!/usr/bin/env bash
# The checks that need a GPU, in one go (how the README's GPU lines were produced):
#   bash benchmarks/gpu_checks.sh [OUT_DIR]
# CUDA runs of every supervised example (amp, accumulation, EMA, channels_last, compile, cuda:0,
# deterministic), pinned memory only with CUDA, torchrun with NCCL (1 process on 1 GPU), the loop
# tests on CUDA, and the loop-features benchmark on the GPU.
set -u
out="${1:-/tmp/gpu_checks}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
exps="$(mktemp -d)"
nvidia-smi -L
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
run() {
  echo "== main.py $*"
  timeout 300 python3 main.py "$@" "experiments_dir=$exps" > "$out/last.log" 2>&1
  code=$?
  tail -n 2 "$out/last.log"
  echo "exit $code"
}
M=configs/mnist_exp_0.json
Q=(data_mode=random random_size=6000 valid_size=1000 max_epoch=1)
run $M exp_name=plain "${Q[@]}" max_epoch=2
run $M exp_name=bf16 "${Q[@]}" amp=bf16
run $M exp_name=fp16 "${Q[@]}" amp=fp16 accumulate_grad_batches=2 ema_decay=0.99 grad_clip_norm=1.0
run $M exp_name=fp16 "${Q[@]}" mode=test
run $M exp_name=cuda0 "${Q[@]}" device=cuda:0 channels_last=true deterministic=true
run $M exp_name=compiled "${Q[@]}" compile=true
run $M exp_name=sched "${Q[@]}" scheduler_interval=step 'scheduler={"type": "OneCycleLR", "args": {"max_lr": 1.0, "total_steps": "total"}}'
run configs/condensenet_exp_0.json exp_name=cn data_mode=random random_size=512 valid_size=64 max_epoch=2 \
  'stages=[2,2,2]' 'growth=[4,4,4]' amp=bf16 channels_last=true
run configs/condensenet_exp_0.json exp_name=cn mode=test data_mode=random random_size=512 valid_size=64 \
  'stages=[2,2,2]' 'growth=[4,4,4]' "resume=$exps/cn/checkpoints/condensed.pth"
run configs/erfnet_exp_0.json exp_name=erf data_mode=random crop_size=64 random_size=32 max_epoch=1 amp=bf16 \
  class_weights=null num_workers=2
run configs/dcgan_exp_0.json exp_name=gan data_mode=random image_size=32 random_size=512 max_epoch=1 amp=fp16
python3 - "$exps" <<'PY'
import sys
sys.argv = sys.argv[:1]
import main
for device in ("cpu", "cuda"):  # cpu first: pinning follows whether this process has used CUDA yet
    cfg, cls = main.load_config("configs/mnist_exp_0.json", ["data_mode=random", f"device={device}", "exp_name=pin_" + device])
    agent = cls(cfg)
    print(f"device={device}: pin_memory={agent.data_loader.train_loader.pin_memory}, current cuda device "
          f"{__import__('torch').cuda.current_device() if device == 'cuda' else '-'}")
    agent.finalize()
PY
echo "== torchrun, NCCL, 1 process"
timeout 300 python3 -m torch.distributed.run --standalone --nproc_per_node 1 main.py $M exp_name=nccl "${Q[@]}" \
  "experiments_dir=$exps" > "$out/nccl.log" 2>&1
echo "exit $?"; grep -E "x 1 process|epoch 1:" "$out/nccl.log" | head -3
echo "== loop tests on CUDA"
timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_loop_features.py tests/test_resume_edges.py 2>&1 | tail -n 15
echo "== benchmark"
timeout 400 python3 benchmarks/loop_features.py --device cuda --steps 200 --repeats 5 2>&1 | grep -v Warning
