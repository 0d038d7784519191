"""Sequential MC-ELBO with common random numbers (srclib-dlm ``mc_adaptive=true``) against the
full-budget estimator on the same items (issue 23 item 2).

For each (model, task): lm-eval (offline, ``srclib.evaluation.tasks.offline_task_manager``) runs

1. ``full``: today's estimator, ``mc_num`` independent rows per request (mc_adaptive=false);
2. ``crn``: mc_adaptive=true with ``mc_min = mc_num`` (no early stop), recording every item's
   (mc_num, choices) row values: an item's first n rows are the rows the sequential estimator
   draws (one generator per item, group after group), so the stopping rule is replayed on them for
   every z of ``--z`` (rows used, chosen answer);
3. ``adaptive``: one real run at ``--check-z``, whose chosen answers must equal the replay's.

Reported per z: agreement of the chosen answer (lm-eval's acc ranking, argmax of the
log-likelihoods, and acc_norm's, argmax of log-likelihood / character length of the choice) with
(1); the accuracy difference adaptive - full with its paired 95% interval and exact McNemar p
(``srclib.stats.paired_accuracy``); mean rows per item / mc_num. The agreement of ``crn`` at the
full budget with ``full`` (two full-budget estimators with other random numbers) is the noise
floor: no z can agree better with ``full`` than the full budget does, on average.
``--ref-mc-num``: today's estimator at a higher budget too; agreement with it compares the
sequential and the full-budget estimators with a less noisy reference (the first table row,
``full (independent rows)``, is the full-budget run itself).

Models: ``standin``: a random-init test-size TinyLM (``srclib.models.tiny.test_config``, seed 0,
vocab of the tiny-dlm tokenizer when it is built, else a BPE trained on the task texts);
``tiny-dlm``: the trained checkpoint folder (``--tiny-dlm``, default models/tiny-dlm).
Writes benchmarks/results/adaptive_elbo.{md,json}. One thread. Usage::

    .venv/bin/python benchmarks/adaptive_elbo.py [--models standin,tiny-dlm] \\
        [--tasks continuation,arc_easy] [--limit 150] [--mc-num 32] [--group 2] [--min 2] \\
        [--z 1,2,3,4,6] [--check-z 3]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from srclib import likelihood, paths, stats
from srclib.evaluation import harness
from srclib.evaluation.lm import DiffusionLM
from srclib.evaluation.tasks import offline_task_manager

RESULTS = Path(__file__).resolve().parent / "results"


# ---- models ------------------------------------------------------------------------------------
def _bpe(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["[BOS]", "[EOS]", "[PAD]", "[MASK]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token="[PAD]", mask_token="[MASK]")


def load_model(name: str, tiny_dlm: Path):
    """(model, tokenizer, adapter, description)."""
    from srclib.models import load

    if name == "tiny-dlm":
        model, tok, adapter = load(str(tiny_dlm))
        n = sum(p.numel() for p in model.parameters())
        return model, tok, adapter, f"trained tiny-dlm ({tiny_dlm.name}, {n / 1e6:.1f} M parameters)"
    if name != "standin":
        raise SystemExit(f"--models: unknown model {name!r}; allowed: standin, tiny-dlm")
    import tempfile

    from srclib.models.base import write_marker
    from srclib.models.tiny import TinyLM, test_config

    texts = [line for line in (paths.tasks_dir() / "continuation" / "validation.jsonl")
             .read_text().splitlines()]
    tok = _bpe(texts)
    cfg = test_config(causal=False, shift=True, vocab_size=len(tok), bos_token_id=0, eos_token_id=1,
                      pad_token_id=2, mask_token_id=3, max_position_embeddings=512)
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="adaptive-elbo-standin-"))
    TinyLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    write_marker(folder, "tiny-dlm")
    model, tok, adapter = load(str(folder))
    return model, tok, adapter, "random-init test-size TinyLM (test_config, seed 0, BPE vocab 1000)"


# ---- one lm-eval run, per-document log-likelihoods ------------------------------------------
def run_task(lm, task: str, limit: int, seed: int = 1234) -> list[dict]:
    """Per document: log-likelihoods of its choices, choice lengths, target, in doc order."""
    import lm_eval

    with offline_task_manager([task], paths.tasks_dir()) as tm, harness._without_env_info():
        res = lm_eval.simple_evaluate(model=lm, tasks=[task], num_fewshot=0, limit=limit,
                                      task_manager=tm, random_seed=seed, numpy_random_seed=seed,
                                      torch_random_seed=seed, fewshot_random_seed=seed,
                                      log_samples=True)
    docs = []
    for s in sorted(res["samples"][task], key=lambda s: s["doc_id"]):
        a = s["arguments"]
        a = [a[k] for k in sorted(a, key=lambda k: int(k.rsplit("_", 1)[-1]))] if isinstance(a, dict) else a
        args = [(x["arg_0"], x["arg_1"]) if isinstance(x, dict) else tuple(x) for x in a]
        docs.append({"doc_id": s["doc_id"], "target": int(s["target"]), "args": args,
                     "ll": [float(r[0]) for r in s["filtered_resps"]],
                     "len": [len(c.lstrip()) for _, c in args]})
    return docs


def choice(ll, lens, norm: bool) -> int:
    v = [x / max(n, 1) for x, n in zip(ll, lens)] if norm else list(ll)
    return max(range(len(v)), key=lambda i: (v[i], -i))  # lm-eval's np.argmax: the first maximum


def replay(block: torch.Tensor, lens, mc_num: int, group: int, low: int, z: float, rank: str = "all"):
    """The sequential rule on an item's recorded rows: (rows used, values at the stop); ``rank``:
    srclib-dlm's mc_rank (all: acc and acc_norm resolved; acc; acc_norm)."""
    scales = None if rank == "acc" else [[1.0 / max(n, 1) for n in lens]]
    n = group
    while n < mc_num:
        if n >= low and likelihood.leader_resolved(block[:n], z, scales, raw=rank != "acc_norm"):
            break
        n += group
    return n, [float(x) for x in block[:n].mean(0)]


