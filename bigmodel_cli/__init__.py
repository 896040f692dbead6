"""bigmodel: pretrain, fine-tune and evaluate BERT models, one command each."""

__version__ = "0.1.0"
