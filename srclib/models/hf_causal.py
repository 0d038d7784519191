"""Adapters for transformers models loaded with ``Auto*.from_pretrained`` (hub ids or local folders).

``HFAdapter`` is the shared loading path of every non-tiny family: a stock causal LM converted to a
local float32 folder (SmolLM2-135M, from the GGUF file shipped in data/raw), and remote-code
diffusion LMs from the Hugging Face hub (LLaDA, Dream: see ``llada.py`` and ``dream.py``).

Loading: ``source`` None -> the entry's default (a hub id at a pinned ``revision``, or the
srclib-built folder ``models/<key>`` when the entry has no hub id); a local folder -> that folder
(revision ignored). Overrides: ``dtype`` (str or torch.dtype), ``device``; anything else goes to
``from_pretrained``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srclib import devices, paths
from srclib.files import atomic_dir, sha256_file
from srclib.models.base import MARKER, Adapter, local_source, read_marker, write_marker

__all__ = ["HFAdapter", "load_options", "convert_gguf", "LLAMA_ROLES", "shrink_config"]

logger = logging.getLogger(__name__)

# role -> qualified name of the nn.Linear inside one decoder layer (Llama/Qwen2 naming)
LLAMA_ROLES = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}


def load_options(overrides: dict[str, Any], default_dtype: str) -> tuple[torch.dtype, Any, dict[str, Any]]:
    """Split load overrides into (torch dtype, device or None, remaining from_pretrained kwargs);
    ``device="auto"`` resolves through :func:`srclib.devices.resolve`."""
    rest = dict(overrides)
    dtype = rest.pop("dtype", None) or rest.pop("torch_dtype", None) or default_dtype
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype must name a torch dtype (float32, bfloat16, float16), got {dtype!r}")
        dtype = getattr(torch, dtype)
    device = devices.resolve(rest.pop("device", None))
    return dtype, device, rest


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


@dataclass(frozen=True)
class HFAdapter(Adapter):
    """A transformers model loaded through an Auto class.

    auto_class: the transformers Auto class name used to load (``AutoModelForCausalLM``; the
        remote-code DLMs register their LM class under ``AutoModel``).
    dtype: default dtype of the loaded weights (overridable per load).
    attn_implementation: passed to from_pretrained when set ("sdpa": srclib.attention records it).
    roles: role (q, k, v, o, gate, up, down) -> qualified nn.Linear name inside one block.
    standin_model_type / standin_config: a test-size from-config model with the same module
        layout (``standin()``), for offline contract tests.
    """

    auto_class: str = "AutoModelForCausalLM"
    dtype: str = "float32"
    attn_implementation: str | None = "sdpa"
    roles: dict[str, str] = field(default_factory=lambda: dict(LLAMA_ROLES))
    standin_model_type: str = "llama"
    standin_config: dict[str, Any] = field(default_factory=dict)

    # ---- loading ------------------------------------------------------------------------------
    def default_source(self) -> str | Path:
        """models/<key> when it holds this entry's checkpoint (built by srclib, or fetched from the
        hub at the pinned revision by ``python -m srclib.models fetch``), else the hub id."""
        folder = paths.model_dir(self.key)
        if not self.source:
            return folder
        local = local_source(self.source)
        if local is not None:  # a folder (relative to the repository root): never the hub
            return local
        marker = folder / MARKER
        if marker.is_file():
            info = read_marker(folder)
            if info.get("source") == self.source and info.get("revision") == self.revision:
                return folder
            logger.warning("%s holds %s@%s, not the registry's %s@%s: loading from the hub", folder,
                           info.get("source"), info.get("revision"), self.source, self.revision)
        return self.source

    def load(self, source: str | Path | None = None, **overrides: Any):
        import transformers

        dtype, device, kwargs = load_options(overrides, self.dtype)
        src = self.default_source() if source is None else source
        local = Path(src).is_dir()
        if not local and source is None and self.source and local_source(self.source) is not None:
            raise FileNotFoundError(
                f"no checkpoint folder for {self.key!r} at {src} (its source {self.source!r} names a folder, "
                f"relative to the repository root; a hub id is spelled org/name)"
            )
        if not local and not self.source:  # a local-only entry (no hub id)
            raise FileNotFoundError(
                f"no checkpoint folder for {self.key!r} at {src} (run `dvc repro train` to build it)"
            )
        revision = self.revision if str(src) == self.source else None  # pinned only for the default id
        where = str(src) if local else f"{src}@{revision or 'main'}"
        hub_kw: dict[str, Any] = {} if local else {"revision": revision}
        if self.trust_remote_code:
            hub_kw["trust_remote_code"] = True
        if self.attn_implementation:
            kwargs.setdefault("attn_implementation", self.attn_implementation)
        auto = getattr(transformers, self.auto_class)
        try:
            model = auto.from_pretrained(src, dtype=dtype, **hub_kw, **kwargs)
        except Exception as exc:  # missing/corrupt weights, offline hub, bad config
            raise RuntimeError(f"could not load model {self.key!r} from {where}: {exc}") from exc
        tok = self._tokenizer(src, hub_kw, where) if not local or _has_tokenizer(Path(src)) else None
        if device is not None:
            model = model.to(device)
        logger.info("loaded %s from %s (%s)", self.key, where, dtype)
        return model.eval(), tok

    def _tokenizer(self, src: str | Path, hub_kw: dict[str, Any], where: str):
        import transformers

        try:
            return transformers.AutoTokenizer.from_pretrained(src, **hub_kw)
        except Exception as exc:
            raise RuntimeError(f"could not load the tokenizer of {self.key!r} from {where}: {exc}") from exc

    def folder_tokenizer(self, folder: str | Path):
        """The tokenizer saved in a local checkpoint folder, or None when it holds none."""
        folder = Path(folder)
        if not _has_tokenizer(folder):
            return None
        hub_kw = {"trust_remote_code": True} if self.trust_remote_code else {}
        return self._tokenizer(folder, hub_kw, str(folder))

    def skeleton(self, folder: str | Path, dtype: torch.dtype) -> nn.Module:
        """The model class of ``folder``'s config (the entry's ``auto_class``; remote code when the
        entry trusts it) built with ``from_config`` in ``dtype``: randomly initialised, no weights
        read. The entry's ``attn_implementation`` is set on the config as ``load`` passes it;
        when it is None (remote code: LLaDA, Dream) the model's own default is kept, as in ``load``."""
        import transformers

        remote = {"trust_remote_code": True} if self.trust_remote_code else {}
        cfg = transformers.AutoConfig.from_pretrained(folder, **remote)
        if self.attn_implementation:
            cfg._attn_implementation = self.attn_implementation
        auto = getattr(transformers, self.auto_class)
        return auto.from_config(cfg, dtype=dtype, **remote)

    # ---- layout / tests -----------------------------------------------------------------------
    def standin(self, seed: int = 0) -> nn.Module:
        """A randomly initialised test-size model with this family's module layout (no download)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(seed)
        if self.standin_config:
            cfg = AutoConfig.for_model(self.standin_model_type, **self.standin_config)
        else:  # derived from the model's own config (models/<key> or a local source), at test size
            own = self.own_config()
            model_type = own.pop("model_type", None) or self.standin_model_type
            cfg = AutoConfig.for_model(model_type, **shrink_config(own or
                                                                      AutoConfig.for_model(model_type).to_dict()))
        cfg._attn_implementation = self.attn_implementation or "sdpa"
        return AutoModelForCausalLM.from_config(cfg).eval()

    def own_config(self) -> dict[str, Any]:
        """The model's config.json as a dict, from its local folder (models/<key>, or a local
        ``source``); {} when there is none on disk (a hub id not fetched)."""
        import json

        folder = local_source(self.source) if self.source else None
        for candidate in (folder, paths.model_dir(self.key)):
            if candidate is not None and (candidate / "config.json").is_file():
                return json.loads((candidate / "config.json").read_text(encoding="utf-8"))
        return {}


STANDIN_HEAD_DIM = 8  # test-size stand-ins: 8-dim heads, 2 blocks, at most 2 KV heads
_CONFIG_DROP = ("model_type", "architectures", "auto_map", "_name_or_path", "torch_dtype", "dtype",
                "transformers_version", "quantization_config", "rope_scaling")


def shrink_config(config: dict[str, Any]) -> dict[str, Any]:
    """A model config shrunk to test size with the same layout: 2 blocks, at most 2 KV heads with the
    same query-per-KV ratio (up to 3), 8-dim heads, MLP twice the hidden size, the same vocabulary
    (real token ids stay valid) and at most 256 positions. Keys not about size are kept."""
    cfg = {k: v for k, v in config.items() if k not in _CONFIG_DROP}
    n_layers = cfg.get("num_hidden_layers")
    for k, v in list(cfg.items()):  # per-layer lists (e.g. layer_types) follow the 2 blocks
        if isinstance(v, list) and n_layers and len(v) == n_layers:
            cfg[k] = v[:2]
    heads = int(cfg.get("num_attention_heads") or 4)
    kv = int(cfg.get("num_key_value_heads") or heads)
    rep = max(1, heads // max(kv, 1))
    kv_small = min(kv, 2)
    heads_small = kv_small * min(rep, 3)
    hidden = heads_small * STANDIN_HEAD_DIM
    cfg.update(num_hidden_layers=2, num_attention_heads=heads_small, num_key_value_heads=kv_small,
               hidden_size=hidden, intermediate_size=2 * hidden,
               max_position_embeddings=min(int(cfg.get("max_position_embeddings") or 256), 256))
    if "head_dim" in cfg:
        cfg["head_dim"] = STANDIN_HEAD_DIM
    return cfg


def convert_gguf(gguf_file: str | Path, out_dir: str | Path, key: str, dtype: str = "float32") -> Path:
    """Dequantise a GGUF causal LM once into a plain safetensors folder (weights, config, tokenizer,
    srclib marker), written atomically.

    transformers refuses to ``save_pretrained`` a GGUF-loaded model (quantisation flag), so a plain
    model is built from the same config without ``quantization_config`` and given the state dict.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_file} (build data/raw first: `dvc pull` or srclib.data)")
    torch_dtype = load_options({"dtype": dtype}, dtype)[0]
    folder, name = gguf_file.parent, gguf_file.name
    logger.info("dequantising %s", gguf_file)
    quant = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    cfg_dict = quant.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    for k in ("_name_or_path", "_model_name_or_path"):
        cfg_dict.pop(k, None)
    cfg = AutoConfig.for_model(**cfg_dict)
    cfg.dtype = torch_dtype
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype)
    state = {k: v.to(torch_dtype) for k, v in quant.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF state dict does not match the plain model: missing {missing}, "
                           f"unexpected {unexpected}")
    if tied:
        plain.tie_weights()
    del quant
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_marker(tmp, key, source=name, gguf_sha256=sha256_file(gguf_file), dtype=str(dtype))
    return out_dir