def bench(model, tok, adapter, task: str, limit: int, mc_num: int, group: int, low: int,
          zs: list[float], check_z: float, cfg: float, batch_size: int, ref_mc_num: int = 0,
          mins: list[int] | None = None, ranks: tuple[str, ...] = ("all",)) -> dict:
    mins = mins or [low]
    common = dict(model=model, tokenizer=tok, adapter=adapter, mc_num=mc_num, batch_size=batch_size,
                  cfg=cfg)
    t0 = time.perf_counter()
    full = run_task(DiffusionLM(**common), task, limit)
    t_full = time.perf_counter() - t0
    high = None
    if ref_mc_num:  # a higher-budget run of today's estimator: what the full budget aims at
        t0 = time.perf_counter()
        high = run_task(DiffusionLM(**{**common, "mc_num": ref_mc_num}), task, limit)
        t_high = time.perf_counter() - t0

    # the CRN rows of every item at the full budget (mc_min = mc_num: no early stop), recorded
    blocks: dict[tuple, torch.Tensor] = {}
    original = likelihood.elbo_rank_adaptive

    def recording(logits_fn, items, **kw):
        rec: list = []
        out = original(logits_fn, items, **{**kw, "mc_min": kw["mc_num"], "record": rec})
        for it, b in zip(items, rec):
            blocks[tuple((tuple(p), tuple(t)) for p, t in it)] = b
        return out

    crn_lm = DiffusionLM(**common, mc_adaptive=True, mc_group=group, mc_min=mc_num, mc_z=1.0)
    likelihood.elbo_rank_adaptive = recording
    try:
        t0 = time.perf_counter()
        crn = run_task(crn_lm, task, limit)
        t_crn = time.perf_counter() - t0
    finally:
        likelihood.elbo_rank_adaptive = original

    def item_block(doc):
        """(rows, n choices) of a document: the recorded block's columns, by distinct pair."""
        pairs = crn_lm._fitted([crn_lm._encode_pair(c, t) for c, t in doc["args"]])
        distinct = list(dict.fromkeys((tuple(c), tuple(t)) for c, t in pairs))
        if len(distinct) < 2:  # one distinct choice: scored by the full estimator, nothing to rank
            return torch.tensor([doc["ll"]] * mc_num, dtype=torch.float64)
        b = blocks[tuple(distinct)]
        return b[:, [distinct.index((tuple(c), tuple(t))) for c, t in pairs]]

    n = len(full)
    assert [d["doc_id"] for d in crn] == [d["doc_id"] for d in full]
    items = [item_block(d) for d in crn]
    truth = [d["target"] for d in full]
    ref = {norm: [choice(d["ll"], d["len"], norm) for d in full] for norm in (False, True)}
    ref_high = None if high is None else {
        norm: [choice(d["ll"], d["len"], norm) for d in high] for norm in (False, True)}

    def summary(chosen, rows):
        out = {"rows_per_item": sum(rows) / n, "rows_fraction": sum(rows) / (n * mc_num)}
        for norm, key in ((False, "acc"), (True, "acc_norm")):
            agree = sum(a == b for a, b in zip(chosen[norm], ref[norm])) / n
            c_full = [int(c == t) for c, t in zip(ref[norm], truth)]
            c_new = [int(c == t) for c, t in zip(chosen[norm], truth)]
            cmp = stats.paired_accuracy(c_full, c_new)
            out[key] = {"agreement": agree, "acc_full": sum(c_full) / n, "acc": sum(c_new) / n,
                        "diff": cmp.diff, "ci95": [cmp.low, cmp.high], "p_mcnemar": cmp.p_value}
            if ref_high is not None:
                out[key]["agreement_high"] = sum(
                    a == b for a, b in zip(chosen[norm], ref_high[norm])) / n
        return out

    curve = [{"z": "full (independent rows)", **summary(ref, [mc_num] * n)}]
    rows_at: dict[float, list[int]] = {}
    chosen_at: dict[float, dict] = {}
    for rank, lo, z in [("all", mc_num, math.inf), *((k, m, z) for k in ranks for m in mins for z in zs)]:
        res = [replay(b, d["len"], mc_num, group, lo, z, rank) if z != math.inf else
               (mc_num, [float(x) for x in b.mean(0)]) for b, d in zip(items, crn)]
        chosen = {norm: [choice(v, d["len"], norm) for (_, v), d in zip(res, crn)] for norm in (False, True)}
        rows = [r for r, _ in res]
        if lo == low and rank == "all":
            rows_at[z], chosen_at[z] = rows, chosen
        curve.append({"z": None if z == math.inf else z, "mc_min": lo, "rank": rank, **summary(chosen, rows)})

    # one real sequential run: its answers and rows must be the replay's
    lm = DiffusionLM(**common, mc_adaptive=True, mc_group=group, mc_min=low, mc_z=check_z)
    t0 = time.perf_counter()
    real = run_task(lm, task, limit)
    t_real = time.perf_counter() - t0
    same = {norm: sum(choice(d["ll"], d["len"], norm) == c
                      for d, c in zip(real, chosen_at[check_z][norm])) for norm in (False, True)}
    return {"task": task, "n_items": n, "mc_num": mc_num, "mc_group": group, "mc_min": low, "cfg": cfg,
            "n_choices": sorted({len(d["args"]) for d in full}),
            "ref_mc_num": ref_mc_num or None,
            "seconds": {"full": t_full, "crn_full_budget": t_crn, f"adaptive_z{check_z:g}": t_real,
                        **({f"reference_mc{ref_mc_num}": t_high} if high is not None else {})},
            "curve": curve,
            "check": {"z": check_z, "same_choice_acc": same[False], "same_choice_acc_norm": same[True],
                      "n": n}}


