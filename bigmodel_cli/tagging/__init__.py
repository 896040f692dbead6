"""Token classification (named entities): the sibling of `classification/`, one tag per word."""
