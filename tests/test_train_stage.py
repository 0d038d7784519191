"""The train stage wrapper: deterministic metrics files, no clock values, loss-curve CSV."""

import copy
import json
import shutil

import pytest
import yaml

from srclib import params, paths, train


@pytest.mark.slow
def test_run_stage_writes_deterministic_metrics(tmp_path):
    raw = yaml.safe_load((paths.ROOT / "params.yaml").read_text())
    small = copy.deepcopy(raw["train"])
    small.update(tokenizer_vocab=300, seq_len=32, batch_size=4, eval_windows=4, eval_mc_num=2, n_samples=1,
                 sample_prompt_tokens=8, sample_gen_length=8, sample_block_length=8, threads=1)
    small["arch"].update(n_layers=1, hidden_size=32, n_heads=2, mlp_hidden=64)
    small["ar"].update(steps=3, warmup=1)
    small["dlm"].update(steps=3, warmup=1)
    raw["train"] = small
    cfg = params.load_dict(raw).train
    digests = []
    for run in ("a", "b"):
        root = tmp_path / run
        for split in paths.CORPUS_SPLITS:  # a slice of the real corpus keeps this fast
            dst = paths.corpus_file(split, root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            lines = paths.corpus_file(split).read_text().splitlines()[:60]
            dst.write_text("\n".join(lines) + "\n")
        out = train.run_stage(cfg, root=root)
        assert set(out["metrics"]) == {"tiny-ar", "tiny-dlm"}  # no GGUF under this root
        m = json.loads(paths.train_metrics("tiny-dlm", root).read_text())
        assert not set(m) & set(train.TIMING_KEYS)
        assert len(m["loss"]) == 3
        assert paths.train_timing("tiny-dlm", root).is_file()
        assert not (paths.model_dir("tiny-dlm", root) / "timing.json").exists()  # outs stay deterministic
        digests.append([paths.train_metrics(k, root).read_bytes() for k in ("tiny-ar", "tiny-dlm")]
                       + [paths.train_curves(root).read_bytes()])
    assert digests[0] == digests[1]
