"""Masked-language-model pretraining: text to packed rows (`text`), the tokenizer (`tokenizer`),
seeded masking and its collator (`masking`), the model and its sparse head (`head`), held-out
evaluation (`evaluation`) and the Trainer subclass that ties them (`trainer`)."""
