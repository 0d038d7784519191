"""Helpers shared by several test modules (tests/ is on sys.path: ``from helpers import ...``).

Test modules import helpers from here (or from tests/report_tree.py, prune_specs.py, standins.py),
never from another test_*.py module: importing a test module runs its module-level code again
and ties one test file's internals to another's.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import nbformat

from srclib import paths

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


# ---- notebooks -----------------------------------------------------------------------------------
def write_notebook(path: Path, *code: str, params: str = "params_file = 'params.yaml'",
                   title: str = "# a test notebook") -> Path:
    """A notebook at ``path`` (folders made): a markdown ``title`` cell (cell 1), the parameters
    cell ``params`` tagged ``parameters`` (cell 2), then one code cell per ``code`` string."""
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(title), p, *[nbformat.v4.new_code_cell(c) for c in code]]
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def write_stage_notebook(root: Path, stage: str, *code: str, params: str = "params_file = 'params.yaml'",
                         title: str = "# a test notebook", params_yaml: bool = True) -> Path:
    """``write_notebook`` at stage ``stage``'s notebook path under ``root``; with ``params_yaml``
    also the repository's params.yaml copied to ``root`` (the runner validates it before a kernel)."""
    path = write_notebook(paths.notebook(stage, root), *code, params=params, title=title)
    if params_yaml:
        (Path(root) / "params.yaml").write_text((paths.ROOT / "params.yaml").read_text())
    return path


_OUTPUT = re.compile(r'<div class="[^"]*\bjp-OutputArea-output\b[^"]*"(?: data-mime-type="([^"]*)")?[^>]*>(.*?)</div>',
                     re.S)


def html_outputs(text: str) -> list[tuple[str, str]]:
    """(mime type, text without tags, stripped) of every cell output in a notebook's HTML as the
    runner renders it (nbconvert's lab template), in order: stderr and errors included."""
    return [(mime, html.unescape(re.sub(r"<[^>]+>", "", body)).strip()) for mime, body in _OUTPUT.findall(text)]


# ---- headless Chromium (Debian's chromium + chromium-driver; test_browser, test_animation) --------
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# ---- test-size collect inputs (test_trajectories, test_reliability_runner) ----------------------
MASK = 63  # [MASK] of srclib.models.tiny.test_config


def _tiny_adapter(key: str, causal: bool, shift: bool):
    from srclib.models.tiny_adapter import TinyAdapter

    return TinyAdapter(key=key, causal=causal, shift=shift)


AD_DLM = _tiny_adapter("t-dlm", causal=False, shift=True)


def collect_params(**over):
    """Collect params of the tests (a (B, P) id tensor as prompts ignores models and n_prompts)."""
    from srclib.params import CollectParams

    kw = dict(models=["t-dlm"], n_prompts=1, prompt_tokens=6, gen_length=8, steps=8, block_length=4,
              temperature=0.0, cfg_scale=0.0, remasking="low_confidence", chunk_size=5,
              random_init_control=False, seed=0)
    kw.update(over)
    return CollectParams(**kw)


def tiny_dlm(shift: bool = True, seed: int = 0):
    """A random-init test-size TinyLM diffusion model that never predicts [MASK] (every step commits)."""
    import torch

    from srclib.models.tiny import TinyLM, test_config

    torch.manual_seed(seed)
    model = TinyLM(test_config(causal=False, shift=shift)).eval()
    with torch.no_grad():  # a random-init model may predict [MASK]; forbid it so every step commits
        model.model.transformer.ff_out.weight[MASK].zero_()
        model.model.transformer.ff_out.weight[MASK, 0] = -1e4
        model.model.transformer.wte.weight[:, 0] = 1.0  # constant feature -> the mask logit is -1e4
    return model


def word_tokenizer(bos: bool):
    """A word-level tokenizer of [BOS] [EOS] [PAD] [UNK] (ids 0..3) and the words w0..w49 (4..53);
    with ``bos`` every encoding starts with [BOS]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[BOS]": 0, "[EOS]": 1, "[PAD]": 2, "[UNK]": 3, **{f"w{i}": 4 + i for i in range(50)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tk.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token="[PAD]", unk_token="[UNK]")


def word_texts() -> list[str]:
    """Four prompts of word_tokenizer's words: 10, 3, 7 and 12 words."""
    return [" ".join(f"w{j}" for j in range(n)) for n in (10, 3, 7, 12)]


# ---- the model registry's adapter contract (test_models over every entry, test_extend on a
# params-defined one) ---------------------------------------------------------------------------
ROLES = {"q", "k", "v", "o", "gate", "up", "down"}


