"""Sharded evaluation (issue 23 item 1): srclib-dlm under two CPU processes (torchrun, gloo,
one thread each) gives one process's per-request values bit for bit, the same per-item values
and metrics, and each rank scores about half of the requests; the AR path (lm-eval's HFLM built
from a loaded model) runs unsharded inside the same process group.

Run as a script, this file is the worker that ``torchrun`` starts (``_worker``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srclib import paths
from srclib.evaluation import tasks as T
from srclib.params import TaskSettings
from helpers import write_tiny_checkpoint

TASKS = paths.tasks_dir()
FILE = TASKS / T.CONTINUATION / "validation.jsonl"
N_DOCS = 7  # odd: lm-eval pads rank 1's 3 documents with a copy of its last request
SETTINGS = {T.CONTINUATION: TaskSettings(num_fewshot=0, cfg=0.0, mc_num=4, limit=N_DOCS)}
GUIDED = {T.CONTINUATION: TaskSettings(num_fewshot=0, cfg=0.5, mc_num=4, limit=N_DOCS)}
BATCH = 4  # 4 * 8 // mc_num 4 = 8 requests per scoring batch: 28 requests -> batches 8, 8, 8, 4
N_OTHER = 5  # hand-made rolling / generation requests (documents 0..4)


def _instances(kind: str, texts: list[str], rank: int, world: int):
    """lm-eval Instances of a hand-made task 'extra', documents rank, rank + world, ... as the
    evaluator shares them out."""
    from lm_eval.api.instance import Instance

    args = {"loglikelihood_rolling": lambda t: (t,),
            "generate_until": lambda t: (t, {"until": ["\n"]})}[kind]
    return [Instance(kind, {}, args(t), 0, ("extra", d, 1)) for d, t in enumerate(texts)][rank::world]


def _recorded(lm, store: list) -> None:
    """Record every (context ids, continuation ids, score) the LM returns to lm-eval."""
    inner = lm._loglikelihood_tokens

    def wrapped(requests, *a, **kw):
        res = inner(requests, *a, **kw)
        store.extend([list(c), list(t), s] for (_, c, t), (s, _) in zip(requests, res))
        return res

    lm._loglikelihood_tokens = wrapped


def _run(dlm: Path, ar: Path) -> dict:
    """What every process evaluates; one process's run is the reference."""
    from srclib import likelihood
    from srclib.data import corpus
    from srclib.evaluation import harness
    from srclib.evaluation.lm import DiffusionLM
    from srclib.models import load

    scored = []  # requests this process ran through the MC-ELBO
    elbo = likelihood.elbo_loglikelihood_batch

    def counted(logits_fn, requests, **kw):
        scored.append(len(requests))
        return elbo(logits_fn, requests, **kw)

    likelihood.elbo_loglikelihood_batch = counted
    # a rank other than 0 gets no results from lm-eval (None): evaluate_lm returns {} there
    out: dict = {}
    try:
        model, tok, adapter = load(str(dlm))
        lm = harness.make_lm(model, tok, adapter, batch_size=BATCH)
        out["rank"], out["world_size"] = lm.rank, lm.world_size
        for name, settings in (("plain", SETTINGS), ("guided", GUIDED)):
            given, n0 = [], len(scored)
            _recorded(lm, given)
            res = harness.evaluate_lm(lm, settings, data_root=TASKS)
            out[name] = {"results": res, "given": given, "scored": sum(scored[n0:])}
            del lm._loglikelihood_tokens
        texts = [" ".join(it["context"] for it in corpus.read_jsonl(FILE)[3 * d:3 * d + 1 + d])
                 for d in range(N_OTHER)]
        n0 = len(scored)
        out["rolling"] = lm.loglikelihood_rolling(
            _instances("loglikelihood_rolling", texts, lm.rank, lm.world_size))
        out["rolling_scored"] = sum(scored[n0:])
        # a second LM in the same process: it joins the running process group; sampling draws
        gen = DiffusionLM(model=model, tokenizer=tok, adapter=adapter, batch_size=2, gen_length=8,
                          steps=8, block_length=8, temperature=1.0, remasking="random")
        out["generated"] = gen.generate_until(
            _instances("generate_until", [t[:40 + 7 * (d % 2)] for d, t in enumerate(texts)],
                       gen.rank, gen.world_size))
        model, tok, adapter = load(str(ar))
        ar_lm = harness.make_lm(model, tok, adapter, batch_size=BATCH)
        given = []
        _recorded(ar_lm, given)
        out["ar"] = {"results": harness.evaluate_lm(ar_lm, SETTINGS, data_root=TASKS), "given": given,
                     "rank": ar_lm.rank, "world_size": ar_lm.world_size}
    finally:
        likelihood.elbo_loglikelihood_batch = elbo
    return out


