"""The training loop: a declarative recipe (TOML) in, a spaCy pipeline directory out.

A recipe names its data (``dataset:split`` from the manifest), its encoder (and whether to
trim its vocabulary to the pieces the data uses), the span head's shape, the optimiser's
few numbers and the seed. ``ner train RECIPE`` runs it; the best epoch on the dev data is
kept (the last, with ``keep = "last"``, for a recipe that trains on its dev data), and a
``training.json`` beside the weights records every epoch.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
import tomllib
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from ner.decoding import base_labels
from ner.evaluation import best_threshold, threshold_scores
from ner.training.batches import length_batches, make_segments

DEV_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the decoding threshold is chosen on dev


def read_recipe(path) -> dict:
    """A recipe as a dict, ``path`` set to its file.

    ``extends = "base.toml"`` (a path beside the recipe's own file) starts from another
    recipe: tables merge key by key, the recipe's keys win and lists are replaced whole.
    A recipe that goes on from a trained pipeline (``[encoder] init``) takes its encoder
    and model from that pipeline, never the base's ``[encoder]`` and ``[model]`` (only its
    own ``[model]`` window and stride). A recipe that extends another names its own
    ``[output] path``, so a stage never overwrites the run it extends.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        recipe = tomllib.load(handle)
    base_name = recipe.pop("extends", None)
    if base_name is not None:
        if "path" not in recipe.get("output", {}):
            raise ValueError(f"{path}: a recipe that extends {base_name} must name its own [output] path")
        base = read_recipe(path.parent / base_name)
        if recipe.get("encoder", {}).get("init"):
            base.pop("encoder", None)
            base.pop("model", None)
        recipe = _merged(base, recipe)
    recipe["path"] = str(path)
    return recipe


