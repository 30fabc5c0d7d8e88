#!/usr/bin/env bash
# The paper's 3D protocol on a GPU, one command per table row: fine-tune from the official Point-MAE weights
# (pretrain.pth from the Point-MAE release, put at pretrained/point_mae_pretrain.pth) on ModelNet40 and the three
# ScanObjectNN variants for 300 epochs (cfgs/finetune/<data set>/<method>.yaml), 3 seeds, then print the tables.
#   bash scripts/paper_tables.sh                 # every method x data set (long: ~1 GPU-day)
#   METHODS="adapterx full" DATASETS=modelnet40 SEEDS="0" bash scripts/paper_tables.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CKPT=${CKPT:-pretrained/point_mae_pretrain.pth}
METHODS=${METHODS:-"full linear adapterx dapt dapt_x idpt vpt_deep lora adaptformer mosa mhr adaptformer_x"}
DATASETS=${DATASETS:-"modelnet40 scanobjectnn_objbg scanobjectnn_objonly scanobjectnn_hardest"}
SEEDS=${SEEDS:-"0 1 2"}
[ -f "$CKPT" ] || { echo "missing $CKPT (the official Point-MAE pretrain.pth)"; exit 1; }
for ds in $DATASETS; do
  for m in $METHODS; do
    for s in $SEEDS; do
      run="experiments/paper/$ds/$m/seed$s"
      if [ -f "$run/results.json" ] && grep -q '"status": "finished"' "$run/results.json"; then continue; fi
      if [ -f "$run/ckpt-last.pth" ]; then
        $PY tools/train.py --resume "$run"
      else
        $PY tools/train.py --config "cfgs/finetune/$ds/$m.yaml" --ckpt "$CKPT" --seed "$s" --run-dir "$run" \
          --overwrite data.num_workers=8
      fi
    done
  done
  echo "## $ds"; $PY scripts/summarize_seeds.py "experiments/paper/$ds"
done
