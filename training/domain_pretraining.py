"""Domain-adaptive continued pretraining (DAPT): masked-LM on a domain's own unlabeled text.

A recipe names the text (``dataset:split`` entries whose words are read and whose labels are
ignored), the encoder and its vocabulary trimming (as a span recipe does), a held-out text,
and the masked-LM settings. The output is an encoder directory in Hugging Face form (config,
safetensors, tokenizer) that a span recipe names as its ``[encoder] name``.

e5-small carries no masked-LM head, so a fresh one (dense, GELU, layer norm, then the word
embedding table as the output matrix, tied) is trained beside the encoder and dropped after.
The held-out masked-LM loss (same positions masked every time) is logged before, during
and after, so a run shows what it learnt.

    python -m ner.training.domain_pretraining training/biomedical-dapt.toml
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from torch import nn

from ner.training.loop import linear_schedule, load_split, pretrained_encoder, read_recipe


class MaskedLMHead(nn.Module):
    """Hidden states → vocabulary logits through the (tied) word-embedding table."""

    def __init__(self, embeddings: nn.Embedding):
        super().__init__()
        hidden = embeddings.embedding_dim
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.embeddings = embeddings
        self.bias = nn.Parameter(torch.zeros(embeddings.num_embeddings))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(nn.functional.gelu(self.dense(hidden))) @ self.embeddings.weight.T + self.bias


def pack_sequences(records, tokenizer, length: int) -> list[list[int]]:
    """Piece ids of consecutive records, packed into sequences of ``length`` pieces (CLS and
    SEP added around each): no piece of text is dropped but the last partial sequence's pad."""
    sequences, current = [], []
    for record in records:
        pieces = tokenizer(record.words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
        for piece in pieces:
            current.append(piece)
            if len(current) == length:
                sequences.append([tokenizer.cls_token_id, *current, tokenizer.sep_token_id])
                current = []
    if current:
        sequences.append([tokenizer.cls_token_id, *current, tokenizer.sep_token_id])
    return sequences


def mask_batch(sequences, tokenizer, rng: random.Random, probability: float = 0.15):
    """(input ids, attention mask, labels) for a batch: ``probability`` of the pieces are
    chosen; of those 80% become the mask token, 10% a random piece, 10% stay. Labels are
    -100 everywhere else."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), -100)
    specials = set(tokenizer.all_special_ids)
    vocabulary = len(tokenizer)
    for row, sequence in enumerate(sequences):
        attention[row, :len(sequence)] = 1
        for col, piece in enumerate(sequence):
            ids[row, col] = piece
            if piece in specials or rng.random() >= probability:
                continue
            labels[row, col] = piece
            roll = rng.random()
            if roll < 0.8:
                ids[row, col] = tokenizer.mask_token_id
            elif roll < 0.9:
                ids[row, col] = rng.randrange(vocabulary)
    return ids, attention, labels


def masked_lm_loss(transformer, head, ids, attention, labels) -> torch.Tensor:
    hidden = transformer(input_ids=ids, attention_mask=attention).last_hidden_state
    chosen = labels != -100
    return nn.functional.cross_entropy(head(hidden[chosen]), labels[chosen])


@torch.no_grad()
def held_out_loss(transformer, head, batches) -> float:
    """Mean masked-LM loss over fixed, pre-masked batches (dropout off)."""
    transformer.eval(), head.eval()
    total, count = 0.0, 0
    for ids, attention, labels in batches:
        n = int((labels != -100).sum())
        if not n:
            continue
        total += float(masked_lm_loss(transformer, head, ids, attention, labels)) * n
        count += n
    transformer.train(), head.train()
    return total / max(count, 1)


def warm_up_head(transformer, head, head_params, sequences, tokenizer, settings: dict, rng, log) -> None:
    """Train the fresh head alone (encoder and embedding table fixed) for ``head_warmup_steps``,
    so the held-out loss before pretraining measures the original encoder, not a random head."""
    steps, size = settings.get("head_warmup_steps", 0), settings.get("batch_sequences", 16)
    if not steps:
        return
    optimizer = torch.optim.AdamW(head_params, lr=settings.get("head_learning_rate", 1e-3))
    for step in range(steps):
        ids, attention, labels = mask_batch(rng.sample(sequences, min(size, len(sequences))), tokenizer, rng,
                                            settings.get("mask_probability", 0.15))
        with torch.no_grad():
            hidden = transformer(input_ids=ids, attention_mask=attention).last_hidden_state
        chosen = labels != -100
        if not chosen.any():
            continue
        head.embeddings.weight.requires_grad_(False)
        loss = nn.functional.cross_entropy(head(hidden[chosen]), labels[chosen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        head.embeddings.weight.requires_grad_(True)
    log(f"head warmed up for {steps} steps with the encoder fixed (last loss {loss.item():.3f})")


def save_encoder(transformer, tokenizer, output: Path) -> None:
    """The encoder directory a span recipe names as ``[encoder] name``."""
    transformer.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)


def pretrain(recipe: dict, output=None, steps: int | None = None, limit: int | None = None, log=print) -> dict:
    data, settings = recipe["data"], recipe["pretraining"]
    torch.manual_seed(settings.get("seed", 0))
    rng = random.Random(settings.get("seed", 0))
    text = load_split(data["text"], limit=limit)
    held_out = load_split(data["held_out"], limit=limit)
    # the vocabulary is trimmed to the pieces the span recipe will keep: train and dev words
    transformer, tokenizer = pretrained_encoder(recipe["encoder"], text + held_out)
    output = Path(output or recipe["output"]["path"])
    output.mkdir(parents=True, exist_ok=True)
    if steps == 0:  # the trimmed encoder as it is: the baseline a probe compares with
        save_encoder(transformer, tokenizer, output)
        log(f"the trimmed encoder, not pretrained further, saved to {output}")
        return {"recipe": recipe, "history": []}
    length, size = settings.get("sequence_pieces", 126), settings.get("batch_sequences", 16)
    probability = settings.get("mask_probability", 0.15)
    sequences = pack_sequences(text, tokenizer, length)
    held_sequences = pack_sequences(held_out, tokenizer, length)
    fixed = random.Random(12345)
    held_batches = [mask_batch(held_sequences[i:i + size], tokenizer, fixed, probability)
                    for i in range(0, len(held_sequences), size)]
    if steps is None:
        steps = settings.get("steps") or math.ceil(len(sequences) / size) * settings.get("epochs", 1)
    log(f"{len(text)} text records → {len(sequences)} sequences of {length} pieces; "
        f"{len(held_sequences)} held-out sequences; {steps} steps of {size}; vocabulary {len(tokenizer)}")

    head = MaskedLMHead(transformer.get_input_embeddings())
    head_params = [p for n, p in head.named_parameters() if not n.startswith("embeddings.")]
    optimizer = torch.optim.AdamW([
        {"params": list(transformer.parameters()), "lr": settings.get("learning_rate", 5e-5)},
        {"params": head_params, "lr": settings.get("head_learning_rate", 1e-3)},
    ], weight_decay=settings.get("weight_decay", 0.01))
    schedule = linear_schedule(optimizer, steps, int(steps * settings.get("warmup", 0.06)))
    warm_up_head(transformer, head, head_params, sequences, tokenizer, settings, rng, log)
    history = [{"step": 0, "held_out_loss": held_out_loss(transformer, head, held_batches)}]
    log(json.dumps(history[-1]))
    order, started, running = [], time.time(), []
    for step in range(1, steps + 1):
        if len(order) < size:
            order += rng.sample(range(len(sequences)), len(sequences))
        batch = [sequences[i] for i in order[:size]]
        order = order[size:]
        ids, attention, labels = mask_batch(batch, tokenizer, rng, probability)
        if (labels != -100).any():  # else nothing was chosen (a batch of very short sequences)
            loss = masked_lm_loss(transformer, head, ids, attention, labels)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
            optimizer.step()
            running.append(loss.item())
        schedule.step()
        if step % settings.get("eval_every", 100) == 0 or step == steps:
            entry = {"step": step, "train_loss": sum(running) / max(len(running), 1),
                     "held_out_loss": held_out_loss(transformer, head, held_batches),
                     "seconds": round(time.time() - started, 1)}
            running = []
            history.append(entry)
            log(json.dumps(entry))
    save_encoder(transformer, tokenizer, output)
    result = {"recipe": recipe, "history": history,
              "held_out_perplexity": {"before": math.exp(history[0]["held_out_loss"]),
                                      "after": math.exp(history[-1]["held_out_loss"])}}
    (output / "pretraining.json").write_text(json.dumps(result, indent=2))
    log(f"held-out masked-LM perplexity {result['held_out_perplexity']['before']:.2f} → "
        f"{result['held_out_perplexity']['after']:.2f}; encoder saved to {output}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("-o", "--output", help="encoder directory (default: the recipe's)")
    parser.add_argument("--steps", type=int, help="override the recipe's step count (0: save the trimmed encoder untrained)")
    parser.add_argument("--limit", type=int, help="records per dataset split (smoke runs)")
    args = parser.parse_args(argv)
    pretrain(read_recipe(args.recipe), args.output, args.steps, args.limit)


if __name__ == "__main__":
    main()
