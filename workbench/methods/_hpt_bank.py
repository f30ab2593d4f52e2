"""HPT's per-class inputs, built once per class set from the description and structure files:

- the prompted text tower's prompts "X×(n_tpro+n_set) {class}. {entities}. {attributes}." per structure;
- the relationship matrices of each prompt (entity–entity and entity–attribute token pairs, both
  directions, counts added up), which the learnable per-layer scalars weight into an attention bias;
- the frozen text tower's per-layer end-of-text embeddings of every description (normalized), which
  the projector turns into the high-level prompts, and the frozen description-ensemble class features.

Facts from the released code (ThomasWangY/2024-AAAI-HPT, trainers/hpt.py): entities and attributes are
lower-cased for the prompt; a relationship is kept only when both ends are listed among the structure's
entities/attributes (case-insensitive); each end is located as the FIRST occurrence of its token
sequence (tokenized alone, without start/end tokens) in the prompt's tokens, and an end not found adds
nothing; matrix[i, j] += 1 and matrix[j, i] += 1 for every token i of one end and j of the other
(TopoPromptLearner.create_attention_matrix); per-layer features are the outputs of blocks 0..L-2 at
the end-of-text position, each L2-normalized (TextEncoderZS); the class feature is the mean of the
normalized description features, normalized again.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.knowledge import Structure


def structure_prompt(classname: str, structure: Structure, n_placeholders: int) -> str:
    entities = ", ".join(e.lower() for e in structure.entities)
    attributes = ", ".join(a.lower() for a in structure.attributes)
    return " ".join(["X"] * n_placeholders) + f" {classname}. {entities}. {attributes}."


def _inner_tokens(tokens: torch.Tensor) -> list[int]:
    """Token ids between start- and end-of-text of one tokenized text (end = the largest id)."""
    return tokens[1:int(tokens.argmax())].tolist()


def _first_occurrence(sequence: list[int], part: list[int]) -> range:
    for start in range(len(sequence) - len(part) + 1):
        if sequence[start:start + len(part)] == part:
            return range(start, start + len(part))
    return range(0)


def relationship_matrices(prompt_tokens: torch.Tensor, structure: Structure, tokenize,
                          token_cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(entity–entity, entity–attribute) count matrices [L, L] over the prompt's token positions."""
    length = prompt_tokens.shape[-1]
    sequence = prompt_tokens.tolist()
    entities = {e.lower() for e in structure.entities}
    attributes = {a.lower() for a in structure.attributes}
    token_cache = {} if token_cache is None else token_cache

    def where(text: str) -> range:
        if text not in token_cache:
            token_cache[text] = _inner_tokens(tokenize([text])[0].cpu())
        return _first_occurrence(sequence, token_cache[text])

    def build(pairs, left_set, right_set) -> torch.Tensor:
        m = torch.zeros(length, length)
        for left, right in pairs:
            if left.lower() in left_set and right.lower() in right_set:
                a, b = where(left), where(right)
                for i in a:
                    for j in b:
                        m[i, j] += 1
                        m[j, i] += 1
        return m

    return (build(structure.entity_pairs, entities, entities),
            build(structure.attribute_pairs, entities, attributes))


class ClassBank(nn.Module):
    """HPT's tensors for one ordered class set (non-persistent buffers: rebuilt from the files).

    prompt_tokens [C, S, L]; e2e, e2a [C, S, L, L] (uint8 counts); layer_features [depth-1, C, S, width];
    frozen_text [C, D] (normalized). S = descriptions (= structures) per class."""

    def __init__(self, backbone, classnames: Sequence[str], descriptions: dict, structures: dict,
                 n_text_prompts: int, n_descriptions: int, batch_size: int = 64):
        super().__init__()
        self.classnames = tuple(classnames)
        self.n_descriptions = n_descriptions
        tokenize = backbone.tokenize
        prompts = [structure_prompt(c.replace("_", " "), structures[c][j], n_text_prompts + n_descriptions)
                   for c in classnames for j in range(n_descriptions)]
        tokens = tokenize(prompts).cpu()
        cache: dict = {}
        matrices = [relationship_matrices(tokens[i], structures[classnames[i // n_descriptions]][i % n_descriptions],
                                          tokenize, cache) for i in range(len(prompts))]
        c, s, length = len(classnames), n_descriptions, tokens.shape[-1]
        device = backbone.device
        self.register_buffer("prompt_tokens", tokens.view(c, s, length).to(device), persistent=False)
        self.register_buffer("e2e", torch.stack([m[0] for m in matrices]).view(c, s, length, length)
                             .to(torch.uint8).to(device), persistent=False)
        self.register_buffer("e2a", torch.stack([m[1] for m in matrices]).view(c, s, length, length)
                             .to(torch.uint8).to(device), persistent=False)
        layers, frozen = self._frozen_description_features(backbone, classnames, descriptions, batch_size)
        self.register_buffer("layer_features", layers, persistent=False)
        self.register_buffer("frozen_text", frozen, persistent=False)

    def _frozen_description_features(self, backbone, classnames, descriptions, batch_size):
        texts = [d for c in classnames for d in descriptions[c][:self.n_descriptions]]
        tower = backbone.text
        per_layer, finals = [], []
        with torch.no_grad(), backbone.extensions_disabled():
            for start in range(0, len(texts), batch_size):
                tokens = backbone.tokenize(texts[start:start + batch_size])
                out = backbone.forward_text(tokens, output_hidden_states=True)
                rows = torch.arange(tokens.shape[0], device=tokens.device)
                eot = tower.pool_index(tokens)
                # hidden[i + 1] is block i's output; blocks 0..depth-2 feed the prompts of blocks 1..depth-1
                per_layer.append(torch.stack([F.normalize(h[rows, eot].float(), dim=-1)
                                              for h in out.hidden_states[1:tower.num_layers]]))
                finals.append(F.normalize(out.features.float(), dim=-1))
        c, s = len(classnames), self.n_descriptions
        layers = torch.cat(per_layer, dim=1)
        layers = layers.view(layers.shape[0], c, s, layers.shape[-1])
        frozen = F.normalize(torch.cat(finals).view(c, s, -1).mean(dim=1), dim=-1)
        return layers, frozen

    @property
    def num_classes(self) -> int:
        return len(self.classnames)
