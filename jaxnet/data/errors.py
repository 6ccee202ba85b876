"""The one exception class of the data layer."""


class DataError(ValueError):
  """Bad or missing data (shards, meta, tokenizer, corpus). One line; names the file."""