def _merged(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def load_split(names: list[str], label_map: dict | None = None, limit: int | None = None,
               sentences_per_record: dict[str, int] | None = None, select: dict[str, dict] | None = None):
    """Records of every ``dataset:split`` named, labels mapped, with ``labels`` set to
    the types the source dataset annotates (for loss masking in joint training).
    ``sentences_per_record`` (dataset → N) joins every N records in a row of a
    sentence-level dataset into one, so each sentence is seen with its neighbours.
    ``select`` (dataset → options) takes part of a corpus with free-form or foreign types
    (Pile-NER): ``labels``, the (mapped) types it trains, its other spans dropped and its
    loss masked to them; ``named_only``, drop mentions with no capital letter or digit
    ("browser" is no product name, "iPhone" and "3DS" are); ``with_entities``, keep only
    records that keep a mention; ``variant``, its types become this corpus's own variants
    ("Disease@ncbi_disease": ``ner.decoding.corpus_variant``), taught by it alone (a name
    instead of true: variants shared by a family, "PER@wikiann" for every ``wikiann/*``);
    ``label_map``, this corpus's own type renames, after the recipe's (WikiNEuRal's PER as
    WNUT-17's person while Tweebank-NER's PER stays PER)."""
    from ner.datasets import dataset_info, load_dataset, parse_source
    from ner.decoding import corpus_variant
    from ner.spans import group_records

    records = []
    for name in names:
        dataset, split, first, cap = parse_source(name)  # "dataset:split", ":N" (first N) or ":A-B"
        options = (select or {}).get(dataset, {})
        maps = [m for m in (label_map, options.get("label_map")) if m]  # the recipe's, then this corpus's

        def rename(label, maps=maps):
            for mapping in maps:
                label = mapping.get(label, label)
            return label

        if "labels" in options:
            annotated = list(options["labels"])
        else:
            annotated = [rename(l) for l in dataset_info(dataset)["labels"]]
        variant = options.get("variant", False)  # true: this dataset's own variants; a name: that family's
        variant = (dataset if variant is True else variant) or None
        chosen = []
        for i, record in enumerate(load_dataset(dataset, split)):
            if (limit is not None and i - first >= limit) or (cap is not None and i >= cap):
                break
            if i < first:
                continue
            if maps:
                record.spans = [type(s)(s.start, s.end, rename(s.label)) for s in record.spans]
            if options:
                record.spans = [s for s in record.spans if s.label in annotated
                                and not (options.get("named_only") and not _looks_named(record.text[s.start:s.end]))]
                if options.get("with_entities") and not record.spans:
                    continue
            if variant:
                record.spans = [type(s)(s.start, s.end, corpus_variant(s.label, variant)) for s in record.spans]
            # the types its dataset annotates: loss masking, decoding
            record.labels = [corpus_variant(l, variant) for l in annotated] if variant else annotated
            chosen.append(record)
        group = (sentences_per_record or {}).get(dataset, 1)
        records += list(group_records(chosen, group)) if group > 1 else chosen
    return records


def _looks_named(mention: str) -> bool:
    return any(c.isupper() or c.isdigit() for c in mention)


def recipe_records(recipe: dict, split: str, limit: int | None = None, *, names: list[str] | None = None):
    """The records a recipe's ``[data]`` names for ``split`` ("train", "dev", "test"), or of
    ``names`` when given, with its label map, its ``sentences_per_record`` grouping and its
    ``[data.select.DATASET]`` tables."""
    data = recipe["data"]
    return load_split(names or data[split], data.get("label_map"), limit, data.get("sentences_per_record"),
                      data.get("select"))


def vocabulary_pieces(tokenizer, records, extra: int = 0, most_frequent: int | None = None) -> list[int]:
    """Piece ids the records' words use, plus the ``extra`` most probable other pieces
    written in Latin script, so unseen words still find familiar pieces. With
    ``most_frequent``, only that many of the used pieces are kept, the most frequent in the
    records' text first (a word whose pieces were dropped is re-segmented into smaller kept
    pieces: see ``trim_vocabulary``)."""
    keep = set(tokenizer.all_special_ids)
    word_counts = Counter(w for r in records for w in r.words)
    piece_counts = Counter()
    for word, n in word_counts.items():
        for piece in tokenizer([word], is_split_into_words=True, add_special_tokens=False)["input_ids"]:
            piece_counts[piece] += n
    used = [piece for piece, _ in piece_counts.most_common(most_frequent)]
    keep.update(used)
    if extra:
        model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
        ranked = sorted(range(len(model["vocab"])), key=lambda i: -model["vocab"][i][1])
        added = 0
        for i in ranked:
            if added >= extra:
                break
            if i not in keep and all(ord(c) < 0x250 or c == "\u2581" for c in model["vocab"][i][0]):
                keep.add(i)
                added += 1
    return sorted(keep)


def frequent_split_words(tokenizer, records, limit: int, min_count: int = 5, min_pieces: int = 3) -> list[str]:
    """The ``limit`` most frequent words of ``records`` seen at least ``min_count`` times
    that the tokenizer splits into ``min_pieces`` pieces or more: the words that vocabulary
    adaptation (``add_word_pieces``) makes single pieces."""
    counts = Counter(w for r in records for w in r.words)
    chosen = []
    for word, n in counts.most_common():
        if n < min_count or len(chosen) >= limit:
            break
        if len(tokenizer([word], is_split_into_words=True, add_special_tokens=False)["input_ids"]) >= min_pieces:
            chosen.append(word)
    return chosen


def adapt_vocabulary(transformer, tokenizer, settings: dict, records):
    """(transformer, tokenizer) with a piece for each frequent, much-split word of the
    training ``records``, as a recipe's ``[encoder.add_words]`` says (``limit``,
    ``min_count``, ``min_pieces``, see ``frequent_split_words``; ``train_new_only``: only the
    new rows of the embedding table learn)."""
    from ner.e5_converter import add_word_pieces

    words = frequent_split_words(tokenizer, records, settings["limit"], settings.get("min_count", 5),
                                 settings.get("min_pieces", 3))
    known = len(tokenizer)
    transformer, tokenizer = add_word_pieces(transformer, tokenizer, words)
    if settings.get("train_new_only"):  # the rows the encoder knew stay as they were
        table = transformer.get_input_embeddings().weight
        table.register_hook(lambda grad: torch.cat([torch.zeros_like(grad[:known]), grad[known:]]))
    return transformer, tokenizer


def pretrained_encoder(encoder: dict, records):
    """(transformer, tokenizer) a recipe's ``[encoder]`` names, its vocabulary trimmed to the
    pieces ``records`` use when ``trim_vocabulary`` says so (see ``vocabulary_pieces``)."""
    from ner.encoders import load_pretrained

    transformer, tokenizer = load_pretrained(encoder["name"])
    if encoder.get("trim_vocabulary"):
        from ner.e5_converter import trim_vocabulary

        keep = vocabulary_pieces(tokenizer, records, encoder.get("extra_pieces", 0), encoder.get("most_frequent"))
        transformer, tokenizer = trim_vocabulary(transformer, tokenizer, keep)
    return transformer, tokenizer


def grow_variants(ner, labels: list[str], init: str) -> None:
    """Give a trained span component the recipe's ``labels``: its own, in order, then any
    corpus variants of them (``Disease@ncbi_disease``), each starting from its base label."""
    have = list(ner.cfg["labels"])
    new = labels[len(have):]
    variants = base_labels(labels)
    if labels[: len(have)] != have or any(label not in variants for label in new):
        raise ValueError(f"{init} has labels {have}, the recipe {labels}: a recipe that goes on from a pipeline "
                         "keeps its labels, and may add corpus variants of them after them")
    if new:
        if not hasattr(ner.model, "add_labels"):
            raise ValueError(f"{init}'s model cannot grow labels")
        ner.model.add_labels({label: variants[label] for label in new})
        ner.cfg["labels"] = list(labels)


def build_pipeline(recipe: dict, train_records, dev_records):
    import spacy

    pipeline, model, encoder = recipe["pipeline"], recipe.get("model", {}), recipe["encoder"]
    if encoder.get("init"):  # go on training a trained pipeline: its encoder, vocabulary and head
        from ner.loading import load

        nlp = load(encoder["init"], backend="torch")  # trained on the fp32 reference, whatever it ships with
        ner = nlp.get_pipe("ner")
        grow_variants(ner, list(pipeline["labels"]), encoder["init"])
        if "active_labels" in pipeline:
            ner.cfg["active_labels"] = pipeline["active_labels"]
        ner.cfg["label_thresholds"] = {}  # chosen for the init's weights; this run chooses its threshold afresh
        if recipe.get("output", {}).get("storage"):  # how this run is saved (the init's, unless the recipe says)
            ner.cfg["storage"] = recipe["output"]["storage"]
        sources = nlp.meta.get("sources", [])  # every stage's training data, each named once
        nlp.meta["sources"] = sources + [{"name": n} for n in recipe["data"]["train"] if {"name": n} not in sources]
        from ner.training.knowledge_distillation import shape_encoder

        # a student: fewer layers, a smaller FFN, fewer attention heads
        shape_encoder(ner.model.encoder.transformer, encoder, ner.model.encoder.tokenizer, train_records)
        if encoder.get("add_words"):  # vocabulary adaptation: frequent split words become pieces
            word_encoder = ner.model.encoder
            word_encoder.swap_vocabulary(*adapt_vocabulary(word_encoder.transformer, word_encoder.tokenizer,
                                                           encoder["add_words"], train_records))
        windowing = window_settings(recipe)
        if windowing:  # wider windows: more context per word, trained and saved
            ner.spec = ner.model.spec = dataclasses.replace(ner.spec, **windowing)
            ner.model.encoder.window, ner.model.encoder.stride = ner.spec.window, ner.spec.stride
        grown = head_settings(recipe)
        if grown:  # a head given sequence context (a long-span head's BiLSTM), starting at zero
            if not hasattr(ner.model.head, "add_context"):
                raise ValueError(f"{encoder['init']}'s head cannot take [model] context_layers")
            if getattr(ner.spec, "context_layers", 0):
                raise ValueError(f"{encoder['init']}'s head has context layers already")
            ner.model.head.add_context(grown["context_layers"])
            ner.spec = ner.model.spec = dataclasses.replace(ner.spec, **grown)
        return nlp, ner
    nlp = spacy.blank(pipeline.get("lang", "xx"))
    if pipeline.get("attached_prefixes"):  # e.g. "#": #hashtags stay one word, as in tweet data
        from spacy.util import compile_prefix_regex

        prefixes = [p for p in nlp.Defaults.prefixes if p not in pipeline["attached_prefixes"]]
        nlp.tokenizer.prefix_search = compile_prefix_regex(prefixes).search
    nlp.meta.update({"name": pipeline["name"], "version": pipeline.get("version", "0.1.0"),
                     "description": pipeline.get("description", ""), "license": pipeline.get("license", ""),
                     "sources": [{"name": name} for name in recipe["data"]["train"]]})
    if recipe["data"].get("label_map"):  # dataset label → pipeline label: `ner evaluate` maps gold spans too
        nlp.meta["label_map"] = dict(recipe["data"]["label_map"])
    ner = nlp.add_pipe("span_ner", name="ner", config={
        "labels": pipeline["labels"],
        "active_labels": pipeline.get("active_labels"),
        "threshold": pipeline.get("threshold", 0.5),
        "decoding": pipeline.get("decoding", "flat"),
        "storage": recipe.get("output", {}).get("storage", "fp32"),
        "model": {"@architectures": "ner_suite.SpanModel.v1", "encoder": encoder["name"], **model},
    })
    transformer, tokenizer = pretrained_encoder(encoder, train_records + dev_records)
    if encoder.get("add_words"):
        transformer, tokenizer = adapt_vocabulary(transformer, tokenizer, encoder["add_words"], train_records)
    from ner.training.knowledge_distillation import shape_encoder

    shape_encoder(transformer, encoder, tokenizer, train_records)
    ner.set_model(transformer, tokenizer)
    return nlp, ner


def batch_loss(model, batch) -> torch.Tensor:
    """The span loss of one batch of Segments; a segment whose dataset annotates only
    some labels trains only those."""
    labels = model.labels
    label_mask = None
    if any(s.labels is not None for s in batch):
        label_mask = torch.tensor([[1.0 if s.labels is None or l in s.labels else 0.0 for l in labels] for s in batch])
    return model.loss([s.words for s in batch], [s.spans for s in batch], label_mask)


def linear_schedule(optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up to the optimiser's learning rates, then linear decay to zero."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / max(warmup_steps, 1), max(0.0, (total_steps - step) / max(total_steps - warmup_steps, 1))))


def make_optimizer(model, settings: dict, total_steps: int):
    """AdamW with the encoder's and the head's learning rates, and its linear schedule.
    ``freeze_embeddings`` leaves the (vocabulary-sized) word-embedding table as it is;
    ``embedding_learning_rate`` gives the table a rate of its own."""
    embeddings = model.encoder.transformer.get_input_embeddings().weight
    if settings.get("freeze_embeddings"):
        embeddings.requires_grad_(False)
    own_rate = embeddings.requires_grad and "embedding_learning_rate" in settings
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad and not (own_rate and p is embeddings)]
    groups = [{"params": encoder_params, "lr": settings.get("learning_rate", 1e-4)},
              {"params": list(model.head.parameters()), "lr": settings.get("head_learning_rate", 1e-3)}]
    if own_rate:  # e.g. pieces new from vocabulary adaptation learn faster than the rest
        groups.append({"params": [embeddings], "lr": settings["embedding_learning_rate"], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.get("weight_decay", 0.01))
    schedule = linear_schedule(optimizer, total_steps, int(total_steps * settings.get("warmup", 0.1)))
    return optimizer, schedule


def optimizer_step(model, optimizer, schedule, loss) -> float:
    """Back-propagate, clip gradients to norm 1, step the optimiser and the schedule."""
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    return loss.item()


def export_pipeline(nlp, path, config=None) -> None:
    """Save ``nlp`` through a fresh Language built from its config (or ``config``, a
    changed copy of it), so the strings that evaluation added to the vocabulary are not
    shipped. ``config.cfg`` states each component's thresholds as its ``cfg.json`` does
    (the one that a load uses)."""
    from ner.loading import write_checksums

    config = config or nlp.config
    for name, component in nlp.pipeline:
        settings = config["components"].get(name, {})
        if "threshold" in settings and "threshold" in getattr(component, "cfg", {}):
            settings["threshold"] = component.cfg["threshold"]
        if getattr(component, "cfg", {}).get("label_thresholds"):
            settings["label_thresholds"] = dict(component.cfg["label_thresholds"])
    fresh = type(nlp).from_config(config)
    fresh.meta.update(nlp.meta)
    fresh.tokenizer.from_bytes(nlp.tokenizer.to_bytes(exclude=["vocab"]), exclude=["vocab"])
    for name, component in nlp.pipeline:
        copy = fresh.get_pipe(name)
        copy.cfg, copy.spec, copy.model = dict(component.cfg), component.spec, component.model
    fresh.to_disk(path)
    write_checksums(path)


def window_settings(recipe: dict) -> dict:
    """The subword window and stride of a recipe that goes on from ``init``: the only
    ``[model]`` keys it can change (the rest of the model is the init pipeline's)."""
    return _continued_model_settings(recipe, ("window", "stride"))


def head_settings(recipe: dict) -> dict:
    """``[model] context_layers`` of a recipe that goes on from ``init``: BiLSTM layers added
    to a long-span head it did not have."""
    return _continued_model_settings(recipe, ("context_layers",))


def _continued_model_settings(recipe: dict, keys: tuple[str, ...]) -> dict:
    if not recipe["encoder"].get("init"):
        return {}
    return {key: value for key, value in recipe.get("model", {}).items() if key in keys}


def output_config(nlp, recipe: dict):
    """The config a run's pipeline is saved with: ``[output] backend`` names the
    inference backend it loads on (it trains on the fp32 reference), and a recipe that goes
    on from ``init`` saves the ``[model]`` settings it changed (window, stride, context
    layers); None: as it is."""
    backend = recipe.get("output", {}).get("backend")
    changed = {**window_settings(recipe), **head_settings(recipe)}
    if not backend and not changed:
        return None
    return span_config(nlp, backend, changed)


def span_config(nlp, backend: str | None = None, model: dict | None = None):
    """A copy of ``nlp``'s config whose span components load on ``backend`` (when given)
    with ``model`` settings (window, stride) changed."""
    from ner.loading import SPAN_FACTORIES

    config = nlp.config  # a copy
    for settings in config["components"].values():
        if settings.get("factory") in SPAN_FACTORIES:
            if backend:
                settings["backend"] = backend
            settings["model"].update(model or {})
    return config


def retune_threshold(component, records, thresholds=DEV_THRESHOLDS, log=print) -> float:
    """Set ``component``'s threshold to the one of ``thresholds`` with the best micro F1
    on ``records`` (dev data), logging every F1; the chosen threshold."""
    from ner.evaluation import threshold_scores

    scores = threshold_scores(component, records, thresholds)
    component.cfg["threshold"] = max(thresholds, key=lambda t: scores[t].micro["f1"])
    log("dev F1 by threshold: " + ", ".join(f"{t}: {100 * scores[t].micro['f1']:.2f}" for t in thresholds)
        + f"; chosen {component.cfg['threshold']}")
    return component.cfg["threshold"]


def train_epoch(model, batches, optimizer, schedule, *, desc: str = "", precision=None, loss_function=batch_loss,
                after_step=None) -> float:
    """One pass over ``batches``; the mean loss. ``precision`` (e.g. ``torch.bfloat16`` on
    a GPU) runs the forward pass under autocast; ``loss_function(model, batch)`` is the
    plain span loss unless the recipe distils a teacher; ``after_step()`` runs after each
    optimiser step (gradual pruning)."""
    model.train()
    device_type = next(model.parameters()).device.type
    running = 0.0
    bar = tqdm(batches, desc=desc, unit="batch", mininterval=10)
    for step, batch in enumerate(bar, 1):
        with torch.autocast(device_type, dtype=precision, enabled=precision is not None):
            loss = loss_function(model, batch)
        running += optimizer_step(model, optimizer, schedule, loss)
        if after_step is not None:
            after_step()
        bar.set_postfix(loss=f"{running / step:.4f}")
    return running / max(len(batches), 1)


def train(recipe_path, *, output=None, epochs=None, limit=None, seed=None, log=print) -> dict:
    recipe = read_recipe(recipe_path)
    settings = recipe["training"]
    if seed is not None:  # a repeat of a recipe with another seed; training.json records it
        settings["seed"] = seed
    seed = settings.get("seed", 0)
    random.seed(seed)
    torch.manual_seed(seed)
    train_records = recipe_records(recipe, "train", limit)
    dev_records = recipe_records(recipe, "dev", limit)
    nlp, ner = build_pipeline(recipe, train_records, dev_records)
    model = ner.model
    labels = model.labels
    count = lambda w: len(model.encoder.word_pieces(w))
    segments = [s for r in train_records for s in make_segments(r, count, settings.get("segment_subwords", 200))]
    unlearnable = sum(1 for s in segments for a, b, _ in s.spans if not model.learnable(a, b))
    log(f"{len(train_records)} train records → {len(segments)} segments; "
        f"{unlearnable} gold spans too long for the head cannot be learnt")
    loss_function = batch_loss
    if recipe.get("distillation"):
        from ner.training.knowledge_distillation import prepare_distillation

        segments, loss_function = prepare_distillation(recipe, segments, count, limit, log)

    epochs = epochs or settings.get("epochs", 3)
    rng = random.Random(seed)
    steps_per_epoch = len(length_batches(segments, settings.get("batch_words", 1500), random.Random(seed)))
    optimizer, schedule = make_optimizer(model, settings, steps_per_epoch * epochs)
    pruning = None
    if recipe.get("pruning", {}).get("block_sparsity"):
        from ner.training.gradual_pruning import GradualBlockPruning

        table = recipe["pruning"]
        pruning = GradualBlockPruning(model.encoder.transformer, table["block_sparsity"], steps_per_epoch * epochs,
                                      start=table.get("start", 0.0), end=table.get("end", 0.6),
                                      every=table.get("every", 50))
    output = Path(output or recipe["output"]["path"])
    output.mkdir(parents=True, exist_ok=True)
    history, best = [], -1.0
    # "last" for a recipe that trains on its dev data too: the dev F1 cannot pick an epoch then
    keep_last = settings.get("keep", "best-dev") == "last"
    for epoch in range(1, epochs + 1):
        started = time.time()
        batches = length_batches(segments, settings.get("batch_words", 1500), rng)
        loss = train_epoch(model, batches, optimizer, schedule, desc=f"epoch {epoch}/{epochs}",
                           loss_function=loss_function, after_step=pruning)
        if settings.get("tune_threshold", True):
            threshold, dev_scores = best_threshold(ner, dev_records, thresholds=DEV_THRESHOLDS)
            ner.cfg["threshold"] = threshold
        else:  # scored as the threshold choice scores: each dev record over its dataset's types
            threshold = ner.cfg["threshold"]
            dev_scores = threshold_scores(ner, dev_records, [threshold])[threshold]
        scores = dev_scores.micro
        entry = {"epoch": epoch, "loss": loss, "dev_f1": scores["f1"],
                 "dev_precision": scores["precision"], "dev_recall": scores["recall"], "threshold": threshold,
                 "seconds": round(time.time() - started, 1)}
        if pruning is not None:
            entry["block_sparsity"] = round(pruning.sparsity, 4)
        history.append(entry)
        log(json.dumps(entry))
        (output / "training.json").write_text(json.dumps({"recipe": recipe, "epochs": history}, indent=2))
        if pruning is not None and not pruning.done:
            log(f"not saved: block sparsity {pruning.sparsity:.2f} is short of {pruning.final_sparsity}")
        elif keep_last and epoch < epochs:
            log("not saved: the recipe keeps its last epoch (its dev data is trained on)")
        elif keep_last or scores["f1"] > best:
            best = scores["f1"]
            export_pipeline(nlp, output, output_config(nlp, recipe))  # writes the checksums, training.json's included
            log(f"saved best so far to {output}")
        else:
            from ner.loading import write_checksums

            write_checksums(output)  # training.json changed, the weights did not
    return {"best_dev_f1": best, "epochs": history, "output": str(output)}
