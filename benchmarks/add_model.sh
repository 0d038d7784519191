#!/usr/bin/env bash
# Adding one model to a finished study: how many stages go stale, what `dvc repro` reruns, its wall time.
#
# Run after a complete `dvc repro` (`dvc status` clean). Works on a copy in $DST (default
# /tmp/srclib-add-model): the large, write-once folders are hard-linked (checkpoints, trajectories,
# DVC cache, data, venv) and everything else is copied, so nothing written in the copy reaches this
# checkout. The model is the README recipe's: a from-config LLaMA (random weights, SmolLM2's
# tokenizer from data/raw) saved in models/my-ar and versioned with `dvc add`, then the params edit
# tests/test_extend_dvc.py applies (a models: entry with family hf_causal, the key in collect.models
# and evaluate.dense, one prune instance).
#
#   bash benchmarks/add_model.sh            # prints the stale stages, the stages rerun, the wall time
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
DST="${DST:-/tmp/srclib-add-model}"
export PATH="$SRC/.venv/bin:$PATH" OMP_NUM_THREADS=1
cd "$SRC"
if ! dvc status 2>/dev/null | grep -q "up to date"; then
  echo "the study is not finished here (dvc status is not clean): run dvc repro first" >&2
  exit 2
fi
rm -rf "$DST" && mkdir -p "$DST"
for entry in $(ls -A "$SRC"); do
  case "$entry" in
    models|pruned|trajectories|data|.venv) cp -al "$SRC/$entry" "$DST/" ;;
    .dvc) mkdir "$DST/.dvc" && for e in $(ls -A "$SRC/.dvc"); do
            if [ "$e" = cache ]; then cp -al "$SRC/.dvc/cache" "$DST/.dvc/"; else cp -a "$SRC/.dvc/$e" "$DST/.dvc/"; fi
          done ;;
    *) cp -a "$SRC/$entry" "$DST/" ;;
  esac
done
cd "$DST"
total=$(dvc stage list 2>/dev/null | wc -l)
echo "finished study: $total stages, $(dvc status 2>/dev/null | grep -c '^[A-Za-z0-9_@.-]*:$' || true) stale"
python - <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
import test_extend_dvc
import test_extend_recipe

test_extend_recipe._save_model(Path("models") / test_extend_recipe.KEY)
params = Path("params.yaml")
params.write_text(test_extend_dvc.add_model_to_params(params.read_text()))
PY
dvc add -q models/my-ar
dvc status > status.txt 2>&1 || true
echo "after adding my-ar: $(grep -c '^[A-Za-z0-9_@.-]*:$' status.txt || true) of $(dvc stage list 2>/dev/null | wc -l) stages stale:"
grep '^[A-Za-z0-9_@.-]*:$' status.txt | sed 's/^/  /'
start=$(date +%s.%N)
dvc repro > repro.log 2>&1 || { tail -40 repro.log; exit 1; }
end=$(date +%s.%N)
echo "dvc repro reran $(grep -c '^Running stage' repro.log) stages in $(python -c "print(round($end - $start, 1))") s:"
grep '^Running stage' repro.log | sed 's/^/  /'
echo "afterwards: $(dvc status 2>/dev/null | tail -1)"
grep '| my-ar ' reports/tables/sink_variance.md | cut -c1-60
