"""The training head that skips unmasked positions.

`SparseHeadBertForMaskedLM` projects only the masked positions onto the vocabulary: the same
parameters and loss, ~15 % of the head's cost; saved and loaded as a plain `BertForMaskedLM`.
"""

from __future__ import annotations

import torch.nn.functional as F
from transformers import BertForMaskedLM
from transformers.modeling_outputs import MaskedLMOutput


class SparseHeadBertForMaskedLM(BertForMaskedLM):
    """`BertForMaskedLM` whose training loss projects only the masked positions onto the
    vocabulary. Same parameters, same loss; saved and loaded as a plain `BertForMaskedLM`."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, num_items_in_batch=None, masked_positions=None, **kwargs):
        if labels is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids, position_ids=position_ids, **kwargs)
        hidden = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           position_ids=position_ids, return_dict=True).last_hidden_state
        if masked_positions is None:  # found here: a boolean index, which waits for the GPU
            targets = labels != -100
            hidden, labels = hidden[targets], labels[targets]
        else:  # the collator's flat indices of the masked tokens: a gather, no host sync
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions)
            labels = labels.reshape(-1).index_select(0, masked_positions)
        logits = self.cls(hidden).float()
        if num_items_in_batch is None:  # one micro-batch: the mean over its masked tokens
            loss = F.cross_entropy(logits, labels)
        else:  # the Trainer's count over all micro-batches (and processes): exact accumulation
            loss = F.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch
        return MaskedLMOutput(loss=loss, logits=None)