def markdown(out: dict) -> str:
    lines = ["# Sequential MC-ELBO with common random numbers vs the full-budget estimator", "",
             f"`benchmarks/adaptive_elbo.py`; CPU, one thread; {out['date']}. Full budget: mc_num "
             f"rows per request (LLaDA's estimator, today's default; the paper uses 128). `full, CRN`: "
             f"the CRN estimator at the full budget (its agreement with the full-budget run is the "
             f"Monte-Carlo noise floor); the other rows replay the stopping rule on its recorded rows "
             f"(mc_min, z). Agreement: the same chosen answer as the full-budget run "
             f"(acc: argmax log-likelihood; acc_norm: argmax log-likelihood / choice length). "
             f"diff: accuracy(sequential) - accuracy(full), paired Wald 95% CI "
             f"(srclib.stats.paired_accuracy). Goals: agreement >= 99%, rows <= 1/10.", ""]
    for r in out["runs"]:
        lines += [f"## {r['model']} / {r['task']}", "",
                  f"{r['model_desc']}; {r['n_items']} items ({r['n_choices']} choices), mc_num "
                  f"{r['mc_num']}, mc_group {r['mc_group']}, mc_min {r['mc_min']}, cfg {r['cfg']}; "
                  f"seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()), "",
                  "| mc_rank | mc_min | z | rows / item | rows / full | agree acc | diff acc [95% CI] | agree acc_norm "
                  "| diff acc_norm [95% CI] |" + (f" agree acc / acc_norm with mc_num {r['ref_mc_num']} |"
                                                   if r.get("ref_mc_num") else ""),
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if r.get("ref_mc_num") else "")]
        for c in r["curve"]:
            a, an = c["acc"], c["acc_norm"]
            z = "full, CRN" if c["z"] is None else c["z"]
            lines.append(
                f"| {c.get('rank', 'all') if isinstance(c['z'], float) else '-'} | "
                f"{c.get('mc_min', r['mc_min']) if isinstance(c['z'], float) else '-'} | {z} | "
                f"{c['rows_per_item']:.1f} | "
                f"{c['rows_fraction']:.3f} | {a['agreement']:.1%} | {a['diff']:+.3f} "
                f"[{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}] | {an['agreement']:.1%} | {an['diff']:+.3f} "
                f"[{an['ci95'][0]:+.3f}, {an['ci95'][1]:+.3f}] |"
                + (f" {a['agreement_high']:.1%} / {an['agreement_high']:.1%} |" if "agreement_high" in a else ""))
        ck = r["check"]
        lines += ["", f"Real sequential run at z = {ck['z']}: the same chosen answer as the replay on "
                      f"{ck['same_choice_acc']}/{ck['n']} items (acc), {ck['same_choice_acc_norm']}/"
                      f"{ck['n']} (acc_norm); full-budget accuracy acc {r['curve'][0]['acc']['acc_full']:.3f}.",
                  ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="standin,tiny-dlm")
    ap.add_argument("--tasks", default="continuation,arc_easy")
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--mc-num", type=int, default=32)
    ap.add_argument("--group", type=int, default=2)
    ap.add_argument("--min", type=int, default=2, help="mc_min of the real sequential run")
    ap.add_argument("--mins", default="", help="mc_min values replayed (default: --min)")
    ap.add_argument("--z", default="1,2,3,4,6")
    ap.add_argument("--check-z", type=float, default=3.0)
    ap.add_argument("--ranks", default="all", help="mc_rank values replayed (all, acc, acc_norm)")
    ap.add_argument("--cfg", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--ref-mc-num", type=int, default=0,
                    help="also run today's estimator at this budget (a less noisy reference)")
    ap.add_argument("--tiny-dlm", type=Path, default=paths.model_dir("tiny-dlm"))
    ap.add_argument("--out", type=Path, default=RESULTS / "adaptive_elbo")
    ap.add_argument("--append", action="store_true",
                    help="add the runs to those already in --out's .json (one results file, several calls)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    zs = [float(z) for z in a.z.split(",")]
    if a.check_z not in zs:
        zs.append(a.check_z)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": {
        k: str(v) for k, v in vars(a).items()}, "runs": []}
    if a.append and a.out.with_suffix(".json").is_file():
        before = json.loads(a.out.with_suffix(".json").read_text())
        out["runs"] = before["runs"]
        out["date"] = f"{before['date']} .. {out['date']}"
        out["args"] = [*(before["args"] if isinstance(before["args"], list) else [before["args"]]),
                       out["args"]]
    for name in a.models.split(","):
        model, tok, adapter, desc = load_model(name, a.tiny_dlm)
        for task in a.tasks.split(","):
            r = bench(model, tok, adapter, task, a.limit, a.mc_num, a.group, a.min, zs, a.check_z,
                      a.cfg, a.batch_size, a.ref_mc_num,
                      [int(m) for m in a.mins.split(",") if m] or [a.min], tuple(a.ranks.split(",")))
            r.update(model=name, model_desc=desc)
            out["runs"].append(r)
            print(markdown({**out, "runs": [r]}).split("\n", 4)[-1], flush=True)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
            a.out.with_suffix(".md").write_text(markdown(out))
    return out


if __name__ == "__main__":
    main()