def model_vocab(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


def model_ids(model, B=2, T=7, seed=0):
    """(B, T) seeded token ids in [3, min(vocab, 60))."""
    import torch

    return torch.randint(3, min(model_vocab(model), 60), (B, T), generator=torch.Generator().manual_seed(seed))


def check_adapter_contract(key: str) -> None:
    """Registry entry ``key``'s stand-in: blocks, the seven roles and their linears, the mask id,
    finite logits of the vocabulary's width, every block's attention through SDPA, mass rows summing
    to H * T."""
    import torch
    from torch import nn

    from srclib.attention import record_mass
    from srclib.models import MODELS

    adapter = MODELS[key]
    assert adapter.key == key
    model = adapter.standin()
    blocks = adapter.blocks(model)
    assert isinstance(blocks, nn.ModuleList) and len(blocks) > 0
    assert set(adapter.roles) == ROLES
    for block in blocks:
        lin = adapter.prunable(block)
        assert lin and all(isinstance(m, nn.Linear) for m in lin.values())
        assert set(lin) == set(adapter.roles.values()), f"{key}: prunable {sorted(lin)} vs roles {adapter.roles}"
    mid = adapter.mask_id(model)
    if adapter.causal:
        assert mid is None and not adapter.shift
    else:
        assert isinstance(mid, int) and 0 <= mid < model_vocab(model)
    ids = model_ids(model)
    with torch.no_grad(), record_mass(chunk_size=CHUNK) as rec:
        logits = adapter.logits(model, ids)
    assert logits.shape == (2, 7, model_vocab(model))
    assert torch.isfinite(logits).all()
    assert rec.calls == len(blocks), f"{key}: attention of every block must go through SDPA"
    # every row sums to one: sum_k m^(l)_k = H * T (method.md 1), H = the query heads (GQA expanded)
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads", None) or cfg.n_heads
    L, B, T = len(blocks), ids.shape[0], ids.shape[1]
    assert rec.mass.shape == (L, B, T)
    assert torch.allclose(rec.mass.sum(-1), torch.full((L, B), float(heads * T)), atol=1e-3), key


def check_attention_direction(key: str) -> None:
    """Changing the last token changes earlier (aligned) logits iff the model is bidirectional."""
    import torch

    from srclib.models import MODELS

    adapter = MODELS[key]
    model = adapter.standin()
    ids = model_ids(model, T=6)
    ids2 = ids.clone()
    ids2[:, -1] = ids[:, -1] + 1
    with torch.no_grad():
        a, b = adapter.logits(model, ids), adapter.logits(model, ids2)
    # aligned position 1 (for shifted models: the output at position 0)
    changed = (a[:, 1] - b[:, 1]).abs().max().item()
    if adapter.causal:
        assert changed == 0.0
    else:
        assert changed > 1e-6


def bpe_tokenizer():
    """A byte-level BPE tokenizer trained in-process (vocab 300) with [BOS] [EOS] [PAD] [MASK] as
    ids 0-3: what test-size checkpoints that go through lm-eval need."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["The quick brown fox jumps over the lazy dog."] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["[BOS]", "[EOS]", "[PAD]", "[MASK]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token="[PAD]", mask_token="[MASK]")


def write_tiny_checkpoint(folder: Path, causal: bool, seed: int = 0) -> None:
    """A test-size tiny-ar (``causal``) or tiny-dlm checkpoint with random weights (seeded) and
    :func:`bpe_tokenizer` in ``folder``, marked with its registry key."""
    import torch

    from srclib.models.base import write_marker
    from srclib.models.tiny import TinyLM, test_config

    tok = bpe_tokenizer()
    cfg = test_config(causal=causal, shift=not causal, vocab_size=len(tok), bos_token_id=0,
                      eos_token_id=1, pad_token_id=2, max_position_embeddings=512,
                      mask_token_id=None if causal else 3)
    torch.manual_seed(seed)
    TinyLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    write_marker(folder, "tiny-ar" if causal else "tiny-dlm")


# ---- params.yaml's values of the library's settings (srclib takes them from its caller) ---------
SINK = dict(rule="zscore", alpha=5.0, kappa=2.0, eps=0.0)  # variance / prune.sink
SPARSEGPT = dict(blocksize=128, percdamp=0.01)  # prune.sparsegpt
NOISE_EPS = 1e-3  # prune.calibration.noise_eps (train.dlm.eps)
CHUNK = 256  # the attention-mass recorder's query chunk: collect.chunk_size, prune.calibration.chunk_size
WINDOWS_PER_BATCH = 4  # prune.calibration.windows_per_batch
GREEDY = dict(temperature=0.0, cfg_scale=0.0, remasking="low_confidence")  # collect's sampler rule


def _replaced(base: dict, over: dict, name: str) -> dict:
    unknown = sorted(set(over) - set(base))
    if unknown:
        raise TypeError(f"{name}: unknown settings {unknown}")
    return {**base, **over}


def sink_rule(**over) -> dict:
    """SINK with ``over`` replacing some of its settings (``sink_rule(rule="margin")``)."""
    return _replaced(SINK, over, "sink_rule")


def greedy(**over) -> dict:
    """GREEDY with ``over`` replacing some of its settings (``greedy(cfg_scale=0.5)``)."""
    return _replaced(GREEDY, over, "greedy")


def sparsegpt(**over) -> dict:
    """SPARSEGPT with ``over`` replacing some of its settings (``sparsegpt(blocksize=2)``)."""
    return _replaced(SPARSEGPT, over, "sparsegpt")