def _worker(dlm: str, ar: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    res = _run(Path(dlm), Path(ar))
    Path(out_dir, f"rank{res['rank']}.json").write_text(json.dumps(res))


def _by_pair(rows) -> dict:
    out = {}
    for c, t, s in rows:
        assert out.setdefault((tuple(c), tuple(t)), s) == s  # a padding copy scores as its original
    return out


needs_data = pytest.mark.skipif(not FILE.is_file(),
                                reason="data/raw (with the continuation task) not built: make data")


@needs_data
def test_two_processes_score_as_one(tmp_path):
    dlm, ar, out = tmp_path / "dlm", tmp_path / "ar", tmp_path / "out"
    out.mkdir()
    write_tiny_checkpoint(dlm, causal=False)
    write_tiny_checkpoint(ar, causal=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
         "--nproc_per_node", "2", __file__, str(dlm), str(ar), str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference, while the workers run: one thread as they have
    try:
        one = _run(dlm, ar)
    finally:
        torch.set_num_threads(threads)
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log[-4000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
    assert (one["rank"], one["world_size"]) == (0, 1)
    assert [(r["rank"], r["world_size"]) for r in (r0, r1)] == [(0, 2), (1, 2)]

    n_req = N_DOCS * 4  # 4 choices per item
    for name in ("plain", "guided"):
        single, a, b = one[name], r0[name], r1[name]
        # lm-eval shared the documents out: 4 and 3 (+ a padding copy of 4 requests)
        assert len(single["given"]) == n_req and len(a["given"]) == len(b["given"]) == 16
        ref = _by_pair(single["given"])
        assert len(ref) == n_req
        got = {**_by_pair(a["given"]), **_by_pair(b["given"])}
        assert got == ref  # every request's MC-ELBO value, bit for bit
        # each rank ran about half of the requests through the model, none twice
        assert single["scored"] == n_req and a["scored"] + b["scored"] == n_req
        assert abs(a["scored"] - b["scored"]) <= 8  # one scoring batch
        res, want = a["results"][T.CONTINUATION], single["results"][T.CONTINUATION]
        assert b["results"] == {}  # results on rank 0 only
        assert res["items"] == want["items"] and res["metrics"] == want["metrics"]
        assert res["n_samples"] == want["n_samples"] == N_DOCS
        assert res["stderr"] == pytest.approx(want["stderr"], rel=1e-12)  # a sum in another order

    # hand-made rolling and generation requests: rank r got documents r, r + 2, ...
    assert r0["rolling"] + r1["rolling"] != []
    assert r0["rolling"] == one["rolling"][0::2] and r1["rolling"] == one["rolling"][1::2]
    assert r0["rolling_scored"] + r1["rolling_scored"] == one["rolling_scored"]
    assert 0 < r0["rolling_scored"] < one["rolling_scored"]
    assert r0["generated"] == one["generated"][0::2] and r1["generated"] == one["generated"][1::2]

    # the AR path: lm-eval's HFLM built from a loaded model is one process (rank 0 of 1) by
    # lm-eval's design: inside our process group it runs, every rank scoring every request, and
    # simple_evaluate returns results where LOCAL_RANK is 0 only (its rule for torchrun)
    for r in (r0, r1):
        assert (r["ar"]["rank"], r["ar"]["world_size"]) == (0, 1)
        assert r["ar"]["given"] == one["ar"]["given"] and len(one["ar"]["given"]) == n_req
    assert r0["ar"]["results"] == one["ar"]["results"] and r1["ar"]["results"] == {}


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
